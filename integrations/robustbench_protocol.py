"""RobustBench's evaluation protocol for our models: ``rdd benchmark``.

* CIFAR-10 / CIFAR-100: :func:`run_robustbench` calls RobustBench's own
  ``robustbench.eval.benchmark`` (AutoAttack ``version='standard'`` on the first ``n_examples``
  test images, in order), so the numbers are produced by the leaderboard's code path.
* Other datasets (Fashion-MNIST): :func:`run_autoattack_direct` runs the same protocol by hand: the
  caller passes the first n test points in order; AutoAttack standard comes from the same
  ``autoattack`` module ``benchmark`` uses (our adapter over ``pyautoattack``).
* :func:`model_info` writes an entry in RobustBench's ``model_info/<dataset>/<threat>/<name>.json``
  format.

Both paths run AutoAttack's cascade chunk by chunk (:func:`run_in_chunks`): the n points in fixed
chunks of ``batch_size``, chunk i's random restarts seeded by the work key ``(seed, "autoattack",
threat model, eps, i)``, so a chunk's result depends on its points and its key only. On several
ranks (torchrun) the chunks are dealt round-robin and the adversarial images put back together
bit for bit: every rank then measures the accuracies one process measures.

RobustBench and torch are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from rdd_plugins.errors import RddError
from rdd_plugins.evaluation.suites import THREAT_MODELS
from rdd_plugins.progress import bar, progress_wanted

if TYPE_CHECKING:
    from rdd_plugins.distributed.world import World

ROBUSTBENCH_FIX = "pip install --force-reinstall --no-deps robustbench==1.1.1"
PROTOCOL = "robustbench.eval.benchmark (AutoAttack standard, first n test points in order)"

# The eps of RobustBench's leaderboards, in [0, 1] pixel units. CIFAR-10 has Linf and L2
# leaderboards, CIFAR-100 a Linf one. Other datasets (no leaderboard, e.g. Fashion-MNIST) get the
# same radii by default (DEFAULT_EPS), which keeps tables comparable across datasets; pass eps to
# use another one (MNIST-family papers often use much larger Linf radii such as 0.1 or 0.3).
LEADERBOARD_EPS = {
    ("cifar10", "Linf"): 8 / 255,
    ("cifar10", "L2"): 0.5,
    ("cifar100", "Linf"): 8 / 255,
}
DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5}
ROBUSTBENCH_DATASETS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def default_eps(dataset: str, threat_model: str) -> float:
    """The leaderboard eps for ``(dataset, threat_model)``, else :data:`DEFAULT_EPS`."""
    _check_threat_model(threat_model)
    return LEADERBOARD_EPS.get((dataset, threat_model), DEFAULT_EPS[threat_model])


def _check_threat_model(threat_model: str) -> None:
    if threat_model not in THREAT_MODELS:
        raise RddError(f"threat model must be one of {', '.join(THREAT_MODELS)}, got {threat_model!r}")


def _autoattack_class():
    """``autoattack.AutoAttack``: our adapter over pyautoattack (integrations/autoattack)."""
    try:
        import autoattack
        import autoattack.state  # robustbench.eval imports it too
    except ImportError as exc:
        raise RddError(f"the 'autoattack' module is missing ({exc}); reinstall rdd-plugins "
                       f"(pip install -e .), which provides it over pyautoattack") from exc
    return autoattack.AutoAttack


def check_robustbench():
    """Import ``robustbench.eval.benchmark`` (and the ``autoattack`` it needs); return ``benchmark``.

    torchattacks 3.5.1's wheel ships a stale top-level ``robustbench/`` package: installed after
    robustbench it overwrites robustbench's files and ``benchmark`` disappears. Either problem is
    one RddError line with the fix.
    """
    _autoattack_class()
    try:
        with warnings.catch_warnings():
            # Importing robustbench warns about its own dependencies, nothing a user can act on:
            # pkg_resources is deprecated (robustbench/loaders.py), timm.models.registry/layers/helpers
            # are deprecated import paths (robustbench's model zoo), torch.jit.interface (timm).
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            import robustbench.eval as rb_eval
    except ImportError as exc:
        raise RddError(f"robustbench is not importable ({exc}); fix: {ROBUSTBENCH_FIX}") from exc
    benchmark = getattr(rb_eval, "benchmark", None)
    if not callable(benchmark):
        raise RddError("robustbench.eval has no benchmark(): torchattacks' stale robustbench copy "
                       f"overwrote it; fix: {ROBUSTBENCH_FIX}")
    return benchmark


def _accuracy_dict(clean_acc, robust_acc, n, eps, dataset, threat_model, protocol=PROTOCOL) -> dict:
    return {"clean_acc": float(clean_acc), "autoattack_acc": float(robust_acc), "n_examples": int(n),
            "eps": float(eps), "dataset": dataset, "threat_model": threat_model, "protocol": protocol}


@contextlib.contextmanager
def _guarded_loader(rb_eval, dataset: str, data_dir: str):
    """Around ``benchmark``: robustbench's CIFAR loaders use torchvision with ``download=True``,
    which offline fails deep in urllib (or hangs on a slow network). Check the files first, with
    ``download=False``, and turn any loader failure into one line saying where the files go."""
    import robustbench.data as rb_data
    import torchvision.datasets as tvd

    loader = rb_eval.load_clean_dataset
    folder = Path(data_dir).expanduser() / ROBUSTBENCH_DATASETS[dataset]
    where = (f"{dataset} not found or corrupted under {data_dir} (torchvision checks every batch "
             f"file's md5; robustbench would then try to download it): put torchvision's {dataset} "
             f"files in {folder}/")

    def guarded(dataset_, n_examples, data_dir_, prepr):
        if loader is rb_data.load_clean_dataset:  # robustbench's own loader (not a test's stand-in)
            cls = tvd.CIFAR10 if dataset == "cifar10" else tvd.CIFAR100
            try:
                cls(str(data_dir_), train=False, download=False)
            except RuntimeError as exc:
                raise RddError(where) from exc
        try:
            return loader(dataset_, n_examples, data_dir_, prepr)
        except RddError:
            raise
        except Exception as exc:
            raise RddError(f"{where} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc

    rb_eval.load_clean_dataset = guarded
    try:
        yield
    finally:
        rb_eval.load_clean_dataset = loader


def _run_name(attribute: str, component) -> str:
    """The name AutoAttack's cascade gives the run of ``component`` (``adversary.<attribute>``)."""
    if attribute == "apgd":
        return f"apgd-{component.loss}"  # the cascade sets the loss before each run: ce or dlr
    if attribute == "fab":
        return "fab-t" if component.targeted else "fab"
    return {"apgd_targeted": "apgd-t", "square": "square"}[attribute]


