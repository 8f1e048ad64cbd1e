"""``gm``: DC's gradient matching, with the run's regularizer on the real side (GUARD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...distillation.contract import DistillContext
from ...distillation.matching import (check_regularizer_vmaps, cuda_class_chunk, make_loss_fn,
                                      matching_losses, trainable_params, use_vmap)
from ...distributed.work import replica_checks, same_everywhere
from ...errors import RddError
from ...randomness import forked_rng
from .common import SyntheticImages, combine_classes, first_images_of_classes, has_batch_norm, registered_name

# DC's (outer_loop, inner_loop) by images per class.
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def dc_loops(ipc: int) -> tuple[int, int]:
    """DC's table; between its rows, the row of the largest IPC not above ``ipc``, except that
    IPC 2-9 (no row in DC, which refuses them) take IPC 10's: IPC 1's (1, 1) never trains the
    network between matching steps, which DC does only because one image per class allows nothing
    else."""
    if ipc < 1:
        raise RddError(f"ipc must be >= 1, got {ipc}")
    if ipc == 1:
        return DC_LOOPS[1]
    return DC_LOOPS[max(k for k in DC_LOOPS if k <= max(ipc, 10))]


def _freeze_batch_norm_on_real(net: nn.Module, context: DistillContext, key: tuple) -> None:
    """DC's BatchNorm handling: set running statistics from a real batch, then use them fixed,
    so per-class gradients do not depend on batch composition (and vmap sees no in-place update).
    Every rank draws the same batch (``key``), so the statistics agree."""
    real_x, _ = context.real_batch(16, key=key)
    net.train()
    with torch.no_grad(), context.seeded("forward", *key):  # a backbone's dropout, the same everywhere
        net(real_x.flatten(0, 1))
    _fix_batch_norm(net)


def _fix_batch_norm(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def check_regularizer_on_run(context: DistillContext) -> None:
    """Fail at the start, naming the regularizer, if it cannot be vmapped over classes, even when
    this run loops: the same run on a GPU would fail mid-run. 2 images of 2 classes and a fresh
    network keep it cheap; the network is set up as a matching step sets it up."""
    with forked_rng(context.device):  # the run's random stream stays what it was without the check
        net = context.make_model()
        net.train()
        _fix_batch_norm(net)
        images, labels = first_images_of_classes(context, classes=2, per_class=2)
        check_regularizer_vmaps(context.regularizer, make_loss_fn(net), trainable_params(net), images, labels,
                                name_of=registered_name)


class GradientMatching:
    """DC (Zhao et al., ICLR 2021): match per-class parameter-gradients of real and synthetic batches.

    Defaults are DC's: lr_img 0.1 with momentum 0.5, lr_net 0.01, batch_real 256, batch_train 256,
    (outer_loop, inner_loop) from DC's table by IPC, init real. The real-batch gradient comes from
    the run's regularizer, which is how GUARD's curvature term enters. ``class_batching``: auto
    (vmap on CUDA, a loop over classes on CPU), vmap or loop; both give the same gradients.
    ``class_chunk``: classes per vmap call; 0 (auto) sizes it on CUDA from the device's free memory
    and one class's cost, measured on the first matching step, and loops when not even one class
    fits; elsewhere 0 takes all classes at once. The regularizer is checked under vmap at
    :meth:`init`, whatever the batching. Images live in normalized units and are projected onto
    [0, 1] when ``clamp`` (see :class:`SyntheticImages`).

    ``regularize_inner`` (default false, DC's): the inner loop trains the network with the run's
    regularizer too (its parameter gradient on each synthetic minibatch instead of plain
    cross-entropy's), so the images are matched along the trajectory of a robustly trained
    network rather than of a plainly trained one. An option to test (docs/study.md), not GUARD's.

    On several ranks each takes a block of classes: it draws their real batches, matches them and
    computes their image gradients; one all-reduce per outer step gives every rank every class's
    gradient and loss, every rank steps all images alike and trains the same inner-loop network.
    Exact, because class c's images enter only class c's term (BatchNorm statistics are frozen), and
    every draw is keyed by (iteration, outer step, class, ...), not by the rank.
    """

    iterations_needed = True

    def __init__(self, *, lr_img: float = 0.1, momentum_img: float = 0.5, lr_net: float = 0.01,
                 batch_real: int = 256, batch_train: int = 256, outer_loop: int | None = None,
                 inner_loop: int | None = None, init: str = "real", clamp: bool = True,
                 class_batching: str = "auto", class_chunk: int = 0, regularize_inner: bool = False) -> None:
        if lr_net <= 0 or min(batch_real, batch_train) <= 0:
            raise RddError("gm: lr_net and batch sizes must be positive")
        if (outer_loop is not None and outer_loop < 1) or (inner_loop is not None and inner_loop < 0):
            raise RddError("gm: outer_loop must be >= 1 and inner_loop >= 0")
        self.images = SyntheticImages(lr=lr_img, momentum=momentum_img, init=init, clamp=clamp, who="gm")
        self.lr_net, self.batch_real, self.batch_train = lr_net, batch_real, batch_train
        self.outer_loop, self.inner_loop = outer_loop, inner_loop
        use_vmap(class_batching, torch.device("cpu"))  # validates the choice now, not mid-run
        self.class_batching = class_batching
        if class_chunk < 0:
            raise RddError(f"gm: class_chunk must be >= 0 (0: auto), got {class_chunk}")
        self.class_chunk = class_chunk
        if not isinstance(regularize_inner, bool):
            raise RddError(f"gm: regularize_inner must be true or false, got {regularize_inner!r}")
        self.regularize_inner = regularize_inner
        self._cuda_chunk: int | None = None  # auto's chunk on CUDA, once measured

    def real_images_per_class(self, ipc: int) -> int:
        return self.images.real_images_per_class(ipc)

    def init(self, context: DistillContext) -> dict:
        check_regularizer_on_run(context)
        outer, inner = dc_loops(context.ipc)
        return {
            **self.images.init_state(context),
            "outer_loop": self.outer_loop if self.outer_loop is not None else outer,
            "inner_loop": self.inner_loop if self.inner_loop is not None else inner,
        }

    def step(self, state: dict, context: DistillContext) -> dict[str, float]:
        k, ipc, it = context.num_classes, context.ipc, context.iteration
        own = context.own_classes()
        net = context.fresh_model(it)
        net.train()
        params = trainable_params(net)
        loss_fn = make_loss_fn(net)
        net_optimizer = torch.optim.SGD(net.parameters(), lr=self.lr_net)
        own_labels = state["labels"].view(k, ipc)[own.start:own.stop]
        has_bn = has_batch_norm(net)
        total = 0.0
        for outer in range(state["outer_loop"]):
            # -- match: this rank's classes, their image gradients -----------------------------------
            if has_bn:
                _freeze_batch_norm_on_real(net, context, key=("bn", it, outer))
            latent, syn = self.images.leaf(state, context)
            g_latent = per_class = None
            if len(own):
                real_x, real_y = context.real_batch(self.batch_real, key=("real", it, outer), classes=own)
                real_x, own_syn = self.prepare_batches(real_x, syn[own.start:own.stop], context,
                                                       key=("augment", it, outer), classes=own)
                batched, chunk = self._class_batching(context, loss_fn, params, real_x, real_y)
                per_class = matching_losses(context.regularizer, loss_fn, params, real_x, real_y, own_syn,
                                            own_labels, batched, chunk,
                                            real_draws=lambda i: context.seeded("real-side", it, outer, own[i]),
                                            syn_draws=lambda i: context.seeded("synthetic-side", it, outer, own[i]))
                (g_latent,) = torch.autograd.grad(per_class.sum(), latent)
            # -- every class's gradient on every rank, then the same step everywhere -----------------
            g_latent, losses = combine_classes(context, own, latent, g_latent, per_class, shared=True)
            self.images.step(state, context, g_latent)
            total += float(losses.sum())  # in class order, whatever the ranks
            if has_bn:
                net.train()
            if outer == state["outer_loop"] - 1:
                break
            # -- train the network on the synthetic set: replicated, identical on every rank ---------
            self._train_on_synthetic(net, net_optimizer, state, context, state["inner_loop"], key=(it, outer))
            if replica_checks(context.world):
                same_everywhere(list(net.parameters()), f"the inner loop's network (iteration {it}, outer step {outer})",
                                context.world)
        # DC logs the loss averaged over classes and outer steps.
        return {"match_loss": total / (k * state["outer_loop"])}

    def _class_batching(self, context, loss_fn, params, real_x, real_y) -> tuple[bool, int | None]:
        """(through vmap or a loop, classes per vmap call or None for all)."""
        if not use_vmap(self.class_batching, context.device):
            return False, None
        if self.class_chunk:
            return True, self.class_chunk
        if context.device.type != "cuda":
            return True, None
        if self._cuda_chunk is None:  # once: the network's shape and the batch sizes stay the same
            self._cuda_chunk = cuda_class_chunk(context.regularizer, loss_fn, params, real_x, real_y)
        return self._cuda_chunk > 0, self._cuda_chunk or None

    def _train_on_synthetic(self, net, optimizer, state, context, epochs: int, key: tuple) -> None:
        images = self.images.pixels(state, context)
        labels = state["labels"]
        n = images.shape[0]
        for epoch in range(epochs):
            order = torch.randperm(n, generator=context.generator("inner", *key, epoch)).to(images.device)
            for batch, start in enumerate(range(0, n, self.batch_train)):
                idx = order[start:start + self.batch_train]
                shown = self.train_batch(images[idx], context, key=("inner-augment", *key, epoch, batch))
                optimizer.zero_grad(set_to_none=True)
                # every rank trains this network alike: a backbone's dropout, a regularizer's random
                # start draw what the minibatch's key says
                with context.seeded("inner-forward", *key, epoch, batch):
                    if self.regularize_inner:
                        self._regularized_gradient(net, shown, labels[idx], context)
                    else:
                        F.cross_entropy(net(shown), labels[idx]).backward()
                optimizer.step()

    @staticmethod
    def _regularized_gradient(net, images, labels, context: DistillContext) -> None:
        """The run's regularizer's parameter gradient on one minibatch, into the parameters' ``.grad``.

        The regularizer may run the loss several times (x, x + z, PGD steps): those passes update
        copies of any BatchNorm statistics, and one plain forward then updates the network's own
        once, as a cross-entropy step would."""
        params = {name: p.detach() for name, p in trainable_params(net).items()}
        copies = {name: b.clone() for name, b in net.named_buffers()}
        grads = context.regularizer.parameter_gradient(make_loss_fn(net, copies), params, images, labels)
        if copies:
            with torch.no_grad():
                net(images)
        for name, p in trainable_params(net).items():
            p.grad = grads[name].detach()

    def prepare_batches(self, real_x: torch.Tensor, syn: torch.Tensor, context: DistillContext, *,
                        key: tuple, classes: range):
        """Real (K', B, ...) and synthetic (K', IPC, ...) batches of ``classes`` as the networks see
        them (DSA augments, class c with the draw ``(*key, c)``)."""
        return real_x, syn

    def train_batch(self, images: torch.Tensor, context: DistillContext, *, key: tuple) -> torch.Tensor:
        """A synthetic minibatch as the inner-loop network trains on it (DSA augments with ``key``'s draw)."""
        return images

    def result(self, state: dict, context: DistillContext):
        return self.images.pixels(state, context), state["labels"].clone()
