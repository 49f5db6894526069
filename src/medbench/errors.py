"""The one exception type users see: its message is a complete, actionable sentence."""


class MedbenchError(Exception):
    """A user-facing error: bad input, missing data, unknown name. The CLI prints it as one line."""


class InvalidScoresError(MedbenchError, ValueError):
    """Scores no metric can be computed from (NaN or infinite values). A ``ValueError`` for library callers,
    and a one-line error on the command line."""
