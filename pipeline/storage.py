"""Where shards and manifests live: a local folder or an S3 prefix (`s3://bucket/prefix`).

Paths stay plain strings everywhere else (they go to Ray tasks as JSON, into manifests
and messages); this module alone turns one into a `pyarrow.fs` filesystem and a path on
it, through the same layer Ray Data and pyarrow use. Endpoint and credentials come from
the standard AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).

Writes are whole or nothing on both: a local file is written under a temporary name and
renamed (`files.replacing`); S3 has no rename, so an object is buffered and sent in one
put, and it exists only once the put succeeded. Readers therefore never see half of one,
and the object a shard writes last (its stats) stays its commit marker.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import stat
import tempfile
from typing import BinaryIO, Iterator, NamedTuple

from pipeline.errors import UserError
from pipeline.files import atomic_write, replacing

SCHEME = "s3://"
# Read through a buffer this large: every read of an S3 file is an HTTP request, and the
# tar readers ask for 512 bytes at a time. A shard smaller than this costs one request.
READ_BUFFER = 8 * 1024 * 1024
# What Ray tasks that touch S3 get from this process: on a cluster (or in a Ray started
# before the variables were set) they would not have them otherwise.
ENV_PREFIX = "AWS_"
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class Opened(NamedTuple):
    stream: BinaryIO
    size: int
    mtime_ns: int


def is_remote(path: str) -> bool:
    return "://" in path


def join(folder: str, name: str) -> str:
    if is_remote(folder):
        return folder.rstrip("/") + "/" + name
    return os.path.join(folder, name)


def absolute(path: str) -> str:
    """`path` as other processes of the job can find it."""
    return path if is_remote(path) else os.path.abspath(path)


def same_location(a: str, b: str) -> bool:
    if is_remote(a) or is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def _split(path: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// path; anything else with a scheme is refused."""
    if not path.startswith(SCHEME):
        raise UserError(f"{path}: only local paths and {SCHEME}bucket/prefix are supported")
    bucket, _, key = path[len(SCHEME):].partition("/")
    if not bucket:
        raise UserError(f"{path}: no bucket named (expected {SCHEME}bucket/prefix)")
    return bucket, key.strip("/")


def storage_error(path: str, exc: BaseException) -> UserError:
    """A failed S3 call as one line naming the path, with the likely cause when the
    credential variables are not set."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    hint = ""
    if not all(os.environ.get(name) for name in CREDENTIALS):
        hint = f" ({' and '.join(CREDENTIALS)} are not set)"
    return UserError(f"{path}: {message}{hint}")


@functools.lru_cache(maxsize=None)
def _filesystem(bucket: str, env: tuple):
    # Keyed on the AWS variables too: a filesystem holds the credentials it was made with.
    import pyarrow.fs

    # Delayed open: an object smaller than a multipart part goes in a single PutObject.
    filesystem, _ = pyarrow.fs.FileSystem.from_uri(f"{SCHEME}{bucket}?allow_delayed_open=true")
    return filesystem


def _remote(path: str):
    """(filesystem, "bucket/key") of an s3:// path."""
    bucket, key = _split(path)
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(ENV_PREFIX)))
    try:
        filesystem = _filesystem(bucket, env)
    except (OSError, ValueError) as exc:
        raise storage_error(path, exc) from None
    return filesystem, f"{bucket}/{key}" if key else bucket


def check_bucket(path: str) -> None:
    """UserError unless the bucket of s3:// `path` exists and can be reached; nothing
    for a local path. Listing a missing bucket's prefix finds nothing, and writing to it
    fails only in the worker that tries: asked first, it is one clear line."""
    if not is_remote(path):
        return
    import pyarrow.fs

    filesystem, _ = _remote(path)
    bucket, _ = _split(path)
    try:
        found = filesystem.get_file_info(bucket).type
    except OSError as exc:
        raise storage_error(path, exc) from None
    if found == pyarrow.fs.FileType.NotFound:
        raise UserError(f"{path}: bucket {bucket!r} not found")


def list_files(folder: str, suffix: str) -> list[str]:
    """The files directly in `folder` (a prefix on S3) whose name ends in `suffix`,
    sorted; FileNotFoundError for a local folder that does not exist."""
    if not is_remote(folder):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no such folder: {folder}")
        return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(suffix))
    import pyarrow.fs

    check_bucket(folder)
    filesystem, prefix = _remote(folder)
    try:
        found = filesystem.get_file_info(pyarrow.fs.FileSelector(prefix, allow_not_found=True))
    except OSError as exc:
        raise storage_error(folder, exc) from None
    names = [info.base_name for info in found if info.type == pyarrow.fs.FileType.File]
    return sorted(join(folder, name) for name in names if name.endswith(suffix))


