"""report.html and report.md: did refinement help, and the evidence.

Built from an evaluation's results.json, optionally a training run folder (for its
loss curves and last metrics) and the commands that produced them. Images sit beside
the report (grid.png, loss_curves.png, within.png) so the folder can be copied whole.
"""

from __future__ import annotations

import json
import os
import shutil

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.evaluation import document as doc  # noqa: E402
from pipeline.evaluation import images  # noqa: E402
from pipeline.evaluation.evaluate import REAL, REFINED, SYNTHETIC, refinement_gain  # noqa: E402
from pipeline.training.outputs import CURVES_FILE, SELECTION_PLOT  # noqa: E402
from pipeline.training.selection import CHOICE_FILE  # noqa: E402

REPORT_HTML, REPORT_MD = "report.html", "report.md"
GRID, WITHIN = "grid.png", "within.png"
LOSS_CURVES = CURVES_FILE
SOURCES = (SYNTHETIC, REFINED, REAL)
COLUMN = {SYNTHETIC: "trained on synthetic", REFINED: "trained on refined", REAL: "trained on real"}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _num(value: float) -> str:
    return f"{value:.2f}"


def _cell(summary: dict | None, fmt) -> str:
    if summary is None:
        return "n/a"
    if len(summary["values"]) > 1:
        return f"{fmt(summary['mean'])} ± {fmt(summary['std'])}"
    return fmt(summary["mean"])


def _rows(results: dict) -> list[tuple[str, dict, str]]:
    """(row label, {source: cell}, one-line explanation) for the paper-style table."""
    task = results["task"]
    scores = results["downstream"]
    two = results["two_sample"]
    keep = results.get("label_preservation") or {}
    feats = results.get("feature_metrics") or {}

    def row(get, fmt):
        return {s: _cell(get(s), fmt) for s in SOURCES if s in scores}

    rows = []
    if task == "digits":
        rows.append((
            "Accuracy on real held-out digits (%)",
            row(lambda s: scores[s]["accuracy"], _pct),
            "share of real held-out digits that the classifier trained on this source labels "
            "correctly; higher is better.",
        ))
    else:
        rows.append((
            "Real test images within 7° (%)",
            row(lambda s: scores[s]["within_7"], _pct),
            "share of real held-out eyes whose gaze the estimator trained on this source gets "
            "within 7 degrees (the paper's Table 2 headline); higher is better.",
        ))
        rows.append((
            "Mean angle error on real test (°)",
            row(lambda s: scores[s]["mean_angle_error"], _num),
            "mean angle between estimated and true gaze on real held-out eyes; lower is better.",
        ))
    rows.append((
        "Two-sample test: real vs this source (%)",
        row(lambda s: two[s]["accuracy"], _pct),
        "held-out accuracy of a fresh classifier trained to tell real images from this source's "
        "images; 50 % means indistinguishable from real, 100 % means trivially spotted.",
    ))
    if keep:
        name = "agreement" if task == "digits" else "mean_angle_error"
        rows.append((
            "Label preservation " + ("(%)" if task == "digits" else "(° error)"),
            row(lambda s: keep[s][name] if s in keep else None, _pct if task == "digits" else _num),
            "an estimator trained on labelled real data, applied to this source's images, "
            + ("agrees with the simulator's labels this often; " if task == "digits"
               else "misses the simulator's gaze by this angle; ")
            + "refinement must not make this worse.",
        ))
    if feats:
        rows.append((
            "Frechet distance to real test",
            row(lambda s: feats[s]["frechet_distance"], _num),
            "distance between Gaussian fits of real-test and this source's features in the "
            "penultimate layer of the real-trained estimator; lower is closer to real.",
        ))
        if task == "digits":
            rows.append((
                "Inception-score analogue",
                row(lambda s: feats[s]["inception_score"], _num),
                "exp(E KL(p(y|x) || p(y))) from the real-trained classifier: high when its "
                "predictions are confident and spread over all 10 classes (at most 10).",
            ))
    return rows


