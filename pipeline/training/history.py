"""The history of refined images that D also trains on (section 3.2 of the paper).

Capacity B. While the buffer is filling, D's minibatch is all current refined images
and each D step appends b/2 of them; once full, D's minibatch is b/2 current + b/2
drawn from the buffer without replacement, and after each D step b/2 randomly chosen
slots are overwritten with current refined images. Randomness comes from a generator
the caller passes, so a resumed run makes the same choices.
"""

from __future__ import annotations

import torch


class HistoryBuffer:
    def __init__(self, capacity: int, image_shape: tuple[int, ...], device="cpu"):
        self.capacity = capacity
        self.images = torch.zeros((capacity, *image_shape), device=device)
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count >= self.capacity

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n distinct stored images; only a full buffer is sampled."""
        if not self.full:
            raise RuntimeError(f"the history holds {self.count} of {self.capacity} images; it is sampled only when full")
        if n > self.capacity:
            raise ValueError(f"cannot draw {n} distinct images from a history of {self.capacity}")
        index = torch.randperm(self.capacity, generator=generator)[:n].to(self.images.device)
        return self.images[index]

    def add(self, refined: torch.Tensor, generator: torch.Generator) -> None:
        """Append while filling (any overflow replaces random slots); then replace random slots."""
        refined = refined.detach().to(self.images)
        free = min(self.capacity - self.count, len(refined))
        if free:
            self.images[self.count : self.count + free] = refined[:free]
            self.count += free
            refined = refined[free:]
        if len(refined):
            index = torch.randperm(self.capacity, generator=generator)[: len(refined)].to(self.images.device)
            self.images[index] = refined

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"images": self.images, "count": torch.tensor(self.count, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["images"].shape) != tuple(self.images.shape):
            raise ValueError(
                f"history of shape {tuple(state['images'].shape)} does not fit {tuple(self.images.shape)}"
            )
        self.images.copy_(state["images"])
        self.count = int(state["count"])
