"""The shard format: WebDataset tars whose samples are `<key>.png` + `<key>.json`.

Everything that reads or writes shards goes through this module, so the format is
defined in one place. Reading never raises on bad input: problems are yielded as
`Problem` records (which shard, which key, what kind, why) beside the good samples.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NoReturn

import numpy as np
import webdataset as wds
from PIL import Image
from webdataset.tariterators import tar_file_iterator

from pipeline.errors import UserError

IMAGE_EXT = "png"
LABEL_EXT = "json"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
SHARD_NAME = "{prefix}-{index:06d}.tar"
# Fixed member metadata makes tars byte-identical for identical samples.
FIXED_MTIME = 0

# Problem kinds, shared by validate-shards, refine-dataset and the manifests.
UNREADABLE_TAR = "unreadable_tar"
TRUNCATED_TAR = "truncated_tar"
EMPTY_SHARD = "empty_shard"
BAD_KEY = "bad_key"
DUPLICATE_KEY = "duplicate_key"
MISSING_IMAGE = "missing_image"
MISSING_LABELS = "missing_labels"
UNDECODABLE_IMAGE = "undecodable_image"
INVALID_LABELS = "invalid_labels"  # not UTF-8, not JSON, not an object, a lone surrogate
LABELS_TOO_LARGE = "labels_too_large"  # more than MAX_LABEL_BYTES
LABELS_TOO_DEEP = "labels_too_deep"  # arrays/objects nested more than MAX_LABEL_DEPTH
LABEL_INT_OVERFLOW = "label_int_overflow"  # an integer outside int64
LABEL_NOT_FINITE = "label_not_finite"  # NaN, Infinity, -Infinity, or a float like 1e400
LABEL_DUPLICATE_KEY = "label_duplicate_key"  # one object with the same name twice
WRONG_SHAPE = "wrong_shape"

# Real labels are a few hundred bytes (a class, a gaze vector, a few dozen landmarks) and
# nest two or three levels; these limits leave ample room above that while bounding what
# one hostile label member can cost. Both are checked before the JSON is parsed, so a
# label nested 100,000 levels deep never reaches the (recursive) parser.
MAX_LABEL_BYTES = 64 * 1024
MAX_LABEL_DEPTH = 32
# Label columns of the manifests are int64; a larger integer could not be stored.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class SampleError(ValueError):
    """A sample that cannot be used; `kind` is one of the problem kinds above."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class Problem:
    shard: str
    key: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"{self.shard}" + (f" key {self.key!r}" if self.key is not None else "")
        return f"{where}: {self.kind}: {self.message}"


@dataclass
class RawSample:
    """A sample as stored: undecoded member bytes, keyed by extension."""

    shard: str
    key: str
    members: dict[str, bytes] = field(default_factory=dict)

    @property
    def image_bytes(self) -> bytes | None:
        return self.members.get(IMAGE_EXT)

    @property
    def label_bytes(self) -> bytes | None:
        return self.members.get(LABEL_EXT)


# ---------------------------------------------------------------- keys and codecs


def key_problem(key: str) -> str | None:
    """Why `key` is not a valid sample key, or None when it is."""
    if not key:
        return "empty key"
    if "/" in key or "\\" in key:
        return f"key {key!r} contains a path separator"
    if "." in key:
        return f"key {key!r} contains a dot (readers split member names at the first dot)"
    if not KEY_PATTERN.match(key):
        return f"key {key!r} has characters other than letters, digits, '_' and '-'"
    return None


def check_key(key: str) -> str:
    problem = key_problem(key)
    if problem:
        raise SampleError(BAD_KEY, problem)
    return key


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an HxW (grey) or HxWx3 (RGB) uint8 image, or an HxW uint16 image."""
    image = np.asarray(image)
    if image.dtype == np.uint16 and image.ndim == 2:
        pil = Image.fromarray(image)  # uint16 HxW becomes "I;16"
    elif image.dtype == np.uint8 and image.ndim == 2:
        pil = Image.fromarray(image)
    elif image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        pil = Image.fromarray(image)
    else:
        raise ValueError(f"cannot store an image of shape {image.shape} and dtype {image.dtype}")
    out = io.BytesIO()
    pil.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """An image as HxW uint8/uint16 or HxWx3 uint8; raises SampleError otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as pil:
            if pil.format != "PNG":
                raise SampleError(UNDECODABLE_IMAGE, f"image is {pil.format}, not PNG")
            pil.load()
            mode = pil.mode
            if mode in ("L", "RGB"):
                return np.asarray(pil, dtype=np.uint8).copy()
            if mode in ("I;16", "I;16B"):
                return np.asarray(pil).astype(np.uint16)
            if mode == "I":  # some encoders' 16-bit grey; values still fit 16 bits
                return np.asarray(pil).astype(np.uint16)
            raise SampleError(UNDECODABLE_IMAGE, f"unsupported PNG mode {mode!r} (use L, RGB or I;16)")
    except SampleError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise SampleError(UNDECODABLE_IMAGE, f"cannot decode PNG: {exc}") from None