def verdict(results: dict) -> str:
    """One sentence a user reads first: did refinement help the downstream estimator?"""
    metric = results["headline"]["metric"]
    scores = results["downstream"]
    syn, ref = scores[SYNTHETIC][metric], scores[REFINED][metric]
    gain = refinement_gain(results)
    spread = max(syn["std"], ref["std"])
    what = {"accuracy": "accuracy on real held-out digits", "within_7": "real test eyes within 7°"}[metric]
    seeds = len(syn["values"])
    if gain > spread and gain > 0:
        head = "Refinement helped"
    elif gain < -spread:
        head = "Refinement hurt"
    else:
        head = "No clear effect of refinement"
    return (f"{head}: {what} {_pct(syn['mean'])} % when trained on raw synthetic images, "
            f"{_pct(ref['mean'])} % when trained on refined images ({100 * gain:+.1f} points, "
            f"mean of {seeds} seed{'s' if seeds != 1 else ''}, spread ± {_pct(spread)}).")


def realism_sentence(results: dict) -> str:
    two = results["two_sample"]
    text = (f"A classifier tells real from synthetic with {_pct(two[SYNTHETIC]['accuracy']['mean'])} % accuracy "
            f"and real from refined with {_pct(two[REFINED]['accuracy']['mean'])} % (50 % = indistinguishable).")
    keep = results.get("label_preservation")
    if keep and results["task"] == "digits":
        text += (f" A real-trained classifier agrees with the simulator's labels on "
                 f"{_pct(keep[SYNTHETIC]['agreement']['mean'])} % of synthetic and "
                 f"{_pct(keep[REFINED]['agreement']['mean'])} % of refined images.")
    return text


def summary_lines(results: dict) -> list[str]:
    """The verdict and the table as plain text, for the terminal."""
    lines = [verdict(results), realism_sentence(results)]
    for label, cells, _ in _rows(results):
        lines.append(f"  {label}: " + "; ".join(f"{COLUMN[s]} {v}" for s, v in cells.items()))
    return lines


# ------------------------------------------------------------------ figures


