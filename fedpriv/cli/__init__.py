"""The ``fedpriv-*`` commands, and the configuration ``fedpriv-train`` composes.

>>> from fedpriv.cli import compose
>>> cfg = compose(["model=logreg", "rounds=2"])
"""

from fedpriv.cli._hydra import compose

__all__ = ["compose"]
