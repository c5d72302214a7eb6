"""The shard format: WebDataset tars whose samples are `<key>.png` + `<key>.json`.

Everything that reads or writes shards goes through this module, so the format is
defined in one place. Reading never raises on bad input: problems are yielded as
`Problem` records (which shard, which key, what kind, why) beside the good samples.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import tarfile
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple, NoReturn

import numpy as np
import webdataset as wds
from PIL import Image

from pipeline.errors import UserError
from pipeline import storage

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
COMPRESSED_TAR = "compressed_tar"  # gzip, bzip2, xz, zstd or lz4 data under a .tar name
SHARD_TOO_LARGE = "shard_too_large"  # the shard file is over Limits.shard_bytes
MEMBER_TOO_LARGE = "member_too_large"  # one member over Limits.member_bytes
MEMBER_NOT_A_FILE = "member_not_a_file"  # a symlink, hard link, device or FIFO entry
IMAGE_TOO_LARGE = "image_too_large"  # width x height over Limits.image_pixels

# Real labels are a few hundred bytes (a class, a gaze vector, a few dozen landmarks) and
# nest two or three levels; these limits leave ample room above that while bounding what
# one hostile label member can cost. Both are checked before the JSON is parsed, so a
# label nested 100,000 levels deep never reaches the (recursive) parser.
MAX_LABEL_BYTES = 64 * 1024
MAX_LABEL_DEPTH = 32
# Label columns of the manifests are int64; a larger integer could not be stored.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Extended headers (pax, GNU long names) are read whole by tarfile before any check of
# ours can run; real ones are a few hundred bytes.
MAX_META_HEADER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one shard or sample may cost; anything over a limit is a reported problem.

    The defaults sit far above real data (shards of a few hundred MB, images of at most a
    few hundred pixels a side, labels of a few hundred bytes) and keep one read task well
    under 2 GB: a task holds one member, one decoded image and the shard's label bytes.
    Tars are read uncompressed only, so `shard_bytes` bounds the bytes decompressed too.
    """

    member_bytes: int = 64 * 1024 * 1024
    shard_bytes: int = 1024 * 1024 * 1024
    image_pixels: int = 4096 * 4096
    label_bytes: int = MAX_LABEL_BYTES

    def __post_init__(self):
        for name in ("member_bytes", "shard_bytes", "image_pixels", "label_bytes"):
            if getattr(self, name) < 1:
                raise UserError(f"limit {name} must be at least 1, got {getattr(self, name)}")


DEFAULT_LIMITS = Limits()


class BadDataset(UserError):
    """A condition of the whole input (not of one sample) that stops a job before it
    writes anything; the CLI exits 2 on it."""

    exit_code = 2


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


def decode_png(data: bytes, max_pixels: int = DEFAULT_LIMITS.image_pixels) -> np.ndarray:
    """An image as HxW uint8/uint16 or HxWx3 uint8; raises SampleError otherwise.

    Image.open reads only the header, so the size is checked before any pixel is
    decoded: a 12000x12000 PNG of a few KB would otherwise cost hundreds of MB.
    """
    try:
        with warnings.catch_warnings():
            # Sizes between PIL's two bomb thresholds only warn; ours is lower anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as pil:
                return _decode_open_png(pil, max_pixels)
    except SampleError:
        raise
    except Image.DecompressionBombError as exc:
        raise SampleError(IMAGE_TOO_LARGE, f"image is too large to decode: {_one_line(exc)}") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        # PIL's text can name the in-memory file by its address, which would make two
        # runs over the same bytes write different manifests.
        text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "(the image bytes)", _one_line(exc))
        raise SampleError(UNDECODABLE_IMAGE, f"cannot decode PNG: {text}") from None


