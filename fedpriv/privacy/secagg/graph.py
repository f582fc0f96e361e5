"""Communication graphs of secure aggregation: complete (Bonawitz et al. 2017) or Harary
(SecAgg+, Bell et al. 2020).

A client masks its input with one pairwise mask per neighbour and secret-shares its keys
among its neighbours. In the complete graph every client has ``n - 1`` neighbours; SecAgg+
uses a ``k``-regular Harary graph on a random relabelling of the clients, so each client's
cost grows with ``k = O(log n)`` instead of ``n``.

References:
    Bonawitz et al. "Practical Secure Aggregation for Privacy-Preserving Machine Learning."
    CCS 2017.
    Bell, Bonawitz, Gascon, Lepoint, Raykova. "Secure Single-Server Aggregation with
    (Poly)Logarithmic Overhead." CCS 2020 (Section 3, Harary graphs ``H_{k,n}``).
    Harary. "The maximum connectivity of a graph." PNAS 1962.
"""

from __future__ import annotations

import numpy as np


def degree(n: int, neighbours: int | None) -> int:
    """The degree actually used: ``n - 1`` for the complete graph (``None`` or ``k >= n - 1``);
    otherwise ``k`` rounded up to even when ``n`` is odd (``H_{k,n}`` with odd ``k`` needs
    even ``n``)."""
    if neighbours is None or neighbours >= n - 1:
        return n - 1
    k = int(neighbours)
    if k % 2 and n % 2:
        k += 1
    return min(k, n - 1)


def harary(n: int, neighbours: int | None, perm: np.ndarray | None = None) -> np.ndarray:
    """Neighbour lists ``nbr[n, k]`` of ``H_{k,n}`` (or the complete graph).

    ``H_{k,n}``: node ``i`` is joined to ``i +- 1, ..., i +- floor(k/2)`` (mod ``n``), and for
    odd ``k`` also to ``i + n/2``. With ``perm`` (a permutation of ``range(n)``), node
    ``perm[i]`` takes the place of ``i`` (SecAgg+'s random graph). Rows are sorted.

    Returns:
        int64 array ``[n, k]`` of neighbour indices, symmetric (``j in nbr[i]`` iff
        ``i in nbr[j]``) and without self loops.
    """
    k = degree(n, neighbours)
    idx = np.arange(n)
    if k == n - 1:
        nbr = (
            np.stack([np.concatenate([idx[:i], idx[i + 1 :]]) for i in range(n)])
            if n > 1
            else (np.zeros((n, 0), np.int64))
        )
    else:
        half = k // 2
        offsets = [o for o in range(1, half + 1)] + [-o for o in range(1, half + 1)]
        if k % 2:
            offsets.append(n // 2)
        nbr = (idx[:, None] + np.asarray(offsets)[None, :]) % n
    if perm is not None:
        perm = np.asarray(perm)
        relabelled = np.empty_like(nbr)
        relabelled[perm] = perm[nbr]
        nbr = relabelled
    return np.sort(nbr, axis=1).astype(np.int64)
