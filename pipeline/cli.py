"""The `simgan` command group. Each area's commands live in `pipeline/commands/`."""

from __future__ import annotations

import click

from pipeline.commands import data, evaluate, refine, train
from pipeline.errors import UserError
from pipeline.version import __version__


class _Group(click.Group):
    """Shows UserError as a plain message and exit code 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="simgan")
def main():
    """SimGAN dataset refinement: simulate, import real data, train, refine, evaluate."""


for _module in (data, train, refine, evaluate):
    for _command in _module.COMMANDS:
        main.add_command(_command)
