"""The one exception the CLI turns into a single line and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2, before any work starts."""


def one_line(exc: BaseException) -> str:
    """An exception as one line of a record's reason: its type and first line, cut at 300."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
