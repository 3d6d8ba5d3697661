"""The few exception types syncd raises, each with a message a user can act on."""

from __future__ import annotations


class SyncdError(Exception):
    """Base class: the message is one plain line meant for the user."""


class ConfigError(SyncdError):
    """The configuration is unusable; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class CaptureFileError(SyncdError):
    """A capture file cannot be read at all (missing or corrupt header)."""


class EmptyCaptureFileError(CaptureFileError):
    """The capture file is empty: its writer stopped before writing its header."""


class OutboxError(SyncdError):
    """The outbox database cannot be opened or written."""


class StorageLimitError(SyncdError):
    """A write was refused: it would exceed a size limit or eat into the free-space reserve."""


class SourceError(SyncdError):
    """A file queued for upload can no longer be read as it was queued."""
