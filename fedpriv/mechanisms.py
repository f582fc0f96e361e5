"""The privacy mechanisms, to pass to :func:`fedpriv.simulate`.

Each class lives in its own module of :mod:`fedpriv.privacy.mechanisms` (its config, plan,
aggregation, ledger record, accounting event and audit) and is collected here. A mechanism
object's fields are its preset's fields (``fedpriv/conf/privacy/<name>.yaml``); a field left
at ``None`` keeps the preset's value, and a noise multiplier replaces the preset's target
epsilon, as on the command line.

>>> from fedpriv import mechanisms
>>> mechanisms.DpFedAvg(clip_norm=0.5, noise_multiplier=1.1).values()
{'clip_norm': 0.5, 'noise_multiplier': 1.1, 'target_epsilon': None}
>>> mechanisms.DpFedAvg(target_epsilon=2.0).selections()
['privacy=user_dp']
"""

from fedpriv.privacy.mechanisms.base import DpMechanism, Mechanism
from fedpriv.privacy.mechanisms.distributed_dp import DistributedDp
from fedpriv.privacy.mechanisms.dp_ftrl import DpFtrl
from fedpriv.privacy.mechanisms.example_dp import ExampleDpSgd
from fedpriv.privacy.mechanisms.none import NoPrivacy
from fedpriv.privacy.mechanisms.user_dp import DpFedAvg
from fedpriv.privacy.mechanisms.user_dp_adaptive import AdaptiveDpFedAvg
from fedpriv.privacy.mechanisms.user_dp_laplace import LaplaceDpFedAvg

__all__ = [
    "AdaptiveDpFedAvg",
    "DistributedDp",
    "DpFedAvg",
    "DpFtrl",
    "DpMechanism",
    "ExampleDpSgd",
    "LaplaceDpFedAvg",
    "Mechanism",
    "NoPrivacy",
]
