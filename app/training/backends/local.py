"""The local backend: a worker here trains the job (``app.training.tasks.TrainingRun``).

It fits the remote interface the simple way: ``submit`` trains in the worker and completes
at once (``run.finished``), so the job is never handed to the poller; cancelling goes
through the queue job, which the trainer checks at every step.
"""

from __future__ import annotations

from app.training.backends.base import Collected, RemoteRun, RemoteState, RemoteStatus


class LocalBackend:
    name = "local"

    def submit(self, run: RemoteRun) -> None:
        from app.training.tasks import TrainingRun

        if run.ctx is None:
            raise RuntimeError("the local backend trains inside a worker's job")
        run.finished = TrainingRun(run.ctx).run()

    def poll(self, run: RemoteRun) -> RemoteStatus:
        # Never handed off, so never polled: the queue job is the state.
        return RemoteStatus(state=RemoteState.RUNNING)

    def cancel(self, run: RemoteRun) -> None:
        """Nothing remote to stop: the worker sees the CANCELLING queue job."""

    def collect(self, run: RemoteRun) -> Collected:
        raise RuntimeError("a local job registers its model when it finishes training")
