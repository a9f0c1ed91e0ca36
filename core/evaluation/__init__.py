"""Judging a model: metrics, split evaluation, comparison, calibration, subgroups, localization."""
