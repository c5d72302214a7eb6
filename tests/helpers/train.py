"""Small data and configs for the training tests."""

import numpy as np
import torch

from pipeline.data.output import write_labelled_shard
from pipeline.training.config import TrainConfig, validate

TINY = dict(
    model="digits",
    batch_size=8,
    history_size=16,
    pretrain_refiner_steps=2,
    pretrain_discriminator_steps=2,
    iterations=4,
    log_every=100,
    sample_every=100,
    checkpoint_every=100,
    # A few steps on a few images cannot make them measurably more realistic; these
    # tests are about the training mechanics, selection's own tests about its rule.
    realism_margin=-1.0,
    # The real pool below is noisy: with grain fitted to it, a task network trained for
    # a few steps on 24 images misreads the grainy bars. Grain has tests of its own.
    grain=False,
)


def tiny_config(**changes) -> TrainConfig:
    return validate(TrainConfig(**{**TINY, **changes}))


def pools(n=32, size=12, seed=0):
    """(synthetic, real) image tensors in [0, 1]: clean bars vs noisy, dimmer bars."""
    g = torch.Generator().manual_seed(seed)
    synthetic = torch.zeros(n, 1, size, size)
    for i in range(n):
        row = int(torch.randint(2, size - 3, (1,), generator=g))
        synthetic[i, 0, row : row + 2, 2:-2] = 1.0
    real = (0.6 * synthetic.roll(1, dims=0) + 0.3 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)
    return synthetic, real


def write_folders(root, n=24, size=12):
    """Synthetic (labelled) and real (unlabelled) shard folders under `root`."""
    synthetic, real = pools(n, size)
    to_u8 = lambda t: (t[0].numpy() * 255).round().astype(np.uint8)  # noqa: E731
    write_labelled_shard(str(root / "syn"), "syn-000000.tar",
                         [(f"s{i:04d}", to_u8(synthetic[i]), {"class": i % 10}) for i in range(n)])
    write_labelled_shard(str(root / "real"), "real-000000.tar", [(f"r{i:04d}", to_u8(real[i]), {}) for i in range(n)])
    return str(root / "syn"), str(root / "real")
