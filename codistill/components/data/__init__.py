"""Built-in datasets (one module each, real files shipped by packages), the per-group streams and the pipeline."""

from codistill.components.data.base import Batch, DataMissingError, Splits, TensorDataset
from codistill.components.data.pipeline import DataFormatError, TrainingData
from codistill.components.data.streams import GroupStream

__all__ = ["Batch", "DataFormatError", "DataMissingError", "GroupStream", "Splits", "TensorDataset", "TrainingData"]
