"""`simgan evaluate` on small generated stand-ins, read back from results.json."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import console
from pipeline.cli import main
from pipeline.data.output import write_labelled_shard
from pipeline.evaluation import downstream
from pipeline.evaluation.evaluate import evaluate, load_results
from helpers.standins import soften, write_digits, write_eyes

QUICK = downstream.TrainSettings(steps=40, batch_size=32, gaze_model="small")


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    synthetic = write_digits(root / "synthetic", 240, seed=1, style="sharp", per_shard=120)
    refined = soften(synthetic, root / "refined", seed=5)
    return {
        "synthetic": synthetic,
        "refined": refined,
        "train": write_digits(root / "train", 200, seed=2, style="soft"),
        "test": write_digits(root / "test", 160, seed=3, style="soft"),
        "root": root,
    }


def test_digits_evaluation_writes_results_over_seeds(digit_folders, tmp_path):
    f = digit_folders
    lines = []
    with console.copied_to(lines.append):
        results = evaluate(
            "digits", f["synthetic"], f["refined"], f["test"], str(tmp_path / "eval"), real_train_dir=f["train"],
            seeds=2, settings=QUICK, two_sample_epochs=2,
        )
    stored = load_results(str(tmp_path / "eval"))
    assert stored == json.loads(json.dumps(results))
    assert stored["seeds"] == [0, 1]
    assert stored["counts"] == {"synthetic": 240, "refined": 240, "real": 200, "real-test": 160}
    for source in ("synthetic", "refined", "real"):
        accuracy = stored["downstream"][source]["accuracy"]
        assert len(accuracy["values"]) == 2
        assert accuracy["mean"] == pytest.approx(np.mean(accuracy["values"]))
    # The stand-in task is easy: real-trained classifiers must get it.
    assert stored["downstream"]["real"]["accuracy"]["mean"] > 0.8
    # Sharp synthetic squares are trivially told from soft "real" ones; softened ones less so.
    two = stored["two_sample"]
    assert two["synthetic"]["accuracy"]["mean"] > two["refined"]["accuracy"]["mean"]
    keep = stored["label_preservation"]
    assert set(keep) == {"synthetic", "refined"} and keep["refined"]["agreement"]["mean"] > 0.5
    feats = stored["feature_metrics"]
    assert feats["synthetic"]["frechet_distance"]["mean"] > feats["real"]["frechet_distance"]["mean"]
    assert stored["versions"]["torch"].startswith("2.")
    assert any("seed 2/2: trained on refined" in line for line in lines)


def test_unusable_samples_are_listed_not_dropped_silently(digit_folders, tmp_path):
    f = digit_folders
    refined = soften(f["synthetic"], tmp_path / "refined", seed=5)
    write_labelled_shard(refined, "d-000009.tar", [("odd", np.zeros((20, 20), np.uint8), {"class": 3}),
                                                   ("nolabel", np.zeros((28, 28), np.uint8), {})])
    lines = []
    with console.copied_to(lines.append):
        results = evaluate(
            "digits", f["synthetic"], refined, f["test"], str(tmp_path / "eval"), seeds=1,
            settings=downstream.TrainSettings(steps=3, batch_size=8), two_sample_epochs=2,
        )
    listed = {(p["shard"], p["key"], p["kind"]) for p in results["problems"]["refined"]}
    assert listed == {("d-000009.tar", "odd", "wrong_shape"), ("d-000009.tar", "nolabel", "invalid_labels")}
    assert any("refined: 2 unusable samples" in line for line in lines)
    assert results["label_preservation"] is None and results["feature_metrics"] is None


def test_gaze_evaluation_reports_angle_error_and_share_within(tmp_path):
    synthetic = write_eyes(tmp_path / "synthetic", 120, seed=1, style="sharp")
    refined = soften(synthetic, tmp_path / "refined", seed=2)
    train = write_eyes(tmp_path / "train", 120, seed=3, style="soft")
    test = write_eyes(tmp_path / "test", 80, seed=4, style="soft")
    results = evaluate(
        "gaze", synthetic, refined, test, str(tmp_path / "eval"), real_train_dir=train, seeds=1,
        settings=QUICK, two_sample_epochs=2,
    )
    scores = results["downstream"]["refined"]
    assert set(scores) == {"mean_angle_error"} | {f"within_{d}" for d in range(5, 26)}
    shares = [scores[f"within_{d}"]["mean"] for d in range(5, 26)]
    assert shares == sorted(shares)  # a cumulative share never falls
    assert 0 < scores["mean_angle_error"]["mean"] < 90
    assert "mean_angle_error" in results["label_preservation"]["refined"]
    assert results["headline"]["metric"] == "within_7"


def test_cli_refuses_bad_folders_with_a_clear_message(digit_folders, tmp_path):
    f = digit_folders
    runner = CliRunner()
    missing = runner.invoke(main, ["evaluate", "--synthetic", str(tmp_path / "nope"), "--refined", f["refined"],
                                   "--real-test", f["test"], "--out", str(tmp_path / "e")])
    assert missing.exit_code == 1
    assert "folder not found" in missing.output and "Traceback" not in missing.output
    eyes = write_eyes(tmp_path / "eyes", 10, seed=0)
    mixed = runner.invoke(main, ["evaluate", "--synthetic", f["synthetic"], "--refined", f["refined"],
                                 "--real-test", eyes, "--out", str(tmp_path / "e")])
    assert mixed.exit_code == 1
    assert "no 'class' label" in mixed.output or "different shapes" in mixed.output


def test_cli_runs_and_prints_the_verdict(digit_folders, tmp_path):
    f = digit_folders
    result = CliRunner().invoke(main, [
        "evaluate", "--task", "digits", "--synthetic", f["synthetic"], "--refined", f["refined"],
        "--real-test", f["test"], "--seeds", "1", "--steps", "5", "--two-sample-epochs", "1", "--out", str(tmp_path / "e"),
    ])
    assert result.exit_code == 0, result.output
    assert "accuracy on real held-out digits" in result.output
    stored = load_results(str(tmp_path / "e"))
    assert stored["settings"]["steps"] == 5
    assert stored["two_sample_epochs"] == 1
    assert stored["command"].startswith("simgan ")
