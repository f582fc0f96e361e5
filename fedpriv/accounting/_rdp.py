"""RDP vectors of single rounds and their conversion to epsilon, for incremental accounting.

The numbers come from the maintained accountants; this module only caches per-round RDP
vectors and converts running sums to epsilon with the same formula as the library:

* ``rdp``: dp_accounting's ``RdpAccountant`` over ``DEFAULT_RDP_ORDERS``; conversion is a
  vectorised copy of ``dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon``
  (Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy",
  NeurIPS 2020, Proposition 12; with the KL bound ``delta <= sqrt(1 - exp(-KL))``).
* ``opacus_rdp``: opacus's ``compute_rdp`` over ``RDPAccountant.DEFAULT_ALPHAS`` and its
  ``get_privacy_spent`` (Balle et al., "Hypothesis Testing Interpretations and Renyi
  Differential Privacy", AISTATS 2020, Theorem 21).
"""

from __future__ import annotations

import warnings

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from fedpriv._logs import quiet_rdp_orders
from fedpriv.accounting import distributed
from fedpriv.accounting.events import REPLACE_ONE, RoundEvent

_DP_ORDERS = np.asarray(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)


def orders(accountant: str) -> np.ndarray:
    """The RDP orders of an RDP accountant backend."""
    if accountant == "rdp":
        return _DP_ORDERS
    # opacus imports torch (seconds); only the opacus_rdp backend needs it.
    from opacus.accountants import RDPAccountant

    return np.asarray(RDPAccountant.DEFAULT_ALPHAS, dtype=np.float64)


def round_rdp(event: RoundEvent, accountant: str) -> np.ndarray:
    """The RDP vector, over :func:`orders`, of one round.

    Args:
        event: The round.
        accountant: ``"rdp"`` or ``"opacus_rdp"``.

    Returns:
        float64 array of RDP values (``inf`` where unbounded).
    """
    if event.is_distributed:
        if accountant != "rdp":
            raise event.unsupported(repr(accountant))
        return distributed.round_rdp(event, _DP_ORDERS)
    if accountant == "rdp":
        relation = (
            dp_accounting.NeighboringRelation.REPLACE_ONE
            if event.neighboring_relation == REPLACE_ONE
            else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        )
        acc = rdp_privacy_accountant.RdpAccountant(
            orders=list(_DP_ORDERS), neighboring_relation=relation
        )
        with quiet_rdp_orders():
            acc.compose(event.dp_event())
        # The library keeps the composed RDP vector in ``_rdp``; it has no public getter.
        return np.array(acc._rdp, dtype=np.float64)
    from opacus.accountants.analysis import rdp as opacus_rdp

    z, q, steps = event.opacus_steps()
    return np.asarray(
        opacus_rdp.compute_rdp(
            q=q, noise_multiplier=z, steps=steps, orders=list(orders("opacus_rdp"))
        ),
        dtype=np.float64,
    )


def to_epsilon(accountant: str, rdp: np.ndarray, delta: float) -> float:
    """Converts an RDP vector over :func:`orders` to epsilon at ``delta``."""
    a = orders(accountant)
    if accountant == "rdp":
        return _dp_accounting_epsilon(a, rdp, delta)
    from opacus.accountants.analysis import rdp as opacus_rdp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = opacus_rdp.get_privacy_spent(orders=a, rdp=rdp, delta=delta)
    return float(eps)


def _dp_accounting_epsilon(a: np.ndarray, rdp: np.ndarray, delta: float) -> float:
    # Same branches, in the same order, as dp_accounting's compute_epsilon.
    eps = np.full(rdp.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        negative = rdp < 0
        kl = ~negative & (delta**2 + np.expm1(-rdp) > 0)
        main = ~negative & ~kl & (a > 1.01)
        eps[main] = rdp[main] + np.log1p(-1.0 / a[main]) - np.log(delta * a[main]) / (a[main] - 1.0)
    eps[negative | kl] = 0.0
    return max(0.0, float(np.min(eps)))
