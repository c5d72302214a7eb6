"""Regenerate the golden manifests and diff them against the committed ones.

Keys, labels and statuses must match exactly, and so must input image hashes; refined
image hashes are not compared (see manifests/regenerate.py for why).
"""

import importlib.util
import os

import pytest

from pipeline import manifest
from pipeline.refine.diff import diff_manifests
from pipeline.refiner_file import read_refiner_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("regenerate", os.path.join(ROOT, "manifests", "regenerate.py"))
regenerate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regenerate)


@pytest.mark.slow
def test_regenerated_manifests_match_golden(tmp_path, ray_local):
    refined = regenerate.regenerate(str(tmp_path))
    result = diff_manifests(regenerate.GOLDEN, refined, check_hashes=True, hash_columns=regenerate.REPRODUCIBLE_HASHES)
    assert result.ok, result.to_text()
    assert result.rows_a == result.rows_b == 14

    golden = manifest.read_manifest(regenerate.GOLDEN)
    assert set(golden["refiner_hash"].dropna()) == {read_refiner_info(regenerate.REFINER).content_hash}
    assert dict(golden["status"].value_counts()) == {"ok": 13, "undecodable_image": 1}
    assert golden.loc[golden["status"] == "ok", "output_sha256"].notna().all()
