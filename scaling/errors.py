"""Errors in a user's input to the command line (not their data or spec: those have their own)."""


class UserError(ValueError):
    """Bad input from the command line itself; the CLI prints it and exits with status 2."""
