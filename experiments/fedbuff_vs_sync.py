"""Accuracy against simulated wall-clock time: synchronous FedAvg against FedBuff, with
stragglers (Nguyen et al. 2022, Figure 2's comparison, on the embedded digits data).

Both runs use the same clients, model, client training and server optimizer; job durations
come from one delay model (exponential with mean 1 by default, a fraction of stragglers
``slowdown`` times slower, the same stragglers in both runs). A synchronous round of ``K``
clients lasts as long as its slowest job; FedBuff keeps ``concurrency`` clients in flight and
steps every ``K`` arrivals, weighting stale updates by ``1/sqrt(1 + staleness)``. The
synchronous run makes ``T`` server updates (``--steps``); FedBuff runs for the same simulated
time (at least ``T`` and at most ``--max-async-steps`` updates), so the two are compared both
at equal server updates and at equal time. The script writes ``OUT/curves.jsonl`` (one line
per evaluation: ``{"method", "step", "sim_time", "test_accuracy"}``), ``OUT/summary.json``
(accuracy at ``T`` updates and at the synchronous run's end time, simulated time of ``T``
updates, time to reach each target accuracy, staleness) and the figure (accuracy against
simulated time, and against server updates).

    python experiments/fedbuff_vs_sync.py
    python experiments/fedbuff_vs_sync.py --steps 60 --clients 100     # quick

References:
    Nguyen, Malik, Zhao, Rabbat, Malek, Huba. "Federated Learning with Buffered
    Asynchronous Aggregation." AISTATS 2022, arXiv:2106.06639.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from fedpriv.cli import compose
from fedpriv.config import validate
from fedpriv.errors import ConfigError, exit_on_config_error
from fedpriv.fl import experiment, fedbuff
from fedpriv.fl.sampling import host_rng
from fedpriv.settings import RunConfig

TARGETS = (0.8, 0.85, 0.9)


def config(args: argparse.Namespace, asynchronous: bool, steps: int | None = None) -> dict:
    """The composed ``fedpriv-train`` configuration of one of the two runs."""
    overrides = [
        f"dataset.num_clients={args.clients}",
        f"model={args.model}",
        "privacy=none",
        "sampling=fixed",
        f"sampling.cohort_size={args.buffer}",
        f"rounds={steps or args.steps}",
        f"eval_every={args.eval_every}",
        f"seed={args.seed}",
        "progress=false",
        "execution.devices=1",
    ]
    if asynchronous:
        overrides += [
            "async=fedbuff",
            f"async.buffer_size={args.buffer}",
            f"async.concurrency={args.concurrency}",
            f"async.max_staleness={args.max_staleness}",
            f"async.delay.distribution={args.delay}",
            f"async.delay.stragglers={args.stragglers}",
            f"async.delay.slowdown={args.slowdown}",
        ]
    cfg = OmegaConf.to_container(compose(overrides), resolve=False)
    cfg.pop("hydra", None)
    cfg = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)
    validate(cfg)
    return cfg


def run_fedbuff(cfg: dict) -> tuple[list[dict], dict]:
    exp = fedbuff.build(RunConfig.from_mapping(cfg))
    state, curve = exp.state, []
    eval_every = int(cfg["eval_every"])
    for t in range(exp.schedule.steps):
        state, _ = exp.step(state, exp.inputs(t + 1), exp.key(t + 1))
        if (t + 1) % eval_every == 0 or t + 1 == exp.schedule.steps:
            acc = exp.base.evaluate(state.server.params)["test_accuracy"]
            when = float(exp.schedule.step_time[t])
            curve.append(
                {"method": "fedbuff", "step": t + 1, "sim_time": when, "test_accuracy": acc}
            )
    info = {
        "staleness_mean": float(exp.schedule.staleness.mean()),
        "staleness_max": int(exp.schedule.staleness.max()),
        "dropped_stale": int(exp.schedule.dropped.sum()),
    }
    return curve, info


def run_sync(cfg: dict, delay: fedbuff.DelayModel) -> list[dict]:
    """Synchronous rounds of the same size; a round lasts as long as its slowest client."""
    exp = experiment.build(RunConfig.from_mapping(cfg))
    speed_rng, _ = fedbuff.schedule_rng(cfg["seed"])
    speed = delay.speeds(exp.data.train.num_clients, speed_rng)  # the FedBuff run's stragglers
    job_rng = host_rng(exp.sampling_key(0))
    state, clock, curve = exp.state, 0.0, []
    eval_every = int(cfg["eval_every"])
    for r in range(1, int(cfg["rounds"]) + 1):
        ids, mask = exp.sampler.sample(exp.sampling_key(r))
        clock += float(fedbuff.sync_round_times(delay, speed, ids[mask][None], job_rng)[0])
        state, _ = exp.round_fn(state, exp.cohort(r), exp.round_key(r))
        if r % eval_every == 0 or r == int(cfg["rounds"]):
            acc = exp.evaluate(state.params)["test_accuracy"]
            curve.append({"method": "sync", "step": r, "sim_time": clock, "test_accuracy": acc})
    return curve


def time_to(curve: list[dict], target: float) -> float | None:
    for point in curve:
        if point["test_accuracy"] >= target:
            return point["sim_time"]
    return None


def draw(curves: dict[str, list[dict]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(10, 4))
    labels = {
        "sync": f"synchronous FedAvg (K={args.buffer})",
        "fedbuff": f"FedBuff (K={args.buffer}, concurrency {args.concurrency})",
    }
    for method, curve in curves.items():
        t = [p["sim_time"] for p in curve]
        s = [p["step"] for p in curve]
        a = [p["test_accuracy"] for p in curve]
        ax_t.plot(t, a, label=labels[method])
        ax_s.plot(s, a, label=labels[method])
    ax_t.set_xlabel("simulated wall-clock time (mean job duration = 1)")
    ax_s.set_xlabel("server updates (log scale)")
    ax_s.set_xscale("log")
    for ax in (ax_t, ax_s):
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(
        f"digits, {args.clients} clients, {args.model}; {args.delay} delays, "
        f"{args.stragglers:.0%} stragglers {args.slowdown:g}x slower"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


@exit_on_config_error
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/runs/fedbuff_vs_sync")
    ap.add_argument("--figure", default="experiments/figures/fedbuff_vs_sync.png")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--model", default="logreg")
    ap.add_argument("--buffer", type=int, default=10, help="K: cohort size / buffer size")
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--max-staleness", type=int, default=16)
    ap.add_argument("--steps", type=int, default=150, help="server updates of the sync run")
    ap.add_argument("--max-async-steps", type=int, default=2500)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--delay", default="exponential")
    ap.add_argument("--stragglers", type=float, default=0.2)
    ap.add_argument("--slowdown", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError("--out", f"cannot create {out}: {err.strerror}") from None
    cfg_sync = config(args, asynchronous=False)
    fb_cfg = fedbuff.FedBuffConfig.from_settings(
        RunConfig.from_mapping(config(args, asynchronous=True)).asynchronous
    )

    t0 = time.perf_counter()
    sync_curve = run_sync(cfg_sync, fb_cfg.delay)
    t_sync = time.perf_counter() - t0
    # FedBuff's schedule is sequential, so a longer simulation extends a shorter one: find
    # how many updates fit in the synchronous run's simulated time.
    speed_rng, job_rng = fedbuff.schedule_rng(args.seed)
    probe = fedbuff.simulate(
        args.clients,
        args.max_async_steps,
        fb_cfg.buffer_size,
        fb_cfg.concurrency,
        fb_cfg.max_staleness,
        fb_cfg.delay,
        job_rng,
        fb_cfg.delay.speeds(args.clients, speed_rng),
    )
    fitting = int(np.searchsorted(probe.step_time, sync_curve[-1]["sim_time"], side="right"))
    async_steps = max(args.steps, fitting)
    t0 = time.perf_counter()
    fb_curve, info = run_fedbuff(config(args, asynchronous=True, steps=async_steps))
    t_fb = time.perf_counter() - t0
    curves = {"sync": sync_curve, "fedbuff": fb_curve}
    with open(out / "curves.jsonl", "w", encoding="utf-8") as f:
        for curve in curves.values():
            for point in curve:
                f.write(json.dumps(point) + "\n")
    at_t = {m: next(p for p in c if p["step"] == args.steps) for m, c in curves.items()}
    end = sync_curve[-1]["sim_time"]
    summary = {
        "settings": vars(args),
        "fedbuff_updates": async_steps,
        "accuracy_at_equal_updates": {m: p["test_accuracy"] for m, p in at_t.items()},
        "sim_time_of_equal_updates": {m: p["sim_time"] for m, p in at_t.items()},
        "accuracy_at_sync_end_time": {
            "sync": sync_curve[-1]["test_accuracy"],
            "fedbuff": [p for p in fb_curve if p["sim_time"] <= end][-1]["test_accuracy"],
        },
        "time_to_accuracy": {
            str(target): {m: time_to(c, target) for m, c in curves.items()} for target in TARGETS
        },
        "fedbuff": info,
        "seconds": {"sync": round(t_sync, 2), "fedbuff": round(t_fb, 2)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    draw(curves, args, Path(args.figure))
    fa, st = summary["accuracy_at_equal_updates"], summary["sim_time_of_equal_updates"]
    te = summary["accuracy_at_sync_end_time"]["fedbuff"]
    print(
        f"after {args.steps} updates: sync {fa['sync']:.4f} in {st['sync']:.1f} simulated s, "
        f"FedBuff {fa['fedbuff']:.4f} in {st['fedbuff']:.1f} simulated s "
        f"(mean staleness {info['staleness_mean']:.2f}); FedBuff at {end:.1f} s "
        f"({async_steps} updates): {te:.4f}; figure: {args.figure}",
        file=sys.stderr,
        flush=True,
    )
    return summary


if __name__ == "__main__":
    main()
