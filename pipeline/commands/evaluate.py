"""`simgan evaluate`, `simgan turing-test` and `simgan report`."""

from __future__ import annotations

import shlex

import click

from pipeline.commands.boundary import command
from pipeline.evaluation import downstream


def _command_line() -> str:
    """The running command with every option it was given, for the results and the report.

    Rebuilt from click's parsed parameters rather than sys.argv, which holds something
    else when the command is invoked from Python (a test runner, the demo).
    """
    ctx = click.get_current_context()
    parts = ["simgan", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if not isinstance(param, click.Option) or value is None or value == () or value is False:
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            parts.append(flag)
            continue
        for item in value if param.multiple else [value]:
            parts += [flag, str(item)]
    return " ".join(shlex.quote(part) for part in parts)


@command()
@click.option("--task", type=click.Choice(downstream.TASKS), default="digits", show_default=True,
              help="digits: CNN classifier, accuracy; gaze: the paper's gaze CNN, angle error.")
@click.option("--synthetic", "synthetic_dir", required=True, type=click.Path(file_okay=False),
              help="Raw simulator shards (labelled).")
@click.option("--refined", "refined_dir", required=True, type=click.Path(file_okay=False),
              help="The same shards after refine-dataset.")
@click.option("--real-train", "real_train_dir", type=click.Path(file_okay=False),
              help="Labelled real training shards: the 'trained on real' baseline, label "
                   "preservation and the feature-space metrics need them.")
@click.option("--real-test", "real_test_dir", required=True, type=click.Path(file_okay=False),
              help="Labelled real held-out shards every estimator is tested on.")
@click.option("--seeds", default=3, show_default=True, help="Downstream seeds (mean and spread over them).")
@click.option("--steps", type=int, default=None, help="Training steps per estimator [default: 400].")
@click.option("--two-sample-epochs", type=int, default=None,
              help="Training epochs of the real-vs-X classifier [default: 8].")
@click.option("--gaze-model", type=click.Choice(sorted(downstream.GAZE_SPECS)), default="paper",
              show_default=True, help="Gaze CNN width (paper = the network of Shrivastava et al.).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for results.json.")
def evaluate(task, synthetic_dir, refined_dir, real_train_dir, real_test_dir, seeds, steps, two_sample_epochs,
             gaze_model, out_dir):
    """Train the same downstream estimator on synthetic, refined (and real) shards; test on real."""
    from pipeline.evaluation.evaluate import evaluate as run_evaluation
    from pipeline.two_sample import TWO_SAMPLE_EPOCHS
    from pipeline.evaluation.report import summary_lines

    defaults = downstream.TrainSettings()
    settings = downstream.TrainSettings(steps=steps or defaults.steps, gaze_model=gaze_model)
    results = run_evaluation(
        task, synthetic_dir, refined_dir, real_test_dir, out_dir, real_train_dir=real_train_dir,
        seeds=seeds, settings=settings, two_sample_epochs=two_sample_epochs or TWO_SAMPLE_EPOCHS,
        command=_command_line(),
    )
    for line in summary_lines(results):
        click.echo(line)


@command()
@click.option("--results", "results_path", required=True, type=click.Path(),
              help="An evaluation's results.json or the folder holding it.")
@click.option("--train-run", "train_run_dir", type=click.Path(file_okay=False),
              help="The refiner's training run folder, for its loss curves.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Where report.html and report.md go [default: beside results.json].")
def report(results_path, train_run_dir, out_dir):
    """Write report.html and report.md: the table, sample grid, loss curves, metrics."""
    import os

    from pipeline.evaluation.evaluate import load_results
    from pipeline.evaluation.report import write_report

    results = load_results(results_path)
    if out_dir is None:
        out_dir = results_path if os.path.isdir(results_path) else os.path.dirname(results_path) or "."
    commands = [c for c in (results.get("command"), _command_line()) if c]
    html_path, md_path = write_report(out_dir, results, train_run_dir=train_run_dir, commands=commands)
    click.echo(f"report: {html_path}")
    click.echo(f"        {md_path}")


@command("turing-test")
@click.option("--real", "real_dir", type=click.Path(file_okay=False), help="Real image shards.")
@click.option("--refined", "refined_dir", type=click.Path(file_okay=False), help="Refined image shards.")
@click.option("--answers", "answer_files", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="JSON-lines answers file; answers are appended, so raters can stop and continue. "
                   "With --summary, give it several times to pool raters.")
@click.option("--port", default=8400, show_default=True, help="Port on 127.0.0.1 (0 picks a free one).")
@click.option("--count", default=100, show_default=True, help="Images per rater, half real, half refined.")
@click.option("--seed", default=0, show_default=True, help="Chooses the images (same for every rater).")
@click.option("--summary", is_flag=True, help="Print the pooled confusion matrix and p-value, serve nothing.")
def turing_test(real_dir, refined_dir, answer_files, port, count, seed, summary):
    """Visual Turing test: people tell real from refined images in the browser, one at a time."""
    from pipeline.evaluation import turing

    if summary:
        click.echo(turing.summary_text(turing.summarise(turing.read_answers(list(answer_files)))))
        return
    if not real_dir or not refined_dir:
        raise click.UsageError("--real and --refined are needed to run the test (or use --summary)")
    if len(answer_files) > 1:
        raise click.UsageError("give one --answers file to record into (several only with --summary)")
    test = turing.TuringTest(real_dir, refined_dir, answer_files[0], count=count, seed=seed)
    server = turing.make_server(test, port)
    host, bound = server.server_address[:2]
    click.echo(f"visual Turing test with {len(test.items)} images: open http://{host}:{bound}/ "
               f"(answers go to {answer_files[0]}; Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    click.echo(turing.summary_text(test.summary()))


COMMANDS = [evaluate, turing_test, report]
