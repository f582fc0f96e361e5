"""Checks a ``fedpriv-train`` command line before Hydra creates any output directory.

Hydra writes ``.hydra/`` into the run directory before the task starts, so bad input must
be caught earlier: the overrides are composed here (each job of a ``-m`` sweep separately)
and validated; an unknown config group option, a bad value or an output directory that
already holds a run ends the command with one line and exit status 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from fedpriv import validation
from fedpriv.errors import ConfigError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
RUN_FILES = ("metrics.jsonl", "ledger.jsonl", "summary.json", "checkpoints")


def split_args(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Returns (overrides, multirun) from a command line; Hydra's own flags are skipped."""
    overrides, multirun, skip = [], False, False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir"):
            skip = True
        elif arg.startswith("-"):
            continue
        else:
            overrides.append(arg)
    return overrides, multirun


def expand_sweep(overrides: list[str]) -> list[list[str]] | None:
    """Expands ``a=1,2 b=x,y`` into the list of jobs' overrides, as Hydra's basic sweeper does.

    Returns None for sweeps the basic expansion cannot enumerate (e.g. Optuna intervals).
    """
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # noqa: BLE001 - anything Hydra cannot expand is left to Hydra
        return None
    return [list(job) for batch in batches for job in batch]


def compose(overrides: list[str]) -> DictConfig:
    """The ``fedpriv-train`` configuration that a list of command-line overrides selects.

    The configuration is composed from fedpriv's own config directory exactly as
    ``fedpriv-train OVERRIDES`` would compose it for one job, without running anything or
    creating an output directory. Hydra's global state is cleared before and after, so it can
    be called any number of times, also from inside a program that is not a Hydra app.

    Args:
        overrides: Hydra overrides of one job, e.g. ``["model=cnn", "rounds=3"]``.

    Returns:
        The composed configuration, including its ``hydra`` node (unresolved; convert with
        ``OmegaConf.to_container(cfg, resolve=True)`` after dropping ``hydra``).

    Raises:
        ConfigError: an unknown config group option (naming the group and its options) or an
            override Hydra cannot apply (naming ``overrides``).

    Example:
        >>> from fedpriv.cli import compose
        >>> compose(["rounds=3"]).rounds
        3
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return hydra_compose("config", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as err:
        raise ConfigError(*_missing_group_message(err, overrides)) from None
    except ConfigCompositionException as err:
        cause = err.__cause__ or err
        raise ConfigError("overrides", str(cause).splitlines()[0]) from None
    finally:
        GlobalHydra.instance().clear()


def _missing_group_message(err: Exception, overrides: list[str]) -> tuple[str, str]:
    options = getattr(err, "options", None) or []
    missing = getattr(err, "missing_cfg_file", "") or ""
    group = missing.split("/")[0] if "/" in missing else "config"
    value = missing.split("/", 1)[1] if "/" in missing else missing
    allowed = sorted(o for o in options) or _group_options(group)
    return group, f"unknown value {value!r}; choose from {allowed}"


def _group_options(group: str) -> list[str]:
    path = Path(CONF_DIR) / group
    return sorted(p.stem for p in path.glob("*.yaml")) if path.is_dir() else []


def check_command_line(
    argv: Sequence[str], validate: Callable[[dict], None], resume_key: str = "resume"
) -> None:
    """Composes and validates every job the command line asks for.

    Raises:
        ConfigError: the first bad job's problem.
    """
    overrides, multirun = split_args(argv)
    jobs = expand_sweep(overrides) if multirun else [overrides]
    if jobs is None:
        jobs = []
    for job in jobs:
        cfg = compose(job)
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("hydra", None)
        resolved = OmegaConf.to_container(
            OmegaConf.create({k: v for k, v in plain.items()}), resolve=True
        )
        validate(resolved)
        validation.check_data_files(resolved)
        explicit = [o for o in job if o.startswith("hydra.run.dir=")]
        run_dir = Path(explicit[-1].split("=", 1)[1]) if explicit else None
        if not multirun and run_dir is not None:
            if not resolved.get(resume_key, False):
                existing = [f for f in RUN_FILES if (run_dir / f).exists()]
                if existing:
                    raise ConfigError(
                        "hydra.run.dir",
                        f"{run_dir} already holds a run ({existing[0]}); choose a new "
                        f"directory or pass {resume_key}=true to continue it",
                    )
            else:
                validation.check_resume(run_dir, resolved)
        _check_output_dirs(cfg, job, multirun)


def _check_output_dirs(cfg: Any, job: list[str], multirun: bool) -> None:
    """The run (or sweep) directory must be creatable and writable."""
    field = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    explicit = [o for o in job if o.startswith(f"{field}=")]
    if explicit:
        path = explicit[-1].split("=", 1)[1]
    else:
        try:
            path = OmegaConf.select(cfg, field)
        except Exception:  # noqa: BLE001 - an unresolvable default is left to Hydra
            return
    if path:
        validation.check_output_dir(path, field)
