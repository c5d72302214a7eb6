"""Parallel shard generation for the simulators, with progress and images/s.

Work is split into shards of `per_shard` samples. Shard `i` draws everything from a
random generator seeded by (seed, i), and keys are numbered globally, so the output is
byte-identical for a seed whatever the number of worker processes. Workers are
spawn-safe top-level functions of this module; each writes its own shard (tar, input
manifest, stats file) through `pipeline.data.output.write_labelled_shard`.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np

from pipeline import console, manifest, shards
from pipeline.data import digits, eyes
from pipeline.data.output import prepare_output, write_labelled_shard
from pipeline.errors import UserError

KINDS = ("digits", "eyes")
# Large enough that the per-task overhead is negligible, small enough for steady progress.
DEFAULT_PER_SHARD = 1000
log = console.logger("pipeline.data")


def available_cpus() -> int:
    """CPUs this process may run on (a container's limit, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def shard_rng(seed: int, shard_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, shard_index])


def sample_key(kind: str, seed: int, index: int) -> str:
    return f"{kind}-s{seed}-{index:08d}"


def _kind_setup(kind: str, rendering: str | None) -> tuple:
    """What a worker needs to render `kind`, computed once in the parent."""
    return (digits.usable_fonts(), rendering) if kind == "digits" else ()


def render_shard(task: tuple) -> tuple[int, int]:
    """Render and write one shard; returns (shard index, samples written)."""
    kind, seed, shard_index, start, count, out_dir, setup = task
    rng = shard_rng(seed, shard_index)
    samples = []
    for index in range(start, start + count):
        image, labels = digits.sample(rng, *setup) if kind == "digits" else eyes.sample(rng)
        samples.append((sample_key(kind, seed, index), image, labels))
    stats = write_labelled_shard(out_dir, shards.shard_name(kind, shard_index), samples)
    return shard_index, stats["samples"]


def _check(kind: str, count: int, seed: int, workers: int | None, per_shard: int, rendering: str | None) -> None:
    if kind not in KINDS:
        raise UserError(f"unknown simulator {kind!r}; choose one of {', '.join(KINDS)}")
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    if per_shard < 1:
        raise UserError(f"--per-shard must be at least 1, got {per_shard}")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if rendering is not None and kind != "digits":
        raise UserError(f"--rendering is a digits option; the {kind} simulator has one rendering")
    if rendering is not None and rendering not in digits.RENDERINGS:
        raise UserError(f"unknown --rendering {rendering!r}; choose one of {', '.join(digits.RENDERINGS)}")


def _render_all(tasks: list[tuple], workers: int, count: int) -> None:
    """Write every shard, in this process or a pool, with a progress line per shard."""
    kind = tasks[0][0]
    began = time.perf_counter()
    done = 0

    def report(finished_shards: int) -> None:
        elapsed = time.perf_counter() - began
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (count - done) / rate if rate > 0 else float("nan")
        log.info(f"simulate {kind}: shard {finished_shards}/{len(tasks)}, {done}/{count} images, "
                 f"{rate:.0f} images/s, eta {eta:.0f} s")

    if workers == 1:
        for finished, task in enumerate(tasks, 1):
            done += render_shard(task)[1]
            report(finished)
        return
    # spawn: fork is unsafe once threads exist (Ray, torch, BLAS) in the parent.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for finished, (_, written) in enumerate(pool.imap_unordered(render_shard, tasks), 1):
            done += written
            report(finished)


def simulate(
    kind: str,
    count: int,
    out_dir: str,
    seed: int = 0,
    workers: int | None = None,
    per_shard: int = DEFAULT_PER_SHARD,
    overwrite: bool = False,
    rendering: str | None = None,
) -> dict:
    """Write `count` simulated samples of `kind` as shards in `out_dir`; returns the summary.

    `rendering` (digits only): one of `digits.RENDERINGS`, default `digits.DEFAULT_RENDERING`.

    The summary is the folder's `summary.json` plus the run's timing (`seconds`,
    `images_per_second`) and `workers`.
    """
    _check(kind, count, seed, workers, per_shard, rendering)
    if kind == "digits":
        rendering = rendering or digits.DEFAULT_RENDERING
    prepare_output(out_dir, kind, overwrite)
    setup = _kind_setup(kind, rendering)
    tasks = [
        (kind, seed, index, start, min(per_shard, count - start), out_dir, setup)
        for index, start in enumerate(range(0, count, per_shard))
    ]
    workers = min(workers or available_cpus(), len(tasks))
    began = time.perf_counter()
    _render_all(tasks, workers, count)
    seconds = time.perf_counter() - began
    summary = manifest.write_dataset_manifest(
        out_dir, {"kind": kind, "seed": seed, "count": count, "per_shard": per_shard,
                  **({"rendering": rendering} if rendering else {})}
    )
    summary.update(
        seconds=round(seconds, 3), images_per_second=round(count / seconds, 1), workers=workers
    )
    log.info(f"simulate {kind}: wrote {count} images in {len(tasks)} shards to {out_dir} "
             f"in {seconds:.1f} s ({count / seconds:.0f} images/s, {workers} workers)")
    return summary
