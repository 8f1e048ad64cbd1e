"""The torchattacks integration: every attack keeps the evaluation's contract and actually attacks.

Tiny models on 1x8x8 images keep the file to seconds on a CPU; the few-step parameters are only
for speed, the defaults are exercised where the attack is cheap enough (AutoAttack on 8 points).
"""

import inspect
import re
import time

import pytest
import torch
from rdd_integrations.torchattacks_attacks import keep_within_budget
from torch import nn

import rdd_plugins
from rdd_plugins.errors import RddError

L2_ATTACKS = {"pgd-l2", "cw", "autoattack-l2"}
ALL_ATTACKS = {"fgsm", "pgd", "pgd-l2", "cw", "apgd-ce", "apgd-t", "fab", "square", "autoattack",
               "autoattack-l2", "mifgsm", "jitter"}
# Few steps / queries: enough to exercise each attack, small enough for a CPU test.
FAST = {
    "fgsm": {},
    "pgd": {"steps": 5},
    "pgd-l2": {"steps": 5},
    "cw": {"steps": 20, "lr": 0.05},
    "apgd-ce": {"steps": 10},
    "apgd-t": {"steps": 10, "n_target_classes": 2},
    "fab": {"steps": 10},
    "square": {"n_queries": 50},
    "autoattack": {"steps": 5, "n_queries": 50},
    "autoattack-l2": {"steps": 5, "n_queries": 50},
    "mifgsm": {"steps": 5},
    "jitter": {},
}
N_CLASSES = 4


