"""Typed errors of the training package; each message is fit to show an admin as it is."""

from __future__ import annotations


class TrainingError(Exception):
    """Base of every training error."""


class ConfigError(TrainingError):
    """A training configuration value or file is invalid; the message names the field."""


class EvaluationDataError(TrainingError):
    """Someone tried to train on evaluation data (``<data_dir>/qa``), which must stay held out."""


class DatasetError(TrainingError):
    """A training data file is unreadable or has rows in the wrong shape."""


class NotEnoughData(TrainingError):
    """Too few usable examples to train or validate an adapter."""


class CheckpointError(TrainingError):
    """A checkpoint is missing, incomplete or does not match the run it is resumed into."""
