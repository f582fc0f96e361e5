"""The privacy plan: the one way to build a differentially private round.

A :class:`PrivacyPlan` is built from the ``privacy`` config and the sampler that will run.
It bundles the unit of privacy, the sampling, clipping and noise, builds the aggregator and
(for example-level DP) the client update, and writes the round's DP event. Because the same
object builds the mechanism and describes it, the ledger cannot drift from what ran.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import optax

from fedpriv.errors import ConfigError
from fedpriv.fl.aggregators import Aggregator, weighted_mean
from fedpriv.fl.client import make_client_update
from fedpriv.privacy.aggregators import (
    AdaptiveClip,
    default_count_noise_std,
    dp_fedavg,
    split_noise,
)
from fedpriv.privacy.dpsgd import make_dpsgd_client_update
from fedpriv.privacy.ledger import LEDGER_FORMAT

MECHANISMS = ("none", "user_dp", "user_dp_adaptive", "example_dp", "distributed_dp")


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    """Sampling, clipping, noise and unit of privacy of every round of a run.

    Attributes:
        name: ``none``, ``user_dp``, ``user_dp_adaptive`` or ``example_dp``.
        unit: ``user``, ``example``, ``gateway`` (hierarchical aggregation with
            gateway-level DP, :mod:`fedpriv.fl.hierarchy`: population, rate and expected
            cohort count gateways) or None (no DP).
        sampling: ``fixed`` or ``poisson``: the client sampling that runs.
        sampling_rate: Poisson rate q, or cohort / population for fixed cohorts.
        population: number of clients N.
        expected_cohort: m, the aggregation divisor.
        clip_norm: C (initial C with adaptive clipping; per-example C for example DP).
        noise_multiplier: z, the accounted noise multiplier.
        per_layer: per-layer clipping.
        adaptive: adaptive clipping settings, if any.
        steps: local DP-SGD steps per round (example DP): ``epochs * ceil(1 / q)``.
        example_sampling_rate: q, the Poisson rate of examples per DP-SGD step (example
            DP), declared in the configuration.
        expected_batch_size: B, the divisor of each DP-SGD step's noised sum (example DP):
            ``client.batch_size``, a public constant.
        delta: target delta of the run's (epsilon, delta) claim.
        target_epsilon: the epsilon the noise was calibrated to, if any.
        accountant: accountant used for calibration and per-round epsilon.
        rounds: planned number of rounds.
        secagg: secure-aggregation settings (None: plain floating-point sums); for
            ``distributed_dp`` they include the per-client noise.
    """

    name: str
    unit: str | None
    sampling: str
    sampling_rate: float
    population: int
    expected_cohort: float
    clip_norm: float = 0.0
    noise_multiplier: float = 0.0
    per_layer: bool = False
    adaptive: AdaptiveClip | None = None
    steps: int = 1
    example_sampling_rate: float | None = None
    expected_batch_size: float | None = None
    delta: float | None = None
    target_epsilon: float | None = None
    accountant: str = "rdp"
    rounds: int = 0
    secagg: Any = None

    @property
    def is_private(self) -> bool:
        return self.name != "none"

    def aggregator(
        self, weighting: str = "count", key: Any = None, params: Any = None
    ) -> Aggregator:
        """The server-side aggregation this plan requires.

        User-level DP uses :func:`~fedpriv.privacy.aggregators.dp_fedavg`; no DP uses
        FedAvg's weighted mean; example-level DP the uniform mean over the clients that
        reported: each client update is already private, and weights equal for every client
        keep the server's step a function of those updates alone (weighting by example count,
        FedAvg's default, would publish each client's count, which adding or removing one
        example changes; ``weighting`` is therefore ignored). With secure aggregation that
        aggregator is wrapped by :func:`~fedpriv.privacy.secagg.fast.secure_aggregator`
        (``key``: the secure-aggregation purpose key; ``params``: a parameter tree of the
        model); for distributed DP the wrapped DP-FedAvg adds no noise of its own (the
        clients do).
        """
        if self.secagg is not None:
            from fedpriv.privacy.secagg.fast import secure_aggregator

            if key is None or params is None:
                raise ValueError("secure aggregation needs the secagg key and the parameters")
            if self.name == "distributed_dp":
                inner = dp_fedavg(self.clip_norm, 0.0, self.expected_cohort)
                agg = secure_aggregator(inner, self.secagg, key, params)
                return _reporting_noise(agg, self.noise_multiplier * self.clip_norm)
            inner = dataclasses.replace(self, secagg=None).aggregator(weighting)
            return secure_aggregator(inner, self.secagg, key, params)
        if self.unit in ("user", "gateway"):
            return dp_fedavg(
                self.clip_norm,
                self.noise_multiplier,
                self.expected_cohort,
                self.per_layer,
                self.adaptive,
            )
        if self.unit == "example":
            return weighted_mean("uniform")
        return weighted_mean(weighting)

    def client_update(
        self,
        apply_fn: Callable,
        optimizer: optax.GradientTransformation,
        epochs: int,
        batch_size: int,
        n_cap: int,
        **local: Any,
    ) -> Callable:
        """The client update: local SGD, or DP-SGD for example-level privacy; with secure
        aggregation it also carries the client's secure-aggregation key. ``local``: options
        of :func:`~fedpriv.fl.client.make_client_update` (FedProx, heterogeneous compute,
        FedNova; see :func:`fedpriv.fl.edge.local_options`), not available with DP-SGD.

        Raises:
            ConfigError: ``local`` options with example-level DP.
        """
        if self.secagg is not None:
            from fedpriv.privacy.secagg.fast import with_client_key

            inner = dataclasses.replace(self, secagg=None)
            return with_client_key(
                inner.client_update(apply_fn, optimizer, epochs, batch_size, n_cap, **local)
            )
        if self.unit == "example" and local:
            raise ConfigError(
                "privacy.name",
                "example_dp runs a fixed number of DP-SGD steps per client; it does not "
                f"combine with {sorted(local)} (algorithm=fedprox/fednova, compute=uniform or "
                "stragglers with drop=false)",
            )
        if self.unit == "example":
            return make_dpsgd_client_update(
                apply_fn,
                optimizer,
                self.steps,
                float(self.example_sampling_rate),
                self.clip_norm,
                self.noise_multiplier,
                n_cap,
                float(self.expected_batch_size),
            )
        return make_client_update(apply_fn, optimizer, epochs, batch_size, n_cap, **local)

    def ledger_record(self, rnd: int, metrics: Mapping[str, Any]) -> dict[str, Any] | None:
        """The DP event of round ``rnd`` as it ran (None without DP).

        ``clip_norm`` and ``noise_std`` are read from the round's own metrics (what the
        mechanism used; both are public or functions of noised values). The record holds
        public values only: the realised cohort, which with Poisson sampling tells whether
        a client took part, is a diagnostic of the metrics (``clients``), not part of it.
        """
        if not self.is_private:
            return None
        if self.name == "distributed_dp":
            return self._distributed_record(rnd, metrics)
        if self.unit in ("user", "gateway"):
            clip_norm = float(metrics["clip_norm"])
            noise_std = float(metrics["noise_std"])
        else:
            clip_norm, noise_std = self.clip_norm, self.noise_multiplier * self.clip_norm
        return {
            "format": LEDGER_FORMAT,
            "round": int(rnd),
            "mechanism": "gaussian",
            "unit": self.unit,
            "sampling": self.sampling,
            "sampling_rate": self.sampling_rate,
            "population": self.population,
            "cohort_size": (
                int(round(self.expected_cohort))
                if self.sampling == "fixed"
                else self.expected_cohort
            ),
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": clip_norm,
            "noise_std": noise_std,
            "steps": self.steps if self.unit == "example" else 1,
            "example_sampling_rate": self.example_sampling_rate,
            **({"count_noise_std": self.adaptive.count_noise_std} if self.adaptive else {}),
        }

    def _distributed_record(self, rnd: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        noise = self.secagg.noise
        return {
            "format": LEDGER_FORMAT,
            "round": int(rnd),
            "unit": "user",
            "sampling": self.sampling,
            "sampling_rate": self.sampling_rate,
            "population": self.population,
            "cohort_size": int(round(self.expected_cohort)),
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "noise_std": self.noise_multiplier * self.clip_norm,
            "steps": 1,
            "example_sampling_rate": None,
            **noise.record(),
        }

    def describe(self) -> dict[str, Any]:
        secagg = self.secagg
        d = dataclasses.asdict(dataclasses.replace(self, secagg=None))
        d["adaptive"] = self.adaptive._asdict() if self.adaptive else None
        d["secagg"] = None if secagg is None else secagg.describe()
        return d


def _reporting_noise(agg: Aggregator, noise_std: float) -> Aggregator:
    """``agg`` with its ``noise_std`` metric set to ``noise_std``: distributed DP's noise is
    added by the clients, so the wrapped DP-FedAvg (which adds none) would report 0."""

    def finalize(*args):
        mean, state, metrics = agg.finalize(*args)
        return mean, state, {**metrics, "noise_std": jnp.asarray(noise_std, jnp.float32)}

    return agg._replace(finalize=finalize)


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def build_plan(
    privacy_cfg: Mapping[str, Any],
    sampler: Any,
    client_cfg: Mapping[str, Any],
    rounds: int,
    secagg_cfg: Mapping[str, Any] | None = None,
    num_params: int | None = None,
) -> PrivacyPlan:
    """Builds the plan from the ``privacy`` config and the sampler that will run.

    With ``privacy.target_epsilon`` set, the noise multiplier is calibrated (one-sided) with
    ``privacy.accountant`` for the planned rounds before training starts. ``secagg_cfg``
    (the ``secagg`` group) and ``num_params`` (the model size) resolve secure aggregation
    (:func:`fedpriv.privacy.secagg.plan.resolve`).

    Raises:
        ConfigError: a bad privacy setting, or one that cannot work with this population.
    """
    if (secagg_cfg or {}).get("mode", "none") != "none" or privacy_cfg.get("name") == (
        "distributed_dp"
    ):
        from fedpriv.privacy.secagg.plan import build_secure_plan

        without = dict(privacy_cfg)
        if without.get("name") == "distributed_dp":
            without = {"name": "none"}
        base = build_plan(without, sampler, client_cfg, rounds)
        return build_secure_plan(base, privacy_cfg, secagg_cfg or {}, num_params)
    name = privacy_cfg.get("name", "none")
    if name not in MECHANISMS:
        raise ConfigError(
            "privacy.name", f"unknown mechanism {name!r}; choose from {list(MECHANISMS)}"
        )
    common = dict(
        name=name,
        sampling=sampler.kind,
        sampling_rate=float(sampler.rate),
        population=int(sampler.population),
        expected_cohort=float(sampler.expected_size),
        rounds=int(rounds),
    )
    if name == "none":
        return PrivacyPlan(unit=None, **common)

    clip_norm = float(_get(privacy_cfg, "clip_norm", 1.0))
    if not clip_norm > 0:
        raise ConfigError("privacy.clip_norm", f"must be > 0, got {clip_norm}")
    noise = float(_get(privacy_cfg, "noise_multiplier", 0.0))
    if not noise >= 0:
        raise ConfigError("privacy.noise_multiplier", f"must be >= 0, got {noise}")
    unit = "example" if name == "example_dp" else "user"
    extra: dict[str, Any] = {}
    if name == "user_dp_adaptive":
        ad = dict(privacy_cfg.get("adaptive") or {})
        gamma = float(_get(ad, "target_quantile", 0.5))
        if not 0 < gamma < 1:
            raise ConfigError("privacy.adaptive.target_quantile", f"must be in (0, 1), got {gamma}")
        eta = float(_get(ad, "learning_rate", 0.2))
        if not eta > 0:
            raise ConfigError("privacy.adaptive.learning_rate", f"must be > 0, got {eta}")
        sigma_b = ad.get("count_noise_std")  # None: chosen once the noise is known
        if sigma_b is not None and not float(sigma_b) > 0:
            raise ConfigError("privacy.adaptive.count_noise_std", f"must be > 0, got {sigma_b}")
        extra["adaptive"] = AdaptiveClip(gamma, eta, None if sigma_b is None else float(sigma_b))
    if unit == "example":
        extra.update(_example_sampling(privacy_cfg, client_cfg))
    plan = PrivacyPlan(
        unit=unit,
        clip_norm=clip_norm,
        noise_multiplier=noise,
        per_layer=bool(privacy_cfg.get("per_layer", False)),
        accountant=str(_get(privacy_cfg, "accountant", "rdp")),
        **common,
        **extra,
    )
    # The default delta is below 1/(number of privacy units): clients for user-level DP;
    # for example-level DP the examples that the declared rate and batch size describe,
    # population * B / q, a public number (the loaded total changes with one example).
    units = plan.population
    if plan.unit == "example":
        units = plan.population * math.ceil(
            plan.expected_batch_size / plan.example_sampling_rate - 1e-9
        )
    return _with_delta_and_calibration(plan, privacy_cfg, units)


def _example_sampling(
    privacy_cfg: Mapping[str, Any], client_cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """Rate, divisor and steps of example-level DP-SGD, from public configuration only.

    The rate q is ``privacy.example_sampling_rate`` or, with a declared cap
    ``client.max_examples``, ``client.batch_size / client.max_examples``. It is never derived
    from the loaded data: the smallest client's size changes when one example is added or
    removed, and the rate, the number of steps and the divisor are all released (they shape
    the update and are written to the ledger).

    Raises:
        ConfigError: neither a rate nor a cap is declared, or the rate is outside (0, 1].
    """
    batch = int(client_cfg["batch_size"])
    rate = privacy_cfg.get("example_sampling_rate")
    cap = client_cfg.get("max_examples")
    if rate is None:
        if cap is None:
            raise ConfigError(
                "privacy.example_sampling_rate",
                "example-level DP needs a declared rate: set privacy.example_sampling_rate "
                "in (0, 1], or client.max_examples (the rate is then client.batch_size / "
                "client.max_examples); a rate derived from the clients' data would be private",
            )
        if batch > int(cap):
            raise ConfigError(
                "client.batch_size",
                f"example-level DP-SGD samples batches of expected size {batch} from at most "
                f"client.max_examples = {cap} examples; use a batch size <= {cap}",
            )
        rate = batch / int(cap)
    rate = float(rate)
    if not 0 < rate <= 1:
        raise ConfigError("privacy.example_sampling_rate", f"must be in (0, 1], got {rate}")
    return {
        "example_sampling_rate": rate,
        "expected_batch_size": float(batch),
        "steps": int(client_cfg["epochs"]) * math.ceil(1.0 / rate),
    }


def resolve_delta(cfg: Mapping[str, Any], population: int) -> float:
    """``privacy.delta``, or the default below 1/population; warns when a given delta is not
    below 1/population. ``population`` counts units of privacy (clients, or examples for
    example-level DP).

    Raises:
        ConfigError: a delta outside (0, 1).
    """
    from fedpriv import accounting

    delta = cfg.get("delta")
    if delta is None:
        return accounting.default_delta(population)
    delta = float(delta)
    if not 0 < delta < 1:
        raise ConfigError("privacy.delta", f"must be in (0, 1), got {delta}")
    accounting.warn_if_delta_too_large(delta, population)
    return delta


def _with_delta_and_calibration(
    plan: PrivacyPlan, cfg: Mapping[str, Any], units: int
) -> PrivacyPlan:
    from fedpriv import accounting

    delta = resolve_delta(cfg, units)
    target = cfg.get("target_epsilon")
    if target is None:
        return _resolve_count_noise(dataclasses.replace(plan, delta=delta))
    target = float(target)
    if not target > 0:
        raise ConfigError("privacy.target_epsilon", f"must be > 0, got {target}")
    noise = accounting.calibrate_noise(
        target,
        delta,
        plan.rounds,
        sampling=plan.sampling,
        sampling_rate=plan.sampling_rate if plan.sampling == "poisson" else None,
        population=plan.population,
        cohort_size=int(round(plan.expected_cohort)) if plan.sampling == "fixed" else None,
        steps=plan.steps,
        example_sampling_rate=plan.example_sampling_rate,
        unit=plan.unit,
        accountant=plan.accountant,
    )
    return _resolve_count_noise(
        dataclasses.replace(plan, delta=delta, noise_multiplier=noise, target_epsilon=target)
    )


def _resolve_count_noise(plan: PrivacyPlan) -> PrivacyPlan:
    """Fills in the default count noise and checks the noise split is possible."""
    if plan.adaptive is None:
        return plan
    sigma_b = plan.adaptive.count_noise_std
    if sigma_b is None:
        sigma_b = default_count_noise_std(plan.expected_cohort, plan.noise_multiplier)
    split_noise(plan.noise_multiplier, sigma_b)  # raises when the split is impossible
    return dataclasses.replace(plan, adaptive=plan.adaptive._replace(count_noise_std=sigma_b))
