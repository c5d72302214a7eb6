"""Progress while a refinement runs (a line per committed shard, or a bar), and the
final summary text."""

from __future__ import annotations

import time

from pipeline import console

log = console.logger("pipeline.refine")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts committed shards and samples; the ETA assumes the remaining shards take as
    long per shard as the ones done so far (sample counts are unknown until read)."""

    def __init__(self, total_shards: int, skipped_shards: int = 0):
        self.total = total_shards
        self.skipped = skipped_shards
        self.start = time.perf_counter()
        self.shards = 0
        self.samples = 0
        self.ok = 0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def images_per_s(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def update(self, stats: dict) -> None:
        self.shards += 1
        self.samples += stats["samples"]
        self.ok += stats["ok"]
        todo = self.total - self.skipped
        eta = self.elapsed / self.shards * (todo - self.shards)
        failed = stats["samples"] - stats["ok"]
        note = f", {failed} failed" if failed else ""
        done = self.skipped + self.shards
        log.info(
            f"refine: shard {done}/{self.total} {stats['shard']} "
            f"({stats['ok']}/{stats['samples']} ok{note}) | {self.ok} images refined, "
            f"{self.images_per_s:.1f} images/s, ETA {_duration(eta)}",
            extra=console.tick(done, self.total, "shard", True, f"{self.ok} images, {self.images_per_s:.1f} images/s"),
        )


def summary_text(summary: dict) -> str:
    lines = [
        f"refined {summary['ok']} of {summary['samples']} samples in {summary['shards']} shards "
        f"-> {summary['out_dir']}",
        f"this run: {summary['shards_refined']} shards refined, {summary['shards_skipped']} already committed, "
        f"{summary['images_refined']} images in {summary['wall_time_s']:.1f} s "
        f"({summary['images_per_s']:.1f} images/s)",
    ]
    redone = summary.get("shards_redone") or {}
    if redone:
        lines.append(
            f"redone {len(redone)} committed shard(s) whose input or outputs changed: "
            + "; ".join(f"{name} ({reason})" for name, reason in redone.items())
        )
    failures = {k: v for k, v in summary["by_status"].items() if k != "ok"}
    if failures:
        lines.append(
            f"skipped {summary['failed']} bad sample(s) or shard(s): " + ", ".join(f"{k}={v}" for k, v in failures.items())
        )
        for problem in summary.get("problems_shown", []):
            key = f" key {problem['key']!r}" if problem["key"] is not None else ""
            lines.append(f"  {problem['shard']}{key}: {problem['status']}: {problem['error']}")
        hidden = summary["failed"] - len(summary.get("problems_shown", []))
        more = f"{hidden} more, and " if hidden > 0 else ""
        lines.append(f"{more}each with its shard, key and reason, in {summary['out_dir']}/manifest.parquet "
                     "(rows whose status is not ok)")
    return "\n".join(lines)
