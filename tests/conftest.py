import os

import pytest

# Keep Ray quiet and small in tests: no dashboard, no usage report.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One local 2-CPU Ray for every test that asks for it; the jobs under test find it
    initialised and reuse it rather than start their own. Tests that check how a job
    starts or stops its own Ray run it in a subprocess (or a cluster of their own)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """A local S3 server with one bucket, for the whole test run: yields (boto3 client,
    bucket name). The AWS variables are set for the run, as a user would set them;
    a Ray started earlier does not have them, which is how the jobs are checked to pass
    them on to their tasks."""
    import boto3

    from helpers.s3 import environment, moto_server

    with moto_server() as endpoint, pytest.MonkeyPatch.context() as patch:
        for name, value in environment(endpoint).items():
            patch.setenv(name, value)
        client = boto3.client("s3")
        client.create_bucket(Bucket="simgan-test")
        yield client, "simgan-test"


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


def pytest_collection_modifyitems(config, items):
    """Deselect (not skip) tests marked `gpu` where CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    gpu_only = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_only:
        config.hook.pytest_deselected(items=gpu_only)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
