"""The secure-aggregation protocol of Bonawitz et al. 2017, with SecAgg+'s sparse graph.

Semi-honest version (Bonawitz et al. 2017, Figure 4 without the signatures of the
active-adversary variant), simulated in one process with real cryptography from the
``cryptography`` package for keys and seeds, and numpy for the vectors:

0. AdvertiseKeys: every client makes two X25519 key pairs ``(c, s)`` and sends both public
   keys; the server forwards them to the client's neighbours.
1. ShareKeys: client ``i`` draws a 32-byte self-mask seed ``b_i`` (``os.urandom``) and
   Shamir-shares ``b_i`` and its mask private key ``s_i`` among its neighbours (threshold
   ``t``, :mod:`~fedpriv.privacy.secagg.shamir`); each neighbour's shares are encrypted with
   AES-GCM under ``HKDF(X25519(c_i, c_j))`` and relayed by the server.
2. MaskedInputCollection: client ``i`` sends
   ``y_i = x_i + PRG(b_i) + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij)  (mod 2^b)`` with
   ``s_ij = HKDF(X25519(s_i, s_j))`` over its neighbours ``j`` and ``PRG`` AES-256-CTR.
   Clients in ``drop_before_input`` drop before this step.
3. Unmasking: every surviving client sends, for each neighbour, a share of ``b_i`` if the
   neighbour's masked input arrived and a share of ``s_i`` if it did not (never both).
   Clients in ``drop_after_input`` sent their masked input and drop before this step: their
   inputs are in the sum, their self masks are removed from the others' shares of ``b_i``.
   The server reconstructs from ``t`` shares each, removes the self masks of the clients whose
   input arrived and the pairwise masks between them and the clients that dropped before
   sending, and outputs ``sum_{i in U3} x_i (mod 2^b)``. With fewer than ``t`` surviving
   clients, or fewer than ``t`` surviving share holders of any needed secret, it aborts with
   :class:`ProtocolAbort` instead of releasing a wrong sum.

With ``neighbours=k`` the graph is SecAgg+'s ``k``-regular Harary graph on a random relabelling
(Bell et al. 2020), and shares go to the ``k`` neighbours only.

Costs are measured per phase: seconds of computation per client (mean) and at the server, and
bytes sent per client (mean) and by the server (total), counting field elements at 4 bytes,
keys at 32 bytes, AES-GCM at 12 (nonce) + 16 (tag) bytes, masked inputs at ``ceil(b d / 8)``.

References:
    Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth. "Practical
    Secure Aggregation for Privacy-Preserving Machine Learning." CCS 2017.
    Bell, Bonawitz, Gascon, Lepoint, Raykova. "Secure Single-Server Aggregation with
    (Poly)Logarithmic Overhead." CCS 2020.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedpriv.errors import ConfigError
from fedpriv.privacy.secagg import graph, shamir

PHASES: tuple[str, ...] = ("advertise_keys", "share_keys", "masked_input", "unmasking")
_RAW = serialization.Encoding.Raw
_PUB = serialization.PublicFormat.Raw
_PRIV = serialization.PrivateFormat.Raw
_NOENC = serialization.NoEncryption()
_KEY_BYTES = 32
_SHARE_BYTES = 4 * 9  # 9 field elements of GF(2^31 - 1) per 32-byte secret
_GCM_OVERHEAD = 12 + 16


class ProtocolAbort(RuntimeError):
    """The server cannot recover the sum (too few clients or shares survived)."""


@dataclasses.dataclass
class ProtocolResult:
    """Output and costs of one run of the protocol.

    Attributes:
        total: ``sum_{i in included} x_i mod 2^b`` (uint32 ``[d]``).
        included: clients whose masked input arrived (``U3``), sorted.
        survivors: clients that took part in unmasking, sorted.
        client_seconds / server_seconds: per phase, mean per client / at the server.
        client_bytes / server_bytes: per phase, mean sent per client / sent by the server.
    """

    total: np.ndarray
    included: np.ndarray
    survivors: np.ndarray
    client_seconds: dict[str, float]
    server_seconds: dict[str, float]
    client_bytes: dict[str, float]
    server_bytes: dict[str, float]

    def summary(self) -> dict[str, float]:
        """Totals over phases, for metrics."""
        return {
            "secagg_client_seconds": float(sum(self.client_seconds.values())),
            "secagg_server_seconds": float(sum(self.server_seconds.values())),
            "secagg_client_bytes": float(sum(self.client_bytes.values())),
            "secagg_server_bytes": float(sum(self.server_bytes.values())),
            "secagg_included": int(len(self.included)),
            "secagg_survivors": int(len(self.survivors)),
        }


def _hkdf(shared: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def prg(seed: bytes, d: int, bits: int) -> np.ndarray:
    """``d`` words of ``Z_2^b`` from AES-256-CTR keyed by ``seed`` (uint32)."""
    enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    words = np.frombuffer(enc.update(b"\0" * (4 * d)), np.uint32)
    return words & np.uint32((1 << bits) - 1) if bits < 32 else words.copy()


def default_threshold(degree: int) -> int:
    """A majority of a client's share holders: ``floor(k / 2) + 1``."""
    return degree // 2 + 1


