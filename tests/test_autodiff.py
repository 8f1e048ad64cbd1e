"""autodiff.grad / grad_and_value: torch.func's results and semantics, on autograd outside vmap."""

import torch
import torch.func

from rdd_plugins.distillation import autodiff


def f(p, x):
    return (torch.tanh(x @ p["w"]) ** 2).sum() + (p["b"] * x.sum()).sum()


def params():
    torch.manual_seed(0)
    return {"w": torch.randn(3, 2), "b": torch.randn(2)}, torch.randn(4, 3)


def close(a, b):
    fa, _ = torch.utils._pytree.tree_flatten(a)
    fb, _ = torch.utils._pytree.tree_flatten(b)
    return len(fa) == len(fb) and all(torch.allclose(u, v, atol=1e-6) for u, v in zip(fa, fb))


def test_first_order_matches_torch_func_and_keeps_no_graph():
    p, x = params()
    ours, value = autodiff.grad_and_value(f, argnums=(0, 1))(p, x)
    theirs, their_value = torch.func.grad_and_value(f, argnums=(0, 1))(p, x)
    assert close(ours, theirs) and torch.allclose(value, their_value)
    assert not any(t.requires_grad for t in (*ours[0].values(), ours[1], value))
    assert close(autodiff.grad(f)(p, x), torch.func.grad(f)(p, x))


def test_nested_grad_is_the_double_backprop_of_torch_func():
    p, x = params()

    def penalty(q):  # CURE-like: a parameter-gradient of an input-gradient norm
        return autodiff.grad(lambda xx: f(q, xx), argnums=0)(x).norm()

    def func_penalty(q):
        return torch.func.grad(lambda xx: f(q, xx), argnums=0)(x).norm()

    assert close(autodiff.grad(penalty)(p), torch.func.grad(func_penalty)(p))


def test_result_stays_differentiable_in_an_input_that_requires_grad():
    """The synthetic side: gradients w.r.t. parameters, then differentiated w.r.t. the images."""
    p, x = params()
    x1 = x.clone().requires_grad_(True)
    (ours,) = torch.autograd.grad(sum(g.sum() for g in autodiff.grad(f)(p, x1).values()), x1)
    x2 = x.clone().requires_grad_(True)
    (theirs,) = torch.autograd.grad(sum(g.sum() for g in torch.func.grad(f)(p, x2).values()), x2)
    assert torch.allclose(ours, theirs, atol=1e-6) and ours.abs().sum() > 0


def test_under_vmap_it_is_torch_func():
    p, _ = params()
    xs = torch.randn(5, 4, 3)
    ours = torch.func.vmap(autodiff.grad(f), in_dims=(None, 0))(p, xs)
    theirs = torch.func.vmap(torch.func.grad(f), in_dims=(None, 0))(p, xs)
    assert close(ours, theirs) and ours["w"].shape == (5, 3, 2)


def test_works_under_no_grad():
    p, x = params()
    with torch.no_grad():
        assert close(autodiff.grad(f)(p, x), torch.func.grad(f)(p, x))
