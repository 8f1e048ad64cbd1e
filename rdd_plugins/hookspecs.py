"""Every hook of rdd-plugins, documented where it is declared.

A plugin is any module or object with functions named like these hooks and marked with
``@rdd_plugins.hookimpl``. Hooks are called through pluggy: ``tryfirst``/``trylast``, wrappers and
implementations that take only some of a hook's arguments work as pluggy documents them.

Registration hooks receive a ``register`` callback, :class:`rdd_plugins.registry.Register`, and call
it once per part they provide. Built-in parts register through these same hooks. Names are global
per kind: registering a name that is already taken is an error, unless one of the two registrations
says ``override=True``; that one wins, whichever plugin loads first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from .registry import Register

if TYPE_CHECKING:  # for annotations only: declaring the hooks imports no torch
    from .distillation.contract import DistillStep
    from .storage import DistilledSet

hookspec = pluggy.HookspecMarker("rdd")


@hookspec
def rdd_register_datasets(register: Register) -> None:
    """Register datasets.

    :param register:
        Called once per dataset with
        ``factory(root: str | None, split: str, **params) -> rdd_plugins.data.ImageData``.

    ``split`` is ``"train"`` or ``"test"``. The returned images are float32 NCHW in [0, 1] with
    int64 labels, plus the dataset's metadata (class names, channels, size, mean, std). ``root`` is
    the user's ``--data-root`` (``None``: the factory looks in its usual places). A dataset that is
    not available raises :class:`rdd_plugins.errors.RddError` saying how to get it.
    """


@hookspec
def rdd_register_backbones(register: Register) -> None:
    """Register network architectures.

    :param register:
        Called once per backbone with ``factory(in_channels: int, num_classes: int,
        image_size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...], **params)
        -> torch.nn.Module``.

    The module takes images in [0, 1] and normalizes them with ``mean``/``std`` as its first layer;
    it returns logits of shape ``(N, num_classes)``.
    """


@hookspec
def rdd_register_distillers(register: Register) -> None:
    """Register distillers.

    :param register:
        Called once per distiller with ``factory(**params)``, which returns a distiller.

    What a distiller provides, and what the distillation loop gives it, is the contract of
    :class:`rdd_plugins.distillation.contract.Distiller`, written there and only there.
    """


@hookspec
def rdd_register_regularizers(register: Register) -> None:
    """Register regularizers of the real-batch loss used as a gradient-matching target.

    :param register:
        Called once per regularizer with ``factory(**params)``, which returns a regularizer.

    What a regularizer provides (``parameter_gradient``, composable with ``torch.func.vmap``: no
    ``.item()``, no Python branching on tensor values) is the contract of
    :class:`rdd_plugins.distillation.contract.Regularizer`, written there. ``gm`` and ``dsa`` check
    it under vmap when a run starts, also on a CPU, where classes are looped.
    """


@hookspec
def rdd_register_attacks(register: Register) -> None:
    """Register adversarial attacks.

    :param register:
        Called once per attack with ``factory(model: torch.nn.Module, eps: float, **params)``, which
        returns a callable ``(images, labels) -> adversarial_images``.

    Images are in [0, 1] and ``eps`` is in pixel units of that range (8/255 means 8 grey levels).
    The model normalizes internally and is already in eval mode. A ``torchattacks.Attack`` instance
    satisfies this contract unchanged.

    The factory may carry an attribute ``threat_model``: ``"Linf"`` (the default when absent) or
    ``"L2"``; ``eps`` is then the radius of that ball. The evaluation checks every adversarial batch
    against it (and against [0, 1]) and stops with an error naming the attack when one leaves it,
    so a minimum-norm attack (CW, FAB) must itself give back the clean image for points it cannot
    break within ``eps``. Random attacks draw from torch's global RNG, which the evaluation seeds.
    """


@hookspec
def rdd_register_attack_suites(register: Register) -> None:
    """Register attack suites: named, ordered sets of attacks with their eps grids.

    :param register:
        Called once per suite with
        ``factory(**params) -> rdd_plugins.evaluation.suites.AttackSuite``.

    An ``AttackSuite`` has ``attacks``, a tuple of ``SuiteAttack(attack=<registered attack name>,
    params={...})`` cheapest first; ``eps``, a dict threat model -> eps grid such as
    ``{"Linf": ("8/255",), "L2": ("0.5",)}``; and ``cascade``. With ``cascade=True`` each attack
    runs only on the points that are still robust after the attacks before it at the same threat
    model and eps (AutoAttack's way: the expensive attacks see few points), and its reported robust
    accuracy is the cumulative one. With ``cascade=False`` every attack runs on all clean-correct
    points (per-attack tables, as DD-RobustBench reports them). Attack names are resolved when the
    suite is used, so a suite may name attacks that other plugins provide. ``rdd evaluate --suite
    NAME`` selects one.
    """


@hookspec
def rdd_register_set_formats(register: Register) -> None:
    """Register readers of sets that other tools distilled, for ``rdd import --format NAME``.

    :param register:
        Called once per format with ``factory(source: pathlib.Path, dataset: dict, **options)
        -> rdd_plugins.importing.contract.ReadSet``.

    ``source`` is the user's SRC, a file or a folder as the format defines it; ``dataset`` is the
    target dataset's metadata (``ImageData.meta()``: name, classes, channels, image_size, mean,
    std); ``options`` are the user's format options (``--set KEY=VALUE``, ``--index``,
    ``--normalized``), checked against the factory's signature before anything is read. The reader
    returns the set in pixel units as the tool made it; the importer checks it against the dataset,
    clips only when asked and writes the set folder. What a reader returns is the contract of
    :class:`rdd_plugins.importing.contract.ReadSet`, written there. A reader must not unpickle:
    :func:`rdd_plugins.importing.safe_load.load_torch_file` reads ``torch.save`` files safely.
    """


# Lifecycle hooks: called by the core loops. A plugin whose lifecycle hook raises is reported on
# stderr with its name and the run goes on (RDD_STRICT_PLUGINS=1 makes it an error): a logging
# plugin must not end a run of hours.


@hookspec
def rdd_distill_step(step: DistillStep) -> bool | None:
    """Called after every distillation iteration with a read-only view of the run.

    :param step:
        A :class:`rdd_plugins.distillation.contract.DistillStep` with ``iteration`` (finished iterations, from
        1), ``iterations`` (the budget), ``losses`` (dict of floats), ``seconds`` (this iteration's
        wall time), ``config`` (the resolved config as a dict) and ``images()``, which returns the
        current synthetic images and labels as detached [0, 1] tensors.
    :return:
        ``True`` to request an early stop: the loop finishes this iteration, saves the set and
        marks ``stopped_early`` in meta. ``None`` (or nothing) lets the run go on.
    """


@hookspec
def rdd_distill_finished(result: DistilledSet) -> None:
    """Called once a distillation run ends, also after an early stop.

    :param result:
        The :class:`rdd_plugins.storage.DistilledSet`: images, labels and meta, including the
        config.
    """


@hookspec
def rdd_evaluation_finished(report: dict) -> None:
    """Called after a distilled set has been evaluated on one backbone (once per backbone of
    ``evaluate.backbone``).

    :param report:
        The row that goes into results.json: ``label``, ``backbone``, ``set``, ``dataset``,
        ``evaluation`` (the attack plan), ``per_seed`` and ``summary``.
    """
