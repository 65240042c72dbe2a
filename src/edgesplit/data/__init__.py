"""Datasets (uint8 images + labels) and batch transforms."""

from edgesplit.data.datasets import DATASETS, ArrayDataset, ImageFolderDataset, load_dataset, train_val_split
from edgesplit.data.idx import read_idx

__all__ = ["DATASETS", "ArrayDataset", "ImageFolderDataset", "load_dataset", "train_val_split", "read_idx"]