class _CascadeProgress:
    """One bar per attack of AutoAttack's cascade, counting the points that attack has attacked.

    The cascade is a single call into pyautoattack; the only seam inside it is each attack's
    ``perturb``, called once per batch, which is wrapped to count the batch after it returns. The
    attacks get the same inputs and draw the same random numbers, so no result changes. The cascade
    runs once per chunk (:func:`run_in_chunks`): an attack's bar stays open from its first chunk to
    the end and counts its points over all of them.
    """

    _COMPONENTS = ("apgd", "apgd_targeted", "fab", "square")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bars: dict = {}

    def watch(self, adversary):
        """``adversary`` with its attacks counted (the wrappers live on this instance only)."""
        for attribute in self._COMPONENTS:
            component = getattr(adversary, attribute)
            component.perturb = self._counted(adversary, attribute, component, component.perturb)
        return adversary

    def _counted(self, adversary, attribute: str, component, perturb):
        @functools.wraps(perturb)
        def counted(x, *args, **kwargs):
            shown = self._show(adversary, _run_name(attribute, component))
            adv = perturb(x, *args, **kwargs)
            shown.update(len(x))
            return adv
        return counted

    def _show(self, adversary, attack: str):
        if attack not in self._bars:
            order = list(adversary.attacks_to_run)
            position = f"{order.index(attack) + 1}/{len(order)} " if attack in order else ""
            # No total: an attack runs on the points the previous ones left, known only inside the cascade.
            self._bars[attack] = bar(desc=f"AutoAttack {position}{attack}", unit="point", enabled=self.enabled)
        return self._bars[attack]

    def close(self) -> None:
        for shown in self._bars.values():
            shown.close()
        self._bars = {}


@contextlib.contextmanager
def _cascade_progress(enabled: bool):
    progress = _CascadeProgress(enabled)
    try:
        yield progress
    finally:
        progress.close()


