"""Studies: a grid of distill -> evaluate jobs from one TOML file, run as idempotent units in keyed
folders (shardable across a SLURM array), summarized in a leaderboard with protocol checks.

Modules, one job each: ``grid`` (the file, expanded into jobs), ``jobs`` (keys, folders, shards,
what a folder holds), ``preflight`` (every job's parts checked first), ``runner`` (the jobs run),
``leaderboard`` / ``markdown`` / ``plots`` (the summary), ``checks`` (gradient-masking checks).
"""

from .checks import protocol_flags
from .grid import expand, load_study
from .runner import run_study

__all__ = ["run_study", "load_study", "expand", "protocol_flags"]
