"""Summary statistics and the robustness indices of the dataset-distillation robustness benchmarks.

All accuracies here are fractions in [0, 1] on input and percentages on output.

Definitions (our implementation, written from the papers' formulas):

* BEARD -- Zhou et al., "BEARD: Benchmarking the Adversarial Robustness for Dataset
  Distillation", arXiv:2411.09265. With ACC the mean clean accuracy, ACC_adv the mean accuracy
  under attack over all attacks (and IPCs when pooled), and ACC_min the lowest of those:

      RR   = 1 - (ACC - ACC_adv) / (ACC - ACC_min)              (Robustness Ratio)
      AE   = (T_adv - T_clean) / (T_max - T_clean)               (Attack Efficiency Ratio)
      CREI = alpha * RR + (1 - alpha) * AE,  alpha = 0.5          (Comprehensive Robustness-Efficiency Index)

  where T_clean is the clean inference time, T_adv the mean and T_max the largest attack time.
  RR is 0 when ACC equals ACC_min (BEARD's convention for the degenerate case); AE likewise. The
  accuracies under attack are each attack's own (not cascaded), as BEARD evaluates them.
* ROME -- Zhou et al., "ROME is Forged in Adversity: Robust Distilled Datasets via Information
  Bottleneck", ICML 2025 (https://openreview.net/forum?id=agtwOsnLUB). Improved Robustness Ratio,
  which does not jump to 0 or 1 when the attacks are about equally strong:

      I-RR = 1 - (ACC - ACC_adv) * (ACC - ACC_min) / ACC^2

  When ACC equals ACC_min, I-RR is 1 (no attack costs accuracy); BEARD's code returns 0 there for
  both indices. ROME's later variant subtracts a penalty for attacks that *raise* accuracy; for one
  evaluation under our protocol it is 0 (a point counts as robust only if it was correct clean), so
  it is left out; pooled over several IPCs an attacked accuracy can exceed the mean clean one.
"""

from __future__ import annotations

import numpy as np


def summarize(values: list[float]) -> dict:
    """Mean and std in percent; std with ddof=0 over models, as DC reports it."""
    arr = np.asarray(values, dtype=np.float64) * 100.0
    return {"mean": round(float(arr.mean()), 3), "std": round(float(arr.std()), 3), "n": len(values)}


def success_rate(attacked: int, fooled: int) -> float | None:
    """Attack success rate: the fraction of the points an attack ran on that it broke (None when it
    ran on none: every point was wrong clean or broken before it)."""
    return fooled / attacked if attacked else None


def robustness_indices(clean: list[float], attacked: list[float], clean_seconds: list[float] | None = None,
                       attack_seconds: list[float] | None = None, alpha: float = 0.5) -> dict:
    """RR, I-RR (and AE, CREI when timings are given) in percent.

    ``clean``: clean accuracies (one per IPC when pooling across IPCs, else one);
    ``attacked``: accuracies under every attack (and eps) of those evaluations, pooled.
    """
    if not clean or not attacked:
        raise ValueError("robustness indices need at least one clean and one attacked accuracy")
    acc = float(np.mean(clean))
    adv = np.asarray(attacked, dtype=np.float64)
    mean_adv, min_adv = float(adv.mean()), float(adv.min())
    rr = 0.0 if acc == min_adv else 1.0 - (acc - mean_adv) / (acc - min_adv)
    irr = 0.0 if acc == 0 else 1.0 - (acc - mean_adv) * (acc - min_adv) / acc ** 2
    out = {"RR": round(rr * 100, 3), "I-RR": round(irr * 100, 3)}
    if clean_seconds and attack_seconds:
        t_clean = float(np.mean(clean_seconds))
        times = np.asarray(attack_seconds, dtype=np.float64)
        t_max = float(times.max())
        ae = 0.0 if t_max == t_clean else (float(times.mean()) - t_clean) / (t_max - t_clean)
        out["AE"] = round(ae * 100, 3)
        out["CREI"] = round((alpha * rr + (1 - alpha) * ae) * 100, 3)
        out["alpha"] = alpha
    return out


def without_timings(value):
    """A result (a results.json row, a per-seed record, a history) without its wall-clock fields,
    the keys ending in "seconds": what reruns, processes and ranks must agree on."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not k.endswith("seconds")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value
