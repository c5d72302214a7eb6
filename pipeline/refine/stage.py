"""The refinement stage: a plain callable class that refines batches of decoded images.

It knows nothing of Ray: Ray Data builds one per actor (so the refiner is loaded once per
actor), and anything else can call it directly. Images go in and come out as stored:
N x H x W (grey) or N x H x W x C, uint8 or uint16; size, channels and bit depth are kept.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.devices import pick_device
from pipeline.manifest import OK
from pipeline.ray_session import node_id
from pipeline.refiner_file import load_refiner

# bf16 is only used when it keeps every output value within one 8-bit step of fp32.
BF16_TOLERANCE = 1.0 / 255.0
# The column naming the Ray node that refined each row (added only inside Ray).
REFINED_ON = "refined_on"


def _scale(dtype: np.dtype) -> float:
    return 65535.0 if dtype == np.uint16 else 255.0


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """N x H x W [x C] integers to an N x C x H x W float32 tensor in [0, 1].

    The batch form of `pipeline.shards.to_float`: one vectorised conversion per batch
    instead of one per image.
    """
    array = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32)
    return tensor.mul_(1.0 / _scale(images.dtype))


def from_tensor(tensor: torch.Tensor, like: np.ndarray) -> np.ndarray:
    """Inverse of `to_tensor`: back to the layout and integer type of `like`.

    Rounds to nearest like `pipeline.shards.from_float`, so a refiner that is the
    identity gives back the input bytes.
    """
    scale = _scale(like.dtype)
    values = tensor.float().mul(scale).round_().clamp_(0, scale).cpu().numpy()
    values = values[:, 0] if like.ndim == 3 else values.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(values).astype(like.dtype)


class RefineStage:
    """Refines batches with the refiner in `refiner_path`, loaded once at construction.

    `batch_size` bounds the images per forward pass; a longer batch is split and the
    last partial chunk is refined like the others, never dropped. `threads` sets torch's
    intra-op threads on CPU (None leaves torch's default).
    """

    def __init__(self, refiner_path: str, device: str | None = None, batch_size: int = 256, threads: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.refiner_path = refiner_path
        self.requested_device = device
        self.batch_size = batch_size
        self.threads = threads
        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.refiner, self.info = load_refiner(refiner_path, self.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.refiner = self.refiner.to(memory_format=torch.channels_last)
        # Decided on the first CUDA batch by comparing bf16 with fp32 on it.
        self.use_bf16: bool | None = None if self.cuda else False
        self.node = node_id()

    def __reduce__(self):
        # Pickled by file path: the receiving process loads the refiner itself.
        return (RefineStage, (self.refiner_path, self.requested_device, self.batch_size, self.threads))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Refine `batch["image"]` where `batch["status"]` is ok; other rows pass through.

        With a "shard" column, each shard's rows are refined apart, in chunks counted
        from the shard's first row: which images share a forward pass then depends on
        the shard alone, not on how shards were grouped into batches or spread over
        workers, and neither do the output bytes. Inside Ray a `REFINED_ON` column
        names the node that refined the rows (provenance, never part of the outputs' bytes).
        """
        images = batch["image"]
        ok = np.asarray(batch["status"]) == OK
        refined = images.copy()
        for start, stop in _runs(batch.get("shard"), len(images)):
            part, wanted = refined[start:stop], ok[start:stop]
            if wanted.all():
                part[...] = self.refine_images(part)
            elif wanted.any():
                part[wanted] = self.refine_images(part[wanted])
        out = {**batch, "image": refined}
        if self.node is not None:
            out[REFINED_ON] = np.full(len(images), self.node, dtype=object)
        return out

    def refine_images(self, images: np.ndarray) -> np.ndarray:
        """Refine N x H x W [x C] uint8/uint16 images; same shape and dtype back."""
        images = np.asarray(images)
        if images.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"images must be uint8 or uint16, got {images.dtype}")
        out = np.empty_like(images)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            if self.cuda:
                out[start : start + len(chunk)] = self._refine_on_gpu(chunk)
            else:
                out[start : start + len(chunk)] = from_tensor(self.forward(to_tensor(chunk)), chunk)
        return out

    @torch.inference_mode()
    def _refine_on_gpu(self, chunk: np.ndarray) -> np.ndarray:
        """Ship the stored integers (a quarter of float32's bytes for 8-bit images) and do
        the conversions on the GPU; the same arithmetic as to_tensor/from_tensor."""
        scale = _scale(chunk.dtype)
        array = chunk[:, None] if chunk.ndim == 3 else chunk.transpose(0, 3, 1, 2)
        # torch has no uint16 arithmetic on every build: 16-bit images travel as int32.
        host = torch.from_numpy(np.ascontiguousarray(array if chunk.dtype == np.uint8 else array.astype(np.int32)))
        x = host.pin_memory().to(self.device, non_blocking=True).to(torch.float32).mul_(1.0 / scale)
        y = self.forward(x).float().mul_(scale).round_().clamp_(0, scale)
        values = y.to(torch.uint8 if chunk.dtype == np.uint8 else torch.int32).cpu().numpy()
        values = values[:, 0] if chunk.ndim == 3 else values.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(values).astype(chunk.dtype)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The refiner on float images already on the stage's device (on a GPU in bf16
        once the first batch showed it within BF16_TOLERANCE of fp32)."""
        if not self.cuda:
            return self.refiner(x)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.use_bf16 is None:
            exact = self.refiner(x)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                fast = self.refiner(x)
            self.use_bf16 = bool((fast.float() - exact).abs().max() <= BF16_TOLERANCE)
            return exact
        if self.use_bf16:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.refiner(x).float()
        return self.refiner(x)


def _runs(shard_names: np.ndarray | None, length: int) -> list[tuple[int, int]]:
    """(start, stop) of each run of rows of one shard; the whole batch when unnamed."""
    if shard_names is None or length == 0:
        return [(0, length)]
    names = np.asarray(shard_names)
    starts = [0, *(np.flatnonzero(names[1:] != names[:-1]) + 1).tolist()]
    return list(zip(starts, [*starts[1:], length]))