class Normalized(nn.Module):
    """Takes [0, 1] images and normalizes inside, as the project's backbones do."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body((x - 0.5) / 0.25)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Ops on 8x8 batches are too small to split, and on a busy CPU each op would wait for the
    second thread; see docs/decisions.md."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_conv(n_classes=N_CLASSES):
    torch.manual_seed(0)
    return Normalized(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(4 * 8 * 8, n_classes))).eval()


def separable_data(n=64, seed=0):
    """Four classes, each a fixed random +-0.2 pattern around grey at a random contrast in
    [0.3, 1], plus noise: separable, with margins that vary from point to point."""
    protos = torch.randint(0, 2, (N_CLASSES, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 0.4 - 0.2
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % N_CLASSES
    contrast = 0.3 + 0.7 * torch.rand(n, 1, 1, 1, generator=g)
    x = (0.5 + contrast * protos[y] + 0.1 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


def train_linear():
    """A linear model that separates ``separable_data`` almost perfectly, cheap enough to train per module."""
    torch.manual_seed(0)
    model = Normalized(nn.Sequential(nn.Flatten(), nn.Linear(64, N_CLASSES)))
    x, y = separable_data(256, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    x_test, y_test = separable_data(64, seed=2)
    with torch.no_grad():
        assert (model(x_test).argmax(1) == y_test).float().mean() >= 0.95
    return model, x_test, y_test


@pytest.fixture(scope="module")
def trained():
    return train_linear()


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def create(name, model, eps, **params):
    return rdd_plugins.get_registry().create("attacks", name, model, eps, **params)


def norm_of(delta, name):
    flat = delta.flatten(1)
    return flat.norm(dim=1) if name in L2_ATTACKS else flat.abs().amax(1)


def assert_in_ball(x, x_adv, eps, name):
    """The evaluation's own check: [0, 1], and the eps ball of the attack's threat model."""
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    size = norm_of(x_adv - x, name)
    allowed = eps * (1 + 1e-4) + 1e-6 if name in L2_ATTACKS else eps + 1e-6
    assert (size <= allowed).all(), f"{name}: {size.max().item()} > {eps}"


def test_every_attack_is_registered_with_its_threat_model():
    registry = rdd_plugins.get_registry()
    assert ALL_ATTACKS <= set(registry.names("attacks"))
    for name in ALL_ATTACKS:
        entry = registry.get("attacks", name)
        assert entry.plugin == "torchattacks" and entry.description
        assert getattr(entry.factory, "threat_model", "Linf") == ("L2" if name in L2_ATTACKS else "Linf"), name



@pytest.mark.parametrize("name", sorted(ALL_ATTACKS))
def test_description_states_every_keyword_default_of_the_factory(name):
    # The description is read from the signature, so `rdd plugins` cannot show a stale default.
    entry = rdd_plugins.get_registry().get("attacks", name)
    for param in inspect.signature(entry.factory).parameters.values():
        if param.kind is not param.KEYWORD_ONLY:
            continue
        stated = f"{param.name}=" if param.default is None else f"{param.name}={param.default}"
        assert re.search(rf"\b{re.escape(stated)}", entry.description), (name, stated, entry.description)


@pytest.mark.parametrize("name", ["pgd", "pgd-l2", "mifgsm", "jitter"])
def test_a_step_left_unset_is_the_step_the_description_states(name):
    # alpha=None stands for a rule of eps and steps; the description's rule must be the one taken.
    entry = rdd_plugins.get_registry().get("attacks", name)
    rule = re.search(r"\balpha=([^,;]+)", entry.description).group(1)
    eps, steps = 8 / 255, inspect.signature(entry.factory).parameters["steps"].default
    attack = create(name, tiny_conv(), eps)._build(None)
    assert attack.alpha == pytest.approx(eval(rule, {"__builtins__": {}}, {"eps": eps, "steps": steps}))

@pytest.mark.parametrize("name", sorted(ALL_ATTACKS))
def test_attack_keeps_the_contract(name):
    model = tiny_conv()
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    x[0] = 0.0  # saturated pixels: CW works in tanh space, where 0 and 1 map to infinity
    x[1] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)  # every point correct, so every attack has work to do
    eps = 0.5 if name in L2_ATTACKS else 8 / 255
    torch.manual_seed(0)
    x_adv = create(name, model, eps, **FAST[name])(x, y)
    assert isinstance(x_adv, torch.Tensor) and not x_adv.requires_grad
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert torch.isfinite(x_adv).all()
    assert_in_ball(x, x_adv, eps, name)


@pytest.mark.parametrize("name", sorted(ALL_ATTACKS))
def test_attack_breaks_a_trained_model_at_a_large_eps(name, trained):
    """Linf 0.3 / L2 3.0 are far beyond this model's margins, and the model classifies these points
    almost all correctly: a working attack breaks nearly every point, one that does nothing none."""
    model, x, y = trained
    eps = 3.0 if name in L2_ATTACKS else 0.3
    # Square keeps AutoAttack's p-schedule (made for 5000 queries); 1000 queries break this model.
    params = {**FAST[name], "n_queries": 1000} if "n_queries" in FAST[name] else FAST[name]
    torch.manual_seed(0)
    x_adv = create(name, model, eps, **params)(x, y)
    assert_in_ball(x, x_adv, eps, name)
    # torchattacks' Jitter returns its last iterate, and its loss, divided by the perturbation size
    # once a point is misclassified, can walk it back across the boundary: ~12% survive here.
    assert accuracy(model, x_adv, y) <= (0.5 if name == "jitter" else 0.1), name


def test_pgd_beats_fgsm_and_more_steps_do_not_hurt(trained):
    model, x, y = trained
    eps = 0.1  # about half the points survive FGSM
    torch.manual_seed(0)
    fgsm_acc = accuracy(model, create("fgsm", model, eps)(x, y), y)
    torch.manual_seed(0)
    pgd_acc = accuracy(model, create("pgd", model, eps, steps=20)(x, y), y)
    assert 0.0 < fgsm_acc < 1.0
    assert pgd_acc <= fgsm_acc


@pytest.mark.parametrize("name, eps", [("cw", 1e-4), ("fab", 1e-4)])
def test_minimum_norm_attacks_return_clean_images_beyond_the_budget(name, eps, trained):
    """These attacks search for the smallest perturbation and would go past a tiny eps to find it;
    within 1e-4 no point of this model breaks, so every returned image must be the clean one."""
    model, x, y = trained
    x_adv = create(name, model, eps, **FAST[name])(x, y)
    assert torch.equal(x_adv, x)


def test_cw_keeps_exactly_the_points_it_breaks_within_eps(trained):
    model, x, y = trained
    eps = 1.0  # between the smallest and largest distances CW needs on this model
    x_adv = create("cw", model, eps, steps=50, lr=0.05)(x, y)
    big = create("cw", model, 100.0, steps=50, lr=0.05)(x, y)  # the unclipped result
    needed = (big - x).flatten(1).norm(dim=1)
    changed = (x_adv != x).flatten(1).any(1)
    with torch.no_grad():
        fooled = model(big).argmax(1) != y
    assert changed.any() and (~changed).any()  # eps 1.0 splits the points
    assert torch.equal(changed, fooled & (needed <= eps))


class ShiftedLogits(nn.Module):
    """The same classifier with every logit moved by ``shift``: same softmax, same decisions."""

    def __init__(self, model, shift):
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, x):
        return self.model(x) + self.shift


def test_cw_does_not_depend_on_the_sign_of_the_logits(trained):
    # torchattacks' own margin reads masked zeros as logits: with all logits negative it has no
    # gradient and breaks nothing. Ours must break the same points on a shifted copy of the model.
    model, x, y = trained
    x = x.clone()
    x[:, :, :2] = 0.0  # saturated pixels, which torchattacks maps to an infinite tanh-space w
    fooled = {}
    for shift in (0.0, -100.0):
        shifted = ShiftedLogits(model, shift).eval()
        x_adv = create("cw", shifted, 100.0, steps=50, lr=0.05)(x, y)
        with torch.no_grad():
            fooled[shift] = shifted(x_adv).argmax(1) != y
        assert torch.isfinite(x_adv).all()
    # the same points up to float32 rounding of logits near -100 (torchattacks' own CW: 64 vs 6)
    assert fooled[0.0].sum() >= 8
    assert abs(int(fooled[0.0].sum()) - int(fooled[-100.0].sum())) <= 2


def test_keep_within_budget_projects_float_overshoot_and_drops_the_rest():
    clean = torch.full((3, 1, 2, 2), 0.5)
    eps = 0.1
    adv = clean.clone()
    adv[0] += 2 * eps  # far out
    adv[1, 0, 0, 0] += eps + 5e-7  # float overshoot
    adv[2, 0, 0, 0] += eps / 2  # inside
    dropped = keep_within_budget(clean, adv, eps, "Linf", drop_beyond=True)
    assert torch.equal(dropped[0], clean[0])
    assert (dropped[1] - clean[1]).abs().max() <= eps + 1e-7 and dropped[1, 0, 0, 0] > 0.5
    assert torch.equal(dropped[2], adv[2])
    kept = keep_within_budget(clean, adv, eps, "Linf", drop_beyond=False)
    assert torch.equal(kept[0], adv[0])  # a bounded attack's real overshoot is left for the evaluation to report

    adv = clean.clone()
    adv[0] += 0.3  # L2 norm 0.6
    adv[1, 0, 0, 0] += 0.1 * (1 + 1e-7)
    adv[2] = float("nan")
    dropped = keep_within_budget(clean, adv, 0.1, "L2", drop_beyond=True)
    assert torch.equal(dropped[0], clean[0]) and torch.equal(dropped[2], clean[2])
    assert (dropped[1] - clean[1]).norm() <= 0.1 * (1 + 1e-6)


@pytest.mark.parametrize("name, params, fragment", [
    ("pgd", {"steps": 0}, "steps must be an integer >= 1"),
    ("pgd-l2", {"alpha": -1.0}, "alpha must be"),
    ("cw", {"c": 0}, "c must be"),
    ("square", {"n_queries": 0}, "n_queries must be"),
    ("square", {"p_init": 1.5}, "p_init must be in"),
    ("apgd-ce", {"n_restarts": 0}, "n_restarts must be"),
    ("autoattack", {"seed": -1}, "seed must be"),
    ("mifgsm", {"steps": 2.5}, "steps must be an integer"),
    ("pgd", {"iterations": 5}, "it takes"),  # unknown keyword: the registry lists the known ones
])
def test_bad_parameters_are_one_line_errors(name, params, fragment):
    with pytest.raises(RddError) as err:
        create(name, tiny_conv(), 8 / 255, **params)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_negative_eps_is_an_error():
    with pytest.raises(RddError, match="eps must be"):
        create("pgd", tiny_conv(), -0.1)


def test_targeted_attacks_learn_the_class_count_from_the_model():
    """APGD-T's targeted DLR loss needs a 4th logit: a 3-class model is refused on the first batch,
    in one line, instead of an IndexError deep inside torchattacks."""
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4) % 3
    attack = create("apgd-t", tiny_conv(3), 8 / 255, steps=2)
    with pytest.raises(RddError, match="at least 4 classes.*has 3"):
        attack(x, y)
    assert_in_ball(x, create("fab", tiny_conv(3), 8 / 255, steps=2, targeted=True)(x, y), 8 / 255, "fab")


def test_targeted_attacks_try_at_most_nine_targets_as_the_reference_autoattack():
    model = Normalized(nn.Sequential(nn.Flatten(), nn.Linear(64, 12))).eval()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    for params, expected in [({}, 9), ({"n_target_classes": 2}, 2)]:
        attack = create("apgd-t", model, 8 / 255, steps=1, **params)
        attack(x, y)
        assert attack.attack.n_target_classes == expected
    attack = create("autoattack", model, 8 / 255, n_queries=1)
    attack(x, y)
    parts = attack.attack.attacks  # torchattacks.AutoAttack would leave APGD and FAB at 10 steps
    assert [type(p).__name__ for p in parts] == ["APGD", "APGDT", "FAB", "Square"]
    assert [getattr(p, "steps", None) for p in parts[:3]] == [100, 100, 100]
    assert parts[1].n_target_classes == parts[2].n_target_classes == 9 and parts[2].multi_targeted


def test_eps_zero_returns_the_clean_images():
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    for name in ("pgd", "cw", "square"):
        assert torch.equal(create(name, tiny_conv(), 0.0)(x, y), x)


def test_seeded_attacks_are_reproducible_and_leave_the_global_rng_alone():
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % N_CLASSES
    model = tiny_conv()
    first = create("square", model, 8 / 255, n_queries=30)(x, y)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    second = create("square", model, 8 / 255, n_queries=30)(x, y)  # torchattacks reseeds the global RNG
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(first, second)


def test_attacks_work_under_an_outer_no_grad(trained):
    model, x, y = trained
    with torch.no_grad():
        x_adv = create("pgd", model, 0.3, steps=5)(x, y)
    assert accuracy(model, x_adv, y) <= 0.25


@pytest.mark.parametrize("name, eps", [("autoattack", 0.1), ("autoattack-l2", 0.5)])
def test_autoattack_with_its_defaults_on_a_few_points(name, eps, trained):
    """Standard AutoAttack (100 steps, Square 5000 queries) on 8 points, some of which survive all
    four stages, so every stage runs; 8 points keep it to seconds (see docs/decisions.md)."""
    model, x, y = trained
    x, y = x[:8], y[:8]
    start = time.perf_counter()
    x_adv = create(name, model, eps)(x, y)
    assert time.perf_counter() - start < 30
    assert_in_ball(x, x_adv, eps, name)
    torch.manual_seed(0)
    pgd = create("pgd-l2" if name in L2_ATTACKS else "pgd", model, eps)(x, y)
    assert accuracy(model, x_adv, y) <= accuracy(model, pgd, y) < 1.0


def test_attacks_leave_the_model_without_weight_gradients(trained):
    # CW calls loss.backward(): without freezing, every weight would get a .grad from the attack
    from rdd_plugins.evaluation.robust import robust_correct

    model, x, y = trained
    model.zero_grad(set_to_none=True)
    correct = torch.ones(x.shape[0], dtype=torch.bool)
    robust_correct(model, create("cw", model, 1.0, steps=5), x, y, correct, progress=False, eps=1.0,
                   threat_model="L2")
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
