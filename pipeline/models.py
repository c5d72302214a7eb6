"""Refiner and patch discriminator networks. Plain PyTorch: nothing here knows about
training, Ray or files.

Images are float tensors in [0, 1], NCHW. The refiner keeps size and channels; the
discriminator returns a map of 2-class logits (N, 2, h, w), class 1 = refined,
class 0 = real (the paper's convention).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

REFINED, REAL = 1, 0


@dataclass(frozen=True)
class RefinerSpec:
    kernel: int = 3
    features: int = 64
    blocks: int = 4
    channels: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


REFINER_PRESETS = {
    # The paper's networks.
    "eye": RefinerSpec(kernel=3, features=64, blocks=4),
    "hand": RefinerSpec(kernel=7, features=64, blocks=10),
    # CPU-sized networks for the demos.
    "digits": RefinerSpec(kernel=3, features=32, blocks=3),
    "eyes": RefinerSpec(kernel=3, features=32, blocks=4),
}


class ResnetBlock(nn.Module):
    def __init__(self, features: int, kernel: int):
        super().__init__()
        # Replicate padding: with zero padding the refiner can locate the image border
        # and learns to paint lines along it.
        self.conv1 = nn.Conv2d(features, features, kernel, padding=kernel // 2, padding_mode="replicate")
        self.conv2 = nn.Conv2d(features, features, kernel, padding=kernel // 2, padding_mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class Refiner(nn.Module):
    """Fully convolutional ResNet, no striding or pooling: any input size, same output size.

    The last layer predicts a change in logit space: output = sigmoid(logit(x) + delta).
    The output is in [0, 1] like the input (no tanh/[0, 1] mismatch in the L1 term),
    and a refiner whose delta is near zero is near the identity.
    """

    EPS = 1e-3

    def __init__(self, spec: RefinerSpec = RefinerSpec()):
        super().__init__()
        self.spec = spec
        k = spec.kernel
        self.conv_in = nn.Conv2d(spec.channels, spec.features, k, padding=k // 2, padding_mode="replicate")
        self.blocks = nn.Sequential(*[ResnetBlock(spec.features, k) for _ in range(spec.blocks)])
        self.conv_out = nn.Conv2d(spec.features, spec.channels, 1)
        # Start close to the identity; self-regularisation pre-training finishes the job.
        nn.init.normal_(self.conv_out.weight, std=1e-3)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv_in(x))
        delta = self.conv_out(self.blocks(h))
        return torch.sigmoid(torch.logit(x.clamp(self.EPS, 1 - self.EPS)) + delta)


# A discriminator layer: ("conv", out_maps, kernel, stride, padding) or
# ("pool", kernel, stride, padding). The last conv must output 2 maps.
@dataclass(frozen=True)
class DiscriminatorSpec:
    layers: tuple
    channels: int = 1

    def to_dict(self) -> dict:
        return {"layers": [list(layer) for layer in self.layers], "channels": self.channels}


DISCRIMINATOR_PRESETS = {
    "eye": DiscriminatorSpec(
        (("conv", 96, 3, 2, 0), ("conv", 64, 3, 2, 0), ("pool", 3, 1, 0),
         ("conv", 32, 3, 1, 0), ("conv", 32, 1, 1, 0), ("conv", 2, 1, 1, 0))
    ),
    "hand": DiscriminatorSpec(
        (("conv", 96, 7, 4, 0), ("conv", 64, 5, 2, 0), ("pool", 3, 2, 0),
         ("conv", 32, 3, 2, 0), ("conv", 32, 1, 1, 0), ("conv", 2, 1, 1, 0))
    ),
    # 28x28 in, a 7x7 map of patches out.
    "digits": DiscriminatorSpec(
        (("conv", 64, 3, 2, 1), ("conv", 64, 3, 2, 1), ("pool", 3, 1, 1),
         ("conv", 32, 3, 1, 1), ("conv", 32, 1, 1, 0), ("conv", 2, 1, 1, 0))
    ),
    "eyes": DiscriminatorSpec(
        (("conv", 48, 3, 2, 0), ("conv", 32, 3, 2, 0), ("pool", 3, 1, 0),
         ("conv", 32, 3, 1, 0), ("conv", 32, 1, 1, 0), ("conv", 2, 1, 1, 0))
    ),
}


class Discriminator(nn.Module):
    """Patch discriminator: a map of 2-class logits, one per receptive-field patch.

    Every layer but the last is followed by a LeakyReLU (a D without activations is
    linear); the output logits have no activation.
    """

    def __init__(self, spec: DiscriminatorSpec = DISCRIMINATOR_PRESETS["eye"]):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        maps = spec.channels
        for layer in spec.layers:
            if layer[0] == "conv":
                _, out, kernel, stride, padding = layer
                layers += [nn.Conv2d(maps, out, kernel, stride, padding), nn.LeakyReLU(0.2)]
                maps = out
            elif layer[0] == "pool":
                _, kernel, stride, padding = layer
                layers.append(nn.MaxPool2d(kernel, stride, padding))
            else:
                raise ValueError(f"unknown discriminator layer {layer!r}")
        if maps != 2 or not isinstance(layers[-1], nn.LeakyReLU):
            raise ValueError("the last discriminator layer must be a conv with 2 output maps")
        layers.pop()  # no activation on the logits
        self.features = nn.Sequential(*layers[:-1])
        self.head = layers[-1]

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.features(x)
        logits = self.head(features)
        return (logits, features) if return_features else logits


def refiner_preset(name: str, channels: int = 1) -> RefinerSpec:
    if name not in REFINER_PRESETS:
        raise ValueError(f"unknown refiner preset {name!r}; choose from {sorted(REFINER_PRESETS)}")
    return RefinerSpec(**{**REFINER_PRESETS[name].to_dict(), "channels": channels})


def discriminator_preset(name: str, channels: int = 1) -> DiscriminatorSpec:
    if name not in DISCRIMINATOR_PRESETS:
        raise ValueError(f"unknown discriminator preset {name!r}; choose from {sorted(DISCRIMINATOR_PRESETS)}")
    return DiscriminatorSpec(DISCRIMINATOR_PRESETS[name].layers, channels)
