"""Built-in datasets (one module each, real files shipped by packages), the per-group streams and the pipeline."""

from codistill.data.base import Batch, DataMissingError, Splits, TensorDataset
from codistill.data.pipeline import DataFormatError, TrainingData
from codistill.data.streams import GroupStream

__all__ = ["Batch", "DataFormatError", "DataMissingError", "GroupStream", "Splits", "TensorDataset", "TrainingData"]
