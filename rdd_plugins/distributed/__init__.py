"""Several processes on torch.distributed (launched by ``torchrun``), giving the numbers one gives.

``world.py`` starts and describes the process group; ``work.py`` says which rank does which piece of
work and puts the pieces back together exactly. How each command splits its work:
docs/distributed.md.
"""

from .world import World, current_world, finish_process, start_world, stop_world
from .work import block_of, dealt_to, merge_disjoint, same_everywhere

__all__ = ["World", "current_world", "finish_process", "start_world", "stop_world", "block_of", "dealt_to",
           "merge_disjoint", "same_everywhere"]
