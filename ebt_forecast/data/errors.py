"""Errors raised for bad user input; the CLI turns them into a message and exit code 2."""


class DataError(ValueError):
    """Bad input data: the message names the file, column, series id or value at fault."""
