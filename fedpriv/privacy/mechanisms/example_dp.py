"""``privacy=example_dp``: example-level DP-SGD inside every client (Abadi et al. 2016).

Per-example clipping and Gaussian noise at each local step, examples Poisson-sampled with a
declared rate; the server takes the uniform mean of the (already private) client updates.

References:
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import optax

from fedpriv.errors import ConfigError
from fedpriv.fl.aggregators import Aggregator, weighted_mean
from fedpriv.privacy.dpsgd import make_dpsgd_client_update
from fedpriv.privacy.mechanisms._gaussian import GaussianSum
from fedpriv.privacy.mechanisms._registry import register
from fedpriv.settings import LocalTraining

if TYPE_CHECKING:
    from fedpriv.accounting.events import RoundEvent

from fedpriv.privacy.mechanisms.base import (
    DpSettings,
    PrivacyPlan,
    number,
    plan_common,
)


def example_sampling(privacy_cfg: Mapping[str, Any], client: LocalTraining) -> dict[str, Any]:
    """Rate, divisor and steps of example-level DP-SGD, from public configuration only.

    The rate q is ``privacy.example_sampling_rate`` or, with a declared cap
    ``client.max_examples``, ``client.batch_size / client.max_examples``. It is never derived
    from the loaded data: the smallest client's size changes when one example is added or
    removed, and the rate, the number of steps and the divisor are all released (they shape
    the update and are written to the ledger).

    Raises:
        ConfigError: neither a rate nor a cap is declared, or the rate is outside (0, 1].
    """
    batch = int(client.batch_size)
    rate = number(privacy_cfg, "example_sampling_rate", low=0, high=1, low_open=True)
    cap = client.max_examples
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
    return {
        "example_sampling_rate": float(rate),
        "expected_batch_size": float(batch),
        "steps": int(client.epochs) * math.ceil(1.0 / rate),
    }


@dataclasses.dataclass(frozen=True)
class ExampleDpSgd(GaussianSum):
    """DP-SGD with per-example clipping inside each client.

    Privacy:
        Unit one example, add/remove adjacency. Each of ``steps`` local steps
        Poisson-samples examples with rate ``q_ex`` and adds ``N(0, (z C)^2)`` to the sum of
        per-example gradients clipped to ``C`` (sensitivity C): a round is
        ``SelfComposedDpEvent(PoissonSampledDpEvent(q_ex, GaussianDpEvent(z)), steps)``.
        Amplification by client sampling is conservatively ignored: the bound holds as if
        the example's client took part in every round.
    """

    name = "example_dp"
    unit = "example"

    #: q: each local step's Poisson rate over a client's examples.
    example_sampling_rate: float | None = None

    def claims(self, event: RoundEvent) -> bool:
        return event.mechanism == "gaussian" and event.unit == "example"

    def validate(self, privacy_cfg: Mapping[str, Any]) -> None:
        DpSettings.read(privacy_cfg, self.accountants, strict=True)
        number(privacy_cfg, "example_sampling_rate", low=0, high=1, low_open=True)

    def build(self, privacy_cfg, sampler, client, rounds, secagg, num_params=None, *, tools):
        settings = DpSettings.read(privacy_cfg, self.accountants)
        plan = PrivacyPlan(
            unit=self.unit,
            clip_norm=settings.clip_norm,
            noise_multiplier=settings.noise_multiplier,
            accountant=settings.accountant,
            mechanism=self,
            **plan_common(self.name, sampler, rounds),
            **example_sampling(privacy_cfg, client),
        )
        # The default delta is below 1/(number of examples): the examples that the declared
        # rate and batch size describe, population * B / q, a public number (the loaded
        # total changes with one example).
        units = plan.population * math.ceil(
            plan.expected_batch_size / plan.example_sampling_rate - 1e-9
        )
        return self.with_delta_and_noise(plan, settings, units, tools)

    def aggregator(self, plan: PrivacyPlan, weighting: str, key: Any, params: Any) -> Aggregator:
        """The uniform mean over the clients that reported: each client update is already
        private, and equal weights keep the server's step a function of those updates alone
        (weighting by example count would publish each client's count, which adding or
        removing one example changes; ``weighting`` is therefore ignored).

        Privacy:
            Post-processing of the clients' private updates.
        """
        return weighted_mean("uniform")

    def client_update(
        self,
        plan: PrivacyPlan,
        apply_fn: Callable,
        optimizer: optax.GradientTransformation,
        epochs: int,
        batch_size: int,
        n_cap: int,
        **local: Any,
    ) -> Callable:
        """DP-SGD (:func:`~fedpriv.privacy.dpsgd.make_dpsgd_client_update`), with the
        options of local training (``local``: FedProx, heterogeneous compute, FedNova).

        Privacy:
            See the class and :func:`~fedpriv.privacy.dpsgd.make_dpsgd_client_update`.
        """
        return make_dpsgd_client_update(
            apply_fn,
            optimizer,
            plan.steps,
            float(plan.example_sampling_rate),
            plan.clip_norm,
            plan.noise_multiplier,
            n_cap,
            float(plan.expected_batch_size),
            **local,
        )

    def ledger_record(self, plan: PrivacyPlan, rnd: int, metrics: Mapping[str, Any]):
        """The round's record: the planned clip and noise (the clients add the noise)."""
        return self.gaussian_record(
            plan, rnd, plan.clip_norm, plan.noise_multiplier * plan.clip_norm
        )

    def unamplified_gaussian_multiplier(self, event: RoundEvent) -> float | None:
        if event.example_sampling_rate != 1.0:
            return None
        return event.noise_multiplier

    def server_reports_noise(self, event: RoundEvent) -> bool:
        return False


MECHANISM = register(ExampleDpSgd())
