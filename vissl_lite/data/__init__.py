"""Data sets (CIFAR-10/100, STL-10, ImageFolder and unlabelled image folders, from a folder or a
tar archive, or tar shards) and the in-memory uint8 path. See ``datasets.py`` (by name, from the
config), ``folders.py`` (image files on disk), ``archive.py`` (reading a tar without extracting
it), ``subsets.py`` (``data.subset``), ``corrupt.py`` (``data.on_corrupt``), ``memory.py``
(whole split as one cached uint8 tensor, decoded by ``decode.py``), ``shards.py`` /
``shard_writer.py`` (tar shards).
"""
from vissl_lite.data.archive import ImageFilesArchive, ImageFolderArchive
from vissl_lite.data.corrupt import SkipCorrupt, skipped_count
from vissl_lite.data.datasets import build_dataset, default_data_dir, describe_dataset, has_labels
from vissl_lite.data.folders import ImageFiles, ImageFolder
from vissl_lite.data.memory import UInt8TensorDataset, build_uint8_dataset, load_uint8
from vissl_lite.data.subsets import ClassSubset, subset_indices
from vissl_lite.errors import DataError

# loader glue: vissl_lite.data.loader (engine-owned)

__all__ = ["build_dataset", "load_uint8", "build_uint8_dataset", "UInt8TensorDataset",
           "ImageFolder", "ImageFiles", "ImageFolderArchive", "ImageFilesArchive", "ClassSubset",
           "SkipCorrupt", "subset_indices", "describe_dataset", "default_data_dir", "has_labels",
           "skipped_count", "DataError"]
