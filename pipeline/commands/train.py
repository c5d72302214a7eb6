"""CLI: `simgan train` (also run by `jobs/train.py` under `ray job submit`)."""

from __future__ import annotations

import click

from pipeline.commands.boundary import command, verbose_option


@command("train")
@click.option("--synthetic", "synthetic_dir", required=True, type=click.Path(), help="Folder (or s3:// prefix) of labelled synthetic .tar shards.")
@click.option("--real", "real_dir", required=True, type=click.Path(), help="Folder (or s3:// prefix) of unlabelled real .tar shards.")
@click.option("--out", "run_dir", required=True, type=click.Path(), help="Run folder: config, metrics, samples, checkpoints, refiner file.")
@click.option("--preset", default="digits", show_default=True, help="Option preset: digits, eyes or paper.")
@click.option("--config", "config_file", default=None, type=click.Path(), help="JSON or TOML file of options (applied over the preset).")
@click.option("--set", "pairs", multiple=True, metavar="KEY=VALUE", help="Override one option (repeatable), e.g. --set iterations=500.")
@click.option("--workers", default=1, show_default=True, type=int, help="Ray Train workers (DDP when more than one).")
@click.option("--address", default=None, help="Ray cluster address; default: an embedded local Ray.")
@click.option("--local", is_flag=True, help="Train in this process without Ray (same step, same outputs).")
@verbose_option
def train(synthetic_dir, real_dir, run_dir, preset, config_file, pairs, workers, address, local):
    """Train a refiner on synthetic vs real shards; writes RUN_DIR/refiner.safetensors.

    Re-running the same command resumes from the last checkpoint.
    """
    from pipeline.training import train as run_training
    from pipeline.training.config import parse_overrides

    path = run_training(
        synthetic_dir, real_dir, run_dir, preset=preset, config_file=config_file,
        overrides=parse_overrides(pairs), workers=workers, address=address, local=local,
    )
    click.echo(f"refiner written to {path}")


COMMANDS = [train]
