"""CLI: `simgan refine` (also the `refine-dataset` console script) and `simgan manifest-diff`."""

from __future__ import annotations

import json
import sys

import click

from pipeline.commands.boundary import command, verbose_option


def limit_options(command):
    """--max-* options for what one shard or sample may cost (defaults: shards.Limits)."""
    from pipeline.shards import DEFAULT_LIMITS as limits

    options = [
        ("--max-member-bytes", limits.member_bytes, "Largest tar member read; larger ones are reported."),
        ("--max-shard-bytes", limits.shard_bytes, "Largest shard file read; larger ones are reported."),
        ("--max-image-pixels", limits.image_pixels, "Largest image (width x height) decoded."),
        ("--max-label-bytes", limits.label_bytes, "Largest label JSON parsed."),
    ]
    for flag, default, text in reversed(options):
        command = click.option(flag, type=click.IntRange(min=1), default=default, show_default=True, help=text)(command)
    return command


def limits_from(max_member_bytes, max_shard_bytes, max_image_pixels, max_label_bytes):
    from pipeline.shards import Limits

    return Limits(max_member_bytes, max_shard_bytes, max_image_pixels, max_label_bytes)


@command("refine")
@click.option("--in", "in_dir", required=True, type=click.Path(), help="Folder (or s3:// prefix) of input .tar shards.")
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Folder (or s3:// prefix) for refined shards and manifests.")
@click.option("--refiner", "refiner_path", required=True, type=click.Path(), help="Refiner file (.safetensors), local or s3://.")
@click.option("--overwrite", is_flag=True, help="Start over: discard shards committed by an earlier run.")
@click.option("--allow-failures", is_flag=True, help="Accepted for compatibility; bad samples never fail the run.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1), help="Images per forward pass.")
@click.option("--address", default=None, help="Ray cluster address; default: a local Ray started for this run.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: cuda when the cluster has GPUs.")
@click.option("--stages", type=click.Choice(["fused", "split"]), default=None,
              help="How CPU refinement is spread over processes. Default on CPU: fused (one worker per CPU reads, "
                   "refines and writes whole shards); split: separate read tasks, refiner actors and write tasks, "
                   "the GPU path's stages, always used on GPU.")
@click.option("--force", is_flag=True, help="Refine even with a refiner its training run marked failed.")
@limit_options
@verbose_option
def refine(in_dir, out_dir, refiner_path, overwrite, allow_failures, batch_size, address, device, stages, force, **limits):
    """Refine every shard in --in with the refiner; one output shard and manifest per input shard.

    Re-running resumes: shards already committed in --out, and unchanged since, are
    skipped. Bad samples are skipped and reported (exit 0, with a count); exits 2,
    before writing anything, when the input as a whole is refused.
    """
    from pipeline.refine.job import refine_dataset

    refine_dataset(
        in_dir,
        out_dir,
        refiner_path,
        overwrite=overwrite,
        allow_failures=allow_failures,
        batch_size=batch_size,
        address=address,
        device=device,
        stages=stages,
        force=force,
        limits=limits_from(**limits),
    )


@command("manifest-diff")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--check-hashes", is_flag=True, help="Also report (and fail on) image hash changes.")
def manifest_diff(a, b, as_json, check_hashes):
    """Compare manifests A and B (files or folders holding them, local or s3://): keys, labels, statuses.

    Exits 0 when no label drifted, 1 otherwise.
    """
    from pipeline.refine.diff import diff_manifests

    try:
        result = diff_manifests(a, b, check_hashes=check_hashes)
    except (FileNotFoundError, KeyError, OSError) as exc:
        raise click.ClickException(f"cannot read manifests: {exc}") from None
    click.echo(json.dumps(result.to_dict(), indent=2, default=str) if as_json else result.to_text())
    sys.exit(0 if result.ok else 1)


COMMANDS = [refine, manifest_diff]


def refine_dataset_main():
    """The `refine-dataset` console script: the same command as `simgan refine`."""
    refine.main(prog_name="refine-dataset")
