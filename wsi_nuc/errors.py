"""The one error type users see: bad input or usage, mapped by the CLI to exit code 2."""


class InputError(Exception):
    """Bad input or usage. The message names the file and the cause, on one line."""
