"""Offline training: data preparation, models, evaluation and jobs."""
