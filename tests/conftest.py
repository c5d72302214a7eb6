import os

import pytest

# Keep Ray quiet and small in tests: no dashboard, no usage report.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
