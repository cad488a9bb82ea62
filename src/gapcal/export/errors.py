"""Errors of ``gapcal export``; all are ValueErrors, so the command line reports them as one line."""

from __future__ import annotations


class ExportError(ValueError):
    """An export that cannot be done or did not prove faithful; nothing was written to OUT_DIR."""


class UnsupportedModelError(ExportError):
    """SOURCE is a model family ``gapcal export`` does not know; the message lists the supported ones."""


class NotEnoughDiskError(ExportError):
    """The disk that would hold OUT_DIR has less free space than the export needs (an estimate)."""


class ParityError(ExportError):
    """An exported graph computes something else than the PyTorch model; ``failures`` says where."""

    def __init__(self, message: str, failures: tuple = ()):
        super().__init__(message)
        self.failures = failures
