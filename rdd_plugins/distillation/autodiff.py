"""``grad`` and ``grad_and_value`` with torch.func's signatures, run on plain autograd when no
torch.func transform is active.

Regularizers and the matching step are written once, with these, so the same code can be vmapped
over classes (on CUDA) and looped (on CPU). Looped on a CPU, torch.func's grad transform is slower
than plain autograd (docs/decisions.md), so outside a transform the same functions run on autograd:
identical math, gradients equal to float rounding.

Semantics follow torch.func: the differentiated arguments are fresh variables; the result keeps a
graph only when something outside asks for one, i.e. inside another of these grads (CURE's double
backprop) or when a non-differentiated input requires grad (the synthetic images, whose matching
loss is differentiated afterwards).
"""

from __future__ import annotations

import torch
from torch.func import grad as func_grad
from torch.func import grad_and_value as func_grad_and_value
from torch.utils._pytree import tree_flatten, tree_unflatten

_depth = 0  # how many of our autograd-based grads are running around the current call


def _transform_active() -> bool:
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:  # another torch's internals: the torch.func path is always correct
        return True


def grad_and_value(fn, argnums: int | tuple[int, ...] = 0):
    """As ``torch.func.grad_and_value(fn, argnums)``."""

    def wrapped(*args):
        global _depth
        if _transform_active():
            return func_grad_and_value(fn, argnums=argnums)(*args)
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        args = list(args)
        outer = _depth > 0 or any(t.requires_grad for i, a in enumerate(args) if i not in nums
                                  for t in tree_flatten(a)[0] if isinstance(t, torch.Tensor))
        flats = []
        for i in nums:
            leaves, spec = tree_flatten(args[i])
            # Inside another grad a variable of the outer one stays connected to it (nested
            # derivatives); otherwise it becomes a fresh leaf, as torch.func treats it.
            leaves = [t if outer and t.requires_grad else t.detach().requires_grad_(True) for t in leaves]
            args[i] = tree_unflatten(leaves, spec)
            flats.append((leaves, spec))
        with torch.enable_grad():
            _depth += 1
            try:
                value = fn(*args)
            finally:
                _depth -= 1
            inputs = [t for leaves, _ in flats for t in leaves]
            grads = torch.autograd.grad(value, inputs, create_graph=outer, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]
        out, start = [], 0
        for leaves, spec in flats:
            out.append(tree_unflatten(grads[start:start + len(leaves)], spec))
            start += len(leaves)
        result = out[0] if isinstance(argnums, int) else tuple(out)
        return result, (value if outer else value.detach())

    return wrapped


def grad(fn, argnums: int | tuple[int, ...] = 0):
    """As ``torch.func.grad(fn, argnums)``."""

    def wrapped(*args):
        if _transform_active():
            return func_grad(fn, argnums=argnums)(*args)
        return grad_and_value(fn, argnums)(*args)[0]

    return wrapped