def _decode_open_png(pil: Image.Image, max_pixels: int) -> np.ndarray:
    if pil.format != "PNG":
        raise SampleError(UNDECODABLE_IMAGE, f"image is {pil.format}, not PNG")
    width, height = pil.size
    if width * height > max_pixels:
        raise SampleError(IMAGE_TOO_LARGE, f"image is {height}x{width} (HxW), over the limit of {max_pixels} pixels")
    if width == 0 or height == 0:
        raise SampleError(UNDECODABLE_IMAGE, f"image is {height}x{width} (HxW): it has no pixels")
    pil.load()
    mode = pil.mode
    if mode in ("L", "RGB"):
        return np.asarray(pil, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B"):
        return np.asarray(pil).astype(np.uint16)
    if mode == "I":  # some encoders' 16-bit grey; values still fit 16 bits
        return np.asarray(pil).astype(np.uint16)
    raise SampleError(UNDECODABLE_IMAGE, f"unsupported PNG mode {mode!r} (use L, RGB or I;16)")


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


def decode_labels(data: bytes, max_bytes: int = MAX_LABEL_BYTES) -> dict:
    """Labels as a dict; raises SampleError (one of the label kinds above) for anything a
    manifest could not store faithfully or that would cost unbounded time or memory."""
    if len(data) > max_bytes:
        raise SampleError(LABELS_TOO_LARGE, f"label JSON is {len(data)} bytes, the limit is {max_bytes}")
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

    Written whole (`storage.writing`), so a killed writer never leaves a tar that looks
    complete.
    """
    count = 0
    with storage.writing(path) as stream:
        # encoder=False: members arrive as bytes; webdataset's encoder would only look
        # each one up to pass it through (0.17 -> 0.09 ms a two-member sample, same bytes).
        with wds.TarWriter(stream, mtime=FIXED_MTIME, user="simgan", group="simgan", mode=0o444,
                           encoder=False) as writer:
            for key, members in samples:
                check_key(key)
                writer.write({"__key__": key, **members})
                count += 1
    return count


def list_shards(folder: str) -> list[str]:
    """The `.tar` shards directly in `folder` (local, or an s3:// prefix), sorted by name."""
    return storage.list_files(folder, ".tar")


def require_shards(folder: str, role: str = "") -> list[str]:
    """`list_shards` for a folder the user named: a missing folder, or one without
    shards, is a UserError naming it (and its `role`, e.g. "synthetic"); a `.tar` entry
    that is not a regular file (a FIFO would block every reader forever) is BadDataset."""
    what = f"{role} folder" if role else "folder"
    try:
        paths = list_shards(folder)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {folder}") from None
    if not paths:
        raise UserError(f"{what} {folder} holds no .tar shards")
    for path in paths:
        why = storage.not_regular(path)
        if why:
            raise BadDataset(f"{what} {folder}: {os.path.basename(path)} is {why}, not a regular file; "
                             "only regular files are read (move it out of the folder)")
    return paths


# ---------------------------------------------------------------- reading


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _printable(name: str) -> str:
    """A member name as text: bytes that are not UTF-8 (kept by tarfile as surrogate
    escapes, which no Parquet string or terminal accepts) are shown as \\xNN."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _split_member(name: str) -> tuple[str, str]:
    """(key, extension) split at the first dot of the basename, as WebDataset readers do."""
    directory, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext if dot else ""


# Leading bytes of the compressed formats tar files are commonly wrapped in.
_COMPRESSION_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x04\x22\x4d\x18": "lz4",
}


@dataclass
class _MemberTrouble:
    kind: str
    message: str


def _member_type(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"a symbolic link to {_printable(info.linkname)!r}"
    if info.islnk():
        return f"a hard link to {_printable(info.linkname)!r}"
    if info.isfifo():
        return "a FIFO entry"
    if info.ischr() or info.isblk():
        return "a device entry"
    return f"an entry of tar type {info.type!r}"


def _too_large(name: str, size: int, limits: Limits) -> _MemberTrouble:
    return _MemberTrouble(MEMBER_TOO_LARGE, f"member {_printable(name)!r} is {size} bytes, over the limit of {limits.member_bytes}")


def _tar_members(path: str, problems: list[Problem], limits: Limits) -> Iterator[tuple[str, bytes | _MemberTrouble]]:
    shard = os.path.basename(path)
    try:
        stream, size, _ = storage.open_input(path)
    except OSError as exc:
        problems.append(Problem(shard, None, UNREADABLE_TAR, f"cannot open the shard: {exc.strerror or exc}"))
        return
    with stream:
        if size > limits.shard_bytes:
            problems.append(Problem(shard, None, SHARD_TOO_LARGE,
                                    f"shard is {size} bytes, over the limit of {limits.shard_bytes}; nothing was read"))
            return
        head = stream.read(6)
        for magic, format_name in _COMPRESSION_MAGIC.items():
            if head.startswith(magic):
                problems.append(Problem(shard, None, COMPRESSED_TAR,
                                        f"shard is {format_name}-compressed; only uncompressed tars are read "
                                        "(decompress it and name the result .tar)"))
                return
        if size == 0:
            problems.append(Problem(shard, None, UNREADABLE_TAR, "not a readable tar file: the file is empty (0 bytes)"))
            return
        # Walked before reading: tarfile treats a header cut short as the end of the
        # archive, silently, and reads extended headers whole whatever their size.
        broken, plain = _walk(stream, size)
        if broken and broken[0] == UNREADABLE_TAR:
            problems.append(Problem(shard, None, *broken))
            return
        if plain is not None:
            for member in plain:
                if member.is_dir:
                    continue
                if member.size > limits.member_bytes:
                    yield member.name, _too_large(member.name, member.size, limits)
                else:
                    stream.seek(member.offset)
                    yield member.name, stream.read(member.size)
            return
        stream.seek(0)
        read_any = False
        try:
            # "r|": a plain tar stream. "r|*" (WebDataset's reader) would also inflate
            # compressed data, without bound.
            tar = tarfile.open(fileobj=stream, mode="r|")
            for info in tar:
                tar.members = []  # the stream reader keeps every header otherwise
                if info.isdir():
                    continue  # a folder entry carries no sample data
                read_any = True
                if not info.isreg():
                    yield info.name, _MemberTrouble(MEMBER_NOT_A_FILE, f"member {_printable(info.name)!r} is {_member_type(info)}, not a file")
                elif info.size > limits.member_bytes:
                    yield info.name, _too_large(info.name, info.size, limits)
                else:
                    yield info.name, tar.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError, ValueError, UnicodeError) as exc:
            if read_any:
                problems.append(Problem(shard, None, TRUNCATED_TAR, f"tar ends early, samples after the break are lost: {_one_line(exc)}"))
            else:
                problems.append(Problem(shard, None, UNREADABLE_TAR, f"not a readable tar file: {_one_line(exc)}"))
            return
        if broken:
            problems.append(Problem(shard, None, *broken) if read_any else
                            Problem(shard, None, UNREADABLE_TAR, f"not a readable tar file: {broken[1]}"))


class _Plain(NamedTuple):
    """A member of a tar whose headers are all plain (see `_walk`)."""

    name: str
    is_dir: bool
    size: int
    offset: int  # of its data


# Numeric fields tarfile parses (mode, uid, gid, size, mtime; devmajor, devminor), and
# the form the walk takes them in: octal digits between spaces, ended by NUL or the field.
_NUMBER_FIELDS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (329, 337), (337, 345))
_PLAIN_NUMBER = re.compile(rb" *[0-7]* *")
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)


def _nts(field: bytes) -> str:
    return tarfile.nts(field, tarfile.ENCODING, "surrogateescape")


def _plain(header: bytes, offset: int, size: int) -> _Plain | None:
    """The member a header describes, named as tarfile names it, when the header is a
    file or folder with octal numbers only; None for anything else (links, extended
    headers, base-256 numbers), which tarfile then reads."""
    kind = header[156:157]
    if kind not in _PLAIN_TYPES:
        return None
    for start, stop in _NUMBER_FIELDS:
        if not _PLAIN_NUMBER.fullmatch(header[start:stop].split(tarfile.NUL, 1)[0]):
            return None
    name = _nts(header[0:100])
    is_dir = kind == tarfile.DIRTYPE or (kind == tarfile.AREGTYPE and name.endswith("/"))
    if is_dir:
        name = name.rstrip("/")
    prefix = _nts(header[345:500])  # ustar's long names (tarfile reads the field whatever the magic)
    if prefix:
        name = prefix + "/" + name
    return _Plain(name, is_dir, size, offset + tarfile.BLOCKSIZE)


def _walk(stream, size: int) -> tuple[tuple[str, str] | None, list[_Plain] | None]:
    """(problem, members) of the tar in `stream`, from its 512-byte headers alone (each
    states its data size; data is seeked over).

    problem: (kind, why) when the tar stops before its end-of-archive block or holds an
    extended header over MAX_META_HEADER_BYTES; None for a complete tar. members: every
    member in order when the tar is complete and every header is plain (`_plain`), as
    tarfile would read them; None otherwise, and tarfile reads it. Simulators write plain
    tars, and tarfile's parsing of every field of every header cost more than the rest
    of a dataset-wide header pass.
    """
    offset = 0
    members: list[_Plain] | None = []
    stream.seek(0)
    while True:
        header = stream.read(tarfile.BLOCKSIZE)
        if len(header) < tarfile.BLOCKSIZE:
            return (TRUNCATED_TAR, f"tar ends at byte {size} inside a member header, before the end-of-archive block"), None
        if header == tarfile.NUL * tarfile.BLOCKSIZE:
            return None, members
        try:
            member_size, member_type = _size_and_type(header)
        except tarfile.HeaderError as exc:
            return (TRUNCATED_TAR, f"bad member header at byte {offset}: {_one_line(exc)}"), None
        if member_size < 0:  # base-256 numbers can be negative; tarfile takes them
            return (TRUNCATED_TAR, f"bad member header at byte {offset}: negative size {member_size}"), None
        if member_type in _META_TYPES and member_size > MAX_META_HEADER_BYTES:
            return (UNREADABLE_TAR, (f"extended header at byte {offset} is {member_size} bytes, "
                                     f"over the limit of {MAX_META_HEADER_BYTES}")), None
        if members is not None:
            member = _plain(header, offset, member_size)
            if member is None:
                members = None
            else:
                members.append(member)
        blocks = -(-member_size // tarfile.BLOCKSIZE)
        offset += tarfile.BLOCKSIZE * (1 + blocks)
        if offset > size:
            return (TRUNCATED_TAR, f"member {_printable(_nts(header[:100]))!r} needs {offset} bytes, the file has {size}"), None
        stream.seek(offset)


_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)


def _size_and_type(header: bytes) -> tuple[int, bytes]:
    """A member header's data size and type, with its checksum verified, raising
    tarfile.HeaderError where `TarInfo.frombuf` would for those fields. The walk needs
    no more, and parsing every field took most of a dataset-wide header pass; tarfile
    parses them all when the members are read."""
    stored = tarfile.nti(header[148:156])
    # The checksum counts its own field as spaces; tarfile accepts the sum of unsigned or
    # of signed bytes (the latter is rare, so it is only computed when the first differs).
    if stored != 256 + sum(header) - sum(header[148:156]) and stored not in tarfile.calc_chksums(header):
        raise tarfile.InvalidHeaderError("bad checksum")
    return tarfile.nti(header[124:136]), header[156:157]


def iter_shard(path: str, limits: Limits = DEFAULT_LIMITS) -> Iterator[RawSample | Problem]:
    """Samples of one shard, in stored order, interleaved with the problems found.

    Members are grouped by key as WebDataset does (adjacent members share a key). Every
    yielded RawSample is well formed: a valid, unique key with an image and a label
    member. Anything else is yielded as a Problem naming the shard, key and reason.
    Never raises for what the file holds, and reads at most `limits` of it.
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

    for name, data in _tar_members(path, problems, limits):
        key, ext = _member_key(name)
        if current is not None and key != current.key:
            yield finish(current)
            count += 1
            current, trouble = None, []
        if current is None:
            current = RawSample(shard, key)
            problem = key_problem(key)
            if problem:
                trouble.append((BAD_KEY, problem))
        if isinstance(data, _MemberTrouble):
            trouble.append((data.kind, data.message))
            continue
        if ext in current.members:
            trouble.append((DUPLICATE_KEY, f"two .{ext} members in one sample"))
        # Only the image and the labels are ever used; holding other members' bytes
        # would let one sample with many large members cost the whole shard's size.
        current.members[ext] = data if ext in (IMAGE_EXT, LABEL_EXT) else b""
    if current is not None:
        yield finish(current)
        count += 1
    yield from problems
    if count == 0 and not problems:
        yield Problem(shard, None, EMPTY_SHARD, "shard holds no samples")


class _Header(NamedTuple):
    key: str
    ext: str
    is_dir: bool
    is_file: bool
    size: int
    read: Callable[[], bytes | None]  # the data (None if cut short); call before the next header


def _member_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name. Readers split "a.b.png" into key "a" and
    extension "b.png"; the writer meant key "a.b", which is what a user needs to see."""
    key, ext = _split_member(_printable(name))
    if "." in ext:
        stem, ext = ext.rsplit(".", 1)
        key = f"{key}.{stem}"
    return key, ext


def _extract(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes | None:
    try:
        return tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return None  # data cut short: the full reader reports the shard


def _member_headers(path: str, limits: Limits) -> Iterator[_Header]:
    """Each member of a shard, from its headers alone: member data is seeked over, not
    read, unless asked for. Stops quietly at anything the full reader (`iter_shard`)
    would report; this is for cheap dataset-wide passes."""
    try:
        stream, size, _ = storage.open_input(path)
    except OSError:
        return
    with stream:
        if size > limits.shard_bytes or any(stream.read(6).startswith(magic) for magic in _COMPRESSION_MAGIC):
            return
        broken, plain = _walk(stream, size)
        if broken and broken[0] == UNREADABLE_TAR:
            return
        if plain is not None:
            for member in plain:
                def read(member=member) -> bytes:
                    stream.seek(member.offset)
                    return stream.read(member.size)

                yield _Header(*_member_key(member.name), member.is_dir, not member.is_dir, member.size, read)
            return
        stream.seek(0)
        try:
            tar = tarfile.open(fileobj=stream, mode="r:")  # seekable: skipped data is not read
            for info in tar:
                tar.members = []
                yield _Header(*_member_key(info.name), info.isdir(), info.isreg(), info.size,
                              lambda info=info: _extract(tar, info))
        except (tarfile.TarError, OSError, EOFError, ValueError, UnicodeError):
            return


# A label's kind, as the manifests store it: a column holds one kind across the dataset.
def label_kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array or object"


_KIND_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "object"}


class ShardSurvey(NamedTuple):
    """What one shard's headers and labels say, for the dataset-wide pass: every key a
    member is stored under, and for each label name the first value of each kind, as
    (order, key, type name) with order = (sample number, place in the label)."""

    keys: set[str]
    kinds: dict[str, dict[str, tuple[tuple[int, int], str, str]]]


def survey_shard(path: str, limits: Limits = DEFAULT_LIMITS) -> ShardSurvey:
    """One shard's part of `check_label_kinds`; shards are surveyed independently (in
    any process), so the pass over a large dataset can be spread over many workers."""
    keys: set[str] = set()
    kinds: dict[str, dict[str, tuple[tuple[int, int], str, str]]] = {}
    for number, member in enumerate(_member_headers(path, limits)):
        if member.is_dir:
            continue
        key = member.key
        keys.add(key)
        if member.ext != LABEL_EXT or not member.is_file or member.size > min(limits.label_bytes, limits.member_bytes):
            continue
        data = member.read()
        if data is None:
            continue
        try:
            labels = decode_labels(data, limits.label_bytes)
        except SampleError:
            continue
        for place, (name, value) in enumerate(labels.items()):
            kind = label_kind(value)
            if kind is not None:
                kinds.setdefault(name, {}).setdefault(kind, ((number, place), key, _KIND_NAMES.get(type(value), kind)))
    return ShardSurvey(keys, kinds)


def check_label_kinds(paths: list[str], limits: Limits = DEFAULT_LIMITS, map_shards: Callable = map) -> dict[str, set[str]]:
    """Raise BadDataset when one label name holds values of different kinds (say an
    integer in one shard and a string in another): their manifests could not be merged
    into one column, so this is refused before anything is written. Integers and floats
    are one kind (a float column); labels that do not decode are left to the per-sample
    report. The clash named is the first in shard and sample order, whoever surveys.

    Returns, by shard path, every key a member of the shard is stored under, from the
    same pass over its headers (only label members are read; image data is seeked
    over), so a job that needs both reads every tar once. It holds the key of every
    sample `iter_shard` yields (and of some it reports as problems): enough to tell
    which shards share keys without reading member data.

    `map_shards(function, paths)` runs `survey_shard` over the shards and yields the
    surveys in the order of `paths`: the built-in map here, Ray tasks in refine-dataset."""
    first: dict[str, tuple[str, str, str, str]] = {}  # name -> (kind, shard, key, type name)
    found: dict[str, set[str]] = {}
    for path, survey in zip(paths, map_shards(functools.partial(survey_shard, limits=limits), paths)):
        shard = os.path.basename(path)
        found[path] = survey.keys
        clashes = []
        for name, by_kind in survey.kinds.items():
            if name not in first:
                kind, (_, key, type_name) = min(by_kind.items(), key=lambda item: item[1][0])
                first[name] = (kind, shard, key, type_name)
            clashes += [(order, name, key, type_name) for kind, (order, key, type_name) in by_kind.items()
                        if kind != first[name][0]]
        if clashes:
            _, name, key, type_name = min(clashes)
            seen = first[name]
            raise BadDataset(
                f"label {name!r} is {seen[3]} in {seen[1]} (key {seen[2]!r}) but {type_name} in {shard} "
                f"(key {key!r}); a label needs one type across the dataset (fix those labels, or refine "
                "those shards as a dataset of their own)"
            )
    return found


@dataclass
class Sample:
    """A decoded sample: image as stored (uint8/uint16) and labels as a dict."""

    shard: str
    key: str
    image: np.ndarray
    labels: dict


def decode_sample(raw: RawSample, limits: Limits = DEFAULT_LIMITS) -> Sample:
    """Decode image and labels; raises SampleError naming what is wrong."""
    image = decode_png(raw.image_bytes, limits.image_pixels)
    labels = decode_labels(raw.label_bytes, limits.label_bytes)
    return Sample(raw.shard, raw.key, image, labels)
