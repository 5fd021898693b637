"""The one exception type that the CLI turns into a one-line message.

Raise :class:`MnemetaError` for anything a *user* can fix (a missing folder, a bad flag, a
checkpoint from another run). Its message must say what was wrong and how to fix it. Bugs stay
ordinary exceptions so that they keep their tracebacks.
"""

from __future__ import annotations


class MnemetaError(Exception):
    """A user-facing error: the message names the problem and the fix."""
