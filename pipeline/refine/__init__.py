"""Dataset refinement: the refine stage, the Ray Data job, and manifest diffs."""

from pipeline.refine.job import refine_dataset

__all__ = ["refine_dataset"]
