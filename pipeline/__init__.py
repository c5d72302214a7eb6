"""SimGAN dataset refinement: simulators, shard I/O, training, refinement, evaluation."""

from pipeline.version import __version__

__all__ = ["__version__"]
