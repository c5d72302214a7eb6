"""The embedded Ray of a job: it listens on loopback only, and nothing it started
outlives a driver killed with SIGKILL by more than 30 s."""

import ipaddress
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers.refine import make_refiner, write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _descendants(root):
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _listening(pids):
    """(pid, address) of every listening TCP socket the processes hold (from /proc)."""
    sockets = {}
    for table, size in (("tcp", 4), ("tcp6", 16)):
        with open(f"/proc/net/{table}") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":  # LISTEN
                    continue
                raw = bytes.fromhex(fields[1].split(":")[0])
                # /proc prints each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
                sockets[fields[9]] = ipaddress.ip_address(raw)
    found = []
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        found += [(pid, sockets[link[8:-1]]) for link in links if link.startswith("socket:[") and link[8:-1] in sockets]
    return found


def _loopback(ip):
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


@pytest.mark.slow
def test_embedded_ray_listens_on_loopback_and_dies_with_its_driver(tmp_path):
    write_dataset(str(tmp_path / "in"), shard_count=8, per_shard=400)
    refiner = make_refiner(str(tmp_path / "tiny.safetensors"))
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("RAY_ADDRESS", None)
    started = []
    driver = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "refine-dataset"), "--in", str(tmp_path / "in"),
         "--out", str(tmp_path / "out"), "--refiner", refiner, "--batch-size", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env,
    )
    try:
        # Wait until the pipeline runs: a refiner actor is up.
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            started = _descendants(driver.pid)
            if any("MapWorker" in _cmdline(pid) for pid in started):
                break
            time.sleep(0.5)
        assert driver.poll() is None and started, "the job ended before its Ray was up"
        started = _descendants(driver.pid)

        listening = _listening([driver.pid] + started)
        assert listening, "no Ray server found"
        assert all(_loopback(ip) for _, ip in listening), listening

        os.kill(driver.pid, signal.SIGKILL)  # the driver only, not its process group
        driver.wait()
        deadline = time.time() + 30
        alive = started
        while time.time() < deadline:
            alive = [pid for pid in started if _alive(pid)]
            if not alive:
                break
            time.sleep(0.5)
        assert not alive, [(pid, _cmdline(pid)[:80]) for pid in alive]
    finally:
        # Whatever this test started and is still running (pids recorded while they
        # were the driver's descendants).
        for pid in started:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if driver.poll() is None:
            driver.kill()
