"""A Ray cluster of the test's own on loopback: a head with the dashboard (so the Jobs
API works) and more nodes on the same machine, each a `ray start --block` process.

Every node gets free ports and the cluster's own temp dir, so no other Ray on the
machine finds it, and stopping it touches nothing else: `ray stop` cannot be scoped (it
ends every Ray of the user, whatever `--temp-dir` says), so the started processes'
groups are signalled and whatever still holds a file in the temp dir is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from ray.job_submission import JobStatus, JobSubmissionClient

from pipeline import manifest
from pipeline.ray_watchdog import kill_session_processes
from pipeline.refine.write import NODES

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 90


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind((LOOPBACK, 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _node_ports() -> list[str]:
    """Ports every node of one machine needs distinct from the others'."""
    agent, agent_grpc, runtime_env, metrics = free_ports(4)
    return [
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
    ]


class LoopbackCluster:
    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        # Short: Ray's socket paths must stay short.
        self.temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")
        self.nodes: list[tuple[subprocess.Popen, str]] = []
        self.gcs_port = None
        self.dashboard = None
        self.client: JobSubmissionClient | None = None

    def _start(self, name: str, arguments: list[str]) -> None:
        log = os.path.join(self.log_dir, f"ray-{name}.log")
        command = [
            RAY, "start", "--block", f"--node-ip-address={LOOPBACK}", "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}", *_node_ports(), *arguments,
        ]
        # A loopback-only test cluster: no auth token to distribute to the clients.
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.nodes.append((process, log))

    def _wait(self, what: str, ready) -> None:
        deadline = time.time() + START_TIMEOUT_S
        while True:
            try:
                if ready():
                    return
                problem = "not yet"
            except Exception as exc:  # noqa: BLE001 - not up yet
                problem = str(exc)
            dead = [log for process, log in self.nodes if process.poll() is not None]
            if dead or time.time() > deadline:
                logs = "\n".join(open(log, errors="replace").read()[-3000:] for _, log in self.nodes)
                raise RuntimeError(f"{what}: {problem}\n{logs}")
            time.sleep(1)

    def start_head(self, num_cpus: int) -> JobSubmissionClient:
        self.gcs_port, self.dashboard, client_port = free_ports(3)
        self._start("head", [
            "--head", f"--num-cpus={num_cpus}", "--include-dashboard=true", f"--dashboard-host={LOOPBACK}",
            f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard}", f"--ray-client-server-port={client_port}",
        ])
        address = f"http://{LOOPBACK}:{self.dashboard}"

        def connect():
            self.client = JobSubmissionClient(address)
            return True

        self._wait("the head's Jobs API did not come up", connect)
        return self.client

    def add_node(self, num_cpus: int) -> None:
        """Start one more node and wait until the cluster lists every node alive."""
        self._start(f"node{len(self.nodes)}", [f"--address={LOOPBACK}:{self.gcs_port}", f"--num-cpus={num_cpus}"])
        self._wait("the new node did not join", lambda: len(self.node_ids()) == len(self.nodes))

    def node_ids(self) -> list[str]:
        """The alive nodes' ids, the head's first."""
        from ray.util.state import list_nodes

        nodes = list_nodes(address=f"http://{LOOPBACK}:{self.dashboard}", filters=[("state", "=", "ALIVE")])
        return [node.node_id for node in sorted(nodes, key=lambda node: not node.is_head_node)]

    def run_job(self, entrypoint: str, working_dir: str, timeout_s: float = 300) -> str:
        """Submit `entrypoint` through the Jobs API, wait for it; its logs (asserts success)."""
        job = self.client.submit_job(
            entrypoint=entrypoint,
            runtime_env={"working_dir": working_dir, "excludes": [".git", ".venv", "*.egg-info", ".pytest_cache"]},
        )
        deadline = time.time() + timeout_s
        while self.client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            assert time.time() < deadline, self.client.get_job_logs(job)
            time.sleep(1)
        logs = self.client.get_job_logs(job)
        assert self.client.get_job_status(job) == JobStatus.SUCCEEDED, logs
        return logs

    def stop(self) -> None:
        """Stop the nodes this cluster started, the others before the head, and only them."""
        for process, _ in reversed(self.nodes):
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                try:
                    os.killpg(process.pid, sig)
                    process.wait(timeout=wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Actor and task workers run in sessions of their own.
        kill_session_processes(self.temp_dir, pause=0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def stats_nodes(folder: str, field: str) -> dict[str, str]:
    """stats file -> the node that did `field` ("refined", "written") for its shard."""
    found = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(manifest.STATS_SUFFIX):
            with open(os.path.join(folder, name)) as handle:
                found[name] = json.load(handle)[NODES][field]
    return found