def check_threshold(threshold: int, degree: int, field: str = "secagg.threshold") -> int:
    """Raises :class:`ConfigError` unless ``1 <= t <= k`` (shares go to ``k`` neighbours)."""
    if not 1 <= threshold <= degree:
        raise ConfigError(
            field,
            f"must be in [1, {degree}] (each client has {degree} share holders), got {threshold}",
        )
    return threshold


class _Client:
    def __init__(self, index: int, x: np.ndarray):
        self.index = index
        self.x = x
        self.c_sk = X25519PrivateKey.generate()
        self.s_sk = X25519PrivateKey.generate()
        self.c_pk = self.c_sk.public_key().public_bytes(_RAW, _PUB)
        self.s_pk = self.s_sk.public_key().public_bytes(_RAW, _PUB)
        self.b = b""
        self.inbox: dict[int, bytes] = {}


def run_protocol(
    x: np.ndarray,
    bits: int,
    threshold: int | None = None,
    neighbours: int | None = None,
    drop_before_input: Iterable[int] = (),
    drop_after_input: Iterable[int] = (),
    rng: np.random.Generator | None = None,
) -> ProtocolResult:
    """Runs the protocol on ``x[n, d]`` (uint32 elements of ``Z_2^b``).

    Args:
        x: the clients' quantised inputs.
        bits: ``b``.
        threshold: Shamir threshold ``t`` (None: :func:`default_threshold` of the degree).
        neighbours: SecAgg+ degree ``k`` (None: complete graph, Bonawitz et al. 2017).
        drop_before_input: clients that drop after sharing keys, before the masked input.
        drop_after_input: clients that drop after sending the masked input.
        rng: relabels the SecAgg+ graph (required when ``neighbours`` is set).

    Returns:
        :class:`ProtocolResult`.

    Raises:
        ConfigError: a threshold out of range.
        ProtocolAbort: too few survivors to reconstruct.

    Privacy:
        Against an honest-but-curious server (and fewer than ``t`` colluding clients per
        neighbourhood), the server learns only the sum of the included inputs (Bonawitz et al.
        2017, Theorem 6.3). This simulation runs every party in one process.
    """
    x = np.asarray(x, np.uint32)
    n, d = x.shape
    mod = np.uint32((1 << bits) - 1) if bits < 32 else np.uint32(0xFFFFFFFF)
    k = graph.degree(n, neighbours)
    perm = None
    if k < n - 1:
        if rng is None:
            raise ValueError("a SecAgg+ graph needs rng for its random relabelling")
        perm = rng.permutation(n)
    nbr = graph.harary(n, neighbours, perm)
    t = check_threshold(default_threshold(k) if threshold is None else int(threshold), k)
    before, after = set(map(int, drop_before_input)), set(map(int, drop_after_input))
    csec: dict[str, float] = defaultdict(float)
    ssec: dict[str, float] = defaultdict(float)
    cbytes: dict[str, float] = defaultdict(float)
    sbytes: dict[str, float] = defaultdict(float)

    # Round 0: AdvertiseKeys.
    clients = []
    for i in range(n):
        t0 = time.perf_counter()
        clients.append(_Client(i, x[i]))
        csec["advertise_keys"] += time.perf_counter() - t0
        cbytes["advertise_keys"] += 2 * _KEY_BYTES
    t0 = time.perf_counter()
    c_pub = {i: X25519PublicKey.from_public_bytes(c.c_pk) for i, c in enumerate(clients)}
    s_pub = {i: X25519PublicKey.from_public_bytes(c.s_pk) for i, c in enumerate(clients)}
    ssec["advertise_keys"] += time.perf_counter() - t0
    sbytes["advertise_keys"] += n * k * (2 * _KEY_BYTES + 4)

    # Round 1: ShareKeys.
    for c in clients:
        t0 = time.perf_counter()
        c.b = os.urandom(32)
        holders = nbr[c.index]
        xs = holders + 1  # share points: the holder's index + 1 (nonzero, distinct)
        sk_shares = shamir.share_secret(c.s_sk.private_bytes(_RAW, _PRIV, _NOENC), xs, t)
        b_shares = shamir.share_secret(c.b, xs, t)
        for pos, j in enumerate(holders):
            key = _hkdf(c.c_sk.exchange(c_pub[int(j)]), b"fedpriv-secagg share")
            nonce = os.urandom(12)
            payload = (
                np.array([c.index, j], np.uint32).tobytes()
                + sk_shares[pos].astype(np.uint32).tobytes()
                + b_shares[pos].astype(np.uint32).tobytes()
            )
            clients[int(j)].inbox[c.index] = nonce + AESGCM(key).encrypt(nonce, payload, None)
        csec["share_keys"] += time.perf_counter() - t0
        sent = k * (8 + 2 * _SHARE_BYTES + _GCM_OVERHEAD)
        cbytes["share_keys"] += sent
        sbytes["share_keys"] += sent  # the server relays every ciphertext

    # Round 2: MaskedInputCollection.
    included = [i for i in range(n) if i not in before]
    y: dict[int, np.ndarray] = {}
    for i in included:
        c = clients[i]
        t0 = time.perf_counter()
        acc = c.x + prg(c.b, d, bits)
        for j in nbr[i]:
            j = int(j)
            seed = _hkdf(c.s_sk.exchange(s_pub[j]), b"fedpriv-secagg pair")
            if i < j:
                acc = acc + prg(seed, d, bits)
            else:
                acc = acc - prg(seed, d, bits)
        y[i] = acc & mod
        csec["masked_input"] += time.perf_counter() - t0
        cbytes["masked_input"] += math.ceil(bits * d / 8)
    sbytes["masked_input"] += len(included) * k * 4  # who sent, to each survivor's neighbours

    # Round 3: Unmasking.
    arrived = set(included)
    survivors = [i for i in included if i not in after]
    if len(survivors) < t:
        raise ProtocolAbort(
            f"only {len(survivors)} clients survived to unmasking, below the threshold t={t}; "
            "the sum cannot be recovered and nothing is released"
        )
    shares_b: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    shares_sk: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for j in survivors:
        c = clients[j]
        t0 = time.perf_counter()
        for i in nbr[j]:
            i = int(i)
            blob = c.inbox[i]
            key = _hkdf(c.c_sk.exchange(c_pub[i]), b"fedpriv-secagg share")
            plain = AESGCM(key).decrypt(blob[:12], blob[12:], None)
            words = np.frombuffer(plain, np.uint32)
            src, dst = int(words[0]), int(words[1])
            if (src, dst) != (i, j):
                raise ProtocolAbort(f"share from {i} to {j} is labelled {src} -> {dst}")
            if i in arrived:
                shares_b[i].append((j, words[2 + 9 :].astype(np.uint64)))
            else:
                shares_sk[i].append((j, words[2 : 2 + 9].astype(np.uint64)))
        csec["unmasking"] += time.perf_counter() - t0
        cbytes["unmasking"] += k * (4 + _SHARE_BYTES)

    t0 = time.perf_counter()
    total = np.zeros(d, np.uint32)
    for i in included:
        total = total + y[i]

    def _secret(owner: int, got: list[tuple[int, np.ndarray]], what: str) -> bytes:
        if len(got) < t:
            raise ProtocolAbort(
                f"client {owner}'s {what} has {len(got)} surviving share holders, below the "
                f"threshold t={t}; the sum cannot be recovered and nothing is released"
            )
        got = got[:t]
        xs = np.array([j + 1 for j, _ in got])
        return shamir.reconstruct_secret(xs, np.stack([s for _, s in got]))

    for i in included:
        total = total - prg(_secret(i, shares_b[i], "self-mask seed"), d, bits)
    for i in range(n):
        if i in arrived:
            continue
        sk = X25519PrivateKey.from_private_bytes(_secret(i, shares_sk[i], "mask key"))
        for j in nbr[i]:
            j = int(j)
            if j not in arrived:
                continue
            mask = prg(_hkdf(sk.exchange(s_pub[j]), b"fedpriv-secagg pair"), d, bits)
            total = total - mask if j < i else total + mask  # undo j's +-PRG(s_ji)
    total = total & mod
    ssec["unmasking"] += time.perf_counter() - t0

    phases = {p: 0.0 for p in PHASES}
    return ProtocolResult(
        total=total,
        included=np.asarray(sorted(included), np.int64),
        survivors=np.asarray(sorted(survivors), np.int64),
        client_seconds={**phases, **{p: v / n for p, v in csec.items()}},
        server_seconds={**phases, **dict(ssec)},
        client_bytes={**phases, **{p: v / n for p, v in cbytes.items()}},
        server_bytes={**phases, **dict(sbytes)},
    )


def simulate(
    x: np.ndarray,
    bits: int,
    rng: np.random.Generator,
    threshold: int | None = None,
    neighbours: int | None = None,
    dropout: float = 0.0,
    late_dropout: float = 0.0,
) -> ProtocolResult:
    """:func:`run_protocol` with ``round(dropout n)`` clients dropping before their masked
    input and ``round(late_dropout n)`` after it, chosen uniformly with ``rng``."""
    n = x.shape[0]
    order = rng.permutation(n)
    n_before = int(round(dropout * n))
    n_after = int(round(late_dropout * n))
    return run_protocol(
        x,
        bits,
        threshold,
        neighbours,
        drop_before_input=order[:n_before],
        drop_after_input=order[n_before : n_before + n_after],
        rng=rng,
    )
