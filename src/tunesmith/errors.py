"""The one user-facing error type.

A `UserError` is something the person running tunesmith can fix (a typo'd key, a missing file, a
malformed line). The CLI prints it on one line with its hint and exits with code 2; programming
errors still raise normally with a traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the user's config, data or command line.

    Args:
        message: what is wrong, naming the file, line or key.
        hint: how to fix it (optional).
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        """The message and hint on a single line, as the CLI prints it."""
        text = " ".join(self.message.split())
        if self.hint:
            text += f" (hint: {' '.join(self.hint.split())})"
        return text
