"""`simgan demo`: the whole job end to end on built-in data, with progress throughout.

simulate digits -> import the real MNIST subset -> train a refiner against its
unlabelled split -> refine the synthetic shards with refine-dataset -> check with
manifest-diff that no label drifted -> evaluate on real held-out digits -> report.

Each step calls the same Python function as its command, and the report lists the
equivalent commands. A finished step is recorded in `demo.json`, so running the demo
again with the same settings continues where it stopped. The stages are imported when
they run, so the CLI can read PRESETS without loading them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from pipeline.data.digits import DEFAULT_RENDERING
from pipeline.errors import UserError
from pipeline.evaluation import downstream
from pipeline.files import write_json
from pipeline.two_sample import TWO_SAMPLE_EPOCHS

STATE = "demo.json"
FOLDERS = ("synthetic", "real", "run", "refined", "evaluation")


@dataclass(frozen=True)
class DemoSettings:
    """What a demo preset decides. The evaluation's own settings are the same for every
    preset (`simgan evaluate`'s defaults): a preset may train a better refiner, it may
    not change how the refiner is judged."""

    synthetic_count: int = 10000
    rendering: str = DEFAULT_RENDERING  # the digit simulator's (`simgan simulate --rendering`)
    train_preset: str = "digits"
    train_overrides: dict = field(default_factory=dict)
    local_training: bool = False  # False: Ray Train, as `simgan train` runs by default
    seeds: int = 3
    evaluation: downstream.TrainSettings = downstream.TrainSettings()
    two_sample_epochs: int = TWO_SAMPLE_EPOCHS
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # Fits the 15-minute budget on 2 CPU cores: the training preset's own schedule.
    # Longer training was tried (600 and 1200 adversarial iterations) and did not help
    # accuracy on real digits, so there is no slower "quality" preset.
    "demo": DemoSettings(),
    # The same run on the simulator's MNIST-tuned rendering: what refinement adds when
    # the appearance is already matched by hand.
    "antialiased": DemoSettings(rendering="antialiased"),
}


def _quote(parts: list) -> str:
    return " ".join(shlex.quote(str(part)) for part in parts)


def commands_for(out: str, settings: DemoSettings, preset: str | None) -> dict[str, str]:
    """The command line equivalent to each step, for the report and the terminal."""
    d = {name: os.path.join(out, name) for name in FOLDERS}
    real = d["real"]
    train = ["simgan", "train", "--synthetic", d["synthetic"], "--real", os.path.join(real, "unlabelled"),
             "--out", d["run"], "--preset", settings.train_preset]
    for key, value in sorted(settings.train_overrides.items()):
        train += ["--set", f"{key}={value}"]
    if settings.local_training:
        train.append("--local")
    ev = settings.evaluation
    evaluate_cmd = ["simgan", "evaluate", "--task", "digits", "--synthetic", d["synthetic"],
                    "--refined", d["refined"], "--real-train", os.path.join(real, "train"),
                    "--real-test", os.path.join(real, "test"), "--seeds", settings.seeds,
                    "--steps", ev.steps, "--two-sample-epochs", settings.two_sample_epochs,
                    "--out", d["evaluation"]]
    return {
        "demo": _quote(["simgan", "demo", "--out", out] + (["--preset", preset] if preset else [])),
        "simulate": _quote(["simgan", "simulate", "digits", "--count", settings.synthetic_count,
                            "--out", d["synthetic"], "--seed", settings.seed, "--rendering", settings.rendering]),
        "import": _quote(["simgan", "import-real", "mnist", "--out", real, "--seed", settings.seed]),
        "train": _quote(train),
        "refine": _quote(["refine-dataset", "--in", d["synthetic"], "--out", d["refined"],
                          "--refiner", os.path.join(d["run"], "refiner.safetensors")]),
        "diff": _quote(["simgan", "manifest-diff", d["synthetic"], d["refined"]]),
        "evaluate": _quote(evaluate_cmd),
        "report": _quote(["simgan", "report", "--results", d["evaluation"], "--train-run", d["run"],
                          "--out", out]),
    }


def _load_state(out: str, settings: DemoSettings, overwrite: bool) -> dict:
    path = os.path.join(out, STATE)
    wanted = json.loads(json.dumps(settings.to_dict()))
    if os.path.exists(path) and not overwrite:
        with open(path) as handle:
            state = json.load(handle)
        if state.get("settings") != wanted:
            raise UserError(
                f"{out} holds a demo run made with other settings; pass --overwrite to start "
                "over there, or choose another --out"
            )
        return state
    if overwrite:
        for name in FOLDERS:
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    return {"settings": wanted, "done": [], "seconds": {}}


def run_demo(
    out: str = "simgan-demo",
    preset: str = "demo",
    settings: DemoSettings | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> str:
    """Run every step (skipping those a previous run finished); returns report.html's path.

    `settings` replaces the preset's (tests use tiny ones).
    """
    if settings is None:
        if preset not in PRESETS:
            raise UserError(f"unknown demo preset {preset!r}; choose from {sorted(PRESETS)}")
        settings = PRESETS[preset]
    os.makedirs(out, exist_ok=True)
    state = _load_state(out, settings, overwrite)
    commands = commands_for(out, settings, preset)
    # Absolute paths for the work itself: Ray workers run in folders of their own.
    d = {name: os.path.join(os.path.abspath(out), name) for name in FOLDERS}
    real = {name: os.path.join(d["real"], name) for name in ("unlabelled", "train", "test")}
    refiner_path = os.path.join(d["run"], "refiner.safetensors")
    began = time.perf_counter()
    facts: dict = {}

    def simulate_step():
        from pipeline.data.simulate import simulate

        simulate("digits", settings.synthetic_count, d["synthetic"], seed=settings.seed, overwrite=True,
                 progress=log, rendering=settings.rendering)

    def import_step():
        from pipeline.data.import_real import import_mnist

        import_mnist(d["real"], seed=settings.seed, overwrite=True, progress=log)

    def train_step():
        from pipeline.training import train

        train(d["synthetic"], real["unlabelled"], d["run"], preset=settings.train_preset,
              overrides=dict(settings.train_overrides) or None, local=settings.local_training)

    def refine_step():
        from pipeline.refine import refine_dataset

        # A refiner from an earlier, unfinished run of this step may have committed
        # shards; the one just trained decides, so start the refined folder over.
        refine_dataset(d["synthetic"], d["refined"], refiner_path, overwrite=True)

    def diff_step():
        from pipeline.refine.diff import diff_manifests

        result = diff_manifests(d["synthetic"], d["refined"])
        log(result.to_text(limit=5))
        if not result.ok:
            raise UserError(f"labels drifted between {d['synthetic']} and {d['refined']}; see above")
        return f"no label drift ({result.rows_a} synthetic rows, {result.rows_b} refined rows)"

    def evaluate_step():
        from pipeline.evaluation.evaluate import evaluate
        from pipeline.evaluation.report import summary_lines

        results = evaluate("digits", d["synthetic"], d["refined"], real["test"], d["evaluation"],
                           real_train_dir=real["train"], seeds=settings.seeds, settings=settings.evaluation,
                           two_sample_epochs=settings.two_sample_epochs, command=commands["evaluate"], log=log)
        for line in summary_lines(results):
            log(line)

    steps = [
        ("simulate", f"simulating {settings.synthetic_count} digits", simulate_step),
        ("import", "importing the real MNIST subset (unlabelled / train / test)", import_step),
        ("train", f"training the refiner (preset {settings.train_preset}"
                  + (", " + ", ".join(f"{k}={v}" for k, v in sorted(settings.train_overrides.items()))
                     if settings.train_overrides else "") + ")", train_step),
        ("refine", "refining the synthetic shards (refine-dataset)", refine_step),
        ("diff", "checking labels with manifest-diff", diff_step),
        ("evaluate", "evaluating on real held-out digits", evaluate_step),
    ]
    # Training and refinement each start and stop a Ray of their own (pipeline.ray_session),
    # as when the commands are run one by one; nothing is left running between steps.
    for number, (name, title, action) in enumerate(steps, 1):
        prefix = f"[demo {number}/{len(steps) + 1}]"
        if name in state["done"]:
            log(f"{prefix} {title}: done by an earlier run, skipped")
            continue
        log(f"{prefix} {title} ...")
        log(f"{prefix} same as: {commands[name]}")
        tick = time.perf_counter()
        outcome = action()
        state["seconds"][name] = round(time.perf_counter() - tick, 1)
        if outcome:
            state["outcome_" + name] = outcome
        state["done"].append(name)
        write_json(os.path.join(out, STATE), state)
        log(f"{prefix} {name} finished in {state['seconds'][name]} s "
            f"(demo so far {time.perf_counter() - began:.0f} s)")

    log(f"[demo {len(steps) + 1}/{len(steps) + 1}] writing the report ...")
    from pipeline.evaluation.evaluate import load_results
    from pipeline.evaluation.report import write_report

    facts["labels checked (manifest-diff)"] = state.get("outcome_diff", "")
    facts["step times (s)"] = json.dumps(state["seconds"])
    html_path, _ = write_report(out, load_results(d["evaluation"]), train_run_dir=d["run"],
                                commands=[commands[name] for name in commands], extra=facts)
    log(f"[demo] report: {os.path.abspath(html_path)}")
    return html_path

