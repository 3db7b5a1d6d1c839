"""The project's error family: what the CLI reports as one line (a real bug keeps its traceback)."""

from __future__ import annotations

__all__ = ["DistilrubertError", "TrainingDiverged"]


class DistilrubertError(Exception):
    """A problem with the user's input, environment or data that one line can explain."""


class TrainingDiverged(DistilrubertError, RuntimeError):
    """The loss became NaN/inf (or exploded) and the run stopped; the last good checkpoint is kept."""
