"""Fixtures for serving tests: a worker and generated datasets."""

from tests.training.conftest import make_dataset, run_jobs  # noqa: F401 - fixtures
