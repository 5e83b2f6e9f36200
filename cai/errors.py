"""Errors a user can fix, each saying what went wrong, where, and how to fix it.

Entry points catch :class:`CaiError` and print its message instead of a stack trace.
"""

from __future__ import annotations

from pathlib import Path


class CaiError(Exception):
    """An error caused by input or set-up, not by a bug in the code."""

    def __init__(self, what: str, where: str | Path | None = None, fix: str | None = None) -> None:
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        lines = [self.what]
        if self.where is not None:
            lines.append(f"  where: {self.where}")
        if self.fix:
            lines.append(f"  fix:   {self.fix}")
        return "\n".join(lines)


class DatasetError(CaiError):
    """A dataset root, category, image or mask is missing or malformed."""


class MissingFileError(CaiError):
    """A model checkpoint, weights file or other required artefact is absent."""


class ConfigError(CaiError):
    """A configuration value is invalid or inconsistent."""


class StorageError(CaiError):
    """A file cannot be written: the disk is full, or the folder is read-only or not permitted."""
