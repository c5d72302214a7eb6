"""The standalone refiner file: weights plus everything refinement needs, in safetensors.

safetensors stores tensors and string metadata only, so loading cannot execute code.
The content hash covers the architecture, the input geometry and every weight, and is
checked on load: a file that was altered is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import safe_open, save_file

from pipeline import storage
from pipeline.errors import UserError
from pipeline.files import replacing
from pipeline.models import OUTPUT_FORMS, Refiner, RefinerSpec
from pipeline.reading import Geometry
from pipeline.tensor_file import header_problem, parse_metadata_json
from pipeline.version import __version__

FORMAT = "simgan-refiner/1"

# Ranges for the spec's numbers, checked before a network is built from them: a forged
# file's spec alone decides how much memory building the network takes. The paper's
# largest refiner has kernel 7, 64 features and 10 blocks; images are grey to RGBA.
SPEC_RANGES = {"kernel": (1, 15), "features": (1, 1024), "blocks": (0, 64), "channels": (1, 4)}
MAX_IMAGE_SIDE = 16384


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

    @property
    def geometry(self) -> Geometry:
        """The images the refiner was trained on, which it refines."""
        return Geometry(self.height, self.width, self.channels, self.bit_depth)


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
    with replacing(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return content_hash


@contextlib.contextmanager
def _open(path: str):
    """The file (local, or fetched from S3) opened with safe_open, after the checks
    safetensors itself does not make."""
    if not path:
        raise RefinerFileError("no refiner file given (pass --refiner FILE; refinement never runs with random weights)")
    with contextlib.ExitStack() as stack:
        try:
            local = stack.enter_context(storage.local_copy(path))
        except OSError:
            local = None
        if local is None or not os.path.isfile(local):
            raise RefinerFileError(f"refiner file not found: {path}")
        problem = header_problem(local)
        if problem:
            raise RefinerFileError(f"{path} is not a refiner file: it {problem}")
        try:
            handle = safe_open(local, framework="pt")
        except Exception as exc:  # noqa: BLE001 - any parse failure means "not a refiner"
            raise RefinerFileError(f"{path} is not a safetensors refiner file: {exc}") from None
        with handle:
            yield handle


def _whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _spec(path: str, data: object) -> RefinerSpec:
    """The spec from its metadata, its numbers checked before anything is built from it.

    Fields of RefinerSpec this module has no range for are accepted when their type
    matches the field's default, so a field added to the spec needs no change here.
    """
    if not isinstance(data, dict):
        raise RefinerFileError(f"{path}: refiner metadata 'spec' is not an object")
    fields = {f.name: f for f in dataclasses.fields(RefinerSpec)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RefinerFileError(f"{path}: unknown refiner spec field(s) {', '.join(map(repr, unknown))}")
    missing = sorted(set(SPEC_RANGES) - set(data))
    if missing:
        raise RefinerFileError(f"{path}: refiner spec lacks {', '.join(missing)}")
    for name, value in data.items():
        default = fields[name].default
        if default is dataclasses.MISSING:
            continue
        expected = type(default)
        fits = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
        if expected is float and _whole_number(value):
            fits = True
        if not fits:
            raise RefinerFileError(f"{path}: refiner spec {name} is {value!r}, not of type {expected.__name__}")
    for name, (low, high) in SPEC_RANGES.items():
        if not low <= data[name] <= high:
            raise RefinerFileError(f"{path}: refiner spec {name} is {data[name]}, outside {low}..{high}")
    if data["kernel"] % 2 == 0:
        raise RefinerFileError(f"{path}: refiner spec kernel is {data['kernel']}, it must be odd")
    if data.get("output", "logit") not in OUTPUT_FORMS:
        raise RefinerFileError(f"{path}: refiner spec output is {data['output']!r}, not one of {OUTPUT_FORMS}")
    if not 0 <= data.get("deform_pixels", 0.0) <= 8:
        raise RefinerFileError(f"{path}: refiner spec deform_pixels is {data['deform_pixels']}, outside 0..8")
    try:
        return RefinerSpec(**data)
    except (TypeError, ValueError) as exc:
        raise RefinerFileError(f"{path}: refiner spec is not valid: {exc}") from None


def _info(path: str, metadata: dict) -> RefinerInfo:
    if "simgan" not in metadata:
        raise RefinerFileError(f"{path} is a safetensors file but not a refiner exported by this tool")
    try:
        description = parse_metadata_json(metadata["simgan"])
    except ValueError as exc:
        raise RefinerFileError(f"{path}: refiner {exc}") from None
    if not isinstance(description, dict):
        raise RefinerFileError(f"{path}: refiner metadata is not a JSON object")
    if description.get("format") != FORMAT:
        raise RefinerFileError(f"{path} has format {description.get('format')!r}, expected {FORMAT!r}")
    missing = [name for name in ("spec", "preset", "height", "width", "bit_depth") if name not in description]
    if missing:
        raise RefinerFileError(f"{path}: refiner metadata lacks {', '.join(missing)}")
    if not isinstance(description["preset"], str):
        raise RefinerFileError(f"{path}: refiner metadata preset is not a string")
    for name in ("height", "width"):
        value = description[name]
        if not _whole_number(value) or not 1 <= value <= MAX_IMAGE_SIDE:
            raise RefinerFileError(f"{path}: refiner metadata {name} is {value!r}, not a size in 1..{MAX_IMAGE_SIDE}")
    if description["bit_depth"] not in (8, 16) or isinstance(description["bit_depth"], bool):
        raise RefinerFileError(f"{path}: refiner metadata bit_depth is {description['bit_depth']!r}, not 8 or 16")
    quality = description.get("quality")
    if quality is not None and not (isinstance(quality, dict) and isinstance(quality.get("status"), str)):
        raise RefinerFileError(f"{path}: refiner metadata quality is {str(quality)[:80]!r}, not a verdict with a status")
    return RefinerInfo(
        spec=_spec(path, description["spec"]),
        preset=description["preset"],
        height=description["height"],
        width=description["width"],
        bit_depth=description["bit_depth"],
        content_hash=metadata.get("content_hash", ""),
        package_version=metadata.get("package_version", ""),
        quality=description.get("quality"),
    )


def _check_shapes(path: str, spec: RefinerSpec, stored: dict[str, tuple[int, ...]]) -> None:
    """Refuse weights that do not fit `spec` before anything of the spec's size is allocated:
    the network is built on the meta device, which has shapes but no storage."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in Refiner(spec).state_dict().items()}
    if set(stored) != set(expected):
        odd = sorted(set(stored) ^ set(expected))
        raise RefinerFileError(
            f"{path}: weights do not fit the stated architecture: tensor names differ ({', '.join(odd[:4])}"
            + (", ..." if len(odd) > 4 else "") + ")"
        )
    for name in sorted(expected):
        if stored[name] != expected[name]:
            raise RefinerFileError(
                f"{path}: weights do not fit the stated architecture: {name} is {list(stored[name])}, "
                f"the spec needs {list(expected[name])}"
            )


