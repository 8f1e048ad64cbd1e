"""``autoattack.state``: pyautoattack's ``EvaluationState`` under fra31's module path (robustbench
1.1.1 imports ``from autoattack.state import EvaluationState``; see ``autoattack/__init__.py``)."""

from pyautoattack.state import EvaluationState

__all__ = ["EvaluationState"]
