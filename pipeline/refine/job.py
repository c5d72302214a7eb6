"""`refine-dataset`: stream input shards through refiner actors with Ray Data.

Two plans over the same functions (see plan_resources). Split, for GPUs: read + decode
(CPU tasks, each over a group of consecutive whole shards) -> refine (an actor pool;
each actor loads the refiner once) -> write (CPU tasks: PNG encode, then each output
shard's tar, Parquet manifest and, last, the stats file that marks it done). Fused, for
CPUs: one actor pool whose workers do all three on a group of shards. Blocks hold whole
shards from read to write, and cross-shard duplicate keys are decided before the run
from the tar headers, so any task may write any shard in any order with the same bytes;
the driver only counts the stats each shard sends back. Output tars are written here
rather than with `Dataset.write_webdataset`, whose file names are random per run; one
output shard per input shard, same name, makes reruns idempotent and manifests diffable.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import warnings
from typing import Callable

import numpy as np

from pipeline import manifest, shards, storage
from pipeline.data.validate import check_dataset
from pipeline.errors import UserError
from pipeline.ray_session import ray_session
from pipeline.refine.duplicates import plan_duplicates
from pipeline.refine.progress import Progress, log, summary_text
from pipeline.refine.read import file_size, group_shards, ok_keys, probe_geometry, read_shards
from pipeline.refine.shard_worker import ShardWorker
from pipeline.refine.stage import RefineStage
from pipeline.refine.write import write_shards
from pipeline.refiner_file import check_fits, load_refiner

# Read and write tasks ask for half a CPU each, so on a 2-CPU node with one refiner
# actor holding a CPU both can still run. Actors that hold every CPU starve the read
# tasks and the pipeline hangs (seen with 2 actors on 2 CPUs). Asking for other
# resources than the actors also keeps Ray from fusing the read into the actor stage,
# which would decode on the actors' (a GPU actor's) CPU.
LIGHT_TASK_CPUS = 0.5
# Shards are read in groups of about this many tar bytes (fewer when the data set is small,
# so every CPU still gets a read task): one Ray task and one block per tiny shard cost
# more than reading it (2,000 one-image shards took 6.9x as long as 16 shards).
READ_GROUP_BYTES = 16 * 1024 * 1024
# The header and label pass before refining runs in this process for inputs under this
# size, in Ray tasks above it: it costs about 0.1 ms an image (eye images: 3.6 KB of tar
# each, so about 7 s at this size on one core), and Ray tasks cost their workers' start
# (about 5 s on two cores), which would double the pass on a small data set.
RAY_PASS_BYTES = 256 * 1024 * 1024
# Bad samples listed in the closing summary; all of them are in the manifest.
SHOWN_PROBLEMS = 10
# Fault tolerance, set here rather than left to Ray Data's unbounded defaults: a refiner
# actor whose process or node dies is restarted (up to ACTOR_RESTARTS times) and its
# batches in flight are retried on it (up to ACTOR_TASK_RETRIES times each); a read,
# write or header task whose worker dies is run again (up to TASK_RETRIES times). Only
# such system failures are retried: an exception raised by the pipeline's own code would
# be raised again, so it ends the run. Retrying is safe because a shard's bytes depend on
# its inputs only and every file is committed by an atomic rename: a write task run twice
# writes the same files again. With restarts on, Ray logs once per run that the pool's
# actor "has constructor arguments in the object store": those are Ray Data's own (its
# map function and settings, which it puts there and this driver holds for the whole
# run), not the refiner, which each actor loads from its file.
ACTOR_RESTARTS = 3
ACTOR_TASK_RETRIES = 3
TASK_RETRIES = 3
# Refining starts once every planned actor is up (each is sized to the cluster's current
# resources), so blocks are shared among all of them from the first, not queued on the
# first ones ready while the others, perhaps on other nodes, still start; a pool that
# cannot start within this time fails the run instead of waiting for ever.
ACTOR_START_TIMEOUT_S = 600
# How the work is split into Ray stages (see plan_resources).
FUSED, SPLIT = "fused", "split"


def _read_batch(batch: dict[str, np.ndarray], geometry, limits):
    (paths,) = batch["paths"]
    yield from read_shards(json.loads(str(paths)), geometry, limits)


def _stats(out_dir: str, shard: str) -> dict | None:
    try:
        stats = json.loads(storage.read_bytes(manifest.stats_path(out_dir, shard)))
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) else None


def _changed(kind: str, recorded: dict | None, current: dict | None) -> str | None:
    """Why the file `current` is not the one `recorded` in a marker, or None."""
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        return f"its commit marker holds no hash of the {kind} (written by an older version)"
    if current is None:
        return f"the {kind} is missing"
    if current["size"] != recorded.get("size"):
        return f"the {kind} is {current['size']} bytes, {recorded.get('size')} when committed"
    if current["sha256"] != recorded["sha256"]:
        return f"the {kind}'s content changed since it was committed (sha256 differs)"
    return None


def _redo_reason(in_path: str, out_dir: str, shard: str, refiner_hash: str) -> str | None:
    """Why a committed shard must be refined again, or None when its marker still
    describes the input as it is and the outputs as they are."""
    stats = _stats(out_dir, shard)
    if stats is None:
        return "its commit marker is unreadable"
    previous = stats.get("refiner_hash")
    if previous != refiner_hash:
        raise UserError(
            f"{out_dir} holds shard {shard} refined with another refiner ({previous}); "
            "pass --overwrite to start over or choose another --out"
        )
    return (
        _changed("input shard", stats.get("input"), manifest.file_record(in_path))
        or _changed("output tar", stats.get("output"), manifest.file_record(storage.join(out_dir, shard)))
        or _changed("shard manifest", stats.get("manifest"), manifest.file_record(manifest.manifest_path(out_dir, shard)))
    )


def _clear_outputs(out_dir: str, shard_names: list[str]) -> None:
    """Remove what a previous run wrote for these shards (and nothing else)."""
    paths = [storage.join(out_dir, name) for name in (manifest.DATASET_MANIFEST, manifest.SUMMARY)]
    for shard in shard_names:
        # The stats marker goes first so an interrupted clean-up never leaves a shard
        # that looks committed.
        paths += [manifest.stats_path(out_dir, shard), manifest.manifest_path(out_dir, shard), storage.join(out_dir, shard)]
    for path in paths:
        storage.remove(path)


def _committed_keys(out_dir: str, shard_names: list[str]) -> dict[str, str]:
    """Keys refined in already-committed shards, so duplicates across a resume are caught."""
    seen: dict[str, str] = {}
    for shard in shard_names:
        table = storage.read_table(manifest.manifest_path(out_dir, shard), columns=["key", "status"])
        for key, status in zip(table.column("key").to_pylist(), table.column("status").to_pylist()):
            if key and status == manifest.OK:
                seen.setdefault(key, shard)
    return seen


def plan_resources(cluster: dict, device: str | None, stages: str | None = None) -> dict:
    """How the job runs on a cluster's resources: which stages, how many refiner actors,
    and what each holds.

    GPU when the cluster has one (or `device="cuda"`): the split stages, one refiner
    actor per GPU, fed by CPU read and write tasks. CPU: by default the fused stage
    (`shard_worker.ShardWorker`), one single-threaded worker per CPU, each reading,
    refining and writing whole shards; `stages="split"` runs the GPU path's stages on
    CPU instead, one single-CPU actor per CPU, minus a quarter of the CPUs (at least
    one) kept free for reading and encoding.
    """
    cpus = int(cluster.get("CPU", 0))
    gpus = int(cluster.get("GPU", 0))
    if device not in (None, "cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    if stages not in (None, FUSED, SPLIT):
        raise UserError(f"--stages must be {FUSED} or {SPLIT}, got {stages!r}")
    if device == "cuda" and gpus == 0:
        raise UserError("--device cuda asked for, but the Ray cluster has no GPU")
    if cpus < 1:
        raise UserError("the Ray cluster has no CPU for the read and write stages")
    if gpus and device != "cpu":
        if stages == FUSED:
            raise UserError(f"--stages {FUSED} refines on CPU; add --device cpu, or leave --stages out to refine on the GPU")
        return {"stages": SPLIT, "device": "cuda", "actors": gpus, "num_gpus": 1,
                "num_cpus": min(1, max(cpus - 1, 0.5) / gpus), "threads": None}
    if stages != SPLIT:
        return {"stages": FUSED, "device": "cpu", "actors": cpus, "num_gpus": 0, "num_cpus": 1, "threads": 1}
    actors = max(1, cpus - max(1, cpus // 4))
    # With one actor on a small node the light tasks leave most of a core idle; letting
    # torch use every core there is what makes the pipeline keep up with a bare forward pass.
    threads = cpus if actors == 1 else 1
    return {"stages": SPLIT, "device": "cpu", "actors": actors, "num_gpus": 0, "num_cpus": 1, "threads": threads}


def refine_dataset(
    in_dir: str,
    out_dir: str,
    refiner_path: str,
    overwrite: bool = False,
    allow_failures: bool = False,
    batch_size: int = 256,
    address: str | None = None,
    device: str | None = None,
    stages: str | None = None,
    force: bool = False,
    limits: shards.Limits | None = None,
) -> dict:
    """Refine every shard in `in_dir` into `out_dir`; returns the dataset summary.

    Committed output shards are skipped (resume) unless `overwrite`. Bad samples are
    skipped and reported (summary counts, manifest rows); they never raise.
    `allow_failures` is accepted for compatibility and changes nothing. Raises UserError
    before any work for a missing, foreign, unfitting or (unless `force`) failed
    refiner, and BadDataset (also before any output) for a dataset-wide condition:
    an input that is not a regular file, a shard name that clashes with the dataset
    manifest, a label with different types in different samples.
    """
    start = time.perf_counter()
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    _, info = load_refiner(refiner_path)  # refuses missing, foreign or damaged files
    if info.failed and not force:
        raise UserError(
            f"{refiner_path} failed its training run's checks and would make the data worse: "
            f"{info.quality.get('reason', 'no reason recorded')}. Train again (see the run's selection.json), "
            "or pass --force to refine with it anyway"
        )
    limits = limits or shards.DEFAULT_LIMITS
    # Ray starts when first needed (and stops at the end of this block): for the header
    # pass on large inputs, else for refining. A refusal of a small data set needs none.
    with contextlib.ExitStack() as stack:
        def start_ray() -> None:
            stack.enter_context(ray_session(address))  # a no-op once Ray is up

        # The keys each shard's tar headers name come from the same pass, for the duplicate plan.
        surveyed = time.perf_counter()
        member_keys = check_dataset(in_dir, "--in", limits,
                                    _map_on_ray(start_ray, storage.task_options(in_dir), RAY_PASS_BYTES))
        header_pass_s = time.perf_counter() - surveyed
        paths = list(member_keys)
        if storage.same_location(in_dir, out_dir):
            raise UserError("--out must be a different folder from --in (inputs are never overwritten)")
        expected = info.geometry
        found = probe_geometry(paths, limits=limits)
        if found is not None:
            check_fits(info, found)

        names = [os.path.basename(p) for p in paths]
        storage.make_folder(out_dir)
        if overwrite:
            _clear_outputs(out_dir, names)
        redone: dict[str, str] = {}
        for path, name in zip(paths, names):
            if manifest.is_committed(out_dir, name):
                reason = _redo_reason(path, out_dir, name, info.content_hash)
                if reason:
                    redone[name] = reason
        committed = [name for name in names if manifest.is_committed(out_dir, name) and name not in redone]
        # Stale outputs go before any new work, so a second interruption cannot leave a
        # marker that vouches for them.
        _clear_outputs(out_dir, sorted(redone))
        todo = [p for p in paths if os.path.basename(p) not in set(committed)]
        progress = Progress(len(paths), len(committed))
        for name, reason in redone.items():
            log.info(f"refine: redoing {name}: {reason}")
        if todo:
            writing = {"out_dir": out_dir, "refiner_hash": info.content_hash}
            # Decided before any refinement, so each shard's writer knows its duplicates.
            duplicates = plan_duplicates(
                todo,
                [member_keys[p] for p in todo],
                _committed_keys(out_dir, committed),
                lambda path, keys: ok_keys(path, keys, expected, limits),
            )
            settings = {"refiner_path": refiner_path, "geometry": expected, "batch_size": batch_size, "device": device,
                        "stages": stages, "limits": limits}
            start_ray()
            _stream(todo, writing, duplicates, progress.update, **settings)

    wall = time.perf_counter() - start
    summary = manifest.write_dataset_manifest(
        out_dir,
        shards=names,
        show_problems=SHOWN_PROBLEMS,
        extra_summary={
            "out_dir": out_dir,
            "refiner_hash": info.content_hash,
            "image_geometry": str(expected),
            "shards_refined": progress.shards,
            "shards_skipped": len(committed),
            "shards_redone": dict(sorted(redone.items())),
            "images_refined": progress.ok,
            "header_pass_time_s": round(header_pass_s, 3),
            "wall_time_s": round(wall, 3),
            "images_per_s": round(progress.ok / wall, 2) if wall > 0 else 0.0,
        },
    )
    log.info(summary_text(summary))
    return summary


def _apply(function, items: list) -> list:
    return [function(item) for item in items]


def _map_on_ray(start_ray: Callable[[], None], options: dict, least_bytes: int = 0):
    """A `map_shards` for `shards.check_label_kinds`: the function runs in Ray tasks over
    groups of consecutive shards, all submitted at once; results come back in order.
    Inputs under `least_bytes` in all are mapped in this process instead, without Ray."""

    def map_shards(function, paths: list[str]):
        sizes = _sizes(paths)
        if sum(sizes.values()) < least_bytes:
            yield from map(function, paths)
            return
        import ray

        start_ray()
        task = ray.remote(_apply).options(num_cpus=LIGHT_TASK_CPUS, max_retries=TASK_RETRIES, **options)
        refs = [task.remote(function, group) for group in _groups(paths, sizes)]
        # A refusal ends the pass early and leaves the other tasks to finish unread: they
        # are not cancelled, since Ray 2.60 can abort the driver ("Tried to complete task
        # that was not pending") when a cancel meets a task that is just finishing.
        for ref in refs:
            yield from ray.get(ref)

    return map_shards


def _sizes(paths: list[str]) -> dict[str, int]:
    # Asked once per pass: on S3 each size is a request.
    return {path: file_size(path) for path in paths}


def _groups(paths: list[str], sizes: dict[str, int] | None = None) -> list[list[str]]:
    """Shard groups for one Ray task each: about READ_GROUP_BYTES of tar, or fewer so that
    every CPU of the cluster gets about four groups."""
    import ray

    sizes = sizes or _sizes(paths)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return group_shards(paths, min(READ_GROUP_BYTES, max(1, sum(sizes.values()) // (4 * cpus))), sizes.__getitem__)


def _stream(todo, writing, duplicates, on_commit, refiner_path, geometry, batch_size, device, stages, limits) -> None:
    import ray  # imported here so the stage and the diff work without Ray installed

    # Ray 2.60 warns that retry and resource options passed to map_batches through
    # `ray_remote_args(_fn)` are deprecated (removal is announced for 2.64, with no named
    # parameter for them yet); setup.py pins 2.60.
    warnings.filterwarnings("ignore", message="`ray_remote_args(_fn)?` is deprecated", category=DeprecationWarning)

    context = ray.data.DataContext.get_current()
    saved = context.target_max_block_size, context.wait_for_min_actors_s
    try:
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        # No size target: each task's output stays one block, never sliced, so a block
        # holds whole shards from the read task to the write task (which refuses one
        # that does not). A block is then as large as a read group.
        context.target_max_block_size = None
        plan = plan_resources(ray.cluster_resources(), device, stages)
        # Every stage may touch storage: reading shards, loading the refiner, writing.
        options = storage.task_options(*todo, writing["out_dir"], refiner_path)
        groups = _groups(todo)
        ds = ray.data.from_items([{"paths": json.dumps(g)} for g in groups], override_num_blocks=len(groups))
        refining = {"max_restarts": ACTOR_RESTARTS, "max_task_retries": ACTOR_TASK_RETRIES, **options,
                    # No more actors than groups: an idle one would only cost its start (and a warning).
                    "compute": ray.data.ActorPoolStrategy(size=min(plan["actors"], len(groups))), "batch_format": "numpy",
                    "num_cpus": plan["num_cpus"]}
        if plan["num_gpus"]:
            # Ray Data refuses `num_gpus` with `batch_size=None` (it wants a batch size
            # chosen for the GPU), and any batch size would cut shards across blocks: the
            # stage takes whole blocks and makes its own GPU batches. The same request,
            # made through the actors' options, is counted the same by Ray Data.
            refining["ray_remote_args_fn"] = functools.partial(dict, num_gpus=plan["num_gpus"])
        if plan["stages"] == FUSED:
            ds = ds.map_batches(
                ShardWorker,
                fn_constructor_kwargs={
                    "refiner_path": storage.absolute(refiner_path), "geometry": geometry, "limits": limits,
                    **writing, "duplicates": duplicates, "batch_size": batch_size, "threads": plan["threads"],
                },
                batch_size=1,
                **refining,
            )
        else:
            ds = _split_stages(ds, plan, refining, writing, duplicates, refiner_path, geometry, batch_size, limits, options)
        done = set()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["stats"]:
                stats = json.loads(text)
                done.add(stats["shard"])
                on_commit(stats)
        missing = sorted({os.path.basename(p) for p in todo} - done)
        if missing:
            raise RuntimeError(f"shards left uncommitted by the pipeline: {missing}")
    finally:
        context.target_max_block_size, context.wait_for_min_actors_s = saved


def _split_stages(ds, plan, refining, writing, duplicates, refiner_path, geometry, batch_size, limits, options):
    """Read tasks -> refiner actors -> write tasks: the GPU path (and `--stages split`)."""
    ds = ds.map_batches(
        _read_batch,
        fn_kwargs={"geometry": geometry, "limits": limits},
        batch_size=1,
        batch_format="numpy",
        num_cpus=LIGHT_TASK_CPUS,
        max_retries=TASK_RETRIES,
        **options,
    )
    ds = ds.map_batches(
        RefineStage,
        fn_constructor_kwargs={
            "refiner_path": storage.absolute(refiner_path),
            "device": plan["device"],
            "batch_size": batch_size,
            "threads": plan["threads"],
        },
        batch_size=None,  # a whole block: the stage chunks each shard by batch_size itself
        **refining,
    )
    return ds.map_batches(
        write_shards,
        fn_kwargs={**writing, "duplicates": duplicates},
        batch_size=None,
        batch_format="numpy",
        num_cpus=LIGHT_TASK_CPUS,
        max_retries=TASK_RETRIES,
        **options,
    )
