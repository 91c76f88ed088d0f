"""The one exception the CLI turns into a single line and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2, before any work starts."""
