"""Replay of a run's last round: is the noise that was released the noise that was claimed?

The other checks of ``fedpriv-audit`` compare records that the training code wrote about
itself, so a mechanism that adds too little noise, skips clipping or divides by the wrong
count can still describe itself consistently. :func:`check_noise_replay` (check
``noise_replay``) trusts only the configuration, the seed and the model parameters:

1. It restores the server state after round ``R - 1`` (parameters, server optimizer state,
   clip norm; ``R`` is the ledger's last round) from ``checkpoints/<R-1>/`` (for ``R = 1``
   the initial parameters are rebuilt from the seed) and the released parameters after
   round ``R`` from ``checkpoints/<R>/`` or ``final_params.npz``.
2. It recomputes round ``R``'s noiseless mean update with a reference of its own: the cohort
   from the documented key schedule (``fold_in(fold_in(key(seed), purpose), round)``,
   purposes data 0, init 1, sampling 2, round 3; the round key split into client and
   aggregation keys; client ``i`` trains with ``fold_in(client_key, i)``), local training
   as a plain Python loop over clients and mini-batches, flat (or per-layer) L2 clipping to
   ``C`` in float64, and the sum divided by the expected cohort ``m`` computed from the
   configuration (DP-FedAvg, McMahan et al. 2018). It shares only the flax model, the
   population store and the cohort sampler with the code under test.
3. It inverts the server optimizer (SGD, with or without momentum, is affine in the
   pseudo-gradient) to get the mean update that was released.
4. The residual ``r = released - reference`` over all ``d`` parameters must be the claimed
   Gaussian noise: i.i.d. ``N(0, s^2)`` with ``s = z_update C / m``, where ``z`` is the
   ledger's noise multiplier for round ``R`` and, with adaptive clipping,
   ``z_update = (z^-2 - (2 sigma_b)^-2)^-1/2`` (Andrew et al. 2021, Theorem 1).

:func:`residual_tests` tests the residual four ways: ``sum(r^2) / s^2`` against
``chi2(d)`` (two-sided: too little or too much noise; also for each parameter array on its
own, so noise left off the biases is not drowned by the kernels), a Kolmogorov-Smirnov test of
``r / s`` against ``N(0, 1)``, and two matched filters ``r.v / (s ||v||) ~ N(0, 1)``: ``v``
the reference mean (two-sided: the noised sum divided by another count than ``m``) and
``v`` the clipping excess ``(sum of unclipped - sum of clipped updates) / m`` (one-sided:
clipping skipped; left out when no client was clipped).

What one round cannot show: a clip norm larger than claimed shifts the residual along the
clipping excess by about ``||excess|| / s`` noise standard deviations, which for a few
clipped clients and ``z >= 1`` may stay below the test's critical value (a clip of ``2 C``
claimed as ``C`` passed with five clients at ``z = 1``); and noise drawn with a key that
depends on the data has the claimed distribution and passes. For seeded runs the noise
itself could be regenerated from the seed; this check deliberately does not, so that it
works for secure runs too.

Assumptions:
    The reference equals the code's noiseless mean up to float32 rounding, which must be
    small against ``s`` (the check is ``n/a`` when the float32 resolution of the parameters
    exceeds a tolerance that shrinks with ``d``, so rounding cannot move the chi-square
    statistic by more than a tenth of its critical distance). Local training is
    deterministic given the client's key (no dropout; data in the population store as the
    configuration loads it). The noise of round ``R`` is independent of the cohort's
    updates, whether its key is seeded or drawn from the operating system
    (``privacy.noise_source=secure``): the test is statistical and needs no noise key.

False-failure rate:
    Each of the ``k`` tests performed (3, or 4 when clients were clipped, plus one per
    parameter array) runs at level
    ``alpha / k`` and the check fails when any rejects, so by Bonferroni's inequality an
    honest run fails with probability at most ``alpha`` = :data:`FALSE_FAILURE_RATE`
    (``1e-3``), whatever the correlation between the tests. With ``d`` coordinates the
    chi-square test alone detects a noise std outside about ``1 +- 3.7 sqrt(1 / (2 d))``
    times the claim with probability 1/2 (about ``0.989x``..``1.011x`` for ``d = 55210``);
    the evidence states the bounds for the run.

Not covered (``n/a`` with the reason): example-level DP, distributed DP or secure
aggregation, hierarchical aggregation, FedBuff, availability and compute models, FedProx
and FedNova, canaries, adaptive server optimizers (FedAdam, FedYogi: not invertible).

References:
    McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent Language
    Models." ICLR 2018 (DP-FedAvg, Algorithm 1: the expected cohort as divisor).
    Andrew, Thakkar, McMahan, Ramaswamy. "Differentially Private Learning with Adaptive
    Clipping." NeurIPS 2021 (Theorem 1: the noise split with a noised clip count).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from fedpriv.audit._files import RunFiles
from fedpriv.audit.consistency import FAIL, NA, PASS, Check
from fedpriv.errors import ConfigError
from fedpriv.fl import experiment
from fedpriv.fl.checkpoint import flatten, leaf_name, load_final_params, restore_step
from fedpriv.privacy import mechanisms
from fedpriv.settings import RunConfig

#: The check's false-failure rate on an honest run (Bonferroni over its tests).
FALSE_FAILURE_RATE = 1e-3
#: Key purposes of the documented schedule (data, init, sampling, round).
PURPOSE_DATA, PURPOSE_INIT, PURPOSE_SAMPLING, PURPOSE_ROUND = 0, 1, 2, 3
#: Part of the chi-square test's critical distance that float32 rounding may take up.
ROUNDING_SHARE = 0.1

NAME = "noise_replay"
TITLE = "the released noise of the last round has the claimed distribution"


@dataclasses.dataclass(frozen=True)
class NoiseTest:
    """One test of the residual against the claimed noise.

    Attributes:
        name: ``chi2``, ``ks``, ``mean_projection`` or ``excess_projection``.
        statistic: ``sum(r^2) / (d s^2)`` (chi2), the KS distance (ks), or the standardised
            projection ``r.v / (s ||v||)``.
        p_value: The p-value under the claimed noise.
        level: The test's level (its share of the false-failure rate).
        alternative: ``two-sided`` or ``greater``.
    """

    name: str
    statistic: float
    p_value: float
    level: float
    alternative: str

    @property
    def rejected(self) -> bool:
        return self.p_value < self.level


def residual_tests(
    residual: np.ndarray,
    std: float,
    mean_direction: np.ndarray | None = None,
    excess_direction: np.ndarray | None = None,
    false_failure_rate: float = FALSE_FAILURE_RATE,
    segments: Sequence[tuple[str, int, int]] = (),
) -> list[NoiseTest]:
    """Tests ``residual`` against i.i.d. ``N(0, std^2)``, Bonferroni-combined.

    Args:
        residual: ``r[d]``, released minus reference mean update.
        std: ``s``, the claimed per-coordinate noise std (> 0).
        mean_direction: ``v[d]`` for the two-sided matched filter (the reference mean); None
            or zero: left out.
        excess_direction: ``v[d]`` for the one-sided matched filter (the clipping excess);
            None or zero: left out.
        false_failure_rate: ``alpha``; each of the ``k`` tests run gets ``alpha / k``.
        segments: ``(name, start, stop)`` of each parameter array; with two or more, each
            array also gets its own two-sided chi-square test (``chi2[name]``), so noise
            left off a small array (the biases) is not drowned by the rest.

    Returns:
        The tests performed; the residual is refuted when any is :attr:`NoiseTest.rejected`.
        Under the null hypothesis that happens with probability at most ``alpha``.
    """
    r = np.asarray(residual, dtype=np.float64).ravel()
    d = r.size
    if not std > 0 or d == 0:
        raise ValueError(f"need std > 0 and a non-empty residual, got std={std}, d={d}")
    x = r / std
    directions = []
    for name, v, alternative in (
        ("mean_projection", mean_direction, "two-sided"),
        ("excess_projection", excess_direction, "greater"),
    ):
        if v is None:
            continue
        v = np.asarray(v, dtype=np.float64).ravel()
        norm = float(np.linalg.norm(v))
        if norm > 0 and math.isfinite(norm):
            directions.append((name, v / norm, alternative))
    parts = [s for s in segments if s[2] > s[1]] if len(segments) > 1 else []
    level = false_failure_rate / (2 + len(directions) + len(parts))

    def chi2(name: str, y: np.ndarray) -> NoiseTest:
        q, n = float(np.dot(y, y)), y.size
        p = min(1.0, 2.0 * min(stats.chi2.cdf(q, n), stats.chi2.sf(q, n)))
        return NoiseTest(name, q / n, float(p), level, "two-sided")

    ks = stats.kstest(x, "norm")
    out = [
        chi2("chi2", x),
        NoiseTest("ks", float(ks.statistic), float(ks.pvalue), level, "two-sided"),
    ]
    out += [chi2(f"chi2[{name}]", x[lo:hi]) for name, lo, hi in parts]
    for name, unit, alternative in directions:
        t = float(np.dot(x, unit))
        p = 2.0 * stats.norm.sf(abs(t)) if alternative == "two-sided" else stats.norm.sf(t)
        out.append(NoiseTest(name, t, float(min(1.0, p)), level, alternative))
    return out


def detectable_std_ratios(d: int, level: float) -> tuple[float, float]:
    """The noise std ratios (true / claimed) at the chi-square test's critical values.

    A true std below the first or above the second is detected with probability at least
    about 1/2 by the chi-square test alone at ``level`` (two-sided).
    """
    return (
        math.sqrt(stats.chi2.ppf(level / 2, d) / d),
        math.sqrt(stats.chi2.isf(level / 2, d) / d),
    )


def rounding_tolerance(d: int, level: float) -> float:
    """The largest float32 rounding (RMS, relative to ``s``) the check accepts.

    Rounding of RMS ``e s`` adds about ``e^2`` to the chi-square statistic's mean ratio; it
    may take up :data:`ROUNDING_SHARE` of the distance to the critical value.
    """
    _, high = detectable_std_ratios(d, level)
    return math.sqrt(ROUNDING_SHARE * (high**2 - 1.0))


# --------------------------------------------------------------------------- coverage


_COVERED_ALGORITHMS = ("fedavg", "fedavgm")


def not_covered(run: RunFiles) -> str | None:
    """Why the reference cannot replay this run (None: it can)."""
    if run.config is None:
        return "no composed configuration (.hydra/config.yaml): the round cannot be rebuilt"
    get = run.config_get
    privacy = get("privacy.name", "none")
    if privacy not in mechanisms.names():
        return f"privacy {privacy!r} is not a known mechanism"
    mechanism = mechanisms.get(privacy)
    if not mechanism.private:
        return f"no differential privacy claimed (privacy={privacy})"
    if mechanism.unit == "example":
        return "example-level DP-SGD runs inside local training; the reference replays DP-FedAvg"
    if mechanism.owns_secagg or get("secagg.mode", "none") != "none":
        return "distributed DP / secure aggregation quantise and noise on the clients"
    if not mechanism.gaussian_fedavg:
        return f"privacy {privacy!r} is not DP-FedAvg"
    if get("hierarchy.name", "none") != "none":
        return "hierarchical aggregation (hierarchy) is not replayed"
    if get("async.name", "none") != "none":
        return "buffered asynchronous aggregation (async) is not replayed"
    if get("availability.kind", "none") != "none":
        return "availability models drop clients inside the round; not replayed"
    if get("compute.kind", "none") != "none":
        return "heterogeneous compute models change local training; not replayed"
    algorithm = get("algorithm.name", "fedavg")
    if algorithm in ("fedadam", "fedyogi"):
        return (
            f"server optimizer {algorithm} is not affine in the pseudo-gradient, so the released "
            "mean update cannot be recovered from the parameters"
        )
    if algorithm not in _COVERED_ALGORITHMS:
        return f"algorithm {algorithm} changes local training or the aggregate; not replayed"
    if int(get("canaries.count", 0) or 0) > 0:
        return "canary clients are planted in the cohort; not replayed"
    if get("client.optimizer", "sgd") not in ("sgd", "adam"):
        return f"client optimizer {get('client.optimizer')!r} is unknown to the reference"
    if not run.events:
        return "no ledger records"
    return None


# --------------------------------------------------------------------------- the check


def check_noise_replay(run: RunFiles, false_failure_rate: float = FALSE_FAILURE_RATE) -> Check:
    """Replays the last round with an independent reference and tests the released noise.

    Args:
        run: The run's files (:func:`fedpriv.audit.read_run`).
        false_failure_rate: The probability that an honest run fails the check (at most).

    Returns:
        The ``noise_replay`` check: ``fail`` when the residual refutes the claimed noise,
        ``n/a`` with the reason when the run cannot be replayed (see the module docstring).

    Privacy:
        Tests the claim behind the accounting: under add/remove-one-client the released mean
        is the clipped sum plus ``N(0, (z_update C)^2 I)``, divided by the expected cohort.
        A failure means the run added less (or more) noise, clipped differently, or divided
        by another count than its ledger says.
    """
    start = time.perf_counter()
    try:
        replay = replay_last_round(run)
    except NotReplayable as err:
        return Check(NAME, TITLE, NA, str(err))
    except ConfigError as err:
        return Check(NAME, TITLE, NA, f"{err.field}: {err.message}")
    replay.evidence["seconds"] = round(time.perf_counter() - start, 3)
    return _verdict(replay, false_failure_rate)


class NotReplayable(Exception):
    """The run cannot be replayed; the message says why."""


@dataclasses.dataclass
class RoundReplay:
    """The last round of a run, replayed.

    Attributes:
        released: ``released[d]``, the mean update the server applied (float64).
        reference: ``reference[d]``, the reference's noiseless mean update.
        excess: ``excess[d]``, ``(sum of unclipped - sum of clipped updates) / m``.
        std: ``s``, the claimed noise std per coordinate of the mean.
        problems: Inconsistencies found on the way (they fail the check).
        evidence: The numbers of the replay (round, d, cohort, clip norm, claimed noise).
        segments: ``(name, start, stop)`` of each parameter array in the flat vectors.
    """

    released: np.ndarray
    reference: np.ndarray
    excess: np.ndarray
    std: float
    problems: list[str]
    evidence: dict[str, Any]
    segments: tuple[tuple[str, int, int], ...] = ()

    @property
    def residual(self) -> np.ndarray:
        """``released - reference``: the claimed ``N(0, s^2 I)`` noise on an honest run."""
        return self.released - self.reference


def replay_last_round(run: RunFiles) -> RoundReplay:
    """Restores the state before the last round, replays the round with the reference and
    recovers the released mean update (steps 1-3 of the module docstring).

    Raises:
        NotReplayable: the run is of a kind the reference does not cover, or the state it
            needs was not kept.
        ConfigError: a checkpoint or configuration needed cannot be read.
    """
    reason = not_covered(run)
    if reason is not None:
        raise NotReplayable(reason)
    cfg = dict(run.config)
    last = max(ev.round for ev in run.events)
    if last < 1:
        raise NotReplayable("the ledger holds no executed round")
    index = max(i for i, ev in enumerate(run.events) if ev.round == last)
    event = run.events[index]
    adaptive = mechanisms.get(cfg["privacy"]["name"]).adaptive_clip
    z = float(event.noise_multiplier)
    z_update = z
    if adaptive:
        sigma_b = event.count_noise_std
        if sigma_b is None:
            raise NotReplayable(
                f"round {last}'s ledger record has no count_noise_std (adaptive clipping)"
            )
        rest = z**-2 - (2.0 * float(sigma_b)) ** -2 if z > 0 else 0.0
        if rest <= 0:
            raise NotReplayable(
                f"round {last} claims noise multiplier {z:g} with count_noise_std "
                f"{float(sigma_b):g}: no noise is left for the update (z_update undefined)"
            )
        z_update = rest**-0.5
    if not z_update > 0:
        raise NotReplayable(
            f"round {last} claims no noise (noise_multiplier {z:g}); nothing to test"
        )

    steps = {int(p.name) for p in (run.path / "checkpoints").glob("*") if p.name.isdigit()}
    if last - 1 >= 1 and last - 1 not in steps:
        kept = sorted(steps) or "none"
        raise NotReplayable(
            f"no checkpoint of round {last - 1} (kept: {kept}); the replay needs the state "
            "before the last round, which a run keeps when it ends at its planned rounds "
            "with checkpoint.keep >= 2"
        )

    exp = _population(cfg)
    model = exp.model
    seed = int(cfg["seed"])
    root = jax.random.key(seed)
    init_key = jax.random.fold_in(root, PURPOSE_INIT)
    x0 = np.zeros((1,) + tuple(exp.data.train.x.shape[1:]), exp.data.train.x.dtype)
    params0 = jax.tree.map(np.asarray, model.init(init_key, x0))
    alg = cfg["algorithm"]
    server_lr, server_tx = _server_sgd(alg)
    privacy = cfg["privacy"]
    per_layer = bool(privacy.get("per_layer", False))

    if last == 1:
        before = {
            "params": params0,
            "opt_state": jax.tree.map(np.asarray, server_tx.init(params0)),
            "clip_norm": float(privacy.get("clip_norm") or 1.0),
        }
    else:
        before = _restore(run.path, last - 1, params0, server_tx)
    params_r, source = _released_params(run, last, params0, server_tx)

    clip_norm = float(before["clip_norm"]) if adaptive else float(privacy.get("clip_norm") or 1.0)
    expected = _expected_cohort(cfg, exp)

    # The cohort and keys of round R, from the documented schedule.
    sampling_key = jax.random.fold_in(jax.random.fold_in(root, PURPOSE_SAMPLING), last)
    round_key = jax.random.fold_in(jax.random.fold_in(root, PURPOSE_ROUND), last)
    client_key, _ = jax.random.split(round_key)
    ids, mask = exp.sampler.sample(sampling_key, last)
    cohort = np.asarray(ids)[np.asarray(mask, bool)]
    batch = exp.data.train.gather(cohort, np.ones(len(cohort), bool), exp.n_cap)

    client = cfg["client"]
    optimizer = _client_optimizer(client)
    trainer = _LocalTrainer(model.apply, optimizer)
    epochs, batch_size = int(client["epochs"]), int(client["batch_size"])
    sizes = [leaf.size for leaf in jax.tree.leaves(before["params"])]
    d = int(sum(sizes))
    clipped_sum = np.zeros(d)
    unclipped_sum = np.zeros(d)
    norms: list[float] = []
    clipped = nonfinite = 0
    global_params = jax.tree.map(np.asarray, before["params"])
    for slot, cid in enumerate(cohort):
        count = int(batch.count[slot])
        local, finite = trainer.train(
            global_params,
            batch.x[slot, :count],
            batch.y[slot, :count],
            jax.random.fold_in(client_key, int(cid)),
            exp.n_cap,
            batch_size,
            epochs,
        )
        update = _flat(local) - _flat(global_params)
        if not finite or not np.all(np.isfinite(update)):
            nonfinite += 1  # a non-finite client contributes nothing
            continue
        norm = float(np.linalg.norm(update))
        norms.append(norm)
        contribution = _clip(update, sizes, clip_norm, per_layer)
        clipped += int(np.any(contribution != update))
        clipped_sum += contribution
        unclipped_sum += update
    reference = clipped_sum / expected
    excess = (unclipped_sum - clipped_sum) / expected

    # The released mean: server SGD is affine in the pseudo-gradient -mean.
    p_prev, p_next = _flat(before["params"]), _flat(params_r)
    zero = jax.tree.map(np.zeros_like, before["params"])
    u0, _ = server_tx.update(zero, before["opt_state"], before["params"])
    u0 = _flat(u0)
    released = (p_next - p_prev - u0) / server_lr
    std = z_update * clip_norm / expected
    rounding = 2.0**-23 * math.sqrt(float(np.mean(p_next**2 + u0**2))) / server_lr

    problems: list[str] = []
    if params_r is not None and source == "checkpoint" and (run.path / "final_params.npz").exists():
        problems += _final_params_agree(run, params_r)
    realised = event.realised_cohort
    evidence: dict[str, Any] = {
        "round": last,
        "d": d,
        "clients": len(cohort),
        "ledger_realised_cohort": realised,
        "expected_cohort": expected,
        "clip_norm": clip_norm,
        "ledger_clip_norm": run.ledger[index].get("clip_norm"),
        "noise_multiplier": z,
        "z_update": z_update,
        "std": std,
        "noise_source": privacy.get("noise_source") or "seeded",
        "released_params": source,
        "clients_clipped": clipped,
        "nonfinite_clients": nonfinite,
        "max_preclip_norm": max(norms) if norms else None,
        "reference_mean_norm": float(np.linalg.norm(reference)),
        "clipping_excess_norm": float(np.linalg.norm(excess)),
        "float32_rounding": rounding / std,
    }
    if realised is not None and int(realised) != len(cohort):
        problems.append(
            f"the documented sampling schedule draws {len(cohort)} clients for round {last} "
            f"but the ledger records {realised}"
        )
    return RoundReplay(
        released, reference, excess, std, problems, evidence, _segments(before["params"])
    )


def _verdict(replay: RoundReplay, false_failure_rate: float) -> Check:
    ev = replay.evidence
    d = ev["d"]
    tolerance = rounding_tolerance(d, false_failure_rate / (4 + len(replay.segments)))
    if ev["float32_rounding"] > tolerance:
        return Check(
            NAME,
            TITLE,
            NA,
            f"the claimed noise std {ev['std']:.3g} is below what float32 parameters resolve "
            f"(rounding {ev['float32_rounding']:.3g} s > {tolerance:.3g} s); nothing to test",
            ev,
        )
    residual = replay.residual
    if not np.all(np.isfinite(residual)):
        bad = int(np.sum(~np.isfinite(residual)))
        problems = [f"round {ev['round']}: {bad} of {d} coordinates of the update are not finite"]
        return Check(NAME, TITLE, FAIL, problems[0], {**ev, "problems": problems})
    tests = residual_tests(
        residual,
        replay.std,
        replay.reference,
        replay.excess if ev["clients_clipped"] else None,
        false_failure_rate,
        replay.segments,
    )
    low, high = detectable_std_ratios(d, tests[0].level)
    ratio = math.sqrt(float(np.mean(residual**2))) / replay.std
    ev.update(
        observed_std_ratio=ratio,
        detectable_std_ratio_below=low,
        detectable_std_ratio_above=high,
        false_failure_rate=false_failure_rate,
        tests={
            t.name: {
                "statistic": t.statistic,
                "p_value": t.p_value,
                "level": t.level,
                "alternative": t.alternative,
                "rejected": t.rejected,
            }
            for t in tests
        },
    )
    shown = ", ".join(f"{t.name} p={t.p_value:.3g}" for t in tests)
    head = (
        f"round {ev['round']} replayed over {ev['clients']} clients ({ev['clients_clipped']} "
        f"clipped): residual std {ratio:.4g}x the claimed s={replay.std:.4g} over d={d}"
    )
    problems = list(replay.problems)
    rejected = [t for t in tests if t.rejected]
    if rejected:
        names = ", ".join(t.name for t in rejected)
        problems.insert(
            0,
            f"{head}; refuted by {names} at level {rejected[0].level:.3g} each ({shown})",
        )
    if problems:
        ev = {**ev, "problems": problems}
        return Check(NAME, TITLE, FAIL, "; ".join(problems[:2]), ev)
    return Check(
        NAME,
        TITLE,
        PASS,
        f"{head}; {shown}; refutes a std below {low:.4g}x or above {high:.4g}x at "
        f"false-failure rate {false_failure_rate:g}",
        ev,
    )


# --------------------------------------------------------------------------- pieces


def _population(cfg: Mapping[str, Any]):
    """Data, model, sampler and ``n_cap`` of the run, with no mechanism built."""
    plain = {**cfg, "privacy": {"name": "none"}, "canaries": {"count": 0}}
    return experiment.build(RunConfig.from_mapping(plain))


def _expected_cohort(cfg: Mapping[str, Any], exp: Any) -> float:
    """``m``: rate x population (Poisson) or the cohort size (fixed), from the configuration."""
    sampling = cfg["sampling"]
    if sampling["kind"] == "poisson":
        return float(sampling["rate"]) * exp.data.train.num_clients
    return float(sampling["cohort_size"])


def _server_sgd(alg: Mapping[str, Any]):
    """``(lr, optax transform)`` of the server step of FedAvg / FedAvgM.

    The mapping from the ``algorithm`` group follows
    :meth:`fedpriv.algorithms.FedAvgM.server_optimizer`: ``server_momentum`` missing or
    null means 0.9 there.
    """
    lr = float(alg["server_lr"])
    if alg["name"] == "fedavgm":
        momentum = alg.get("server_momentum")
        return lr, optax.sgd(lr, momentum=0.9 if momentum is None else float(momentum))
    return lr, optax.sgd(lr)


def _client_optimizer(client: Mapping[str, Any]):
    lr = float(client["lr"])
    if client.get("optimizer", "sgd") == "adam":
        return optax.adam(lr)
    momentum = float(client.get("momentum") or 0.0)
    return optax.sgd(lr, momentum=momentum or None)


def _template(params: Any, server_tx: Any) -> dict[str, Any]:
    """A tree with the leaf names, shapes and dtypes of the stored server state."""
    return {
        "params": params,
        "opt_state": jax.tree.map(np.asarray, server_tx.init(params)),
        "agg_state": {"clip_norm": np.zeros((), np.float32)},
        "round": np.zeros((), np.int32),
    }


def _restore(run_dir, step: int, params0: Any, server_tx: Any) -> dict[str, Any]:
    state, _ = restore_step(run_dir, step, _template(params0, server_tx))
    if int(state["round"]) != step:
        raise ConfigError(
            str(run_dir / "checkpoints" / str(step)),
            f"holds the state after round {int(state['round'])}, not {step}",
        )
    return {
        "params": state["params"],
        "opt_state": state["opt_state"],
        "clip_norm": float(state["agg_state"]["clip_norm"]),
    }


def _released_params(run: RunFiles, last: int, params0: Any, server_tx: Any):
    """``(params after round R, where from)``.

    Raises:
        NotReplayable: neither the checkpoint of round R nor its ``final_params.npz`` exists.
    """
    ckpt = run.path / "checkpoints" / str(last)
    if ckpt.is_dir():
        return _restore(run.path, last, params0, server_tx)["params"], "checkpoint"
    if (run.path / "final_params.npz").exists() and run.summary_get("rounds") == last:
        try:
            stored = load_final_params(run.path)
        except Exception as err:  # noqa: BLE001 - any read failure: nothing to replay against
            raise NotReplayable(
                f"final_params.npz cannot be read ({type(err).__name__}: {err})"
            ) from None
        names = list(flatten(params0))
        if set(names) != set(stored):
            raise NotReplayable("final_params.npz does not hold this model's parameters")
        leaves = [stored[n] for n in names]
        return jax.tree.unflatten(jax.tree.structure(params0), leaves), "final_params.npz"
    raise NotReplayable(f"neither checkpoints/{last} nor final_params.npz of round {last} exists")


def _final_params_agree(run: RunFiles, params_r: Any) -> list[str]:
    try:
        stored = load_final_params(run.path)
    except Exception:  # noqa: BLE001 - compared only when readable
        return []
    for name, value in flatten(params_r).items():
        if name not in stored or not np.array_equal(np.asarray(value), stored[name]):
            return [f"final_params.npz differs from the last checkpoint's parameters ({name})"]
    return []


def _segments(tree: Any) -> tuple[tuple[str, int, int], ...]:
    """``(name, start, stop)`` of each leaf of ``tree`` in :func:`_flat`'s order."""
    out, start = [], 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        size = int(np.size(leaf))
        out.append((leaf_name(path), start, start + size))
        start += size
    return tuple(out)


