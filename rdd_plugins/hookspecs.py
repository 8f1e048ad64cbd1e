"""Every hook of rdd-plugins, documented where it is declared.

A plugin is any module or object with functions named like these hooks and marked with
``@rdd_plugins.hookimpl``. Registration hooks receive a ``register`` callback::

    register(name: str, factory: Callable, description: str = "", override: bool = False) -> None

and call it once per part they provide. Built-in parts register through these same hooks.
Names are global per kind: registering a name that is already taken is an error, unless one of
the two registrations says ``override=True``; that one wins, whichever plugin loads first.
"""

import pluggy

hookspec = pluggy.HookspecMarker("rdd")


@hookspec
def rdd_register_datasets(register):
    """Register datasets.

    ``factory(root: str | None, split: str, **params) -> rdd_plugins.data.ImageData``.
    ``split`` is ``"train"`` or ``"test"``. The returned images are float32 NCHW in [0, 1] with
    int64 labels, plus the dataset's metadata (class names, channels, size, mean, std). ``root`` is
    the user's ``--data-root`` (``None``: the factory looks in its usual places). A dataset that is
    not available raises :class:`rdd_plugins.errors.RddError` saying how to get it.
    """


@hookspec
def rdd_register_backbones(register):
    """Register network architectures.

    ``factory(in_channels: int, num_classes: int, image_size: tuple[int, int],
    mean: tuple[float, ...], std: tuple[float, ...], **params) -> torch.nn.Module``.
    The module takes images in [0, 1] and normalizes them with ``mean``/``std`` as its first layer;
    it returns logits of shape ``(N, num_classes)``.
    """


@hookspec
def rdd_register_distillers(register):
    """Register distillers.

    ``factory(**params) -> Distiller``; see :class:`rdd_plugins.distillation.contract.Distiller`.
    The distillation loop owns iterations, progress and storage; a distiller owns its state through
    ``init(context) -> state``, ``step(state, context) -> dict[str, float]`` (losses to log) and
    ``result(state, context) -> (images, labels)`` or ``(images, labels, soft_labels)`` (teacher
    logits, N x classes; evaluation then trains with knowledge distillation), or
    ``(images, labels, soft_labels, crop_boxes)`` for per-crop relabelling (logits N x views x
    classes for the crop views N x views x 5 of :mod:`rdd_plugins.crops`; evaluation trains epoch e
    on view e mod views). A one-shot selector (random subset, herding) sets
    ``iterations_needed = False`` and does its work in ``init``.
    """


@hookspec
def rdd_register_regularizers(register):
    """Register regularizers of the real-batch loss used as a gradient-matching target.

    ``factory(**params) -> Regularizer``; see :class:`rdd_plugins.distillation.contract.Regularizer`:
    ``parameter_gradient(loss_fn, params, images, labels) -> dict[str, Tensor]`` returns the
    parameter-gradient of ``loss + penalty`` on a real batch. ``loss_fn(params, images, labels)`` is a
    pure function (``torch.func.functional_call`` of the model), so the implementation must be
    composable with ``torch.func.vmap`` (the matching step batches classes with it).
    """


@hookspec
def rdd_register_attacks(register):
    """Register adversarial attacks.

    ``factory(model: torch.nn.Module, eps: float, **params)`` returns a callable
    ``(images, labels) -> adversarial_images``. Images are in [0, 1] and ``eps`` is in pixel units of
    that range (8/255 means 8 grey levels). The model normalizes internally and is already in eval
    mode. A ``torchattacks.Attack`` instance satisfies this contract unchanged.

    The factory may carry an attribute ``threat_model``: ``"Linf"`` (the default when absent) or
    ``"L2"``; ``eps`` is then the radius of that ball. The evaluation checks every adversarial batch
    against it (and against [0, 1]) and stops with an error naming the attack when one leaves it,
    so a minimum-norm attack (CW, FAB) must itself give back the clean image for points it cannot
    break within ``eps``. Random attacks draw from torch's global RNG, which the evaluation seeds.
    """


@hookspec
def rdd_register_attack_suites(register):
    """Register attack suites: named, ordered sets of attacks with their eps grids.

    ``factory(**params) -> rdd_plugins.evaluation.suites.AttackSuite``: ``attacks``, a tuple of
    ``SuiteAttack(attack=<registered attack name>, params={...})`` cheapest first; ``eps``, a
    dict threat model -> eps grid such as ``{"Linf": ("8/255",), "L2": ("0.5",)}``; and
    ``cascade``. With ``cascade=True`` each attack runs only on the points that are still robust
    after the attacks before it at the same threat model and eps (AutoAttack's way: the expensive
    attacks see few points), and its reported robust accuracy is the cumulative one. With
    ``cascade=False`` every attack runs on all clean-correct points (per-attack tables, as
    DD-RobustBench reports them). Attack names are resolved when the suite is used, so a suite may
    name attacks that other plugins provide. ``rdd evaluate --suite NAME`` selects one.
    """


# Lifecycle hooks: called by the core loops. A plugin whose lifecycle hook raises is reported on
# stderr with its name and the run goes on (RDD_STRICT_PLUGINS=1 makes it an error): a logging
# plugin must not end a run of hours.


@hookspec
def rdd_distill_step(step):
    """Called after every distillation iteration with a read-only view of the run.

    ``step`` is a :class:`rdd_plugins.lifecycle.DistillStep` with ``iteration`` (finished
    iterations, from 1), ``iterations`` (the budget), ``losses`` (dict of floats), ``seconds`` (this
    iteration's wall time), ``config`` (the resolved config as a dict) and ``images()``, which returns
    the current synthetic images and labels as detached [0, 1] tensors. Return ``True`` to request an
    early stop: the loop finishes this iteration, saves the set and marks ``stopped_early`` in meta.
    """


@hookspec
def rdd_distill_finished(result):
    """Called once a distillation run ends (also after an early stop), with the
    :class:`rdd_plugins.storage.DistilledSet` (images, labels and meta, including the config)."""


@hookspec
def rdd_evaluation_finished(report):
    """Called after a distilled set has been evaluated on one backbone (once per backbone of
    ``evaluate.backbone``), with the row that goes into results.json: ``label``, ``backbone``,
    ``set``, ``dataset``, ``evaluation`` (the attack plan), ``per_seed`` and ``summary``."""
