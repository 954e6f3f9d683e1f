"""The one exception type for user-facing errors.

Library code raises :class:`DDSecError` (or a subclass) with a one-line message that says what
is wrong and how to fix it. The CLI turns it into that line on stderr and exit code 1.
"""


class DDSecError(Exception):
    """A user error or an unusable input: the message is shown to the user as is."""


class DataNotFoundError(DDSecError):
    """Dataset files are missing from the data root."""


class FormatError(DDSecError):
    """A file is not a valid ddsec file (truncated, foreign or inconsistent)."""


class NonFiniteError(DDSecError):
    """Training produced NaN or inf values."""
