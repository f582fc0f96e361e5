"""``fedpriv-train``: the Hydra training app.

Examples::

    fedpriv-train                                   # the default run
    fedpriv-train model=cnn algorithm=fedadam       # swap config groups
    fedpriv-train -m algorithm=fedavg,fedadam seed=0,1   # a sweep
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from fedpriv.config import validate
from fedpriv.errors import ConfigError, fail


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def _train(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from fedpriv.fl import loop

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    run_dir = HydraConfig.get().runtime.output_dir
    plain = OmegaConf.to_container(cfg, resolve=True)
    try:
        validate(plain)
        summary = loop.run(plain, run_dir, progress=bool(plain.get("progress", True)))
    except ConfigError as err:
        fail(str(err))
    acc = summary["final"].get("test_accuracy")
    print(f"test accuracy {acc:.4f} after {summary['rounds']} rounds "
          f"({summary['wall_seconds']:.1f} s); run directory: {run_dir}", flush=True)
    return acc


def main() -> None:
    """Console entry point: validates the command line, then hands it to Hydra."""
    argv = sys.argv[1:]
    if not any(a in ("-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c",
                     "--shell-completion", "-sc") or a.startswith("--cfg") for a in argv):
        try:
            from fedpriv.cli._hydra import check_command_line

            check_command_line(argv, validate)
        except ConfigError as err:
            fail(str(err))
    _train()


if __name__ == "__main__":
    main()
