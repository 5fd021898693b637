"""The exceptions that the CLI turns into a one-line message.

Raise a :class:`MnemetaError` subclass for anything a *user* can fix (a missing folder, a bad
flag, a checkpoint from another run). Its message must say what was wrong and how to fix it.
Every constructor raises the same way: a bad argument to a learner, a backbone or a store is a
:class:`ConfigError` whether it came from a TOML file, ``--set`` or Python. Bugs stay ordinary
exceptions so that they keep their tracebacks.

``ConfigError`` also derives from ``ValueError`` (and ``DataError`` from ``ValueError``) so that
code written against the built-in types keeps working.
"""

from __future__ import annotations


class MnemetaError(Exception):
    """A user-facing error: the message names the problem and the fix."""


class ConfigError(MnemetaError, ValueError):
    """A setting is unknown, of the wrong type or out of range (TOML, ``--set`` or Python)."""


class DataError(MnemetaError, ValueError):
    """A data set is missing, damaged or not what the config says."""


class CheckpointError(MnemetaError):
    """A checkpoint is missing, damaged, foreign, or does not fit the model it describes."""


class StoreError(MnemetaError):
    """A task memory is missing, damaged, locked or was written for other shapes."""


class RunFolderError(MnemetaError):
    """A run folder cannot be used: not writable, in use by another process, or holding a run
    that the new one would replace unasked."""


class TrainingInterrupted(MnemetaError):
    """Training stopped on a signal after writing a checkpoint. The CLI exits with
    ``exit_code`` (128 + the signal's number: 130 for Ctrl-C, 143 for ``kill``)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DistributedError(MnemetaError):
    """A multi-process run (torchrun) cannot start or continue: a rank died, hung or failed, a
    collective timed out, or the launch settings do not fit the run."""
