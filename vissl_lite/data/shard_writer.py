"""Writing a data set as tar shards (``vissl-lite shard``; the layout is described in
``shards.py``, which reads them)."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Dict, List

from torch.utils.data import Dataset

from vissl_lite.errors import DataError

__all__ = ["write_shards", "INDEX"]

INDEX = "index.json"


def _encoded(dataset: Dataset, index: int):
    """(encoded bytes, extension, label) of sample ``index`` without decoding when possible."""
    base, i = dataset, index
    while hasattr(base, "dataset"):                      # subsets and wrappers
        i, base = (int(base.indices[i]) if hasattr(base, "indices") else i), base.dataset
    if hasattr(base, "read_bytes"):                      # tar archives
        name = base.samples[i][0]
        return bytes(base.read_bytes(i)), name.rsplit(".", 1)[-1].lower(), int(base.targets[i])
    samples = getattr(base, "samples", None)
    if samples is not None and isinstance(samples[i][0], str) and os.path.isfile(samples[i][0]):
        path = samples[i][0]                             # image files
        with open(path, "rb") as f:
            return f.read(), path.rsplit(".", 1)[-1].lower(), int(samples[i][1])
    image, label = base[i]                               # torchvision arrays: re-encode, lossless
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), "png", int(label)


def write_shards(dataset: Dataset, out: str | os.PathLike, shard_size: int,
                 progress: bool = True) -> Path:
    """Write ``dataset`` (items ``(PIL image, label)``) as tar shards of ``shard_size`` samples
    into ``out`` with an ``index.json``; returns the index path."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be a positive number of samples, got {shard_size}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.tar")):
        raise DataError(f"{out} already holds .tar shards; write into an empty folder")
    n = len(dataset)
    digits = max(6, len(str(n - 1)))
    shards: List[Dict[str, Any]] = []
    from tqdm.auto import tqdm
    with tqdm(total=n, unit="img", desc=f"sharding into {out}", disable=not progress or None,
              dynamic_ncols=True) as bar:
        for s, start in enumerate(range(0, n, shard_size)):
            name = f"{s:06d}.tar"
            tmp = out / f".{name}.tmp"
            count = min(shard_size, n - start)
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(start, start + count):
                    data, ext, label = _encoded(dataset, i)
                    key = f"{i:0{digits}d}"
                    for member, payload in ((f"{key}.{ext}", data), (f"{key}.cls",
                                                                     str(label).encode())):
                        info = tarfile.TarInfo(member)
                        info.size, info.mtime, info.mode = len(payload), 0, 0o644
                        tar.addfile(info, io.BytesIO(payload))
                    bar.update(1)
            os.replace(tmp, out / name)
            shards.append({"file": name, "count": count})
    index = {"version": 1, "total": n, "shards": shards,
             "classes": list(getattr(dataset, "classes", []) or [])}
    path = out / INDEX
    path.write_text(json.dumps(index, indent=1) + "\n")
    return path
