"""The embedded Ray of a job: it listens on loopback only, and nothing it started
outlives a driver killed with SIGKILL by more than 30 s; the watchdog that sees to it."""

import ipaddress
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers.processes import alive
from helpers.refine import make_refiner, write_dataset
from pipeline.ray_watchdog import CLEAN_END, descendants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
            started = descendants([driver.pid])
            if any("MapWorker" in _cmdline(pid) for pid in started):
                break
            time.sleep(0.5)
        assert driver.poll() is None and started, "the job ended before its Ray was up"
        started = descendants([driver.pid])

        listening = _listening([driver.pid] + started)
        assert listening, "no Ray server found"
        assert all(_loopback(ip) for _, ip in listening), listening

        os.kill(driver.pid, signal.SIGKILL)  # the driver only, not its process group
        driver.wait()
        deadline = time.time() + 30
        left = started
        while time.time() < deadline:
            left = [pid for pid in started if alive(pid)]
            if not left:
                break
            time.sleep(0.5)
        assert not left, [(pid, _cmdline(pid)[:80]) for pid in left]
    finally:
        # Whatever this test started and is still running (pids recorded while they
        # were the driver's descendants).
        for pid in started:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if driver.poll() is None:
            driver.kill()


def _holding_a_file_in(folder):
    """A process of this user that holds a file in `folder` open, the way an orphaned Ray
    agent holds its log (its command line does not name the folder)."""
    holder = subprocess.Popen([sys.executable, "-c", "import os, time; f = open(os.environ['HOLD'], 'a'); time.sleep(120)"],
                              env={**os.environ, "HOLD": str(folder / "agent.log")})
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if any(str(folder) in os.readlink(f"/proc/{holder.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{holder.pid}/fd")):
                return holder
        except OSError:
            pass
        time.sleep(0.1)
    holder.kill()
    raise AssertionError("the stand-in agent never opened its file")


@pytest.mark.parametrize("said, kills", [(CLEAN_END, False), (b"", True), (b"ray shut", True)])
def test_the_watchdog_ends_the_session_unless_the_driver_said_it_shut_ray_down(tmp_path, said, kills):
    # The driver here (this test) stays alive either way: what decides is whether it said
    # so before its end of the pipe closed, as a driver's pid may still look alive when
    # the kernel has closed its files on the way out.
    session = tmp_path / "session_2026"
    session.mkdir()
    holder = _holding_a_file_in(session)
    try:
        watchdog = subprocess.Popen([sys.executable, "-m", "pipeline.ray_watchdog", str(session)],
                                    stdin=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
        watchdog.stdin.write(said)
        watchdog.stdin.close()
        assert watchdog.wait(timeout=60) == 0
        time.sleep(0.2)
        assert alive(holder.pid) is not kills
    finally:
        holder.kill()
        holder.wait()
