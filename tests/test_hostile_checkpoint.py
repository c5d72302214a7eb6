"""Forged and damaged checkpoints: one-line CheckpointError naming the file, no traceback
of JSONDecodeError, KeyError or torch's shape mismatches."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.training import checkpoint as ckpt
from pipeline.training.step import build_state, train_step
from pipeline.tensor_file import MAX_HEADER_BYTES
from helpers.train import pools, tiny_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A real checkpoint after one step (so the optimisers have state), and its config."""
    config = tiny_config()
    synthetic, real = pools()
    state = build_state(config, (1, 12, 12), real)
    train_step(state, config, synthetic, real)
    path = str(tmp_path_factory.mktemp("ckpt") / "step-00000001.safetensors")
    return ckpt.save_checkpoint(path, state, config, "digits"), config


def _rewrite(source, target, edit_meta=None, edit_tensors=None, raw_meta=None) -> str:
    with safe_open(source, framework="pt") as handle:
        meta = json.loads(handle.metadata()["simgan_checkpoint"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    text = raw_meta if raw_meta is not None else json.dumps(meta)
    save_file(tensors, str(target), metadata={"simgan_checkpoint": text})
    return str(target)


def _refused(call, path, match) -> str:
    with pytest.raises(ckpt.CheckpointError, match=match) as info:
        call()
    message = str(info.value)
    assert path in message and "\n" not in message
    return message


def test_a_header_size_bomb_is_refused_before_safetensors_reads_it(tmp_path):
    bomb = tmp_path / "bomb.safetensors"
    bomb.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    _refused(lambda: ckpt.read_checkpoint(str(bomb)), str(bomb), f"claims a {MAX_HEADER_BYTES + 1}-byte")


def test_malformed_metadata_json_is_a_message(saved, tmp_path):
    for name, text, match in (
        ("a", "{not json", "checkpoint metadata is not valid JSON"),
        ("b", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("c", "42", "metadata is not a JSON object"),
    ):
        path = _rewrite(saved[0], tmp_path / f"{name}.safetensors", raw_meta=text)
        _refused(lambda: ckpt.read_checkpoint(path), path, match)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.pop("step"), "metadata lacks step"),
        (lambda m: m.update(step="7"), "step is not an integer"),
        (lambda m: m.update(step=-1), "step is -1"),
        (lambda m: m.pop("config"), "metadata lacks config"),
        (lambda m: m["opt_r"].pop("indices"), "opt_r.indices is missing"),
        (lambda m: m["opt_d"].update(plain=[]), "opt_d.plain is missing or not an object"),
    ],
)
def test_missing_or_wrong_metadata_fields_are_messages(saved, tmp_path, edit, match):
    path = _rewrite(saved[0], tmp_path / "c.safetensors", edit_meta=edit)
    _refused(lambda: ckpt.read_checkpoint(path), path, match)


def test_tensors_that_do_not_fit_the_models_are_a_message(saved, tmp_path):
    source, config = saved
    state = build_state(config, (1, 12, 12), pools()[1])

    def shrink(tensors):
        name = next(n for n in tensors if n.startswith("refiner.") and n.endswith("weight"))
        tensors[name] = torch.zeros(1)

    path = _rewrite(source, tmp_path / "shape.safetensors", edit_tensors=shrink)
    _refused(lambda: ckpt.restore(state, path, config), path, "does not fit this run's models: RuntimeError")
    path = _rewrite(source, tmp_path / "rng.safetensors", edit_tensors=lambda t: t.pop("rng.torch"))
    _refused(lambda: ckpt.restore(state, path, config), path, "KeyError")
    path = _rewrite(source, tmp_path / "opt.safetensors", edit_meta=lambda m: m["opt_r"].update(indices=["x"]))
    _refused(lambda: ckpt.restore(state, path, config), path, "ValueError")
    # The untouched checkpoint still restores.
    assert ckpt.restore(state, source, config).step == 1
