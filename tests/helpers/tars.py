"""Builders of hostile tar shards and PNGs, shared by the hostile-input tests."""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import zlib

import numpy as np

from pipeline import shards


def png(size: int = 8, value: int = 0) -> bytes:
    return shards.encode_png(np.full((size, size), value, np.uint8))


def png_header(width: int, height: int) -> bytes:
    """A PNG that states `width` x `height` in its IHDR but holds almost no data: what a
    hostile sample looks like before it is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def good(key: str, size: int = 8) -> list[tuple[str, bytes]]:
    return [(f"{key}.png", png(size)), (f"{key}.json", shards.encode_labels({"key": key}))]


def tar_bytes(members: list) -> bytes:
    """A tar of `members`: (name, bytes) for files, or ready TarInfo objects (links,
    FIFOs, devices) given as (TarInfo, None)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for name, data in members:
            if isinstance(name, tarfile.TarInfo):
                tar.addfile(name)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return str(path)


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def gzip_bomb(expanded: int = 64 * 1024 * 1024) -> bytes:
    """A gzip-compressed tar, a few hundred KB, that expands to `expanded` bytes."""
    return gzip.compress(tar_bytes([("zeros.png", bytes(expanded))]), compresslevel=9)
