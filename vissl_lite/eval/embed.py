"""``vissl-lite embed ENCODER --data DIR --out FILE``: the embedding of every image of a folder or
tar archive, with its file path, for retrieval, clustering or another library.

Images are every image file under DIR (any nesting) or in the archive, in sorted path order, so
row ``i`` is the same image on every run. Output by FILE's suffix:

* ``.npy``: float32 (N, D), and ``FILE.csv`` beside it with ``index,path`` per row;
* ``.parquet``: columns ``path`` and ``embedding`` (needs pyarrow);
* ``.safetensors``: tensor ``embeddings``, the paths as a JSON list in the metadata (``paths``).

Resumable: rows are written in chunks to ``FILE.parts/`` (each chunk atomically, with a manifest
naming the encoder, its preprocessing and the image list); a rerun skips the chunks already there,
and a rerun with another encoder or folder refuses. The parts are assembled into FILE at the end.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from vissl_lite.data.archive import ImageFilesArchive, is_archive
from vissl_lite.data.folders import ImageFiles
from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import Transformed
from vissl_lite.eval.features import extract_features
from vissl_lite.eval.transforms import card_transform

FORMATS = (".npy", ".parquet", ".safetensors")


def image_files(data: str | os.PathLike):
    """Every image of a folder or tar archive, sorted by path (unlabelled)."""
    path = Path(data).expanduser()
    if not path.exists():
        raise EvalError(f"--data {data}: does not exist (give a folder of images or a .tar/.tar.gz)")
    return ImageFilesArchive(path) if is_archive(path) else ImageFiles(path)


def _paths(dataset) -> List[str]:
    if isinstance(dataset, ImageFiles):
        return [os.path.relpath(p, dataset.root) for p, _ in dataset.samples]
    return [name for name, _ in dataset.samples]


def _manifest(encoder, paths: List[str], chunk: int) -> Dict[str, Any]:
    listing = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    return {"encoder": encoder.model_id, "feature": encoder.feature,
            "preprocessing": encoder.card.as_dict(), "images": len(paths), "paths_sha256": listing,
            "chunk": chunk}


def _check_manifest(parts: Path, manifest: Dict[str, Any]) -> None:
    file = parts / "manifest.json"
    if file.is_file():
        old = json.loads(file.read_text())
        if old != manifest:
            changed = ", ".join(k for k in manifest if old.get(k) != manifest[k])
            raise EvalError(f"{parts} holds a partial embedding made with another {changed}; "
                            f"delete it or give another --out")
    else:
        parts.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(manifest, indent=2) + "\n")


def _save_atomic(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def embed_images(encoder, data: str | os.PathLike, out: str | os.PathLike, *,
                 batch_size: int = 256, num_workers: int = 0, device: Any = "auto",
                 precision: str = "auto", chunk: int = 4096, progress: bool = True) -> Dict[str, Any]:
    """Write the embeddings of every image of ``data`` to ``out`` (see the module docstring) with
    ``encoder`` (an ``Encoder``: its ``card`` is the preprocessing); returns a summary."""
    out = Path(out).expanduser()
    if out.suffix not in FORMATS:
        raise EvalError(f"--out {out}: the suffix must be one of {', '.join(FORMATS)}")
    if out.suffix == ".parquet":
        _pyarrow()
    dataset = image_files(data)
    paths = _paths(dataset)
    parts = out.with_name(out.name + ".parts")
    chunk = max(batch_size, chunk // batch_size * batch_size)
    _check_manifest(parts, _manifest(encoder, paths, chunk))
    images = Transformed(dataset, card_transform(encoder.card))
    starts = range(0, len(paths), chunk)
    todo = [s for s in starts if not (parts / f"part_{s:010d}.npy").is_file()]
    bar = tqdm(total=len(paths), initial=len(paths) - sum(min(chunk, len(paths) - s) for s in todo),
               desc=f"embedding {out.name}", unit="img", disable=not progress, dynamic_ncols=True)
    for start in todo:
        part = Subset(images, range(start, min(start + chunk, len(paths))))
        loader = DataLoader(part, batch_size=batch_size, num_workers=num_workers)
        feats, _ = extract_features(encoder, loader, device=device, precision=precision)
        _save_atomic(feats.numpy().astype(np.float32), parts / f"part_{start:010d}.npy")
        bar.update(len(part))
    bar.close()
    embeddings = np.concatenate([np.load(parts / f"part_{s:010d}.npy") for s in starts])
    _write(out, embeddings, paths)
    shutil.rmtree(parts)
    return {"out": str(out), "images": len(paths), "dim": int(embeddings.shape[1]),
            "skipped_chunks": len(starts) - len(todo)}


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise EvalError("--out *.parquet needs pyarrow (pip install pyarrow); or write .npy "
                        "(+ .csv) or .safetensors") from None
    return pyarrow


def _write(out: Path, embeddings: np.ndarray, paths: List[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".npy":
        _write_csv(out.with_suffix(".csv"), paths)
        with open(tmp, "wb") as fh:
            np.save(fh, embeddings)
    elif out.suffix == ".safetensors":
        from safetensors.numpy import save_file  # installed with timm

        save_file({"embeddings": embeddings}, str(tmp), metadata={"paths": json.dumps(paths)})
    else:
        pa = _pyarrow()
        table = pa.table({"path": paths, "embedding": list(embeddings)})
        pa.parquet.write_table(table, tmp)
    os.replace(tmp, out)


def _write_csv(path: Path, paths: List[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "path"])
        writer.writerows(enumerate(paths))
    os.replace(tmp, path)


def read_embeddings(out: str | os.PathLike) -> tuple:
    """(embeddings (N, D) float32 numpy, paths) of a file written by ``embed_images``."""
    out = Path(out)
    if out.suffix == ".npy":
        with open(out.with_suffix(".csv"), newline="") as fh:
            paths = [row[1] for row in list(csv.reader(fh))[1:]]
        return np.load(out), paths
    if out.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(out), framework="numpy") as fh:
            return fh.get_tensor("embeddings"), json.loads(fh.metadata()["paths"])
    table = _pyarrow().parquet.read_table(out)
    return np.stack(table["embedding"].to_numpy(zero_copy_only=False)), table["path"].to_pylist()

