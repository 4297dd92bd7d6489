"""Reading the member list of a tar archive fast, and decompressing a compressed one.

The tar headers are parsed here rather than with :mod:`tarfile` because ``tarfile`` builds a
Python ``TarInfo`` per member (2.2 s for the 60,000 CIFAR-10 members against 0.3 s here). Only
plain ustar/v7 headers are parsed; anything else (pax or GNU long-name headers, base-256 sizes)
falls back to ``tarfile``, so every archive ``tarfile`` reads is read correctly.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional

from vissl_lite.errors import DataError

__all__ = ["Member", "scan_ustar", "read_compressed", "list_members"]

_DECOMPRESSORS: Dict[bytes, Callable] = {
    b"\x1f\x8b": gzip.decompress,
    b"BZh": bz2.decompress,
    b"\xfd7zXZ\x00": lzma.decompress,
}

_REGULAR, _DIRECTORY = (b"0"[0], 0, b"7"[0]), b"5"[0]


class Member(NamedTuple):
    name: str
    offset: int
    size: int
    is_dir: bool


def _octal(field: bytes) -> int:
    field = field.split(b"\0", 1)[0].strip()
    return int(field, 8) if field else 0


def scan_ustar(buf) -> Optional[List[Member]]:
    """Members of a ustar/v7 tar held in ``buf`` (bytes or mmap); None if it needs ``tarfile``."""
    members, pos, end = [], 0, len(buf)
    while pos + 512 <= end:
        header = buf[pos:pos + 512]
        if header[0] == 0:  # end-of-archive marker (a zero block)
            break
        if header[124] & 0x80 or header[156] not in (*_REGULAR, _DIRECTORY, *b"12346"):
            return None
        try:
            checksum, size = _octal(header[148:156]), _octal(header[124:136])
        except ValueError:
            return None
        if checksum != sum(header) - sum(header[148:156]) + 8 * 32:
            return None
        name = header[0:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        kind = header[156]
        if kind in _REGULAR or kind == _DIRECTORY:
            members.append(Member(name.decode("utf-8", "surrogateescape"), pos + 512, size,
                                   kind == _DIRECTORY))
        pos += 512 + (size + 511) // 512 * 512
    return members


def _scan_tarfile(fileobj, path: Path) -> List[Member]:
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            return [Member(m.name, m.offset_data, m.size, m.isdir())
                    for m in tar if (m.isreg() and not m.issparse()) or m.isdir()]
    except tarfile.TarError as e:
        raise DataError(f"{path} is not a readable tar archive ({e}); data.root must be an "
                        f"ImageFolder directory or a .tar/.tar.gz of one") from None


def read_compressed(path: Path) -> Optional[bytes]:
    """The decompressed tar of a .tar.gz/.bz2/.xz file, or None if ``path`` is a plain tar."""
    with open(path, "rb") as f:
        magic = f.read(6)
    for prefix, decompress in _DECOMPRESSORS.items():
        if magic.startswith(prefix):
            try:
                return decompress(path.read_bytes())
            except (OSError, EOFError, lzma.LZMAError) as e:
                raise DataError(f"{path}: cannot decompress the archive ({e}); is it truncated?"
                                ) from None
    return None


def list_members(buf, path: Path) -> List[Member]:
    members = scan_ustar(buf)
    if members is None:
        members = _scan_tarfile(_BufferFile(buf), path)
    return members


class _BufferFile:
    """A read-only, seekable file over a bytes/mmap buffer (for the ``tarfile`` fallback)."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.buf) if n is None or n < 0 else self.pos + n
        out = self.buf[self.pos:end]
        self.pos += len(out)
        return bytes(out)

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos + (self.pos if whence == 1 else len(self.buf) if whence == 2 else 0)
        return self.pos

    def tell(self) -> int:
        return self.pos
