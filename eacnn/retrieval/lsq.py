"""Levenberg–Marquardt as every fit of the search runs it: MINPACK's ``lmder`` (what
``scipy.optimize.least_squares(method="lm")`` runs, with the same arguments and so the same iterates), called
through ``scipy.optimize.leastsq``, which hands MINPACK the residual and the Jacobian directly. ``least_squares``
wraps both in per-call bookkeeping and evaluates the Jacobian once more after the last step; for the search's
small fits (7–40 parameters, 140–4,000 residuals, a few dozen evaluations) that overhead was a third of the time
(``benchmarks/bench_refine.py``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["levenberg_marquardt"]


def levenberg_marquardt(residual: Callable, jacobian: Callable, x0: np.ndarray, max_nfev: int,
                        x_scale: np.ndarray | float | str = 1.0, ftol: float = 1e-8, xtol: float = 1e-8,
                        gtol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ‖residual(x)‖² from ``x0`` [n] with the analytic ``jacobian(x)`` [m, n].

    Args:
        max_nfev: most residual evaluations; x_scale: the parameters' typical sizes [n] (or one for all; "jac":
            MINPACK's own scaling by the Jacobian's columns); ftol, xtol, gtol: MINPACK's tolerances (those of
            ``least_squares``).

    Returns:
        (x [n], the residual at x [m]).
    """
    from scipy.optimize import leastsq

    x0 = np.array(x0, np.float64)
    diag = None if isinstance(x_scale, str) else np.ascontiguousarray(
        1.0 / np.broadcast_to(np.asarray(x_scale, np.float64), x0.shape))
    # MINPACK passes its own working array, which it then changes in place: a model that keeps views of x between
    # the residual and the Jacobian (as least_squares' copies allow) must get a copy
    x, _cov, info, _message, _status = leastsq(lambda x: residual(np.array(x)), x0,
                                               Dfun=lambda x: jacobian(np.array(x)), full_output=True, ftol=ftol,
                                               xtol=xtol, gtol=gtol, maxfev=int(max_nfev), factor=100.0, diag=diag)
    return np.asarray(x, np.float64), np.asarray(info["fvec"], np.float64)
