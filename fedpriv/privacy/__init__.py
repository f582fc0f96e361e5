"""Differential privacy for federated learning: clipping, noise, DP aggregation, DP-SGD,
the privacy plan and the ledger."""

from fedpriv.privacy.aggregators import AdaptiveClip, dp_fedavg, split_noise
from fedpriv.privacy.clipping import clip, clip_flat, clip_per_layer, l2_norm
from fedpriv.privacy.dpsgd import make_dpsgd_client_update, per_example_grads
from fedpriv.privacy.ledger import LedgerWriter, read_ledger
from fedpriv.privacy.noise import add_gaussian, gaussian_like
from fedpriv.privacy.plan import PrivacyPlan, build_plan

__all__ = [
    "AdaptiveClip",
    "LedgerWriter",
    "PrivacyPlan",
    "add_gaussian",
    "build_plan",
    "clip",
    "clip_flat",
    "clip_per_layer",
    "dp_fedavg",
    "gaussian_like",
    "l2_norm",
    "make_dpsgd_client_update",
    "per_example_grads",
    "read_ledger",
    "split_noise",
]
