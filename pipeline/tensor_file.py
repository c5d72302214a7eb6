"""Checks on a safetensors file made before the safetensors library reads it.

The library reads and parses the whole JSON header (up to 100 MB) on opening, so a tiny
file can claim a huge header; refiner files and checkpoints are refused here first.
"""

from __future__ import annotations

import json
import os
import struct

# Our headers hold tensor names, shapes, offsets and a few KB of JSON metadata (a
# checkpoint's optimiser settings and config); 16 MiB is far above any of them.
MAX_HEADER_BYTES = 16 * 1024 * 1024


def header_problem(path: str, limit: int = MAX_HEADER_BYTES) -> str | None:
    """Why the file at `path` cannot be a safetensors file we would open, or None.

    A safetensors file starts with the header's length as a little-endian u64.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8:
        return f"is {size} bytes, too short for a safetensors file"
    (length,) = struct.unpack("<Q", head)
    if length > limit:
        return f"claims a {length}-byte safetensors header, more than the {limit} bytes allowed"
    if 8 + length > size:
        return f"claims a {length}-byte safetensors header but the file is only {size} bytes"
    return None


def parse_metadata_json(text: str) -> object:
    """The JSON value in a metadata string; ValueError (one line) when it is not JSON.

    RecursionError is caught too: the header limit still admits deeply nested text.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = exc if isinstance(exc, ValueError) else "nested too deeply"
        raise ValueError(f"metadata is not valid JSON ({reason})") from None
