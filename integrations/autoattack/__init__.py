"""``autoattack``: fra31's AutoAttack API on top of PyPI's ``pyautoattack``.

Why this module exists: ``robustbench`` 1.1.1 (``robustbench/eval.py``) does
``from autoattack import AutoAttack`` and ``from autoattack.state import EvaluationState``, i.e. it
expects fra31's ``autoattack`` package (github.com/fra31/auto-attack), which is not on PyPI; its
git install cannot be done offline. robustbench's PyPI wheel instead depends on ``pyautoattack``
0.2.0, a packaging of the same attacks (APGD-CE, APGD-T, FAB-T, Square) under the module name
``pyautoattack`` and with a changed API, so a plain ``pip install robustbench`` cannot even be
imported. This adapter gives ``benchmark()`` the API it calls:

* ``AutoAttack(model, norm, eps, seed, verbose, attacks_to_run, version, is_tf_model, device,
  log_path)`` (fra31's signature) maps to ``pyautoattack.AutoAttack(model, attacks=, device=,
  eps=, norm=, seed=, version=)``: ``attacks_to_run`` becomes ``attacks`` (only meaningful with
  ``version='custom'``; with another version a non-empty list is an error, as in fra31);
  ``log_path`` is dropped (pyautoattack logs through the ``logging`` logger ``"auto-attack"``);
  ``verbose=False`` routes that logging to a logger that drops progress messages but keeps the
  reliability warnings (randomized defense, zero gradients, ...); ``is_tf_model=True`` is refused.
* ``run_standard_evaluation(x, y, bs=250, return_labels=False, state_path=None)`` returns
  ``x_adv`` (or ``(x_adv, y_adv)`` with ``return_labels=True``); pyautoattack's takes
  ``batch_size=`` keyword-only and always returns the pair.
* ``run_standard_evaluation_individual(x, y, bs=250, return_labels=False)`` likewise.

The attacks themselves are pyautoattack's, unchanged. ``autoattack.state.EvaluationState`` is
pyautoattack's class.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pyautoattack import AutoAttack as _PyAutoAttack

__all__ = ["AutoAttack"]

# verbose=False: progress (info/debug) is dropped even when the application enables DEBUG logging;
# warnings about an unreliable evaluation still reach the "auto-attack" logger's handlers.
_QUIET_LOGGER = logging.getLogger("auto-attack.quiet")
_QUIET_LOGGER.setLevel(logging.WARNING)


class AutoAttack(_PyAutoAttack):
    """fra31's ``autoattack.AutoAttack`` interface over ``pyautoattack.AutoAttack``."""

    # attacks_to_run=[]: fra31's exact signature (never mutated here)
    def __init__(self, model, norm='Linf', eps=.3, seed=None, verbose=True, attacks_to_run=[],  # noqa: B006
                 version='standard', is_tf_model=False, device='cuda', log_path=None):
        if is_tf_model:
            raise NotImplementedError("autoattack (pyautoattack adapter): TensorFlow models are not "
                                      "supported; pass a torch.nn.Module")
        attacks = list(attacks_to_run) if attacks_to_run else None
        super().__init__(model, attacks=attacks, device=device, eps=eps, norm=norm, seed=seed,
                         version=version)
        if version == 'custom' and not self.attacks_to_run:
            raise ValueError("version='custom' needs attacks_to_run, e.g. ['apgd-ce', 'apgd-t']")
        self.log_path = log_path  # kept for callers that read it; nothing is written there
        self.verbose = verbose
        if not verbose:
            self.logger = _QUIET_LOGGER
            self.apgd.logger = _QUIET_LOGGER
            self.apgd_targeted.logger = _QUIET_LOGGER

    def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False, state_path=None):
        """AutoAttack's cascade on ``(x_orig, y_orig)``: each attack runs on the points that are
        still correctly classified. Returns ``x_adv`` (clean images where no attack succeeded), or
        ``(x_adv, y_adv)`` with ``return_labels=True`` (``y_adv``: predicted labels on ``x_adv``)."""
        if state_path is not None:
            state_path = Path(state_path)
        x_adv, y_adv = super().run_standard_evaluation(x_orig, y_orig, batch_size=bs,
                                                       state_path=state_path)
        return (x_adv, y_adv) if return_labels else x_adv

    def run_standard_evaluation_individual(self, x_orig, y_orig, bs=250, return_labels=False):
        """Each attack of the version alone on all points: ``{attack: x_adv}`` (or
        ``{attack: (x_adv, y_adv)}`` with ``return_labels=True``)."""
        attacks, verbose = list(self.attacks_to_run), self.verbose
        adv = {}
        self.verbose = False
        try:
            for attack in attacks:
                self.attacks_to_run = [attack]
                x_adv, y_adv = _PyAutoAttack.run_standard_evaluation(self, x_orig, y_orig, batch_size=bs)
                adv[attack] = (x_adv, y_adv) if return_labels else x_adv
        finally:
            self.attacks_to_run, self.verbose = attacks, verbose
        return adv
