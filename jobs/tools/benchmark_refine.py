"""Benchmark: refine N simulator images end to end, and the bare forward pass.

    python jobs/tools/benchmark_refine.py --images 20000
    python jobs/tools/benchmark_refine.py --images 100000
    python jobs/tools/benchmark_refine.py --images-of eyes --images 1200000 --batch-size 8192   # a GPU node

Prints, for the same refiner, batch size and machine:
- bare forward: images/s of the refiner alone on float tensors already in memory (on
  the GPU when refinement runs there, with the stage's own bf16 choice; on CPU with
  torch's default threads, i.e. every core), over `--forward-images` images;
- end to end: images/s of `refine_dataset` (read + decode, refine in the actor pool,
  encode, write tars and manifests), timed from the call to its return with Ray already
  started (a cluster is normally up before a job; Ray's own start-up is printed apart);
- their ratio, and the same comparison in CPU time per image (summed over every
  process), which other load on a shared machine disturbs far less than wall time;
- peak memory: the largest sum, over the driver and every process it started (Ray's
  GCS, raylet and workers), of RSS and of PSS, sampled from /proc every 0.5 s (PSS
  every 2 s). RSS counts
  shared pages (torch's libraries, the object store) once per process; PSS splits them
  between the processes, so its sum is the better estimate of real use;
- on a GPU, its mean and peak utilisation during the run (nvidia-smi every 0.5 s).

Images come from a simulator (`--images-of`: 28x28 digits with the `digits` refiner, or
35x55 eyes with the paper's `eye` refiner): a pool of distinct rendered images cycled
with unique keys, written as shards through `pipeline.data.output.write_labelled_shard`.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.data import digits, eyes  # noqa: E402
from pipeline.data.output import write_labelled_shard  # noqa: E402
from pipeline.models import Refiner, refiner_preset  # noqa: E402
from pipeline.ray_watchdog import descendants  # noqa: E402
from pipeline.refiner_file import save_refiner  # noqa: E402
from pipeline.refine.stage import RefineStage, to_tensor  # noqa: E402


def _tree(root: int) -> list[int]:
    return [root] + descendants([root])


def _kib(pid: int, path: str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/{path}") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


PSS_EVERY = 4


class Sampler:
    """Calls `sample(round)` every `interval` seconds on a thread, from entering the
    `with` block to leaving it; `sample` returns False to stop early."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        rounds = 0
        while not self._stop.is_set() and self.sample(rounds) is not False:
            rounds += 1
            self._stop.wait(self.interval)

    def sample(self, rounds: int) -> bool | None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class PeakMemory(Sampler):
    """Peak of the summed RSS and PSS of this process and its descendants, and the CPU
    time they used while it ran (last value seen per process, minus the value at start)."""

    def __init__(self, interval: float = 0.5):
        super().__init__(interval)
        self.peak_rss = self.peak_pss = 0
        self._cpu_start = {pid: _cpu_seconds(pid) for pid in _tree(os.getpid())}
        self._cpu_last: dict[int, float] = {}

    def sample(self, rounds: int) -> None:
        pids = _tree(os.getpid())
        self.peak_rss = max(self.peak_rss, sum(_kib(p, "status", "VmRSS:") for p in pids))
        # smaps_rollup makes the kernel walk every mapping of a process: about 30 ms a
        # round over a run's ten processes, 6 % of a core at every 0.5 s, taken from
        # the refiners it measures. PSS moves with RSS, so it is read every fourth round.
        if rounds % PSS_EVERY == 0:
            self.peak_pss = max(self.peak_pss, sum(_kib(p, "smaps_rollup", "Pss:") for p in pids))
        self._cpu_last.update((p, _cpu_seconds(p)) for p in pids)

    def cpu_by_process(self, top: int = 6) -> list[tuple[str, float]]:
        used = []
        for pid, last in self._cpu_last.items():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    name = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()[:40]
            except OSError:
                name = f"pid {pid} (ended)"
            used.append((name, last - self._cpu_start.get(pid, 0.0)))
        return sorted(used, key=lambda item: -item[1])[:top]

    @property
    def cpu_seconds(self) -> float:
        return sum(last - self._cpu_start.get(pid, 0.0) for pid, last in self._cpu_last.items())


class GpuUse(Sampler):
    """Mean and peak GPU utilisation (%) from nvidia-smi while it runs; none without one."""

    def __init__(self, interval: float = 0.5):
        super().__init__(interval)
        self.samples: list[float] = []

    def sample(self, rounds: int) -> bool:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout.split()
            # Every GPU of the node, averaged: the run uses all of them.
            self.samples.append(sum(float(value) for value in out) / len(out))
            return True
        except (OSError, subprocess.SubprocessError, ValueError, ZeroDivisionError):
            return False  # no GPU (or no nvidia-smi) here

    def figures(self) -> tuple[float, float] | None:
        return (sum(self.samples) / len(self.samples), max(self.samples)) if self.samples else None


# Each simulator's images and the refiner preset measured on them by default.
SIMULATORS = {
    "digits": (lambda rng: digits.sample(rng, digits.usable_fonts(), "antialiased"), "digits"),
    "eyes": (eyes.sample, "eye"),
}


def render_pool(kind: str, count: int, seed: int) -> list[tuple[np.ndarray, dict]]:
    rng = np.random.default_rng(seed)
    sample = SIMULATORS[kind][0]
    return [sample(rng) for _ in range(count)]


