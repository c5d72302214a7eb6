"""The `simgan` command group. Each area's commands live in `pipeline/commands/`.

A UserError ends any command with its message on one line and no traceback: exit
code 1, or 2 when a data set is refused as a whole (see `commands/boundary.py`).
"""

from __future__ import annotations

import click

from pipeline.commands import boundary, data, demo, evaluate, refine, train
from pipeline.version import __version__


@click.group(cls=boundary.Group)
@click.version_option(__version__, prog_name="simgan")
def main():
    """SimGAN dataset refinement: simulate, import real data, train, refine, evaluate."""


for _module in (data, train, refine, evaluate, demo):
    for _command in _module.COMMANDS:
        main.add_command(_command)