def encode_labels(labels: dict) -> bytes:
    """Canonical JSON (sorted keys, no spaces) so identical labels give identical bytes."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# A JSON string (skipped: brackets inside it do not nest) or one bracket.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
# A \uD800-\uDFFF escape; only then can the parsed labels hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _nesting_depth(data: bytes, limit: int) -> int:
    """The deepest bracket nesting of a JSON text, counted without recursion; stops
    counting once past `limit`."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return 0  # too few brackets to nest that deep: the common case, no scan
    depth = deepest = 0
    for match in _JSON_TOKEN.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def _int64(text: str) -> int:
    # Refused on the digits before converting: Python would otherwise build (or refuse
    # with a ValueError of its own) integers of any length.
    digits = text.lstrip("-")
    value = int(text) if len(digits) <= 19 else None
    if value is None or not INT64_MIN <= value <= INT64_MAX:
        shown = text if len(text) <= 40 else f"{text[:20]}... ({len(digits)} digits)"
        raise SampleError(LABEL_INT_OVERFLOW, f"label integer {shown} does not fit in 64 bits")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise SampleError(LABEL_NOT_FINITE, f"label number {text[:40]} is too large for a float (it would be infinite)")
    return value


def _not_a_number(text: str) -> NoReturn:
    raise SampleError(LABEL_NOT_FINITE, f"label holds {text}, which is not a finite number (JSON has no {text})")


def _unique_names(pairs: list[tuple[str, object]]) -> dict:
    labels = dict(pairs)
    if len(labels) != len(pairs):
        seen: set[str] = set()
        twice = next(name for name, _ in pairs if name in seen or seen.add(name))
        raise SampleError(LABEL_DUPLICATE_KEY, f"label object has the name {twice!r} more than once")
    return labels


