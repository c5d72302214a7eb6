"""Property-based fuzzing of the reading path (what validate-shards and refine-dataset's
read tasks run, in-process): whatever the tar bytes and label JSON, every sample is
either read or reported, with a one-line reason, never an exception and never slow.

test_refine_hostile.py runs files of the kinds this finds through refine-dataset.
"""

import functools
import io
import json
import os
import tarfile
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.tars import png, png_header
from pipeline import manifest, shards

# Small limits, so the fuzzer reaches them with small inputs.
LIMITS = shards.Limits(member_bytes=4096, shard_bytes=64 * 1024, image_pixels=1024, label_bytes=512)
SETTINGS = settings(
    max_examples=400,
    deadline=2000,  # ms per example: "never a hang"
    database=None,  # nothing written into the repository
    derandomize=True,  # the same examples on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
label_bytes = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=6), json_values, max_size=4).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=64),
    st.sampled_from([b'{"a":1,"a":2}', b'{"a":NaN}', b'{"a":1e999}', b'{"a":"\\ud800"}', b"[" * 40 + b"]" * 40]),
)
image_bytes = st.one_of(
    st.sampled_from([png(8), png(4, 255), png_header(0, 0), png_header(40, 40), png_header(12000, 12000)]),
    st.binary(max_size=64),
    st.builds(lambda data, cut: data[:cut], st.just(png(8)), st.integers(0, 80)),
)
stems = st.sampled_from(["a", "b", "a.b", "../x", "/abs", "", "sub/c", "\udcff", "k" * 120])
member = st.one_of(
    st.tuples(stems, st.just("png"), image_bytes),
    st.tuples(stems, st.just("json"), label_bytes),
    st.tuples(stems, st.sampled_from(["txt", "", "png.json"]), st.binary(max_size=16)),
    st.tuples(stems, st.sampled_from(["symlink", "hardlink", "fifo", "dir", "v7dir"]), st.just(b"")),
    st.tuples(stems, st.just("big"), st.just(bytes(5000))),
)


def _tar(members) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, errors="surrogateescape") as tar:
        for stem, ext, data in members:
            name = f"{stem}.{ext}" if ext else stem
            info = tarfile.TarInfo(name or "x")
            kinds = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "dir": tarfile.DIRTYPE}
            if ext == "v7dir":  # old tars mark a folder by a trailing slash on a plain entry
                info.name, info.type = f"{stem}/", tarfile.AREGTYPE
                tar.addfile(info)
            elif ext in kinds:
                info.type, info.linkname = kinds[ext], "a.png"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# What can happen to a tar on its way: nothing, cut short, bytes overwritten, junk added.
damage = st.one_of(
    st.just(lambda data, n, junk: data),
    st.just(lambda data, n, junk: data[: n % (len(data) + 1)]),
    st.just(lambda data, n, junk: data[: n % (len(data) + 1)] + junk + data[n % (len(data) + 1) + len(junk):]),
    st.just(lambda data, n, junk: junk + data),
    st.just(lambda data, n, junk: b"\x1f\x8b" + data),
)


def _read_everything(path: str) -> tuple[int, int]:
    """Read one shard as the refine job's read task and validate-shards do; returns
    (samples decoded, problems). Any exception escapes and fails the property."""
    decoded = problems = 0
    for item in shards.iter_shard(path, LIMITS):
        if isinstance(item, shards.Problem):
            assert item.message and "\n" not in item.message, item
            assert item.key is None or isinstance(item.key.encode("utf-8"), bytes)
            problems += 1
            continue
        assert isinstance(item, shards.RawSample) and item.key.encode("utf-8")  # a valid key is never empty
        try:
            sample = shards.decode_sample(item, LIMITS)
        except shards.SampleError as exc:
            assert exc.kind and exc.message and "\n" not in exc.message
            problems += 1
            continue
        # The shard manifest must be able to hold what was decoded.
        manifest.rows_to_table([manifest.make_row(sample.key, "s.tar", labels=sample.labels)])
        decoded += 1
    try:
        shards.check_label_kinds([path], LIMITS)
    except shards.BadDataset as exc:
        assert "\n" not in str(exc)
    return decoded, problems


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as path:
        yield path


@pytest.mark.timeout(120)
@SETTINGS
@given(members=st.lists(member, max_size=8), harm=damage, n=st.integers(0, 1 << 16), junk=st.binary(max_size=32))
def test_any_tar_is_read_or_reported(folder, members, harm, n, junk):
    path = os.path.join(folder, "fuzz.tar")
    with open(path, "wb") as handle:
        handle.write(harm(_tar(members), n, junk))
    start = time.perf_counter()
    decoded, problems = _read_everything(path)
    assert decoded + problems >= 1  # even an empty tar is reported (empty_shard)
    assert time.perf_counter() - start < 2


@pytest.mark.timeout(60)
@SETTINGS
@given(data=st.binary(max_size=2048))
def test_any_bytes_named_tar_are_reported(folder, data):
    path = os.path.join(folder, "bytes.tar")
    with open(path, "wb") as handle:
        handle.write(data)
    decoded, problems = _read_everything(path)
    assert decoded + problems >= 1


