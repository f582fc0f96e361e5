"""Secure aggregation, two paths (DESIGN.md section 7).

* Fast path (:mod:`~fedpriv.privacy.secagg.fast`): an Aggregator inside the jit-compiled round:
  quantise with stochastic rounding, optional randomised Hadamard rotation, sum in ``Z_2^b``,
  optional per-client integer noise for distributed DP; masks and noise simulation-grade.
* Protocol path (:mod:`~fedpriv.privacy.secagg.protocol`): Bonawitz et al. 2017 with SecAgg+'s
  sparse graph, real X25519 / HKDF / AES / Shamir, dropout recovery, per-phase costs; run on
  the host between the jit-compiled halves of a round (:mod:`~fedpriv.privacy.secagg.host_round`).
"""

from fedpriv.privacy.secagg.fast import SecAggSpec, secure_aggregator, with_client_key
from fedpriv.privacy.secagg.protocol import ProtocolAbort, ProtocolResult, run_protocol, simulate

__all__ = [
    "ProtocolAbort",
    "ProtocolResult",
    "SecAggSpec",
    "run_protocol",
    "secure_aggregator",
    "simulate",
    "with_client_key",
]
