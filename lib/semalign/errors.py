"""The one project error: its message names the bad value and the fix."""


class SemalignError(Exception):
    """A user-facing error. The message is one line that says what is wrong and what to do about it."""
