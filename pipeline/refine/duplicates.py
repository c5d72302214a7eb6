"""Cross-shard duplicate keys, decided before any shard is refined.

A key is kept once in a refined dataset: the first ok sample with it, in shard-name
order, with the keys of shards committed by an earlier run counting first; an ok sample
with the key in a later shard is recorded as a duplicate. Deciding this up front lets
each shard be written by its own worker, in whatever order the workers finish, with the
same result.

The tar headers say which shards share a key without reading member data; nearly always
none do. A sample that is not ok (undecodable, wrong geometry, bad labels) does not
claim its key, so where a key is shared, the shards holding its earlier occurrences are
read, and those samples alone decoded, until one is ok.
"""

from __future__ import annotations

import os
from typing import Callable


def plan_duplicates(
    paths: list[str],
    member_keys: list[set[str]],
    committed: dict[str, str],
    ok_keys: Callable[[str, set[str]], set[str]],
) -> dict[str, dict[str, str]]:
    """{shard name: {key: shard that keeps it}} for the shards at `paths` (in name order).

    A row of a listed key is a duplicate only when the row itself is ok. `member_keys`
    holds, for each shard, the keys its tar headers name (`shards.check_label_kinds`).
    `committed` maps the keys ok in already-committed shards to their shard;
    `ok_keys(path, keys)` is the subset of `keys` whose samples in the shard at `path`
    are ok.
    """
    names = [os.path.basename(path) for path in paths]
    where: dict[str, list[int]] = {}  # key -> positions in `paths` of the shards using it
    for position, keys in enumerate(member_keys):
        for key in keys:
            where.setdefault(key, []).append(position)

    duplicates: dict[str, dict[str, str]] = {}

    def keep(key: str, first: str, later: list[int]) -> None:
        for position in later:
            duplicates.setdefault(names[position], {})[key] = first

    # key -> index, in where[key], of the occurrence whose status decides it next
    pending: dict[str, int] = {}
    for key, found in where.items():
        if key in committed:
            keep(key, committed[key], found)
        elif len(found) > 1:
            pending[key] = 0
    while pending:
        # One read per shard per round, for every key whose next candidate is there.
        asked: dict[int, set[str]] = {}
        for key, index in pending.items():
            asked.setdefault(where[key][index], set()).add(key)
        ok = {(position, key) for position, keys in asked.items() for key in ok_keys(paths[position], keys)}
        undecided: dict[str, int] = {}
        for key, index in pending.items():
            found = where[key]
            if (found[index], key) in ok:
                keep(key, names[found[index]], found[index + 1 :])
            elif index + 2 < len(found):  # the last occurrence has no later one to mark
                undecided[key] = index + 1
        pending = undecided
    return duplicates
