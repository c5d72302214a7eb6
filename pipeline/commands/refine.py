"""CLI commands (placeholder: filled in by the area that owns it)."""

import click

COMMANDS = []


def refine_dataset_main():
    raise click.ClickException("refine-dataset is not implemented yet")