@pytest.mark.timeout(60)
@SETTINGS
@given(data=label_bytes)
def test_any_label_bytes_decode_or_are_refused(data):
    try:
        labels = shards.decode_labels(data, LIMITS.label_bytes)
    except shards.SampleError as exc:
        assert exc.kind.startswith(("label", "invalid")) and "\n" not in exc.message
        return
    assert isinstance(labels, dict)
    manifest.rows_to_table([manifest.make_row("k", "s.tar", labels=labels)])


def _first_header(members, harm, n, junk) -> bytes:
    return harm(_tar(members), n, junk)[: tarfile.BLOCKSIZE].ljust(tarfile.BLOCKSIZE, b"\0")


@pytest.mark.timeout(60)
@SETTINGS
@given(members=st.lists(member, min_size=1, max_size=2), harm=damage, n=st.integers(0, 600),
       junk=st.binary(max_size=32))
def test_the_header_walk_reads_size_and_type_as_tarfile_does(members, harm, n, junk):
    # The walk that checks a tar's layout parses only a header's size, type and checksum;
    # it must accept and refuse exactly the headers tarfile does on those fields.
    header = _first_header(members, harm, n, junk)
    if header == tarfile.NUL * tarfile.BLOCKSIZE:
        return
    try:
        info = tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        info = None
    try:
        size, kind = shards._size_and_type(header)
    except tarfile.HeaderError:
        size = kind = None
    if info is None:
        # tarfile also refuses malformed fields the walk does not read (mode, uid, ...),
        # which the full reader reports; the walk must still refuse a bad checksum.
        assert size is None or tarfile.nti(header[148:156]) in tarfile.calc_chksums(header)
    else:
        assert (size, kind) == (info.size, header[156:157])


def _with_field(data: bytes, member: int, start: int, value: bytes) -> bytes:
    """`data` with bytes start.. of the `member`-th header replaced by `value` (cut to the
    header) and the header's checksum made valid again, so tarfile reads past it."""
    offset, count = 0, 0
    while offset + tarfile.BLOCKSIZE <= len(data) and count < member:
        header = data[offset : offset + tarfile.BLOCKSIZE]
        if header == tarfile.NUL * tarfile.BLOCKSIZE:
            return data
        try:
            size = tarfile.nti(header[124:136])
        except tarfile.HeaderError:
            return data
        if size < 0:  # an earlier edit wrote a negative base-256 size: no later header to find
            return data
        offset += tarfile.BLOCKSIZE * (1 + -(-size // tarfile.BLOCKSIZE))
        count += 1
    header = bytearray(data[offset : offset + tarfile.BLOCKSIZE])
    if len(header) < tarfile.BLOCKSIZE:
        return data
    value = value[: tarfile.BLOCKSIZE - start]
    header[start : start + len(value)] = value
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return data[:offset] + bytes(header) + data[offset + tarfile.BLOCKSIZE :]


# Bytes a header field may hold: octal digits and the padding around them, the signs and
# underscores int() also takes, base-256 markers, a slash, a letter, a non-UTF-8 byte.
field_bytes = st.binary(max_size=14).map(lambda raw: bytes(b"0127 \0+-_\x80\xff/x\xfe"[b % 14] for b in raw))
field_starts = st.sampled_from([0, 98, 100, 104, 108, 116, 124, 130, 136, 156, 157, 257, 263, 329, 337, 345, 400, 499])
edited_tars = st.builds(
    lambda members, edits: functools.reduce(lambda data, edit: _with_field(data, *edit), edits, _tar(members)),
    st.lists(member, max_size=5),
    st.lists(st.tuples(st.integers(0, 4), field_starts, field_bytes), max_size=3),
)


@pytest.mark.timeout(120)
@SETTINGS
@given(data=edited_tars)
def test_the_plain_walk_lists_the_members_tarfile_reads(data):
    # Where the header walk lists a tar's members itself, they must be the members tarfile
    # reads, each with the same name, kind, size and data; elsewhere tarfile reads it.
    problem, plain = shards._walk(io.BytesIO(data), len(data))
    if plain is None:
        return
    assert problem is None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        expected = [(i.name, i.isdir(), i.size, tar.extractfile(i).read() if i.isreg() else None) for i in tar]
    listed = [(m.name, m.is_dir, m.size, None if m.is_dir else data[m.offset : m.offset + m.size]) for m in plain]
    assert listed == expected


@pytest.mark.timeout(120)
@SETTINGS
@given(data=edited_tars, harm=damage, n=st.integers(0, 1 << 12), junk=st.binary(max_size=32))
def test_a_shard_reads_the_same_with_or_without_the_plain_walk(folder, data, harm, n, junk):
    path = os.path.join(folder, "same.tar")
    with open(path, "wb") as handle:
        handle.write(harm(data, n, junk))

    def everything():
        items = list(shards.iter_shard(path, LIMITS))
        try:
            kinds = shards.check_label_kinds([path], LIMITS)
        except shards.BadDataset as exc:
            kinds = str(exc)
        return items, kinds

    fast = everything()
    # A context per example: hypothesis runs them all in one call of the test.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shards, "_plain", lambda *args: None)
        assert everything() == fast