def _flat(tree: Any) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def _clip(update: np.ndarray, sizes: Sequence[int], clip_norm: float, per_layer: bool):
    """L2 clipping in float64: flat, or each array to ``C / sqrt(L)`` (McMahan et al. 2018)."""
    if not per_layer:
        norm = float(np.linalg.norm(update))
        return update * min(1.0, clip_norm / max(norm, 1e-12))
    out = update.copy()
    budget = clip_norm / math.sqrt(len(sizes))
    lo = 0
    for size in sizes:
        part = out[lo : lo + size]
        norm = float(np.linalg.norm(part))
        part *= min(1.0, budget / max(norm, 1e-12))
        lo += size
    return out


class _LocalTrainer:
    """Local training of one client, one mini-batch at a time (McMahan et al. 2017, Alg. 1).

    The schedule is fedpriv's documented one: the client key splits into a shuffle key and
    a step key; the shuffle key splits into one key per epoch, whose ``uniform(n_cap)``
    draw orders the client's ``count`` real examples (ascending); each epoch's order is cut
    into batches of ``batch_size`` and a batch with no real example is no step. Each step
    is the optimizer on the mean cross-entropy of the batch's real examples.
    """

    def __init__(self, apply_fn, optimizer):
        self.optimizer = optimizer

        def loss(params, x, y):
            logits = apply_fn(params, x)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        def step(local, opt_state, x, y):
            value, grads = jax.value_and_grad(loss)(local, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, local)
            return optax.apply_updates(local, updates), opt_state, value

        self.step = jax.jit(step)

    def train(self, params, x, y, key, n_cap: int, batch_size: int, epochs: int):
        """``(local params, finite)`` after local training on ``x[count], y[count]``."""
        count = len(y)
        shuffle_key, _ = jax.random.split(key)
        epoch_keys = jax.random.split(shuffle_key, epochs)
        local, opt_state = params, self.optimizer.init(params)
        finite = True
        for e in range(epochs):
            draw = np.asarray(jax.random.uniform(epoch_keys[e], (n_cap,)))
            order = np.argsort(draw[:count], kind="stable")
            for lo in range(0, count, batch_size):
                rows = order[lo : lo + batch_size]
                local, opt_state, value = self.step(local, opt_state, x[rows], y[rows])
                finite = finite and bool(np.isfinite(value))
        return local, finite
