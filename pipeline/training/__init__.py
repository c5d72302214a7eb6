"""SimGAN training: config, losses, history buffer, stabilisers, the train step, the
local loop and the Ray Train job. `train` is the entry point."""

from pipeline.training.job import train

__all__ = ["train"]