def sample_grid(results: dict, path: str, count: int = 8) -> list[str]:
    """Synthetic | refined | real rows; synthetic and refined show the same keys."""
    folders = results["folders"]
    keys = images.first_keys(folders[REFINED], count)
    synthetic = images.load_keys(folders[SYNTHETIC], keys)
    refined = images.load_keys(folders[REFINED], keys)
    keys = [k for k in keys if k in synthetic and k in refined]
    real_keys = images.first_keys(folders["real-test"], len(keys))
    real = images.load_keys(folders["real-test"], real_keys)
    rows = [("synthetic", [synthetic[k] for k in keys]), ("refined", [refined[k] for k in keys]),
            ("real", [real[k] for k in real_keys if k in real])]
    columns = max(1, len(keys))
    figure, axes = plt.subplots(3, columns, figsize=(1.2 * columns + 0.8, 4.0), squeeze=False)
    for r, (name, row) in enumerate(rows):
        for c in range(columns):
            axis = axes[r][c]
            axis.set_xticks([])
            axis.set_yticks([])
            if c < len(row):
                image = row[c]
                top = 65535 if image.dtype == np.uint16 else 255
                axis.imshow(image, cmap="gray", vmin=0, vmax=top, interpolation="nearest")
            else:
                axis.axis("off")
            if c == 0:
                axis.set_ylabel(name, fontsize=11)
            if r < 2 and c < len(keys):
                axis.set_title(keys[c], fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return keys


def within_curve(results: dict, path: str) -> None:
    """Share of real test eyes within d degrees, d = 5..25 (the paper's Figure 6 style)."""
    figure, axis = plt.subplots(figsize=(5, 3.5))
    degrees = list(range(5, 26))
    for source, scores in results["downstream"].items():
        means = [100 * scores[f"within_{d}"]["mean"] for d in degrees]
        axis.plot(degrees, means, marker="o", markersize=3, label=COLUMN[source])
    axis.set_xlabel("angle error (degrees)")
    axis.set_ylabel("real test images within (%)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _last_metrics(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    last = None
    with open(path) as handle:
        for line in handle:
            if line.strip():
                last = json.loads(line)
    return last


# ------------------------------------------------------------------ the report


def _facts(results: dict, train_run_dir: str | None, extra: dict | None) -> dict:
    problems = {name: len(records) for name, records in results["problems"].items() if records}
    facts = {
        "task": results["task"],
        "downstream seeds": ", ".join(str(s) for s in results["seeds"]),
        "downstream training": json.dumps(results["settings"], sort_keys=True),
        "images": ", ".join(f"{n} {c}" for n, c in results["counts"].items()),
        "unusable samples left out": json.dumps(problems) if problems else "none",
        "evaluation time": f"{results['seconds']} s",
        **(extra or {}),
    }
    if train_run_dir:
        choice_path = os.path.join(train_run_dir, CHOICE_FILE)
        if os.path.isfile(choice_path):
            with open(choice_path) as handle:
                choice = json.load(handle)
            facts["refiner selection"] = f"{choice['status']}: {choice['reason']}"
        training = _last_metrics(train_run_dir)
        if training:
            facts["last training record"] = json.dumps(training, sort_keys=True)
    return facts


def _figures(out_dir: str, results: dict, train_run_dir: str | None) -> list[tuple[str, str]]:
    """Draw or copy the report's images into `out_dir`: (file name, caption) of each."""
    figures = [(GRID, "Samples: synthetic | refined (same keys) | real held-out")]
    if results["task"] == "gaze":
        within_curve(results, os.path.join(out_dir, WITHIN))
        figures.append((WITHIN, "Real test eyes within d degrees"))
    for name, caption in ((LOSS_CURVES, "Refiner training: loss curves"),
                          (SELECTION_PLOT, "Checkpoint selection: each candidate's scores on held-out images")):
        source = os.path.join(train_run_dir, name) if train_run_dir else None
        if source and os.path.isfile(source):
            if os.path.abspath(source) != os.path.abspath(os.path.join(out_dir, name)):
                shutil.copyfile(source, os.path.join(out_dir, name))
            figures.append((name, caption))
    return figures


def report_sections(results: dict, figures: list[tuple[str, str]], grid_keys: list[str], facts: dict,
                    commands: list[str], headline: str | None = None) -> list[doc.Section]:
    """The whole report, once, for both renderings; `headline`, when given, is read first."""
    rows = _rows(results)
    sources = [s for s in SOURCES if s in results["downstream"]]
    table = doc.Table([COLUMN[s] for s in sources], [(label, [cells.get(s, "n/a") for s in sources])
                                                      for label, cells, _ in rows])
    return [
        doc.Section(None, [
            *([doc.Paragraph(headline, "verdict")] if headline else []),
            doc.Paragraph(verdict(results), "verdict"), doc.Paragraph(realism_sentence(results)), table,
            doc.Paragraph("Mean ± sample standard deviation over the downstream seeds; every estimator is "
                          "tested on the real held-out shards.", "note"),
        ]),
        doc.Section("What each metric means", [
            doc.Bullets([(label, why) for label, _, why in rows], bold_terms=True),
            doc.Paragraph("For scale, the paper (Shrivastava et al. 2017) gained 22.3 points on gaze: 64.9 % of "
                          "MPIIGaze test eyes within 7° when trained on synthetic, 87.2 % on refined.", "note"),
        ]),
        *[doc.Section(caption, [doc.Image(name, caption)]) for name, caption in figures],
        doc.Section(None, [doc.Paragraph(f"Sample keys: {', '.join(grid_keys)}", "note")]),
        doc.Section("Details", [doc.Bullets([(name, str(value)) for name, value in facts.items()])]),
        doc.Section("Commands", [doc.Code(commands)]),
        doc.Section("Versions", [doc.Bullets([(n, str(v)) for n, v in results["versions"].items()], separator=" ")]),
    ]


def write_report(
    out_dir: str,
    results: dict,
    train_run_dir: str | None = None,
    commands: list[str] | None = None,
    extra: dict | None = None,
    headline: str | None = None,
) -> tuple[str, str]:
    """Write report.html and report.md (and their images) to `out_dir`; returns both paths.

    `extra` holds further facts to list (e.g. the manifest-diff outcome, timings);
    `headline`, a sentence shown before the verdict (the demo's refusal).
    """
    os.makedirs(out_dir, exist_ok=True)
    grid_keys = sample_grid(results, os.path.join(out_dir, GRID))
    figures = _figures(out_dir, results, train_run_dir)
    commands = list(commands or ([results["command"]] if results.get("command") else []))
    sections = report_sections(results, figures, grid_keys, _facts(results, train_run_dir, extra), commands,
                               headline)
    title = f"SimGAN refinement report ({results['task']})"
    paths = os.path.join(out_dir, REPORT_HTML), os.path.join(out_dir, REPORT_MD)
    for path, text in zip(paths, (doc.to_html(title, sections, "SimGAN refinement report"),
                                  doc.to_markdown(title, sections))):
        with open(path, "w") as handle:
            handle.write(text)
    return paths