def read_refiner_info(path: str) -> RefinerInfo:
    """Read and check the file's metadata without building the network."""
    with _open(path) as handle:
        return _info(path, handle.metadata() or {})


def load_refiner(path: str, device: str | torch.device = "cpu") -> tuple[Refiner, RefinerInfo]:
    """Build the refiner from its file, in eval mode; refuses damaged or foreign files."""
    with _open(path) as handle:
        info = _info(path, handle.metadata() or {})
        _check_shapes(path, info.spec, {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()})
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    description = _description(info.spec, info.preset, info.height, info.width, info.bit_depth, info.quality)
    if _content_hash(tensors, description) != info.content_hash:
        raise RefinerFileError(f"{path}: content hash mismatch, the file is damaged or was edited")
    refiner = Refiner(info.spec)
    try:
        refiner.load_state_dict(tensors)
    except RuntimeError as exc:
        raise RefinerFileError(f"{path}: weights do not fit the stated architecture: {exc}") from None
    return refiner.to(device).eval(), info


def check_fits(info: RefinerInfo, found: Geometry) -> None:
    """Refuse data the refiner was not trained for.

    The network itself accepts any size, but a refiner trained on one image size and
    bit depth has learned that domain; channels must match exactly.
    """
    expected = info.geometry
    if found.channels != expected.channels:
        why = "channels must match exactly"
    elif (found.height, found.width) != (expected.height, expected.width):
        why = "it has learned images of one size"
    elif found.bit_depth != expected.bit_depth:
        why = "it has learned images of one bit depth"
    else:
        return
    raise RefinerFileError(f"the refiner was trained on {expected} images, the data is {found}: {why}")
