"""The one place a UserError becomes a command-line message: every command (in the
`simgan` group, as the `refine-dataset` script, or run by `jobs/*.py`) is built with
`command` below, so it prints one line, never a traceback, and exits with the error's
`exit_code` (1, or 2 for a refused data set)."""

from __future__ import annotations

import functools

import click

from pipeline.errors import UserError


def as_click_error(exc: UserError) -> click.ClickException:
    error = click.ClickException(str(exc))
    error.exit_code = exc.exit_code
    return error


class _Boundary:
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise as_click_error(exc) from None


class Command(_Boundary, click.Command):
    pass


class Group(_Boundary, click.Group):
    pass


command = functools.partial(click.command, cls=Command)


def _set_verbose(ctx, param, value):
    if value:
        from pipeline.ray_session import set_verbose

        set_verbose(True)


def verbose_option(function):
    """--verbose: Ray's own log lines (start-up, Ray Data and Ray Train internals) too."""
    return click.option(
        "--verbose", is_flag=True, expose_value=False, is_eager=True, callback=_set_verbose,
        help="Also show Ray's own log output (off by default).",
    )(function)
