"""A real Ray head on loopback; a refine job submitted through the Ray Jobs API."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from pipeline import manifest, shards
from pipeline.ray_watchdog import kill_session_processes
from pipeline.refine.diff import diff_manifests
from helpers.refine import make_refiner, write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _stop_cluster(head, temp_dir):
    """Stop the cluster this test started, and only it.

    `ray stop --force` would also kill every other Ray instance of the machine; instead
    the head's process group is signalled, then any process still holding files in the
    cluster's own temp dir (actor workers run in sessions of their own) is killed.
    """
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
            head.wait(timeout=wait)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    kill_session_processes(temp_dir, pause=0.5)


@pytest.fixture
def ray_head(tmp_path):
    """A `ray start --head --block` of our own: free ports, and a temp dir of its own so
    no other Ray on the machine finds it or is touched when it stops."""
    temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")  # short: Ray's socket paths must stay short
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics = _free_ports(7)
    command = [
        RAY, "start", "--head", "--block", "--num-cpus=2", "--dashboard-host=127.0.0.1",
        "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}", "--include-dashboard=true", "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    log = open(tmp_path / "ray-head.log", "wb")
    # A loopback-only test cluster: no auth token to distribute to the client.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                client_ = JobSubmissionClient(address)
                break
            except Exception as exc:  # noqa: BLE001 - the dashboard is not up yet
                if head.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{exc}\n" + (tmp_path / "ray-head.log").read_text()[-3000:])
                time.sleep(1)
        yield client_
    finally:
        _stop_cluster(head, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_refine_job_submitted_to_a_cluster(tmp_path, ray_head):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    write_dataset(str(in_dir), shard_count=2, per_shard=10)
    refiner = make_refiner(str(tmp_path / "tiny.safetensors"))
    job = ray_head.submit_job(
        entrypoint=f"{sys.executable} jobs/refine.py --in {in_dir} --out {out_dir} --refiner {refiner} --batch-size 8",
        runtime_env={"working_dir": ROOT, "excludes": [".git", ".venv", "*.egg-info", ".pytest_cache"]},
    )
    deadline = time.time() + 240
    while ray_head.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, ray_head.get_job_logs(job)
        time.sleep(1)
    logs = ray_head.get_job_logs(job)
    assert ray_head.get_job_status(job) == JobStatus.SUCCEEDED, logs
    assert "refined 20 of 20 samples" in logs

    assert [os.path.basename(p) for p in shards.list_shards(str(out_dir))] == ["data-000000.tar", "data-000001.tar"]
    rows = manifest.read_manifest(str(out_dir))
    assert len(rows) == 20 and (rows["status"] == "ok").all()
    assert diff_manifests(str(in_dir), str(out_dir), check_hashes=True).ok
