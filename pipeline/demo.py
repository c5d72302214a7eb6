"""`simgan demo`: the whole job end to end on built-in data, with progress throughout.

simulate digits -> import the real MNIST subset -> train a refiner against its
unlabelled split -> refine the synthetic shards with refine-dataset -> check with
manifest-diff that no label drifted -> evaluate on real held-out digits -> report.
When `simgan train` refuses every refiner, the demo does what a user then does: keeps
the raw synthetic data, evaluates that, says so in the report, and exits non-zero.

The stages are a table (STAGES) run by one loop. Each calls the same Python function
as its command, and the report lists the equivalent commands. A finished stage is
recorded in `demo.json`, so running the demo again with the same settings continues
where it stopped. Every stage's lines, training's and refine-dataset's included, go to
the terminal and to `demo.log`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field

from pipeline import console
from pipeline.data.digits import DEFAULT_RENDERING
from pipeline.errors import UserError
from pipeline.evaluation import downstream
from pipeline.files import write_json
from pipeline.two_sample import TWO_SAMPLE_EPOCHS

STATE = "demo.json"
LOG = "demo.log"  # every line of every stage, appended run after run
log = console.logger("pipeline.demo")
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


def commands_for(out: str, settings: DemoSettings, preset: str | None, refused: bool = False) -> dict[str, str | None]:
    """The command line equivalent to each step, for the report and the terminal. After
    a refusal (`refused`) nothing is refined or diffed (None) and the raw data is evaluated."""
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
                    "--refined", d["synthetic" if refused else "refined"], "--real-train", os.path.join(real, "train"),
                    "--real-test", os.path.join(real, "test"), "--seeds", settings.seeds,
                    "--steps", ev.steps, "--two-sample-epochs", settings.two_sample_epochs,
                    "--out", d["evaluation"]]
    return {
        "demo": _quote(["simgan", "demo", "--out", out] + (["--preset", preset] if preset else [])),
        "simulate": _quote(["simgan", "simulate", "digits", "--count", settings.synthetic_count,
                            "--out", d["synthetic"], "--seed", settings.seed, "--rendering", settings.rendering]),
        "import": _quote(["simgan", "import-real", "mnist", "--out", real, "--seed", settings.seed]),
        "train": _quote(train),
        "refine": None if refused else _quote(["refine-dataset", "--in", d["synthetic"], "--out", d["refined"],
                                               "--refiner", os.path.join(d["run"], "refiner.safetensors")]),
        "diff": None if refused else _quote(["simgan", "manifest-diff", d["synthetic"], d["refined"]]),
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


@dataclass(frozen=True)
class Plan:
    """What every stage needs: settings, commands and absolute folders (Ray workers run
    in folders of their own); once training has refused, why."""

    settings: DemoSettings
    commands: dict[str, str | None]
    folders: dict[str, str]
    refusal: str | None = None

    @property
    def kept(self) -> str:
        """The data a user goes on with: the refined shards, or the raw ones after a refusal."""
        return self.folders["synthetic" if self.refusal else "refined"]

    def real(self, split: str) -> str:
        return os.path.join(self.folders["real"], split)

    @property
    def refiner(self) -> str:
        return os.path.join(self.folders["run"], "refiner.safetensors")


# Each stage calls the same Python function as its command; what it returns, if
# anything, is kept in demo.json as the stage's outcome. The functions are imported
# when a stage runs, so the CLI can read PRESETS without loading them.


def _simulate(plan: Plan) -> None:
    from pipeline.data.simulate import simulate

    s = plan.settings
    simulate("digits", s.synthetic_count, plan.folders["synthetic"], seed=s.seed, overwrite=True,
             rendering=s.rendering)


def _import(plan: Plan) -> None:
    from pipeline.data.import_real import import_mnist

    import_mnist(plan.folders["real"], seed=plan.settings.seed, overwrite=True)


def _train(plan: Plan) -> dict | None:
    from pipeline.training import train
    from pipeline.training.job import RefinerRefused

    s = plan.settings
    try:
        train(plan.folders["synthetic"], plan.real("unlabelled"), plan.folders["run"], preset=s.train_preset,
              overrides=dict(s.train_overrides) or None, local=s.local_training)
    except RefinerRefused as refused:
        log.info(f"simgan train refused: {refused}")
        log.info("the demo goes on as a user would: it keeps the raw synthetic data, skips refine-dataset "
                 "and manifest-diff, and evaluates the raw data")
        return {"refused": str(refused)}
    return None


def _refine(plan: Plan) -> None:
    from pipeline.refine import refine_dataset

    # A refiner from an earlier, unfinished run of this stage may have committed
    # shards; the one just trained decides, so start the refined folder over.
    refine_dataset(plan.folders["synthetic"], plan.folders["refined"], plan.refiner, overwrite=True)


def _diff(plan: Plan) -> str:
    from pipeline.refine.diff import diff_manifests

    synthetic, refined = plan.folders["synthetic"], plan.folders["refined"]
    result = diff_manifests(synthetic, refined)
    log.info(result.to_text(limit=5))
    if not result.ok:
        raise UserError(f"labels drifted between {synthetic} and {refined}; see above")
    return f"no label drift ({result.rows_a} synthetic rows, {result.rows_b} refined rows)"


def _evaluate(plan: Plan) -> None:
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.evaluation.report import summary_lines

    s, d = plan.settings, plan.folders
    if plan.refusal:
        log.info("evaluating the raw synthetic data the user keeps, in the refined column too: "
                 "the refiner was refused")
    results = evaluate("digits", d["synthetic"], plan.kept, plan.real("test"), d["evaluation"],
                       real_train_dir=plan.real("train"), seeds=s.seeds, settings=s.evaluation,
                       two_sample_epochs=s.two_sample_epochs, command=plan.commands["evaluate"])
    for line in summary_lines(results):
        log.info(line)


def _train_title(s: DemoSettings) -> str:
    options = ", ".join(f"{k}={v}" for k, v in sorted(s.train_overrides.items()))
    return f"training the refiner (preset {s.train_preset}" + (f", {options}" if options else "") + ")"


SKIPPED = "skipped: simgan train refused every refiner, so nothing was refined"

# (name, title, stage): run in this order; a name in demo.json's "done" is skipped.
STAGES = [
    ("simulate", lambda s: f"simulating {s.synthetic_count} digits", _simulate),
    ("import", lambda s: "importing the real MNIST subset (unlabelled / train / test)", _import),
    ("train", _train_title, _train),
    ("refine", lambda s: "refining the synthetic shards (refine-dataset)", _refine),
    ("diff", lambda s: "checking labels with manifest-diff", _diff),
    ("evaluate", lambda s: "evaluating on real held-out digits", _evaluate),
]


def run_demo(
    out: str = "simgan-demo",
    preset: str = "demo",
    settings: DemoSettings | None = None,
    overwrite: bool = False,
) -> str:
    """Run every stage (skipping those a previous run finished); returns report.html's path.

    `settings` replaces the preset's (tests use tiny ones). Every line of every stage is
    shown and also appended to OUT/demo.log.
    """
    if settings is None:
        if preset not in PRESETS:
            raise UserError(f"unknown demo preset {preset!r}; choose from {sorted(PRESETS)}")
        settings = PRESETS[preset]
    os.makedirs(out, exist_ok=True)
    state = _load_state(out, settings, overwrite)
    plan = Plan(settings, commands_for(out, settings, preset),
                {name: os.path.join(os.path.abspath(out), name) for name in FOLDERS})
    started = time.perf_counter()
    with open(os.path.join(out, LOG), "a") as demo_log, console.copied_to(lambda line: _append(demo_log, line)):
        for number, (name, title, stage) in enumerate(STAGES, 1):
            prefix = f"[demo {number}/{len(STAGES) + 1}]"
            _run_stage(out, plan, state, name, prefix, title(settings), stage, started)
            refusal = (state.get("outcome_train") or {}).get("refused")
            if refusal and not plan.refusal:
                plan = dataclasses.replace(plan, refusal=refusal,
                                           commands=commands_for(out, settings, preset, refused=True))
        html_path = _report(out, plan, state)
    if plan.refusal:
        raise UserError(f"the demo finished without a refiner: simgan train refused every refiner of this run, "
                        f"so the raw synthetic data is kept and was evaluated (report: {os.path.abspath(html_path)}). "
                        f"{plan.refusal}")
    return html_path


def _append(handle, line: str) -> None:
    handle.write(line + "\n")
    handle.flush()  # a stage that dies still leaves its lines


def _run_stage(out: str, plan: Plan, state: dict, name: str, prefix: str, title: str, stage,
               started: float) -> None:
    # Training and refinement each start and stop a Ray of their own (pipeline.ray_session),
    # as when the commands are run one by one; nothing is left running between stages.
    if name in state["done"]:
        log.info(f"{prefix} {title}: done by an earlier run, skipped")
        return
    log.info(f"{prefix} {title} ...")
    began = time.perf_counter()
    if plan.commands[name] is None:  # a step a refused refiner leaves nothing to do for
        log.info(SKIPPED)
        outcome = SKIPPED
    else:
        log.info(f"{prefix} same as: {plan.commands[name]}")
        outcome = stage(plan)
    state["seconds"][name] = round(time.perf_counter() - began, 1)
    if outcome:
        state["outcome_" + name] = outcome
    state["done"].append(name)
    write_json(os.path.join(out, STATE), state)
    log.info(f"{prefix} {name} finished in {state['seconds'][name]} s "
             f"(demo so far {time.perf_counter() - started:.0f} s)")


def _report(out: str, plan: Plan, state: dict) -> str:
    from pipeline.evaluation.evaluate import load_results
    from pipeline.evaluation.report import write_report

    log.info(f"[demo {len(STAGES) + 1}/{len(STAGES) + 1}] writing the report ...")
    facts = {"labels checked (manifest-diff)": state.get("outcome_diff", ""),
             "step times (s)": json.dumps(state["seconds"])}
    headline = None
    if plan.refusal:
        headline = ("simgan train refused every refiner of this run (why: under Details), so nothing was "
                    "refined: the raw synthetic data is kept, and the refined column below is that raw data.")
        facts["refiner refused"] = plan.refusal
    html_path, _ = write_report(out, load_results(plan.folders["evaluation"]), train_run_dir=plan.folders["run"],
                                commands=[c for c in plan.commands.values() if c], extra=facts, headline=headline)
    log.info(f"[demo] report: {os.path.abspath(html_path)}")
    return html_path