def _write_shards(folder: str, numbers: list[int], per_shard: int, images: int, pool) -> None:
    for number in numbers:
        start = number * per_shard
        samples = [(f"bench-{i:08d}", *pool[i % len(pool)]) for i in range(start, min(start + per_shard, images))]
        write_labelled_shard(folder, f"bench-{number:06d}.tar", samples)


def make_inputs(folder: str, images: int, per_shard: int, kind: str = "digits", pool_size: int = 2000,
                workers: int = 1) -> None:
    # Grey anti-aliased digits: their PNGs cost more to decode and encode than binary
    # ones, and they are what the figures in README were measured on.
    pool = render_pool(kind, min(pool_size, images), 0)
    numbers = list(range(-(-images // per_shard)))
    if workers <= 1:
        _write_shards(folder, numbers, per_shard, images, pool)
        return
    # Spawned, not forked: this process has torch loaded. Writing is not what is timed.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as executor:
        list(executor.map(functools.partial(_write_shards, folder, per_shard=per_shard, images=images, pool=pool),
                          [numbers[i::workers] for i in range(workers)]))


def bare_forward(refiner_path: str, images: np.ndarray, batch_size: int,
                 device: str | None) -> tuple[float, float, torch.device]:
    """(images/s, CPU seconds per image, device) of the refiner alone, through the refine
    stage's own forward pass (its device, and on a GPU its bf16 choice) on float tensors
    already on that device."""
    stage = RefineStage(refiner_path, device, batch_size)
    batches = [to_tensor(images[i : i + batch_size]).to(stage.device) for i in range(0, len(images), batch_size)]

    def sync():
        if stage.cuda:
            torch.cuda.synchronize()

    stage.forward(batches[0])  # warm-up (and, on a GPU, the bf16 decision)
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        stage.forward(batch)
    sync()
    return len(images) / (time.perf_counter() - start), (time.process_time() - cpu) / len(images), stage.device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--images-of", choices=sorted(SIMULATORS), default="digits",
                        help="the simulator whose images are refined (digits: 28x28, eyes: 35x55)")
    parser.add_argument("--preset", default=None, help="refiner preset (default: digits for digits, eye for eyes)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: the GPU when there is one")
    parser.add_argument("--forward-images", type=int, default=5120, help="images timed for the bare forward pass")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder, removed afterwards")
    args = parser.parse_args()

    from pipeline import console
    from pipeline.ray_session import ray_session
    from pipeline.refine import refine_dataset

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-refine-")
    os.makedirs(workdir, exist_ok=True)  # a --workdir that does not exist yet is made
    try:
        in_dir, out_dir = os.path.join(workdir, "in"), os.path.join(workdir, "out")
        refiner_path = os.path.join(workdir, "refiner.safetensors")
        preset = args.preset or SIMULATORS[args.images_of][1]
        pool = np.stack([image for image, _ in render_pool(args.images_of, 256, 1)])
        height, width = pool.shape[1:]
        torch.manual_seed(0)
        save_refiner(refiner_path, Refiner(refiner_preset(preset)), preset, height, width, 8)
        started = time.perf_counter()
        make_inputs(in_dir, args.images, args.per_shard, args.images_of, workers=os.cpu_count() or 1)
        print(f"inputs: {args.images} {args.images_of} images ({height}x{width}) in "
              f"{-(-args.images // args.per_shard)} shards, written in {time.perf_counter() - started:.1f} s; "
              f"refiner preset {preset}", flush=True)

        sample = np.resize(pool, (args.forward_images, height, width))
        forward, forward_cpu, device = bare_forward(refiner_path, sample, args.batch_size, args.device)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"bare forward: {forward:.1f} images/s, {forward_cpu * 1000:.2f} CPU ms/image "
              f"(batch {args.batch_size}, {where})", flush=True)

        started = time.perf_counter()
        with ray_session():
            print(f"ray start-up: {time.perf_counter() - started:.1f} s", flush=True)
            with PeakMemory() as memory, GpuUse() as gpu, console.quiet("pipeline.refine"):
                started = time.perf_counter()
                summary = refine_dataset(in_dir, out_dir, refiner_path, batch_size=args.batch_size, device=args.device)
                wall = time.perf_counter() - started
        end_to_end = summary["ok"] / wall
        print(f"end to end: {end_to_end:.1f} images/s ({summary['ok']} of {summary['samples']} images in {wall:.1f} s, "
              f"of which {summary['header_pass_time_s']:.1f} s the header and label pass before refining)")
        print(f"ratio end-to-end / bare forward: {end_to_end / forward:.2f}")
        # CPU time is much less sensitive than wall time to other load on a shared machine.
        e2e_cpu = memory.cpu_seconds / summary["ok"]
        print(f"CPU time: end to end {e2e_cpu * 1000:.2f} ms/image (all processes), bare forward "
              f"{forward_cpu * 1000:.2f} ms/image; ratio bare / end to end {forward_cpu / e2e_cpu:.2f}")
        print("CPU seconds by process: " + ", ".join(f"{name} {sec:.1f}" for name, sec in memory.cpu_by_process()))
        if gpu.figures():
            print("GPU utilisation during the run: mean {:.0f} %, peak {:.0f} % (nvidia-smi)".format(*gpu.figures()))
        again, _, _ = bare_forward(refiner_path, sample, args.batch_size, args.device)
        print(f"bare forward measured again after the run: {again:.1f} images/s")
        print(f"peak memory, driver + Ray processes: RSS sum {memory.peak_rss / 1024:.0f} MiB, "
              f"PSS sum {memory.peak_pss / 1024:.0f} MiB")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
