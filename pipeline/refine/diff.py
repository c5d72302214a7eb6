"""Compare two manifests (files, or folders holding them) sample by sample.

Rows are matched on (shard, key, occurrence): a key may legitimately appear twice in a
refined manifest (the second time as a `duplicate_key` failure), and shard-level
problems have no key. Drift is: a sample on one side only, a label that differs, or a
status that changed; with `check_hashes`, also an image hash that differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from pipeline.manifest import LABEL_PREFIX, read_manifest

LABEL_COLUMNS_ALWAYS = ("labels_json",)
HASH_COLUMNS = ("input_sha256", "output_sha256")
_ID = ["shard", "key", "occurrence"]


@dataclass
class DiffResult:
    a: str
    b: str
    rows_a: int
    rows_b: int
    check_hashes: bool
    only_in_a: list[dict] = field(default_factory=list)
    only_in_b: list[dict] = field(default_factory=list)
    label_mismatches: list[dict] = field(default_factory=list)
    status_changes: list[dict] = field(default_factory=list)
    hash_changes: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        drift = self.only_in_a or self.only_in_b or self.label_mismatches or self.status_changes
        return not drift and not (self.check_hashes and self.hash_changes)

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "rows_a": self.rows_a,
            "rows_b": self.rows_b,
            "ok": self.ok,
            "check_hashes": self.check_hashes,
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "label_mismatches": self.label_mismatches,
            "status_changes": self.status_changes,
            "hash_changes": self.hash_changes,
        }

    def to_text(self, limit: int = 20) -> str:
        lines = [f"A: {self.a} ({self.rows_a} rows)", f"B: {self.b} ({self.rows_b} rows)"]
        sections = [
            ("samples only in A", self.only_in_a, ["shard", "key"]),
            ("samples only in B", self.only_in_b, ["shard", "key"]),
            ("label mismatches", self.label_mismatches, ["shard", "key", "column", "a", "b"]),
            ("status changes", self.status_changes, ["shard", "key", "a", "b"]),
        ]
        if self.check_hashes:
            sections.append(("image hash changes", self.hash_changes, ["shard", "key", "column", "a", "b"]))
        for title, items, columns in sections:
            lines.append(f"{title}: {len(items)}")
            if items:
                table = pd.DataFrame(items[:limit], columns=columns).astype(str)
                lines += ["  " + line for line in table.to_string(index=False).splitlines()]
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more (use --json for all)")
        lines.append("result: " + ("no label drift" if self.ok else "DRIFT"))
        return "\n".join(lines)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _same(a, b) -> bool:
    if _is_missing(a) or _is_missing(b):
        return _is_missing(a) and _is_missing(b)
    return a == b


def _plain(value):
    """A JSON-friendly scalar (numpy/pandas scalars and NaN become Python values)."""
    if _is_missing(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _indexed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype(object).where(frame.notna(), None)
    frame["key"] = frame["key"].map(lambda k: "" if k is None else k)
    frame["occurrence"] = frame.groupby(["shard", "key"]).cumcount()
    return frame.set_index(_ID)


def diff_manifests(a: str, b: str, check_hashes: bool = False, hash_columns: tuple[str, ...] = HASH_COLUMNS) -> DiffResult:
    """Compare manifest (or folder of manifests) `a` with `b`.

    `hash_columns` narrows which image hashes `check_hashes` compares (refined-image
    hashes are not reproducible across machines; input hashes are).
    """
    frame_a, frame_b = _indexed(read_manifest(a)), _indexed(read_manifest(b))
    result = DiffResult(a, b, len(frame_a), len(frame_b), check_hashes)
    ids_a, ids_b = set(frame_a.index), set(frame_b.index)

    def ident(i) -> dict:
        return {"shard": i[0], "key": i[1] or None}

    result.only_in_a = [ident(i) for i in sorted(ids_a - ids_b)]
    result.only_in_b = [ident(i) for i in sorted(ids_b - ids_a)]
    common = sorted(ids_a & ids_b)
    left, right = frame_a.loc[common], frame_b.loc[common]
    labels = sorted({c for c in list(frame_a.columns) + list(frame_b.columns) if c.startswith(LABEL_PREFIX)})
    for column in list(LABEL_COLUMNS_ALWAYS) + labels:
        values_a = left[column] if column in left else [None] * len(common)
        values_b = right[column] if column in right else [None] * len(common)
        for i, x, y in zip(common, values_a, values_b):
            if not _same(x, y):
                result.label_mismatches.append({**ident(i), "column": column, "a": _plain(x), "b": _plain(y)})
    for i, x, y in zip(common, left["status"], right["status"]):
        if x != y:
            result.status_changes.append({**ident(i), "a": x, "b": y})
    for column in hash_columns:
        for i, x, y in zip(common, left[column], right[column]):
            # An input manifest has no output hash: only hashes present on both sides compare.
            if not _is_missing(x) and not _is_missing(y) and x != y:
                result.hash_changes.append({**ident(i), "column": column, "a": x, "b": y})
    return result
