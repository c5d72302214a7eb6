"""How the pipeline's lines reach people: one convention for every stage.

Every package logs through its own logger under "pipeline" (`logger("pipeline.refine")`),
at INFO, one message per line (or one block, such as a summary). Where the lines go is
decided by handlers, not by the code that writes them:

- the terminal: standard output, looked up at each line, so click's and pytest's
  captures see it; on an interactive terminal progress records drive a bar instead;
- `copied_to(write)`: the demo's log file, a test's list;
- a Ray Train worker's lines are sent to the driver and shown there (pipeline.ray_lines).

Why logging and not a `report(line)` callable passed down: training's lines are made in
Ray Train worker processes, which a callable of the driver cannot follow, while a named
logger exists in every process and its handlers can forward what it gets. Nothing has
to thread an output parameter through every layer either.

Progress is a record with a `Tick` (`extra=tick(...)`): on a terminal that is not
interactive (a CI log, nohup, a Ray job log), and in every copy, only ticks marked as
a line are printed, each once; on an interactive one every tick moves a tqdm bar and
the other lines are printed above it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass
from typing import Callable, TextIO

ROOT = "pipeline"


@dataclass(frozen=True)
class Tick:
    done: int
    total: int
    unit: str  # what is counted: "step", "shard"
    line: bool  # also a plain line (every log_every steps, every shard)
    status: str = ""  # short text beside the bar


def tick(done: int, total: int, unit: str, line: bool, status: str = "") -> dict:
    """`extra=` for a progress record."""
    return {"tick": Tick(done, total, unit, line, status)}


def is_line(record: logging.LogRecord) -> bool:
    """Whether a record is printed as a plain line (everything but bar-only ticks)."""
    found = getattr(record, "tick", None)
    return found is None or found.line


def wants_bar(stream: TextIO) -> bool:
    """A bar only on an interactive terminal: in a file or a pipe its redraws are noise."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Terminal(logging.Handler):
    """Lines to the current standard output; on an interactive one, ticks move a bar."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.bar = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout
            found = getattr(record, "tick", None)
            if wants_bar(stream):
                if found is not None:
                    self._advance(stream, found)
                    return
                if self.bar is not None:
                    self.bar.write(record.getMessage(), file=stream)
                    return
            elif not is_line(record):
                return
            stream.write(record.getMessage() + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)

    def _advance(self, stream: TextIO, found: Tick) -> None:
        from tqdm import tqdm

        bar = self.bar
        if bar is None or bar.total != found.total or bar.unit != found.unit or found.done < bar.n:
            self.close_bar()
            # Starts at the first tick's count: on a resumed run the rate is this run's.
            bar = self.bar = tqdm(total=found.total, initial=found.done, unit=found.unit, file=stream,
                                  dynamic_ncols=True)
        bar.set_postfix_str(found.status, refresh=False)
        bar.update(found.done - bar.n)
        if found.done >= found.total:
            self.close_bar()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Copy(logging.Handler):
    def __init__(self, write: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        if is_line(record):
            try:
                self.write(record.getMessage())
            except Exception:
                self.handleError(record)


_terminal = Terminal()
_installed = False


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    root = logging.getLogger(ROOT)
    root.setLevel(logging.INFO)
    root.addHandler(_terminal)
    # A handler on the root logger (Ray configures some in its processes) would print
    # every line a second time.
    root.propagate = False


def logger(name: str) -> logging.Logger:
    """The logger of one package ("pipeline.training"), its lines shown on the terminal."""
    if name != ROOT and not name.startswith(ROOT + "."):
        raise ValueError(f"{name!r} is not under {ROOT!r}")
    _install()
    return logging.getLogger(name)


@contextlib.contextmanager
def _added(handler: logging.Handler):
    _install()
    root = logging.getLogger(ROOT)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def copied_to(write: Callable[[str], None]):
    """Inside the block every line is also given to `write` (one call per message)."""
    return _added(_Copy(write))


@contextlib.contextmanager
def instead_of_terminal(handler: logging.Handler):
    """Inside the block lines go to `handler` and not to this process's terminal."""
    _install()
    root = logging.getLogger(ROOT)
    root.removeHandler(_terminal)
    try:
        with _added(handler):
            yield
    finally:
        root.addHandler(_terminal)


@contextlib.contextmanager
def quiet(name: str = ROOT):
    """No INFO lines from `name` inside the block (benchmarks time the work, not the printing)."""
    target = logger(name)
    saved = target.level
    target.setLevel(logging.WARNING)
    try:
        yield
    finally:
        target.setLevel(saved)