def is_folder(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    import pyarrow.fs

    filesystem, key = _remote(path)
    return filesystem.get_file_info(key).type == pyarrow.fs.FileType.Directory


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    import pyarrow.fs

    filesystem, key = _remote(path)
    return filesystem.get_file_info(key).type != pyarrow.fs.FileType.NotFound


def size(path: str) -> int:
    """Bytes in the file at `path`; OSError when there is none."""
    if not is_remote(path):
        return os.path.getsize(path)
    import pyarrow.fs

    filesystem, key = _remote(path)
    info = filesystem.get_file_info(key)
    if info.type != pyarrow.fs.FileType.File:
        raise FileNotFoundError(f"no object at {path}")
    return info.size


def remove(path: str) -> None:
    """Remove the file at `path` when there is one."""
    if not is_remote(path):
        if os.path.exists(path):
            os.remove(path)
    elif exists(path):
        filesystem, key = _remote(path)
        filesystem.delete_file(key)


def make_folder(path: str) -> None:
    """A local folder is made; on S3 a prefix needs nothing, only its bucket must exist."""
    if is_remote(path):
        check_bucket(path)
    else:
        os.makedirs(path, exist_ok=True)


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def not_regular(path: str) -> str | None:
    """Why `path` is not a readable regular file (links are followed), or None. An S3
    object is always one."""
    if is_remote(path):
        return None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a link to nothing" if os.path.islink(path) else "gone (deleted while listed)"
    except OSError as exc:
        return f"not readable ({exc.strerror})"
    return None if stat.S_ISREG(mode) else _file_kind(mode)


def _open_local(path: str) -> Opened:
    # Non-blocking open: a FIFO that appeared after the listing would otherwise block
    # here until some other process writes to it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{_file_kind(info.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        return Opened(os.fdopen(fd, "rb"), info.st_size, info.st_mtime_ns)
    except BaseException:
        os.close(fd)
        raise


def open_input(path: str) -> Opened:
    """The regular file or object at `path` opened for reading (seekable), with its size
    and modification time; OSError when there is none to read."""
    if not is_remote(path):
        return _open_local(path)
    import pyarrow.fs

    try:
        filesystem, key = _remote(path)
    except UserError as exc:
        raise OSError(str(exc)) from None
    info = filesystem.get_file_info(key)
    if info.type != pyarrow.fs.FileType.File:
        raise FileNotFoundError(f"no object at {path}")
    return Opened(io.BufferedReader(filesystem.open_input_file(key), READ_BUFFER), info.size, info.mtime_ns or 0)


@contextlib.contextmanager
def writing(path: str) -> Iterator[BinaryIO]:
    """A binary stream whose content becomes the file or object at `path`, whole, when
    the block ends without an error (and nothing otherwise)."""
    if not is_remote(path):
        with replacing(path) as tmp, open(tmp, "wb") as stream:
            yield stream
        return
    buffer = io.BytesIO()
    yield buffer
    write_bytes(path, buffer.getvalue())


def write_bytes(path: str, data: bytes | str) -> None:
    """`data` (text as UTF-8 on S3, in the default encoding locally) as the file or
    object at `path`, whole."""
    if not is_remote(path):
        atomic_write(path, data)
        return
    filesystem, key = _remote(path)
    try:
        with filesystem.open_output_stream(key) as stream:
            stream.write(data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as exc:
        raise storage_error(path, exc) from None


def read_bytes(path: str) -> bytes:
    opened = open_input(path)
    with opened.stream as stream:
        return stream.read()


def read_table(path: str, columns: list[str] | None = None):
    """The Parquet file at `path` as a pyarrow Table."""
    import pyarrow.parquet as pq

    if not is_remote(path):
        return pq.read_table(path, columns=columns)
    filesystem, key = _remote(path)
    return pq.read_table(key, columns=columns, filesystem=filesystem)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local file name holding the content of `path`, for libraries that only open
    files by name (safetensors); a local path is itself. FileNotFoundError when there
    is nothing at `path`."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, os.path.basename(path) or "object")
        with open(local, "wb") as handle:
            handle.write(read_bytes(path))
        yield local


def task_options(*paths: str) -> dict:
    """Ray task options for tasks that read or write `paths`: the AWS variables of this
    process when any of them is on S3, nothing otherwise."""
    if not any(is_remote(p) for p in paths):
        return {}
    env = {name: value for name, value in os.environ.items() if name.startswith(ENV_PREFIX)}
    return {"runtime_env": {"env_vars": env}} if env else {}