def decode_labels(data: bytes) -> dict:
    """Labels as a dict; raises SampleError (one of the label kinds above) for anything a
    manifest could not store faithfully or that would cost unbounded time or memory."""
    if len(data) > MAX_LABEL_BYTES:
        raise SampleError(LABELS_TOO_LARGE, f"label JSON is {len(data)} bytes, the limit is {MAX_LABEL_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SampleError(INVALID_LABELS, f"label JSON does not parse: {exc}") from None
    depth = _nesting_depth(data, MAX_LABEL_DEPTH)
    if depth > MAX_LABEL_DEPTH:
        raise SampleError(LABELS_TOO_DEEP, f"label JSON nests more than {MAX_LABEL_DEPTH} levels deep")
    try:
        labels = json.loads(
            text,
            object_pairs_hook=_unique_names,
            parse_int=_int64,
            parse_float=_finite,
            parse_constant=_not_a_number,
        )
    except SampleError:
        raise
    except (json.JSONDecodeError, ValueError) as exc:
        raise SampleError(INVALID_LABELS, f"label JSON does not parse: {exc}") from None
    if not isinstance(labels, dict):
        raise SampleError(INVALID_LABELS, f"label JSON is a {type(labels).__name__}, not an object")
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(labels, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise SampleError(INVALID_LABELS, "label JSON holds a lone UTF-16 surrogate escape, which is not text") from None
    return labels


def image_geometry(image: np.ndarray) -> tuple[int, int, int, int]:
    """(height, width, channels, bits per channel) of a decoded image."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    bits = 16 if image.dtype == np.uint16 else 8
    return image.shape[0], image.shape[1], channels, bits


def to_float(image: np.ndarray) -> np.ndarray:
    """CxHxW float32 in [0, 1] from a stored image (8- or 16-bit)."""
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    array = image.astype(np.float32) / scale
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def from_float(array: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of `to_float`: CxHxW in [0, 1] to HxW or HxWx3 integers of `bits` depth."""
    scale = 65535.0 if bits == 16 else 255.0
    dtype = np.uint16 if bits == 16 else np.uint8
    array = np.clip(np.rint(np.asarray(array, dtype=np.float64) * scale), 0, scale).astype(dtype)
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


# ---------------------------------------------------------------- writing


def shard_name(prefix: str, index: int) -> str:
    return SHARD_NAME.format(prefix=prefix, index=index)


def write_shard(path: str, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write `(key, {ext: bytes})` samples to one tar, deterministically; returns the count.

    Written to a temporary name and renamed, so a killed writer never leaves a tar that
    looks complete.
    """
    tmp = path + ".tmp"
    count = 0
    with open(tmp, "wb") as stream:
        with wds.TarWriter(stream, mtime=FIXED_MTIME, user="simgan", group="simgan", mode=0o444) as writer:
            for key, members in samples:
                check_key(key)
                writer.write({"__key__": key, **members})
                count += 1
    os.replace(tmp, path)
    return count


def list_shards(folder: str) -> list[str]:
    """The `.tar` shards directly in `folder`, sorted by name."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such folder: {folder}")
    return sorted(
        os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".tar")
    )


def require_shards(folder: str, role: str = "") -> list[str]:
    """`list_shards` for a folder the user named: a missing folder, or one without
    shards, is a UserError naming it (and its `role`, e.g. "synthetic")."""
    what = f"{role} folder" if role else "folder"
    try:
        paths = list_shards(folder)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {folder}") from None
    if not paths:
        raise UserError(f"{what} {folder} holds no .tar shards")
    return paths


# ---------------------------------------------------------------- reading


def _split_member(name: str) -> tuple[str, str]:
    """(key, extension) split at the first dot of the basename, as WebDataset readers do."""
    directory, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext if dot else ""


def _tar_members(path: str, problems: list[Problem]) -> Iterator[tuple[str, bytes]]:
    shard = os.path.basename(path)
    read_any = False
    try:
        with open(path, "rb") as stream:
            failures: list[Exception] = []

            def keep(exc: Exception) -> bool:
                failures.append(exc)
                return False

            for member in tar_file_iterator(stream, handler=keep):
                read_any = True
                yield member["fname"], member["data"]
            if failures:
                raise failures[0]
        # tarfile treats a header cut short as the end of the archive, silently.
        missing_end = _missing_end_marker(path)
        if missing_end and read_any:
            problems.append(Problem(shard, None, TRUNCATED_TAR, missing_end))
    except (tarfile.TarError, OSError, EOFError) as exc:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        truncated = read_any or "unexpected end" in str(exc).lower()
        if truncated and size > 0:
            problems.append(Problem(shard, None, TRUNCATED_TAR, f"tar ends early, samples after the break are lost: {exc}"))
        else:
            problems.append(Problem(shard, None, UNREADABLE_TAR, f"not a readable tar file: {exc}"))


def _missing_end_marker(path: str) -> str | None:
    """Why the tar at `path` stops before its end-of-archive block, or None if it doesn't.

    Walks the 512-byte headers (each states its data size) up to the zero block that ends
    every complete tar.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        offset = 0
        while True:
            header = stream.read(tarfile.BLOCKSIZE)
            if len(header) < tarfile.BLOCKSIZE:
                return f"tar ends at byte {size} inside a member header, before the end-of-archive block"
            if header == tarfile.NUL * tarfile.BLOCKSIZE:
                return None
            try:
                info = tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
            except tarfile.HeaderError as exc:
                return f"bad member header at byte {offset}: {exc}"
            blocks = -(-info.size // tarfile.BLOCKSIZE)
            offset += tarfile.BLOCKSIZE * (1 + blocks)
            if offset > size:
                return f"member {info.name!r} needs {offset} bytes, the file has {size}"
            stream.seek(offset)


def iter_shard(path: str) -> Iterator[RawSample | Problem]:
    """Samples of one shard, in stored order, interleaved with the problems found.

    Members are grouped by key as WebDataset does (adjacent members share a key). Every
    yielded RawSample is well formed: a valid, unique key with an image and a label
    member. Anything else is yielded as a Problem naming the shard, key and reason.
    """
    shard = os.path.basename(path)
    problems: list[Problem] = []
    seen: set[str] = set()
    count = 0
    current: RawSample | None = None
    trouble: list[tuple[str, str]] = []

    def finish(sample: RawSample) -> RawSample | Problem:
        if sample.key in seen:
            return Problem(shard, sample.key, DUPLICATE_KEY, "key appears more than once in this shard")
        seen.add(sample.key)
        if trouble:
            return Problem(shard, sample.key, *trouble[0])
        if sample.image_bytes is None:
            return Problem(shard, sample.key, MISSING_IMAGE, f"no .{IMAGE_EXT} member")
        if sample.label_bytes is None:
            return Problem(shard, sample.key, MISSING_LABELS, f"no .{LABEL_EXT} member")
        return sample

    for name, data in _tar_members(path, problems):
        key, ext = _split_member(name)
        # Readers split "a.b.png" into key "a" and extension "b.png"; the writer meant
        # key "a.b", which is what a user needs to see in the report.
        if "." in ext:
            stem, ext = ext.rsplit(".", 1)
            key = f"{key}.{stem}"
        if current is not None and key != current.key:
            yield finish(current)
            count += 1
            current, trouble = None, []
        if current is None:
            current = RawSample(shard, key)
            problem = key_problem(key)
            if problem:
                trouble.append((BAD_KEY, problem))
        if ext in current.members:
            trouble.append((DUPLICATE_KEY, f"two .{ext} members in one sample"))
        current.members[ext] = data
    if current is not None:
        yield finish(current)
        count += 1
    yield from problems
    if count == 0 and not problems:
        yield Problem(shard, None, EMPTY_SHARD, "shard holds no samples")


@dataclass
class Sample:
    """A decoded sample: image as stored (uint8/uint16) and labels as a dict."""

    shard: str
    key: str
    image: np.ndarray
    labels: dict
    raw: RawSample


def decode_sample(raw: RawSample) -> Sample:
    """Decode image and labels; raises SampleError naming what is wrong."""
    image = decode_png(raw.image_bytes)
    labels = decode_labels(raw.label_bytes)
    return Sample(raw.shard, raw.key, image, labels, raw)
