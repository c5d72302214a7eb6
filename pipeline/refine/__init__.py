"""Dataset refinement: the refine stage, the Ray Data job, and manifest diffs."""

from pipeline.refine.job import FailedSamples, refine_dataset

__all__ = ["FailedSamples", "refine_dataset"]