@contextlib.contextmanager
def _watched_autoattack(rb_eval, seed: int | None, progress: _CascadeProgress, *, threat_model: str,
                        eps: float, device, world: World):
    """Around ``benchmark``: it builds AutoAttack without a seed, and PyPI's AutoAttack then seeds
    its random restarts from the clock; with ``seed`` the same model gives the same numbers. The
    AutoAttack it builds also gets ``progress``'s bars, and runs its cascade chunk by chunk, this
    rank's chunks only (:func:`run_in_chunks`)."""
    original = rb_eval.AutoAttack

    def build(*args, **kwargs):
        if seed is not None:
            kwargs = {"seed": seed, **kwargs}
        adversary = progress.watch(original(*args, **kwargs))

        def chunked(x_orig, y_orig, bs=250, return_labels=False, state_path=None):
            if return_labels or state_path is not None:
                raise RddError("rdd benchmark runs AutoAttack chunk by chunk: without return_labels or a state_path")
            return run_in_chunks(adversary, x_orig, y_orig, batch_size=bs, seed=seed, threat_model=threat_model,
                                 eps=eps, device=device, world=world)

        adversary.run_standard_evaluation = chunked
        return adversary

    rb_eval.AutoAttack = build
    try:
        yield
    finally:
        rb_eval.AutoAttack = original


def chunk_seed(seed: int | None, threat_model: str, eps: float, index: int) -> int | None:
    """The seed of AutoAttack's random restarts on chunk ``index`` (None: the clock's, as PyPI's)."""
    from rdd_plugins.randomness import work_seed

    return None if seed is None else work_seed(seed, "autoattack", threat_model, format_eps(eps), index)


