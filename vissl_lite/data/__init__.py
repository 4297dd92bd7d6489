"""Data sets (CIFAR-10/100, STL-10, ImageFolder and unlabelled image folders, from a folder or a
tar archive) and the in-memory uint8 path. See ``datasets.py`` (by name, from the config),
``archive.py`` (reading a tar without extracting it) and ``memory.py`` (whole split as one cached
uint8 tensor).
"""
from vissl_lite.data.archive import ImageFilesArchive, ImageFolderArchive
from vissl_lite.data.datasets import (ClassSubset, ImageFiles, ImageFolder, SkipCorrupt,
                                      build_dataset, default_data_dir, describe_dataset,
                                      has_labels, skipped_count, subset_indices)
from vissl_lite.errors import DataError
from vissl_lite.data.memory import UInt8TensorDataset, build_uint8_dataset, load_uint8

# loader glue: vissl_lite.data.loader (engine-owned)

__all__ = ["build_dataset", "load_uint8", "build_uint8_dataset", "UInt8TensorDataset",
           "ImageFolder", "ImageFiles", "ImageFolderArchive", "ImageFilesArchive", "ClassSubset",
           "SkipCorrupt", "subset_indices", "describe_dataset", "default_data_dir", "has_labels",
           "skipped_count", "DataError"]
