"""Writing files so that a reader never sees half of one: everything is written to
`<path>.tmp` and renamed over `path` in one step, so a killed writer leaves the old file
(or none), never a truncated one."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yields the temporary name to write; when the block ends without an error, that
    file replaces `path`. For writers that want a file name (Parquet, safetensors)."""
    tmp = path + ".tmp"
    yield tmp
    os.replace(tmp, path)


def atomic_write(path: str, data: bytes | str) -> None:
    """Write `data` (bytes as they are, text in the default encoding) to `path`."""
    with replacing(path) as tmp:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as handle:
            handle.write(data)


def json_text(data: dict) -> str:
    """`data` as indented JSON with sorted keys and a final newline."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_json(path: str, data: dict) -> None:
    atomic_write(path, json_text(data))
