"""The one exception type for bad user input: the CLI prints its message on one line and exits 2."""

from __future__ import annotations


class AblateError(Exception):
    """A user error (bad config value, missing file, impossible placement).

    The message is one line that names the bad value and the valid choices. Entry points catch it,
    print ``error: <message>`` to stderr without a traceback, write no results and exit non-zero.
    """
