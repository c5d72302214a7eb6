"""Stand-ins for the refine pipeline's stages (the split path's refiner actor and write
task, the fused path's worker) that wait to be killed, once, mid-run.

The first batch a stand-in gets (in any process) writes the process id to a pid file and
then waits; a test kills that process, Ray runs the work again in a fresh one, which finds
the pid file and does the real work. The files live beside the refiner file (refiner) or
beside the output folder (writer), both under the test's own tmp_path.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from pipeline.refine.shard_worker import ShardWorker
from pipeline.refine.stage import RefineStage
from pipeline.refine.write import write_shards

REFINER_PID = "refiner.pid"
WRITER_PID = "writer.pid"
# Every construction of the refiner stand-in appends its process id here.
REFINER_STARTS = "refiner-starts"
# How long a stand-in waits to be killed before it fails the run instead.
WAIT_S = 120


def _stall_once(pid_file: str) -> None:
    """Write this process's id to `pid_file` and wait to be killed, the first time only."""
    try:
        fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return  # the run again after the kill: do the work
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(WAIT_S)
    raise RuntimeError(f"{pid_file}: this process was not killed within {WAIT_S} s")


class _KilledOnce:
    """Mixed into a stage class: each construction appends its process id to
    REFINER_STARTS; the first call in any process waits to be killed."""

    def __init__(self, refiner_path: str, *args, **kwargs):
        super().__init__(refiner_path, *args, **kwargs)
        self.folder = os.path.dirname(refiner_path)
        with open(os.path.join(self.folder, REFINER_STARTS), "a") as handle:
            handle.write(f"{os.getpid()}\n")

    def __call__(self, batch):
        _stall_once(os.path.join(self.folder, REFINER_PID))
        return super().__call__(batch)


class RefinerKilledOnce(_KilledOnce, RefineStage):
    """The split path's refiner actor."""


class WorkerKilledOnce(_KilledOnce, ShardWorker):
    """The fused path's worker (read, refine, write in one actor), killed holding its first group."""


def writer_killed_once(batch, out_dir: str, **kwargs):
    _stall_once(os.path.join(os.path.dirname(os.path.abspath(out_dir)), WRITER_PID))
    return write_shards(batch, out_dir, **kwargs)


class Killer(threading.Thread):
    """Kills (SIGKILL) the process named in each of `pid_files` once it appears."""

    def __init__(self, pid_files: list[str]):
        super().__init__(daemon=True)
        self.pid_files = pid_files
        self.killed: dict[str, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and len(self.killed) < len(self.pid_files):
            for path in self.pid_files:
                if path in self.killed or not os.path.exists(path):
                    continue
                text = open(path).read()
                if text:  # written in one call, but it may not be flushed yet
                    self.killed[path] = int(text)
                    os.kill(int(text), signal.SIGKILL)
            time.sleep(0.1)

    def __enter__(self) -> "Killer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()
