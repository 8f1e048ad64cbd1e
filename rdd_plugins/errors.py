"""Errors a user can act on: the CLI prints them as one line and exits non-zero, no traceback."""


class RddError(Exception):
    """A problem with the user's input or environment, described in one actionable line."""


class UnknownNameError(RddError, KeyError):
    """A registry name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
