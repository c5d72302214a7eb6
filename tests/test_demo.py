"""The demo's orchestration on tiny settings: every real step, in order, then resume."""

import json
import os

import pytest

from pipeline import console, manifest
from pipeline.demo import PRESETS, DemoSettings, commands_for, run_demo
from pipeline.errors import UserError
from pipeline.evaluation import downstream

TINY = DemoSettings(
    synthetic_count=120,
    train_overrides={"pretrain_refiner_steps": 2, "pretrain_discriminator_steps": 2, "iterations": 2,
                     "batch_size": 16, "history_size": 32, "log_every": 1, "sample_every": 2,
                     "checkpoint_every": 2, "realism_margin": -1.0},
    local_training=True,  # Ray Train itself is tested with the training code
    seeds=1,
    evaluation=downstream.TrainSettings(steps=5, batch_size=16),
    two_sample_epochs=1,
)


@pytest.mark.slow
def test_demo_runs_every_step_then_continues(tmp_path):
    out = str(tmp_path / "simgan-demo")
    lines = []
    with console.copied_to(lines.append):
        html_path = run_demo(out, settings=TINY)
    assert html_path == os.path.join(out, "report.html") and os.path.isfile(html_path)
    text = "\n".join(lines)
    for number, step in enumerate(["simulating 120 digits", "importing the real MNIST", "training the refiner",
                                   "refining the synthetic", "checking labels", "evaluating", "writing the report"], 1):
        assert f"[demo {number}/7] {step}" in text
    assert "result: no label drift" in text
    synthetic = manifest.read_manifest(os.path.join(out, "synthetic"))
    assert set(synthetic["label.rendering"]) == {TINY.rendering}
    assert os.path.isfile(os.path.join(out, "run", "refiner.safetensors"))
    refined = manifest.read_manifest(os.path.join(out, "refined"))
    assert len(refined) == 120 and set(refined["status"]) == {"ok"}
    results = json.load(open(os.path.join(out, "evaluation", "results.json")))
    assert results["counts"] == {"synthetic": 120, "refined": 120, "real": 1000, "real-test": 1500}
    md = open(os.path.join(out, "report.md")).read()
    for command in commands_for(out, TINY, "demo").values():
        assert command in md
    assert "no label drift" in md
    # The demo's own log holds every stage's lines, training's and refine-dataset's too.
    logged = open(os.path.join(out, "demo.log")).read()
    assert "[demo 3/7] training the refiner" in logged and "selected the refiner of step" in logged
    assert "refine: shard 1/" in logged and "result: no label drift" in logged

    # Running again continues: every finished step is skipped, the report is rewritten.
    again = []
    with console.copied_to(again.append):
        run_demo(out, settings=TINY)
    assert sum("done by an earlier run, skipped" in line for line in again) == 6
    # Other settings in the same folder are refused rather than mixed in.
    with pytest.raises(UserError, match="other settings"):
        run_demo(out, settings=DemoSettings(**{**TINY.__dict__, "synthetic_count": 130}))


@pytest.mark.slow
def test_a_refused_refiner_leaves_the_raw_data_evaluated_reported_and_the_demo_failing(tmp_path):
    # No candidate can be 0.49 more confident-real than the raw images after two steps:
    # training refuses, for realism (so no retry runs).
    settings = DemoSettings(**{**TINY.__dict__, "train_overrides": {**TINY.train_overrides, "realism_margin": 0.49}})
    out = str(tmp_path / "simgan-demo")
    lines = []
    with console.copied_to(lines.append), pytest.raises(UserError, match="demo finished without a refiner") as error:
        run_demo(out, settings=settings)
    assert "not more realistic" in str(error.value) and "report.html" in str(error.value)
    text = "\n".join(lines)
    assert "simgan train refused" in text and text.count("skipped: simgan train refused every refiner") == 2
    assert "[demo 7/7] writing the report" in text
    assert not os.path.exists(os.path.join(out, "refined"))
    results = json.load(open(os.path.join(out, "evaluation", "results.json")))
    assert results["folders"]["refined"] == results["folders"]["synthetic"] == os.path.join(os.path.abspath(out), "synthetic")
    downstream_scores = results["downstream"]
    assert downstream_scores["refined"]["accuracy"]["values"] == downstream_scores["synthetic"]["accuracy"]["values"]
    md = open(os.path.join(out, "report.md")).read()
    assert "simgan train refused every refiner of this run" in md and "refine-dataset --in" not in md
    assert "--refined " + os.path.join(out, "synthetic") in md

    # Continuing finds every stage done and fails the same way, report rewritten.
    again = []
    with console.copied_to(again.append), pytest.raises(UserError, match="demo finished without a refiner"):
        run_demo(out, settings=settings)
    assert sum("done by an earlier run, skipped" in line for line in again) == 6


def test_demo_presets_differ_only_in_the_simulator_rendering():
    assert {name: settings.rendering for name, settings in PRESETS.items()} == {"demo": "binary", "antialiased": "antialiased"}
    assert PRESETS["antialiased"] == DemoSettings(rendering="antialiased")
    assert "--rendering antialiased" in commands_for("d", PRESETS["antialiased"], "antialiased")["simulate"]
