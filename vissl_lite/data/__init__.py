"""Data sets (CIFAR-10/100, STL-10, ImageFolder and unlabelled image folders, from a folder or a
tar archive, or tar shards) and the in-memory uint8 path. See ``datasets.py`` (by name, from the
config), ``folders.py`` (image files on disk), ``archive.py`` (reading a tar without extracting
it), ``subsets.py`` (``data.subset``), ``corrupt.py`` (``data.on_corrupt``), ``memory.py``
(whole split as one cached uint8 tensor, decoded by ``decode.py``), ``shards.py`` /
``shard_writer.py`` (tar shards). Loader glue: ``vissl_lite.data.loader`` (engine-owned).

The names load on first use (PEP 562), so that the schema module ``vissl_lite.data.config``
(imported by ``vissl_lite.config``) does not import torch and torchvision with this package.
"""
from vissl_lite._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["ImageFilesArchive", "ImageFolderArchive"], "vissl_lite.data.archive"),
    **dict.fromkeys(["SkipCorrupt", "skipped_count"], "vissl_lite.data.corrupt"),
    **dict.fromkeys(["build_dataset", "default_data_dir", "describe_dataset", "has_labels"],
                    "vissl_lite.data.datasets"),
    **dict.fromkeys(["ImageFiles", "ImageFolder"], "vissl_lite.data.folders"),
    **dict.fromkeys(["UInt8TensorDataset", "build_uint8_dataset", "load_uint8"],
                    "vissl_lite.data.memory"),
    **dict.fromkeys(["ClassSubset", "subset_indices"], "vissl_lite.data.subsets"),
    "write_shards": "vissl_lite.data.shard_writer",
    "DataError": "vissl_lite.errors",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
