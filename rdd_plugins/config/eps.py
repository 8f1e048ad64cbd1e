"""Attack budgets: '8/255' or 0.0314 as a float in pixel units of [0, 1] images."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from ..errors import RddError

# An L2 radius may exceed 1 (the diagonal of [0, 1]^d is sqrt(d)); 64 is a practical bound far
# above any radius in use (RobustBench's CIFAR-10 L2 is 0.5) that still catches typos.
L2_EPS_MAX = 64.0


def parse_eps(value: Any, threat_model: str = "Linf") -> float:
    """'8/255' or 0.0314 -> a float in pixel units of [0, 1] images (an L2 radius for "L2")."""
    try:
        eps = float(Fraction(str(value).strip())) if isinstance(value, str) else float(value)
    except ZeroDivisionError:
        raise RddError(f"eps {value!r} divides by zero") from None
    except (ValueError, TypeError):
        raise RddError(f"eps {value!r} is not a number or fraction such as 8/255") from None
    label = "L2 eps" if threat_model == "L2" else "eps"
    if eps < 0:
        raise RddError(f"{label} {value!r} is negative: eps must be >= 0 (in pixel units)")
    if threat_model == "L2":
        if not eps <= L2_EPS_MAX:  # also rejects nan
            raise RddError(f"L2 eps {value!r} is outside [0, 64]: eps is an L2 radius in [0, 1] pixel units")
    elif not eps <= 1.0:
        raise RddError(f"eps {value!r} is outside [0, 1]: eps is in pixel units of [0, 1] images (8/255, not 8)")
    return eps
