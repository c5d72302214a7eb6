"""One output convention: plain lines when standard output is not a terminal, a bar when it
is, and every line copied where a caller asks (the demo's log)."""

import io
import re
import sys

import pytest

from pipeline import console
from pipeline.refine.progress import Progress
from pipeline.training.outputs import RunOutputs

# What a redrawn bar writes: carriage returns and cursor or colour escapes.
CONTROL = re.compile(r"[\r\x1b]")


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Closed(io.StringIO):
    def isatty(self):
        raise ValueError("I/O operation on closed file")


def test_the_bar_decision_is_taken_from_the_stream():
    assert console.wants_bar(Terminal())
    assert not console.wants_bar(io.StringIO())
    assert not console.wants_bar(Closed())
    assert not console.wants_bar(object())  # no isatty at all


def _train_six_steps(run_dir):
    outputs = RunOutputs(str(run_dir), total_steps=6, start_step=0, log_every=2)
    for step in range(6):
        outputs.record({"step": step, "phase": "adversarial", "loss_r": 0.5}, images=16)


def test_not_a_terminal_plain_lines_each_once_and_no_bar(tmp_path, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    copied = []
    with console.copied_to(copied.append):
        _train_six_steps(tmp_path)
        progress = Progress(total_shards=3, skipped_shards=1)
        for name in ("b.tar", "c.tar"):
            progress.update({"shard": name, "samples": 10, "ok": 10})
    lines = stream.getvalue().splitlines()
    assert not CONTROL.search(stream.getvalue()), stream.getvalue()
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["2/6", "4/6", "6/6"]
    assert all("img/s" in line and "ETA" in line for line in steps)
    shards = [line for line in lines if line.startswith("refine: shard ")]
    assert [line.split()[2] for line in shards] == ["2/3", "3/3"]
    assert all("images/s" in line and "ETA" in line for line in shards)
    assert len(lines) == len(set(lines)) == 5
    assert copied == lines  # the copy (the demo's log) gets the same lines, once


def test_on_a_terminal_steps_move_a_bar_and_other_lines_stay_plain(tmp_path, monkeypatch):
    pytest.importorskip("tqdm")
    stream = Terminal()
    monkeypatch.setattr(sys, "stdout", stream)
    copied = []
    with console.copied_to(copied.append):
        _train_six_steps(tmp_path)
        console.logger("pipeline.training").info("selected the refiner of step 6")
    shown = stream.getvalue()
    assert "\r" in shown and "6/6" in shown  # tqdm redraws its line
    assert not any(line.startswith("step ") for line in shown.splitlines())
    assert "selected the refiner of step 6\n" in shown
    # Logs are never a terminal: the copy has the plain lines.
    assert [line.split()[1] for line in copied if line.startswith("step ")] == ["2/6", "4/6", "6/6"]


def test_quiet_silences_a_package(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    with console.quiet("pipeline.refine"):
        console.logger("pipeline.refine").info("hidden")
        console.logger("pipeline.data").info("shown")
    console.logger("pipeline.refine").info("shown again")
    assert stream.getvalue().splitlines() == ["shown", "shown again"]
