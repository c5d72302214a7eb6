"""Forged and damaged refiner files: refused with one line naming the file, quickly and
without allocating what the file claims."""

import json
import struct

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from pipeline.commands.refine import refine
from pipeline.models import Refiner, RefinerSpec
from pipeline.refiner_file import FORMAT, RefinerFileError, load_refiner, read_refiner_info
from pipeline.tensor_file import MAX_HEADER_BYTES
from helpers.refine import make_refiner

TINY_SPEC = {"kernel": 3, "features": 4, "blocks": 1, "channels": 1}


def forge(path, spec=None, tensors=None, simgan=None, **fields) -> str:
    """A refiner file with whatever metadata and tensors a forger chooses."""
    description = {"format": FORMAT, "spec": spec or TINY_SPEC, "preset": "x", "height": 8, "width": 8,
                   "bit_depth": 8, **fields}
    text = simgan if simgan is not None else json.dumps(description)
    save_file(tensors or {"w": torch.zeros(1)}, str(path), metadata={"simgan": text, "content_hash": "0"})
    return str(path)


def refused(path, match) -> str:
    with pytest.raises(RefinerFileError, match=match) as info:
        load_refiner(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def peak_growth_mb(call) -> float:
    """How far `call` raises this process's peak resident memory above its current size."""
    with open("/proc/self/status") as handle:
        before = int(handle.read().split("VmRSS:")[1].split()[0])
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # restart the peak (VmHWM) from the current size
    call()
    with open("/proc/self/status") as handle:
        peak = int(handle.read().split("VmHWM:")[1].split()[0])
    return (peak - before) / 1024


def test_a_tiny_file_claiming_4096_features_is_refused_before_building(tmp_path):
    path = forge(tmp_path / "r.safetensors", spec={**TINY_SPEC, "features": 4096})
    assert peak_growth_mb(lambda: refused(path, "features is 4096, outside 1..1024")) < 20


def test_weights_that_do_not_fit_an_in_range_spec_are_refused_without_allocating_it(tmp_path):
    # Built for real, this spec's weights would take about 1.2 GB.
    spec = {"kernel": 3, "features": 1024, "blocks": 16, "channels": 1}
    path = forge(tmp_path / "r.safetensors", spec=spec, tensors=Refiner(RefinerSpec(**TINY_SPEC)).state_dict())

    def load():
        with pytest.raises(RefinerFileError, match="do not fit the stated architecture"):
            load_refiner(path)

    assert peak_growth_mb(load) < 100


def test_a_header_size_bomb_is_refused_before_safetensors_reads_it(tmp_path):
    bomb = tmp_path / "bomb.safetensors"
    bomb.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    refused(str(bomb), "claims a 1099511627776-byte safetensors header")
    over = tmp_path / "over.safetensors"
    over.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b" " * (MAX_HEADER_BYTES + 1))
    refused(str(over), "more than the")
    short = tmp_path / "short.safetensors"
    short.write_bytes(struct.pack("<Q", 1000) + b"{}")
    refused(str(short), "file is only 10 bytes")
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    refused(str(tiny), "too short")


def test_malformed_metadata_json_is_a_message(tmp_path):
    refused(forge(tmp_path / "a.safetensors", simgan="{not json"), "metadata is not valid JSON")
    refused(forge(tmp_path / "b.safetensors", simgan="[" * 100_000 + "]" * 100_000), "nested too deeply")
    refused(forge(tmp_path / "c.safetensors", simgan="[1, 2]"), "not a JSON object")
    with pytest.raises(RefinerFileError, match="not valid JSON"):
        read_refiner_info(str(tmp_path / "a.safetensors"))


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"height": None}, "lacks height"),
        ({"spec": {"kernel": 3, "features": 4, "blocks": 1}}, "spec lacks channels"),
        ({"height": "8"}, "height is '8'"),
        ({"width": 0}, "width is 0"),
        ({"bit_depth": 12}, "bit_depth is 12"),
        ({"preset": 5}, "preset is not a string"),
        ({"spec": [3, 4]}, "'spec' is not an object"),
        ({"spec": {**TINY_SPEC, "features": "4"}}, "features is '4', not of type int"),
        ({"spec": {**TINY_SPEC, "features": True}}, "features is True"),
        ({"spec": {**TINY_SPEC, "kernel": 4}}, "kernel is 4, it must be odd"),
        ({"spec": {**TINY_SPEC, "blocks": 65}}, "blocks is 65, outside 0..64"),
        ({"spec": {**TINY_SPEC, "channels": 0}}, "channels is 0"),
        ({"spec": {**TINY_SPEC, "evil": 1}}, "unknown refiner spec field.*'evil'"),
    ],
)
def test_missing_or_wrong_metadata_fields_are_messages(tmp_path, fields, match):
    if fields.get("height", 1) is None:
        description = {"format": FORMAT, "spec": TINY_SPEC, "preset": "x", "width": 8, "bit_depth": 8}
        path = forge(tmp_path / "r.safetensors", simgan=json.dumps(description))
    else:
        path = forge(tmp_path / "r.safetensors", **fields)
    refused(path, match)


def test_a_real_refiner_still_loads_and_the_cli_reports_a_forged_one_in_one_line(tmp_path):
    good = make_refiner(str(tmp_path / "good.safetensors"))
    refiner, info = load_refiner(good)
    assert info.spec == RefinerSpec(**TINY_SPEC) and isinstance(refiner, Refiner)
    forged = forge(tmp_path / "bad.safetensors", simgan="{not json")
    result = CliRunner().invoke(refine, ["--in", str(tmp_path), "--out", str(tmp_path / "out"), "--refiner", forged])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"{forged}: refiner metadata is not valid JSON" in result.output
