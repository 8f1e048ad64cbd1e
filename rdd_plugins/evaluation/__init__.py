"""Evaluation: train fresh models on a distilled set, then measure clean and robust accuracy."""
