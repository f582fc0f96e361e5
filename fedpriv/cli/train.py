"""``fedpriv-train``: the Hydra training app.

Examples::

    fedpriv-train                                   # the default run
    fedpriv-train model=cnn algorithm=fedadam       # swap config groups
    fedpriv-train -m algorithm=fedavg,fedadam seed=0,1   # a sweep
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
import jax
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedpriv import expose_cpu_devices, validation
from fedpriv.cli._hydra import RUN_FILES, check_command_line
from fedpriv.config import validate
from fedpriv.errors import ConfigError, fail
from fedpriv.fl import loop
from fedpriv.settings import RunConfig


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def _train(cfg: DictConfig) -> float | None:
    # A job started by a launcher in a fresh process (joblib, submitit) does not pass
    # through main(); the call changes nothing where main() already ran.
    expose_cpu_devices()
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    plain = OmegaConf.to_container(cfg, resolve=True)
    try:
        run = validate(plain)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            finished = sweep_job(plain, run_dir)
            if finished is not None:
                print(f"fedpriv: {run_dir} already finished; skipped", flush=True)
                print(final_line(finished, run_dir), flush=True)
                return finished["final"].get("test_accuracy")
            run = RunConfig.from_mapping(plain)  # resume may have been set
        use_compilation_cache(run.execution.compilation_cache)
        summary = loop.run(run, run_dir, progress=run.progress)
    except ConfigError as err:
        fail(str(err))
    except loop.Interrupted as err:
        # 128 + signal number, as a shell reports a process killed by that signal, so a
        # scheduler sees the run did not finish; the checkpoint makes it resumable.
        print(
            f"fedpriv: {err}; "
            + (
                "run the same command again to continue the sweep"
                if hydra_cfg.mode == RunMode.MULTIRUN
                else f"continue with resume=true hydra.run.dir={run_dir}"
            ),
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + err.signum) from None
    except Exception as err:
        record_failure(run_dir, err)
        raise
    acc = summary["final"].get("test_accuracy")
    print(final_line(summary, run_dir), flush=True)
    return acc


def sweep_job(cfg: dict, run_dir: str) -> dict | None:
    """Makes a rerun sweep pick up where it stopped.

    A job of a ``-m`` sweep whose directory already holds a run (the same command run again
    with the same ``hydra.sweep.dir``) is not started over: a finished run with the same
    configuration is skipped (its summary is returned); an unfinished one continues from its
    newest checkpoint (``cfg["resume"]`` is set to true). Returns None when the job must run.

    Raises:
        ConfigError: the directory holds a run made with a different configuration.
    """
    path = Path(run_dir)
    if not any((path / f).exists() for f in RUN_FILES):
        return None
    validation.check_resume(path, cfg)
    summary_file = path / "summary.json"
    if summary_file.is_file():
        try:
            summary = json.loads(summary_file.read_text())
        except ValueError:
            summary = None
        if (
            isinstance(summary, dict)
            and summary.get("planned_rounds") == cfg["rounds"]
            and "final" in summary
        ):
            return summary
    cfg["resume"] = True
    (path / FAILURE_FILE).unlink(missing_ok=True)  # this attempt's outcome replaces it
    return None


FAILURE_FILE = "failed.json"


def record_failure(run_dir: str, err: BaseException) -> None:
    """Writes ``failed.json`` (error type, message, rounds logged) into the run directory, so
    that reports show why a job of a sweep died even when its stderr is lost (cluster jobs).
    The exception itself is left to propagate."""
    path = Path(run_dir)
    try:
        with open(path / "metrics.jsonl", encoding="utf-8") as f:
            rounds = sum(1 for line in f if line.strip())
    except OSError:
        rounds = 0
    record = {"error": type(err).__name__, "message": str(err)[:2000], "rounds_logged": rounds}
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / FAILURE_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")
    except OSError:
        pass  # the directory itself is the problem; the traceback still says what happened


def final_line(summary: dict, run_dir: str) -> str:
    """The closing line: accuracy, the privacy spent, and where the run is."""
    acc = summary["final"].get("test_accuracy", float("nan"))
    head = f"test accuracy {acc:.4f} after {summary['rounds']} rounds"
    if "epsilon" in summary:
        eps = summary["epsilon"]
        main = summary["accountant"]
        others = "".join(f"; {k} {v:.3g}" for k, v in eps.items() if k != main)
        head += (
            f" at epsilon {eps[main]:.3f} ({main}{others}), delta {summary['delta']:.0e}"
            f", {summary['privacy']['unit']}-level DP"
        )
        if summary.get("noise_source", "seeded") == "seeded":
            head += " (seeded noise: holds only while the seed stays secret)"
    else:
        head += " without differential privacy"
    seconds = (summary.get("diagnostics") or {}).get("wall_seconds")
    if seconds is not None:
        head += f" ({seconds:.1f} s)"
    return f"{head}; run directory: {run_dir}"


def _override_key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def noise_or_target(argv: list[str]) -> list[str]:
    """A noise multiplier given on the command line replaces the preset's target epsilon.

    The privacy presets calibrate to ``target_epsilon`` by default; a user who types
    ``privacy.noise_multiplier=Z`` (and no target) asks for that fixed noise, so
    ``privacy.target_epsilon=null`` is added to the overrides (and recorded by Hydra).
    """
    keys = {_override_key(a) for a in argv if "=" in a and not a.startswith("-")}
    if "privacy.noise_multiplier" in keys and "privacy.target_epsilon" not in keys:
        return [*argv, "privacy.target_epsilon=null"]
    return argv


def use_compilation_cache(path: str | None) -> None:
    """Keeps compiled rounds in ``path`` (``execution.compilation_cache``) so that later runs
    of the same program, such as the other jobs of a sweep, load them instead of compiling.

    JAX's persistent compilation cache: entries are keyed by the program, the compile options
    and the JAX/XLA version, and only compilations of at least a second are kept (JAX's
    default). Keep the directory on the machine (or machines of one kind) that uses it. The
    first path a process uses stays in force for that process.

    Raises:
        ConfigError: the directory cannot be created.
    """
    if not path:
        return
    where = os.path.expanduser(path)
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            "execution.compilation_cache", f"cannot create {where}: {err.strerror}"
        ) from None
    jax.config.update("jax_compilation_cache_dir", where)


def main() -> None:
    """Console entry point: validates the command line, then hands it to Hydra.

    One XLA device per CPU core is asked for first (:func:`fedpriv.expose_cpu_devices`), so
    that ``execution.devices=auto`` shards the cohort over every core.
    """
    expose_cpu_devices()
    argv = noise_or_target(sys.argv[1:])
    sys.argv = [sys.argv[0], *argv]
    if not any(
        a
        in (
            "-h",
            "--help",
            "--hydra-help",
            "--info",
            "-i",
            "--cfg",
            "-c",
            "--shell-completion",
            "-sc",
        )
        or a.startswith("--cfg")
        for a in argv
    ):
        try:
            check_command_line(argv, validate)
        except ConfigError as err:
            fail(str(err))
    _train()


if __name__ == "__main__":
    main()
