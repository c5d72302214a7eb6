"""`simgan demo`: every stage in one command (pipeline/demo.py)."""

from __future__ import annotations

import click

from pipeline.commands.boundary import command, verbose_option
from pipeline.demo import PRESETS


@command()
@click.option("--out", "out_dir", default="simgan-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for everything the demo writes.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="demo", show_default=True,
              help="demo: binary-rendered digits; antialiased: the same on the MNIST-tuned rendering.")
@click.option("--overwrite", is_flag=True, help="Start over instead of continuing an earlier run in --out.")
@verbose_option
def demo(out_dir, preset, overwrite):
    """Simulate, import MNIST, train, refine, check labels, evaluate, report: all in one."""
    from pipeline.demo import run_demo

    run_demo(out_dir, preset, overwrite=overwrite)


COMMANDS = [demo]
