"""Training checkpoints as safetensors: tensors plus JSON metadata, nothing executable.

A checkpoint holds R, D, both optimisers, the history buffer, the historical averages,
the virtual-batch-norm reference, the step, the torch RNG state and the config. A file
in a pickle-based format (torch.save's zip or a raw pickle) is refused, not loaded.
"""

from __future__ import annotations

import json
import os
import re

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pipeline.errors import UserError
from pipeline.files import replacing
from pipeline.tensor_file import header_problem, parse_metadata_json
from pipeline.training.config import TrainConfig
from pipeline.training.step import TrainState, unwrap

FORMAT = "simgan-checkpoint/1"
NAME = "step-{step:08d}.safetensors"
_NAME_RE = re.compile(r"^step-(\d{8})\.safetensors$")


class CheckpointError(UserError):
    """A checkpoint that is missing, unsafe to load, damaged, or from another run."""


def _optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict) -> dict:
    """Tensors of the optimiser state go to `tensors`; the rest is returned as JSON data."""
    state_dict = optimizer.state_dict()
    plain: dict = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{index}.{key}"] = value
    return {"param_groups": state_dict["param_groups"], "plain": plain, "indices": sorted(state_dict["state"])}


def _load_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict, data: dict) -> None:
    state = {int(i): {} for i in data["indices"]}
    for name, value in tensors.items():
        if name.startswith(prefix + ".state."):
            index, key = name[len(prefix) + 7 :].split(".", 1)
            state[int(index)][key] = value
    for name, value in data["plain"].items():
        index, key = name.split(".", 1)
        state[int(index)][key] = value
    optimizer.load_state_dict({"state": state, "param_groups": data["param_groups"]})


def save_checkpoint(path: str, state: TrainState, config: TrainConfig, preset: str) -> str:
    tensors: dict[str, torch.Tensor] = {}
    for prefix, model in (("refiner", state.refiner), ("discriminator", state.discriminator)):
        for name, value in unwrap(model).state_dict().items():
            tensors[f"{prefix}.{name}"] = value.detach().cpu().contiguous()
    for name, value in state.history.state_dict().items():
        tensors[f"history.{name}"] = value.detach().cpu().contiguous()
    for prefix, average in (("average_r", state.average_r), ("average_d", state.average_d)):
        if average is not None:
            for name, value in average.state_dict().items():
                tensors[f"{prefix}.{name}"] = value.detach().cpu().contiguous()
    if state.reference is not None:
        tensors["reference"] = state.reference.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "format": FORMAT,
        "step": state.step,
        "preset": preset,
        "config": config.to_dict(),
        "opt_r": _optimizer_tensors("opt_r", state.opt_r, tensors),
        "opt_d": _optimizer_tensors("opt_d", state.opt_d, tensors),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replacing(path) as tmp:
        save_file(tensors, tmp, metadata={"simgan_checkpoint": json.dumps(meta)})
    return path


def _refuse_pickle(path: str) -> None:
    with open(path, "rb") as handle:
        head = handle.read(9)
    # A safetensors file opens with its header length (8 bytes, any value: its first
    # byte is 0x80 for 1 in 256 files) and then the JSON header's "{".
    if head[8:9] == b"{":
        return
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        raise CheckpointError(
            f"{path} is a pickle-based file (torch.save); loading it could run code, so it is refused. "
            "Checkpoints of this tool are safetensors files."
        )


_JSON_NAMES = {int: "an integer", str: "a string", dict: "an object", list: "an array"}


def _meta_problem(meta: object) -> str | None:
    """What is wrong with the shape of a checkpoint's metadata, or None."""
    if not isinstance(meta, dict):
        return "metadata is not a JSON object"
    if meta.get("format") != FORMAT:
        return f"has format {meta.get('format')!r}, expected {FORMAT!r}"
    for name, kind in (("step", int), ("preset", str), ("config", dict), ("opt_r", dict), ("opt_d", dict)):
        if name not in meta:
            return f"metadata lacks {name}"
        if not isinstance(meta[name], kind) or isinstance(meta[name], bool):
            return f"metadata {name} is not {_JSON_NAMES[kind]}"
    if meta["step"] < 0:
        return f"metadata step is {meta['step']}"
    for name in ("opt_r", "opt_d"):
        for part, kind in (("param_groups", list), ("plain", dict), ("indices", list)):
            if not isinstance(meta[name].get(part), kind):
                return f"metadata {name}.{part} is missing or not {_JSON_NAMES[kind]}"
    return None


def read_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a checkpoint; CheckpointError for anything unsafe or foreign."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    _refuse_pickle(path)
    problem = header_problem(path)
    if problem:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: it {problem}")
    try:
        # Tensors and metadata from one opening of the file.
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            if "simgan_checkpoint" not in metadata:
                raise CheckpointError(f"{path} is a safetensors file but not a training checkpoint of this tool")
            try:
                meta = parse_metadata_json(metadata["simgan_checkpoint"])
            except ValueError as exc:
                raise CheckpointError(f"{path}: checkpoint {exc}") from None
            problem = _meta_problem(meta)
            if problem:
                raise CheckpointError(f"{path}: {problem}")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {exc}") from None
    return tensors, meta


def _section(tensors: dict, prefix: str) -> dict:
    return {name[len(prefix) + 1 :]: value for name, value in tensors.items() if name.startswith(prefix + ".")}


def restore(state: TrainState, path: str, config: TrainConfig) -> TrainState:
    """Load a checkpoint into a state built from the same config."""
    tensors, meta = read_checkpoint(path)
    current = config.to_dict()
    if meta["config"] != current:
        # Options added or removed since the checkpoint was written count as changed too.
        changed = sorted(k for k in meta["config"].keys() | current.keys() if meta["config"].get(k) != current.get(k))
        raise CheckpointError(f"{path} was written with different options ({', '.join(changed)})")
    try:
        _load_state(state, tensors, meta)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        # One line, not torch's list of every mismatched parameter.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} does not fit this run's models: {type(exc).__name__}: {reason}") from None
    return state


def _load_state(state: TrainState, tensors: dict, meta: dict) -> None:
    device = state.history.images.device
    unwrap(state.refiner).load_state_dict(_section(tensors, "refiner"))
    unwrap(state.discriminator).load_state_dict(_section(tensors, "discriminator"))
    state.history.load_state_dict(_section(tensors, "history"))
    for prefix, average in (("average_r", state.average_r), ("average_d", state.average_d)):
        if average is not None:
            average.load_state_dict({k: v.to(device) for k, v in _section(tensors, prefix).items()})
    if state.reference is not None:
        state.reference.copy_(tensors["reference"])
    _load_optimizer("opt_r", state.opt_r, tensors, meta["opt_r"])
    _load_optimizer("opt_d", state.opt_d, tensors, meta["opt_d"])
    torch.set_rng_state(tensors["rng.torch"])
    state.step = meta["step"]


def checkpoint_path(folder: str, step: int) -> str:
    return os.path.join(folder, NAME.format(step=step))


def latest_checkpoint(folder: str) -> str | None:
    if not os.path.isdir(folder):
        return None
    steps = sorted(int(m.group(1)) for m in map(_NAME_RE.match, os.listdir(folder)) if m)
    return checkpoint_path(folder, steps[-1]) if steps else None


def prune(folder: str, keep: int = 2) -> None:
    """Keep the newest `keep` checkpoints (a crash while writing one leaves the previous)."""
    names = sorted(n for n in os.listdir(folder) if _NAME_RE.match(n))
    for name in names[:-keep]:
        os.remove(os.path.join(folder, name))
