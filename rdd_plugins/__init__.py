"""rdd-plugins: robust dataset distillation as a pluggy plugin ecosystem.

Python API: :func:`distill`, :func:`evaluate`, :func:`compare`, :func:`benchmark`,
:func:`import_set`, :func:`study`, :func:`load_distilled`, :func:`get_registry`.
Importing the package does no work; plugins load on first use.
"""

from .errors import RddError
from .plugins import get_registry, hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "get_registry", "distill", "evaluate", "compare", "benchmark", "import_set",
           "study", "load_distilled", "RddError"]


def __getattr__(name):
    if name in ("distill", "evaluate", "compare", "benchmark", "import_set", "study", "load_distilled"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'rdd_plugins' has no attribute {name!r}")
