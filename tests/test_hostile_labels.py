"""Hostile label members: each is one per-sample problem with its own kind, never a crash.

The refine job's handling of the same labels is in test_refine_bad_input.py.
"""


import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import shards
from pipeline.cli import main
from pipeline.data.validate import scan_folder
from helpers.refine import raw_tar

# Each hostile label member, with the kind it must be reported as.
HOSTILE = {
    "deep": (b'{"a":' + b"[" * 30_000 + b"]" * 30_000 + b"}", shards.LABELS_TOO_DEEP),
    "huge": (b'{"a":"' + b"x" * (shards.MAX_LABEL_BYTES + 1) + b'"}', shards.LABELS_TOO_LARGE),
    "overflow": (b'{"a":9223372036854775808}', shards.LABEL_INT_OVERFLOW),
    "nan": (b'{"a":NaN}', shards.LABEL_NOT_FINITE),
    "dupname": (b'{"a":1,"b":{"c":1,"c":2}}', shards.LABEL_DUPLICATE_KEY),
}


def _kind(data: bytes) -> str:
    with pytest.raises(shards.SampleError) as info:
        shards.decode_labels(data)
    assert "\n" not in info.value.message and info.value.message
    return info.value.kind


def test_nesting_beyond_the_limit_is_refused_without_recursing():
    # 30,000 levels fit the size limit and would exhaust the parser's recursion.
    assert _kind(HOSTILE["deep"][0]) == shards.LABELS_TOO_DEEP
    assert _kind(b"[" * 100_000 + b"]" * 100_000) == shards.LABELS_TOO_LARGE
    limit = shards.MAX_LABEL_DEPTH
    at_limit = b'{"a":' + b"[" * (limit - 1) + b"]" * (limit - 1) + b"}"
    assert isinstance(shards.decode_labels(at_limit)["a"], list)
    assert _kind(b'{"a":' + b"[" * limit + b"]" * limit + b"}") == shards.LABELS_TOO_DEEP
    # Brackets inside strings do not nest, escaped quotes included.
    text = b'{"a":"' + b"[{" * 100 + b'\\"[[[' + b'"}'
    assert shards.decode_labels(text) == {"a": "[{" * 100 + '"[[['}


def test_a_label_over_the_size_limit_is_refused_before_parsing():
    assert _kind(HOSTILE["huge"][0]) == shards.LABELS_TOO_LARGE
    padding = shards.MAX_LABEL_BYTES - len(b'{"a":""}')
    assert shards.decode_labels(b'{"a":"' + b"x" * padding + b'"}')["a"] == "x" * padding


def test_integers_must_fit_int64():
    edge = b'{"lo":-9223372036854775808,"hi":9223372036854775807}'
    assert shards.decode_labels(edge) == {"lo": -(2**63), "hi": 2**63 - 1}
    for number in (b"9223372036854775808", b"-9223372036854775809", b"[1,99999999999999999999]", b"9" * 5000):
        assert _kind(b'{"a":' + number + b"}") == shards.LABEL_INT_OVERFLOW, number[:30]


def test_nan_infinity_and_overflowing_floats_are_refused():
    for value in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"[0.5,-1E999]"):
        assert _kind(b'{"a":' + value + b"}") == shards.LABEL_NOT_FINITE, value
    assert shards.decode_labels(b'{"a":1e-400,"b":1.5e300}') == {"a": 0.0, "b": 1.5e300}


def test_duplicate_names_are_refused_at_any_level():
    assert _kind(b'{"a":1,"a":2}') == shards.LABEL_DUPLICATE_KEY
    assert _kind(HOSTILE["dupname"][0]) == shards.LABEL_DUPLICATE_KEY
    assert shards.decode_labels(b'{"a":{"c":1},"b":{"c":2}}') == {"a": {"c": 1}, "b": {"c": 2}}


def test_lone_surrogates_are_invalid_but_escaped_pairs_are_text():
    assert _kind(b'{"a":"\\ud800"}') == shards.INVALID_LABELS
    assert _kind(b'{"\\udc00":1}') == shards.INVALID_LABELS
    assert shards.decode_labels(b'{"a":"\\ud83d\\ude00"}') == {"a": "\U0001f600"}


def test_every_hostile_label_is_refused_with_its_own_kind():
    for name, (data, kind) in HOSTILE.items():
        assert _kind(data) == kind, name


def test_validate_shards_reports_each_kind_and_keeps_the_good_samples(tmp_path):
    png = shards.encode_png(np.zeros((6, 8), np.uint8))
    for name, (data, _) in HOSTILE.items():
        members = [("good.png", png), ("good.json", b'{"i":1}'), (f"{name}.png", png), (f"{name}.json", data)]
        raw_tar(str(tmp_path / f"{name}.tar"), [(f"{name}_{n}" if n.startswith("good") else n, d) for n, d in members])
    report = scan_folder(str(tmp_path))
    found = {(p.shard, p.key, p.kind) for p in report.problems}
    assert found == {(f"{name}.tar", name, kind) for name, (_, kind) in HOSTILE.items()}
    assert report.good == len(HOSTILE) and report.samples == 2 * len(HOSTILE)

    result = CliRunner().invoke(main, ["validate-shards", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    for name, (_, kind) in HOSTILE.items():
        assert f"key {name!r}: {kind}:" in result.output
