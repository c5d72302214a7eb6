"""Errors whose message is meant for the user: the CLI prints them without a traceback."""


class UserError(Exception):
    """Bad input, bad configuration, or a missing file, explained in the message.

    `exit_code` is what a command exits with when it stops on this error: 1 for a
    refusal, 2 for a data set refused as a whole (`shards.BadDataset`).
    """

    exit_code = 1
