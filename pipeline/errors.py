"""Errors whose message is meant for the user: the CLI prints them without a traceback."""


class UserError(Exception):
    """Bad input, bad configuration, or a missing file, explained in the message."""
