"""The one exception type users see: its message is a complete, actionable sentence."""


class MedbenchError(Exception):
    """A user-facing error: bad input, missing data, unknown name. The CLI prints it as one line."""
