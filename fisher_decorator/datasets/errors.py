"""Errors raised by the dataset package. Every message names the file or dataset and the problem."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file or array is malformed: wrong keys, shapes, dtypes, values or episode structure."""


class UnknownDatasetError(DatasetError, KeyError):
    """A dataset or task name this package does not know; the message lists the valid choices."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(FileNotFoundError):
    """The files of a known dataset are missing; the message says how to produce or where to download them."""
