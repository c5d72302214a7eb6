"""Stabilisers from Salimans et al., "Improved Techniques for Training GANs" (2016).

Each is a switch in TrainConfig, off by default:
- feature matching: `feature_matching_loss` replaces the refiner's adversarial term;
- minibatch discrimination and virtual batch norm: layers of the Discriminator
  (pipeline.models), switched by its spec; the VBN reference batch is chosen here;
- historical averaging: `HistoricalAverage`, a penalty added to each player's loss;
- one-sided label smoothing: the `smoothing` argument of losses.discriminator_loss,
  applied to the real target only.
"""

from __future__ import annotations

import torch
from torch import nn


def feature_matching_loss(refined_features: torch.Tensor, real_features: torch.Tensor) -> torch.Tensor:
    """||mean f(refined) - mean f(real)||^2 over an intermediate D feature map."""
    return (refined_features.mean(dim=0) - real_features.mean(dim=0)).pow(2).sum()


class HistoricalAverage:
    """Running mean of a model's past parameters; `penalty` = sum ||theta - mean||^2.

    The mean starts at the initial parameters and is updated after every optimiser
    step of that model. It is training state, kept here and checkpointed, not on the
    model.
    """

    def __init__(self, model: nn.Module):
        self.means = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.count = 1

    def penalty(self, model: nn.Module) -> torch.Tensor:
        terms = [(p - self.means[name]).pow(2).sum() for name, p in model.named_parameters()]
        return torch.stack(terms).sum()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.count += 1
        for name, p in model.named_parameters():
            self.means[name] += (p.detach() - self.means[name]) / self.count

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"mean.{k}": v for k, v in self.means.items()}, "count": torch.tensor(self.count)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.means:
            self.means[name].copy_(state[f"mean.{name}"])
        self.count = int(state["count"])


def reference_batch(real: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """The virtual-batch-norm reference: `size` real images chosen once, from the seed."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(real), generator=generator)[:size]
    return real[index.to(real.device)].clone()
