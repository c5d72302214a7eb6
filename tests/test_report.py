"""report.html and report.md from a real (tiny) evaluation."""

import json
import os
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import main
from pipeline.evaluation import downstream
from pipeline.evaluation.evaluate import evaluate
from pipeline.evaluation.report import verdict
from helpers.standins import soften, write_digits

TINY = downstream.TrainSettings(steps=8, batch_size=16)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    synthetic = write_digits(root / "synthetic", 60, seed=1)
    refined = soften(synthetic, root / "refined", seed=2)
    train = write_digits(root / "train", 60, seed=3, style="soft")
    test = write_digits(root / "test", 40, seed=4, style="soft")
    results = evaluate("digits", synthetic, refined, test, str(root / "eval"), real_train_dir=train, seeds=2,
                       settings=TINY, two_sample_epochs=1, command="simgan evaluate --task digits ...")
    run = root / "run"
    run.mkdir()
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(run / "loss_curves.png")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss_r": 2.0}) + "\n"
                                       + json.dumps({"step": 2, "loss_r": 1.5}) + "\n")
    return root, results


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_files_table_images_and_commands(evaluated, tmp_path):
    root, results = evaluated
    from pipeline.evaluation.report import write_report

    html_path, md_path = write_report(str(tmp_path), results, train_run_dir=str(root / "run"),
                                      commands=["simgan simulate digits ...", "simgan evaluate ..."],
                                      extra={"labels checked (manifest-diff)": "no drift"})
    page = open(html_path).read()
    parser = _Collect()
    parser.feed(page)
    assert parser.images == ["grid.png", "loss_curves.png"]
    for name in parser.images:
        assert Image.open(tmp_path / name).size[0] > 0
    text = " ".join(parser.text)
    assert verdict(results) in text
    assert "Two-sample test: real vs this source (%)" in text
    assert "50 % means indistinguishable" in text
    assert "simgan simulate digits ..." in text and "no drift" in text
    assert '"loss_r": 1.5' in text  # the last training record
    md = open(md_path).read()
    header = "| | trained on synthetic | trained on refined | trained on real |"
    assert header in md
    accuracy_row = next(line for line in md.splitlines() if line.startswith("| Accuracy on real held-out"))
    syn = results["downstream"]["synthetic"]["accuracy"]
    assert f"{100 * syn['mean']:.1f} ± {100 * syn['std']:.1f}" in accuracy_row
    assert "![Samples: synthetic | refined (same keys) | real held-out](grid.png)" in md
    # The grid shows synthetic and refined images of the same keys.
    assert "Sample keys: d00000, d00001" in md
    assert results["versions"]["torch"] in md


def test_verdict_reads_the_gain_against_the_spread():
    def results(syn, ref):
        summary = lambda values: {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)),
                                  "values": values}
        return {"headline": {"metric": "accuracy"},
                "downstream": {"synthetic": {"accuracy": summary(syn)}, "refined": {"accuracy": summary(ref)}}}

    helped = verdict(results([0.60, 0.62, 0.61], [0.80, 0.82, 0.81]))
    assert helped.startswith("Refinement helped") and "+20.0 points" in helped and "3 seeds" in helped
    assert verdict(results([0.80, 0.82, 0.81], [0.60, 0.62, 0.61])).startswith("Refinement hurt")
    assert verdict(results([0.60, 0.70, 0.65], [0.62, 0.71, 0.66])).startswith("No clear effect")


def test_report_command_writes_beside_results(evaluated):
    root, _ = evaluated
    result = CliRunner().invoke(main, ["report", "--results", str(root / "eval"), "--train-run", str(root / "run")])
    assert result.exit_code == 0, result.output
    assert os.path.isfile(root / "eval" / "report.html") and os.path.isfile(root / "eval" / "report.md")
    assert "report: " in result.output
    missing = CliRunner().invoke(main, ["report", "--results", str(root / "nothing")])
    assert missing.exit_code == 1 and "run `simgan evaluate` first" in missing.output
