"""Ends an embedded Ray whose driver died: `python -m pipeline.ray_watchdog SESSION_DIR`.

The driver holds the write end of this process's stdin. A clean shutdown writes
`CLEAN_END` to it after `ray.shutdown()` and closes it: nothing to do. When the driver
is gone instead (SIGKILL, the OOM killer), the kernel closes it with nothing said:
every process of this user that runs from, or holds a file in, the Ray session folder
is killed. Ray alone lets its agents and actors (a Ray Train worker keeps training) run
on for a minute or more.
"""

from __future__ import annotations

import os
import signal
import sys
import time


CLEAN_END = b"ray shut down\n"


def children() -> dict[int, list[int]]:
    """Every process's children, by parent pid, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry))
    return tree


def session_processes(session_dir: str) -> list[int]:
    """This user's processes whose command line or open files name `session_dir`, and
    their descendants: a process Ray has only just started (a dashboard agent, a
    worker) may not hold a file there yet, and once its parent is killed it is no
    longer anyone's child to be found by."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                text = handle.read().decode(errors="replace")
            fds = f"/proc/{entry}/fd"
            text += " ".join(os.readlink(os.path.join(fds, fd)) for fd in os.listdir(fds))
        except OSError:
            continue
        if session_dir in text:
            found.append(int(entry))
    return found + [pid for pid in descendants(found) if pid not in found and pid != os.getpid()]


def descendants(roots: list[int]) -> list[int]:
    """Every process below `roots` (not the roots themselves), from one look at /proc."""
    tree, todo, found = children(), list(roots), []
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def kill_session_processes(session_dir: str, rounds: int = 10, pause: float = 0.3) -> None:
    """SIGKILL every process of `session_processes`, in several rounds: a raylet being
    killed may still start a worker."""
    for _ in range(rounds):
        pids = session_processes(session_dir)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(pause)


def main(session_dir: str) -> None:
    said = sys.stdin.buffer.read()  # returns at EOF: the driver closed it or died
    # Told, not guessed from the driver's pid: the kernel closes a dying process's
    # files a moment before it becomes a zombie, and under load this process could look
    # in that moment, see the driver "alive" and leave its Ray running.
    if said == CLEAN_END or not session_dir:
        return
    kill_session_processes(session_dir)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    main(sys.argv[1])
