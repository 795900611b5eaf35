"""Errors raised for bad input: each names the offending file and says how to fix it."""

from __future__ import annotations


class IngestError(ValueError):
    """A scan (or its label) that cannot be ingested.

    ``path`` is the file or folder at fault, ``reason`` what is wrong and ``fix`` what the user can do.
    """

    def __init__(self, path: object, reason: str, fix: str) -> None:
        self.path, self.reason, self.fix = str(path), reason, fix
        super().__init__(f"{self.path}: {reason}. Fix: {fix}")


def quarantined_error(path: object, what: str = "scan") -> IngestError:
    """The error for a case file that ingest quarantined (it holds no image), given to a command that reads it."""
    return IngestError(path, "was quarantined at ingest and holds no image",
                       f"fix the {what} (see the quarantine table) and re-run ingest")
