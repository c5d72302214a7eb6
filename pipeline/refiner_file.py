"""The standalone refiner file: weights plus everything refinement needs, in safetensors.

safetensors stores tensors and string metadata only, so loading cannot execute code.
The content hash covers the architecture, the input geometry and every weight, and is
checked on load: a file that was altered is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, safe_open, save_file

from pipeline.errors import UserError
from pipeline.models import Refiner, RefinerSpec
from pipeline.version import __version__

FORMAT = "simgan-refiner/1"


class RefinerFileError(UserError):
    """The refiner file is missing, not a refiner, damaged, or does not fit the data."""


@dataclass(frozen=True)
class RefinerInfo:
    spec: RefinerSpec
    preset: str
    height: int
    width: int
    bit_depth: int
    content_hash: str
    package_version: str
    # The training run's verdict on this refiner (pipeline.training.selection):
    # {"status": "passed" | "refused", "step", "reason"}; None in files written before
    # selection existed or by hand.
    quality: dict | None = None

    @property
    def failed(self) -> bool:
        return self.quality is not None and self.quality.get("status") != "passed"

    @property
    def channels(self) -> int:
        return self.spec.channels


def _content_hash(tensors: dict[str, torch.Tensor], description: dict) -> str:
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(json.dumps(list(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _description(spec: RefinerSpec, preset: str, height: int, width: int, bit_depth: int,
                 quality: dict | None = None) -> dict:
    description = {
        "format": FORMAT,
        "spec": spec.to_dict(),
        "preset": preset,
        "height": height,
        "width": width,
        "bit_depth": bit_depth,
    }
    # Part of the hashed description, so the verdict cannot be edited without notice.
    if quality is not None:
        description["quality"] = quality
    return description


def save_refiner(
    path: str, refiner: Refiner, preset: str, height: int, width: int, bit_depth: int = 8,
    quality: dict | None = None,
) -> str:
    """Write the refiner file; returns its content hash."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in refiner.state_dict().items()}
    description = _description(refiner.spec, preset, height, width, bit_depth, quality)
    content_hash = _content_hash(tensors, description)
    metadata = {
        "simgan": json.dumps(description, sort_keys=True),
        "content_hash": content_hash,
        "package_version": __version__,
    }
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
    return content_hash


def read_refiner_info(path: str) -> RefinerInfo:
    """Read and check the file's metadata without building the network."""
    if not path:
        raise RefinerFileError("no refiner file given (pass --refiner FILE; refinement never runs with random weights)")
    if not os.path.isfile(path):
        raise RefinerFileError(f"refiner file not found: {path}")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a refiner"
        raise RefinerFileError(f"{path} is not a safetensors refiner file: {exc}") from None
    if "simgan" not in metadata:
        raise RefinerFileError(f"{path} is a safetensors file but not a refiner exported by this tool")
    description = json.loads(metadata["simgan"])
    if description.get("format") != FORMAT:
        raise RefinerFileError(f"{path} has format {description.get('format')!r}, expected {FORMAT!r}")
    return RefinerInfo(
        spec=RefinerSpec(**description["spec"]),
        preset=description["preset"],
        height=int(description["height"]),
        width=int(description["width"]),
        bit_depth=int(description["bit_depth"]),
        content_hash=metadata.get("content_hash", ""),
        package_version=metadata.get("package_version", ""),
        quality=description.get("quality"),
    )


def load_refiner(path: str, device: str | torch.device = "cpu") -> tuple[Refiner, RefinerInfo]:
    """Build the refiner from its file, in eval mode; refuses damaged or foreign files."""
    info = read_refiner_info(path)
    tensors = load_file(path)
    description = _description(info.spec, info.preset, info.height, info.width, info.bit_depth, info.quality)
    if _content_hash(tensors, description) != info.content_hash:
        raise RefinerFileError(f"{path}: content hash mismatch, the file is damaged or was edited")
    refiner = Refiner(info.spec)
    try:
        refiner.load_state_dict(tensors)
    except RuntimeError as exc:
        raise RefinerFileError(f"{path}: weights do not fit the stated architecture: {exc}") from None
    return refiner.to(device).eval(), info


def check_fits(info: RefinerInfo, height: int, width: int, channels: int, bit_depth: int) -> None:
    """Refuse data the refiner was not trained for.

    The network itself accepts any size, but a refiner trained on one image size and
    bit depth has learned that domain; channels must match exactly.
    """
    if channels != info.channels:
        raise RefinerFileError(
            f"the refiner takes {info.channels}-channel images, the data has {channels} channels"
        )
    if (height, width) != (info.height, info.width):
        raise RefinerFileError(
            f"the refiner was trained on {info.height}x{info.width} images, the data is {height}x{width}"
        )
    if bit_depth != info.bit_depth:
        raise RefinerFileError(
            f"the refiner was trained on {info.bit_depth}-bit images, the data is {bit_depth}-bit"
        )
