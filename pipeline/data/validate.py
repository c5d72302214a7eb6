"""Check a folder of shards: every problem, per shard and per sample, nothing raised.

Per shard, `pipeline.shards.iter_shard` finds what the tar structure shows (unreadable
or truncated tar, empty shard, bad or duplicate key, missing member); decoding each
sample finds undecodable images and invalid labels. Across the folder this module adds
keys repeated in different shards and images whose geometry (height, width, channels,
bit depth) differs from the dataset's most common one.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from pipeline import manifest, reading, shards
from pipeline.reading import Geometry
from pipeline.shards import Problem, RawSample

# What a sample of another geometry is compared with.
MOST_OF_THE_DATASET = "most of the dataset"


@dataclass
class FolderReport:
    folder: str
    shards: int = 0
    samples: int = 0  # samples seen (good or not), not counting tar-level problems
    good: int = 0  # samples with no problem at all
    geometry: Geometry | None = None  # the dataset's most common
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_shard_names(paths: list[str], folder: str) -> None:
    """Refuse shards whose manifest or marker would take the name of a folder's own
    files (`manifest.tar` -> `manifest.parquet`): the dataset manifest would be written
    over the shard's, or the other way round."""
    reserved = {manifest.DATASET_MANIFEST, manifest.SUMMARY}
    for path in paths:
        name = os.path.basename(path)
        outputs = {name, os.path.basename(manifest.manifest_path("", name)), os.path.basename(manifest.stats_path("", name))}
        clash = sorted(outputs & reserved)
        if clash:
            role = "manifest" if clash[0] == manifest.DATASET_MANIFEST else "summary"
            raise shards.BadDataset(
                f"{folder}: shard {name} would have its manifest written as {clash[0]}, the dataset's own {role}; "
                "rename the shard"
            )


def check_dataset(folder: str, role: str = "", limits: shards.Limits = shards.DEFAULT_LIMITS,
                  map_shards: Callable = map) -> dict[str, set[str]]:
    """The shards of `folder` (in name order), each with the keys its tar headers name,
    once every dataset-wide condition holds; otherwise raises
    UserError (no folder, no shards) or BadDataset (an entry that is not a regular file,
    a shard name that clashes with the dataset's files, a label with different types in
    different samples). refine-dataset and validate-shards both start here, so they
    refuse the same folders. `map_shards` runs the per-shard pass (see
    `shards.check_label_kinds`)."""
    paths = shards.require_shards(folder, role)
    check_shard_names(paths, f"{role} folder {folder}".strip() if role else folder)
    return shards.check_label_kinds(paths, limits, map_shards)


def _counted(items: Iterable[RawSample | Problem], report: FolderReport, shard: str, first_shard: dict[str, str],
             repeated: set[str]) -> Iterator[RawSample | Problem]:
    """Pass items on, counting samples and reporting a key already used in an earlier
    shard (in `repeated` too: such a sample is read but not counted good)."""
    for item in items:
        if item.key is not None:
            report.samples += 1
        if isinstance(item, RawSample):
            if item.key in first_shard:
                report.problems.append(
                    Problem(shard, item.key, shards.DUPLICATE_KEY, f"key also used in shard {first_shard[item.key]}")
                )
                repeated.add(item.key)
            else:
                first_shard[item.key] = shard
        yield item


def scan_folder(
    folder: str, progress: Callable[[str], None] | None = None, limits: shards.Limits = shards.DEFAULT_LIMITS
) -> FolderReport:
    """Read every shard of `folder` and report what is wrong; raises UserError only when
    the folder itself is missing or holds no shards, and BadDataset for what would make
    refine-dataset refuse the folder."""
    paths = list(check_dataset(folder, limits=limits))
    report = FolderReport(folder, shards=len(paths))
    first_shard: dict[str, str] = {}  # key -> shard it first appeared in
    # Decoded samples: (shard, key, geometry, is a cross-shard duplicate); the geometry
    # is checked against the dataset's most common one at the end.
    geometries: list[tuple[str, str, Geometry, bool]] = []

    for number, path in enumerate(paths, 1):
        shard = os.path.basename(path)
        repeated: set[str] = set()
        items = _counted(reading.stored([path], limits), report, shard, first_shard, repeated)
        for item in reading.decode(items, limits):
            if isinstance(item, Problem):
                report.problems.append(item)
            else:
                geometries.append((shard, item.key, Geometry.of(item.image), item.key in repeated))
        if progress is not None:
            progress(f"validate: {number}/{len(paths)} shards read, {report.samples} samples")

    if geometries:
        report.geometry = Counter(g for _, _, g, _ in geometries).most_common(1)[0][0]
        for shard, key, geometry, duplicate in geometries:
            if geometry != report.geometry:
                report.problems.append(reading.geometry_problem(shard, key, geometry, report.geometry, MOST_OF_THE_DATASET))
            elif not duplicate:
                report.good += 1
    return report


def validate_folder(folder: str) -> list[Problem]:
    """Every problem found in the shards of `folder` (empty when the folder is clean)."""
    return scan_folder(folder).problems


def format_report(report: FolderReport) -> str:
    """A readable report: problems grouped by shard, then a summary."""
    lines = []
    by_shard: dict[str, list[Problem]] = {}
    for problem in report.problems:
        by_shard.setdefault(problem.shard, []).append(problem)
    for shard in sorted(by_shard):
        lines.append(f"{shard}:")
        for problem in by_shard[shard]:
            where = f"key {problem.key!r}" if problem.key is not None else "shard"
            lines.append(f"  {where}: {problem.kind}: {problem.message}")
    counts = Counter(problem.kind for problem in report.problems)
    lines.append(
        f"{report.folder}: {report.shards} shards, {report.samples} samples, {report.good} good"
        + (f", images {report.geometry}" if report.geometry else "")
    )
    if report.problems:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
        lines.append(f"{len(report.problems)} problems in {len(by_shard)} shards: {kinds}")
    else:
        lines.append("no problems found")
    return "\n".join(lines)
