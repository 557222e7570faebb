"""ORM tables, one file per table, imported here so Alembic sees the whole metadata.

Called ``db`` rather than ``models``: in this product a model is a trained detector.
"""

from app.db.api_key import ApiKey
from app.db.base import Base
from app.db.batch_prediction_job import BatchPredictionJob
from app.db.box import Box
from app.db.dataset import Dataset
from app.db.dataset_image import DatasetImage, Split
from app.db.deployment import Deployment
from app.db.evaluation import Evaluation
from app.db.image import Image
from app.db.import_row import ImportRow
from app.db.job import Job, JobState
from app.db.model import Model, ModelTag
from app.db.model_artifact import ModelArtifact
from app.db.model_version import ModelVersion
from app.db.training_job import TrainingJob

__all__ = [
    "ApiKey",
    "Base",
    "BatchPredictionJob",
    "Box",
    "Dataset",
    "DatasetImage",
    "Deployment",
    "Evaluation",
    "Image",
    "ImportRow",
    "Job",
    "JobState",
    "Model",
    "ModelArtifact",
    "ModelTag",
    "ModelVersion",
    "Split",
    "TrainingJob",
]