def run_in_chunks(adversary, images, labels, *, batch_size: int, seed: int | None, threat_model: str,
                  eps: float, device="cpu", world: World | None = None):
    """``x_adv`` of ``adversary``'s cascade (its class's ``run_standard_evaluation``) on ``images``,
    run on fixed chunks of ``batch_size`` points in order, chunk i with its restarts seeded by
    :func:`chunk_seed`.

    A chunk is one of AutoAttack's own batches, so every attack of the cascade sees the chunk's
    points that survived the ones before it, as AutoAttack does; what changes from one whole run is
    only which points share a batch of a later attack. On several ranks each rank runs the chunks
    dealt to it and every rank returns the whole ``x_adv``: the chunks are put together as integer
    bit patterns on ``device`` (one all-reduce of the owner's values and zeros), so they arrive bit
    for bit.
    """
    import torch

    from rdd_plugins.distributed.work import dealt_to, fail_together, merge_disjoint
    from rdd_plugins.distributed.world import current_world
    from rdd_plugins.randomness import seeded

    world = world or current_world()
    run = type(adversary).run_standard_evaluation  # the cascade itself, whatever wraps the instance's
    n = len(images)
    x_adv = torch.zeros_like(images)
    with fail_together(world):  # a chunk failing on one rank stops every rank, before the merge
        for index in dealt_to(-(-n // batch_size), world):
            part = slice(index * batch_size, (index + 1) * batch_size)
            adversary.seed = chunk_seed(seed, threat_model, eps, index)
            # AutoAttack reseeds torch's global generators before each attack; as they were afterwards
            with seeded(0 if seed is None else seed, "autoattack", threat_model, format_eps(eps), index,
                        device=device):
                x_adv[part] = run(adversary, images[part], labels[part], bs=batch_size).to(x_adv.device)
    if not world.distributed:
        return x_adv
    if x_adv.element_size() not in (4, 8):
        raise RddError(f"AutoAttack returned {x_adv.dtype} images; expected float32 or float64")
    bits = x_adv.to(device).contiguous().view(torch.int32 if x_adv.element_size() == 4 else torch.int64)
    merge_disjoint(bits, world)
    return bits.view(x_adv.dtype).to(images.device)


def run_robustbench(model, *, dataset: str, threat_model: str, eps: float | None = None,
                    n_examples: int = 10000, data_dir: str = "./data", device: str = "cpu",
                    batch_size: int = 500, seed: int | None = 0, progress: bool = True,
                    world: World | None = None) -> dict:
    """RobustBench's ``benchmark()`` on ``model`` (images in [0, 1] in, logits out).

    ``eps=None`` takes the leaderboard eps (:data:`LEADERBOARD_EPS`). Returns ``clean_acc`` and
    ``autoattack_acc`` as fractions in [0, 1], with ``n_examples``, ``eps``, ``dataset``,
    ``threat_model`` and ``protocol``. ``seed`` seeds AutoAttack's random restarts, which
    ``benchmark`` would seed from the clock (None: leave it so). robustbench prints its two
    accuracy lines to stdout; they are sent to stderr here, so that stdout carries only our own
    one-line result. ``progress``: a line on stderr saying what runs, then a bar per AutoAttack
    attack (also off with RDD_NO_PROGRESS=1).

    The leaderboard's code path stays whole: ``benchmark`` loads the data, measures clean accuracy,
    builds AutoAttack and measures the accuracy on what the attack returns. Only the attack runs
    chunk by chunk (:func:`run_in_chunks`, through the AutoAttack it builds). On several ranks
    (``world``, torchrun's by default) every rank calls ``benchmark`` on the same model: each loads
    the first ``n_examples`` points and measures clean accuracy on all of them (cheap), runs the
    attack on its chunks and receives the others' adversarial images, so that ``benchmark`` measures
    the same accuracies on every rank. Rank 0 alone prints and shows bars.
    """
    import io

    import torch

    from rdd_plugins.distributed.world import current_world

    world = world or current_world()
    if dataset not in ROBUSTBENCH_DATASETS:
        raise RddError(f"robustbench benchmarks {', '.join(ROBUSTBENCH_DATASETS)} only, not {dataset!r}; "
                       f"other datasets use the same protocol through run_autoattack_direct")
    _check_threat_model(threat_model)
    if n_examples < 1:
        raise RddError(f"n_examples must be >= 1, got {n_examples}")
    eps = default_eps(dataset, threat_model) if eps is None else float(eps)
    benchmark = check_robustbench()
    import robustbench.eval as rb_eval

    model = model.eval()
    progress = progress and world.is_main
    if progress_wanted(progress):
        # benchmark() loads the data and measures clean accuracy before any attack shows a bar
        print(f"robustbench benchmark: clean accuracy, then AutoAttack standard ({threat_model}, eps "
              f"{format_eps(eps)}) on the first {n_examples} {dataset} test points", file=sys.stderr)
    said = sys.stderr if world.is_main else io.StringIO()  # benchmark's own lines, once
    with _guarded_loader(rb_eval, dataset, data_dir), _cascade_progress(progress) as bars, \
            _watched_autoattack(rb_eval, seed, bars, threat_model=threat_model, eps=eps,
                                device=torch.device(device), world=world), contextlib.redirect_stdout(said):
        clean_acc, robust_acc = benchmark(model, n_examples=n_examples, dataset=dataset,
                                          threat_model=threat_model, eps=eps, data_dir=data_dir,
                                          device=torch.device(device), batch_size=batch_size)
    return _accuracy_dict(clean_acc, robust_acc, n_examples, eps, dataset, threat_model)


def run_autoattack_direct(model, images, labels, *, threat_model: str, eps: float,
                          batch_size: int = 500, device: str = "cpu", seed: int | None = 0,
                          dataset: str = "", progress: bool = True, world: World | None = None) -> dict:
    """RobustBench's protocol for a dataset it does not know: AutoAttack standard on the given
    points (the caller passes the first n test points, in order).

    Clean accuracy is the model's accuracy on ``images``; robust accuracy counts the points that are
    classified correctly both clean and after the attack. AutoAttack only attacks clean-correct
    points and keeps the clean image for a point no attack breaks, so a clean-wrong point stays
    wrong; the count here does not rely on that: it requires both. ``seed`` makes the attacks'
    random restarts reproducible (robustbench's ``benchmark`` passes none and would seed them from
    the clock; :func:`run_robustbench` passes ours).
    ``dataset`` is only copied into the result. ``progress``: a bar per AutoAttack attack.

    AutoAttack runs chunk by chunk (:func:`run_in_chunks`); on several ranks (``world``, torchrun's
    by default) each rank attacks the chunks dealt to it and every rank counts on the whole,
    identical ``x_adv``, so it returns the result of one process. Bars on rank 0 only.
    """
    import torch

    from rdd_plugins.distributed.world import current_world

    world = world or current_world()
    _check_threat_model(threat_model)
    AutoAttack = _autoattack_class()  # the same AutoAttack benchmark() uses; robustbench itself is not needed

    from rdd_plugins.evaluation.robust import within_budget

    # Kept on the CPU: AutoAttack moves each batch to ``device`` itself, and results come back here.
    images = torch.as_tensor(images, dtype=torch.float32).cpu()
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    if images.ndim != 4 or labels.shape != images.shape[:1] or len(labels) == 0:
        raise RddError(f"run_autoattack_direct: expected N images (N,C,H,W) and N labels, got "
                       f"{tuple(images.shape)} and {tuple(labels.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise RddError("run_autoattack_direct: images must be in [0, 1]")
    dev = torch.device(device)
    model = model.eval().to(dev)

    def predict(x):
        out = []
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                out.append(model(x[start:start + batch_size].to(dev)).argmax(1).cpu())
        return torch.cat(out)

    clean_correct = predict(images) == labels
    adversary = AutoAttack(model, norm=threat_model, eps=float(eps), version="standard",
                           device=dev, seed=seed, verbose=False)
    with torch.no_grad():
        num_classes = int(model(images[:1].to(dev)).shape[1])
    if num_classes < 4:  # APGD-T's targeted DLR loss reads the 4th-largest logit
        raise RddError(f"AutoAttack standard needs at least 4 classes (its targeted DLR loss); the model has {num_classes}")
    # Standard AutoAttack targets the 9 runner-up classes (CIFAR-10); with fewer classes, all of them.
    adversary.apgd_targeted.n_target_classes = min(9, num_classes - 1)
    adversary.fab.n_target_classes = min(9, num_classes - 1)
    with _cascade_progress(progress and world.is_main) as bars:
        x_adv = run_in_chunks(bars.watch(adversary), images, labels, batch_size=batch_size, seed=seed,
                              threat_model=threat_model, eps=float(eps), device=dev, world=world).cpu()
    if not within_budget(images, x_adv, float(eps), threat_model).all():
        raise RddError(f"AutoAttack returned points outside the {threat_model} ball of radius {eps} or outside [0, 1]")
    robust = clean_correct & (predict(x_adv) == labels)
    n = len(labels)
    return _accuracy_dict(clean_correct.float().mean().item(), robust.float().mean().item(), n, eps,
                          dataset, threat_model,
                          protocol="autoattack standard via pyautoattack (robustbench's protocol: "
                                   "first n test points in order)")


def format_eps(eps: float) -> str:
    """eps as RobustBench writes it: a short decimal stays one (``"0.5"``, ``"0.3"``); otherwise a
    whole number of grey levels is written as a fraction of 255 (``"8/255"``); else the number."""
    eps = float(eps)
    if round(eps, 4) == eps:
        return f"{eps:g}"
    levels = eps * 255
    if abs(levels - round(levels)) < 1e-6:
        return f"{round(levels)}/255"
    return f"{eps:g}"


def model_info(*, name: str, dataset: str, threat_model: str, eps: float, clean_acc: float,
               autoattack_acc: float, architecture: str, link: str = "", authors: str = "",
               venue: str = "rdd-plugins", additional_data: bool = False,
               number_forward_passes: int = 1, footnote: str = "") -> dict:
    """A RobustBench ``model_info`` entry: accuracies (fractions in [0, 1]) become percentage strings
    with two decimals (``"93.25"``), eps ``"8/255"`` or ``"0.5"``. ``reported`` is what we measured:
    there is no separate paper number. ``threat_model`` is not a key of RobustBench's entries (the
    file's folder says it: ``model_info/<dataset>/<threat_model>/<name>.json``); it is validated."""
    _check_threat_model(threat_model)
    for label, value in (("clean_acc", clean_acc), ("autoattack_acc", autoattack_acc)):
        if not 0.0 <= float(value) <= 1.0:
            raise RddError(f"model_info: {label} must be a fraction in [0, 1], got {value}")
    robust = f"{100 * float(autoattack_acc):.2f}"
    info = {
        "link": link,
        "name": name,
        "authors": authors,
        "additional_data": bool(additional_data),
        "number_forward_passes": int(number_forward_passes),
        "dataset": dataset,
        "venue": venue,
        "architecture": architecture,
        "eps": format_eps(float(eps)),
        "clean_acc": f"{100 * float(clean_acc):.2f}",
        "reported": robust,
        "autoattack_acc": robust,
    }
    if footnote:
        info["footnote"] = footnote
    return info
