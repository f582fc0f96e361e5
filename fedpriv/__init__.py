"""fedpriv: privacy-preserving federated learning research on JAX.

The Python API: :func:`simulate` trains a run described by typed settings
(:class:`Population`, :class:`Model`, :class:`LocalTraining`, :class:`Poisson`,
:class:`FixedCohort`, :class:`Cyclic`, :class:`CyclicPoisson`, :class:`MinSeparation`, an
algorithm of :mod:`fedpriv.algorithms` and a mechanism of :mod:`fedpriv.mechanisms`) and
returns a :class:`RunResult` whose epsilon is accounted from the run's own ledger.

Importing fedpriv changes nothing in the process; a program that wants one XLA device per
CPU core calls :func:`expose_cpu_devices` before JAX starts (the ``fedpriv-*`` commands do).
"""

from fedpriv import algorithms, mechanisms
from fedpriv._cpu_devices import expose_cpu_devices
from fedpriv.api import (
    Cyclic,
    CyclicPoisson,
    FixedCohort,
    LocalTraining,
    MinSeparation,
    Model,
    Poisson,
    Population,
    RunResult,
    configure,
    simulate,
)

__all__ = [
    "Cyclic",
    "CyclicPoisson",
    "FixedCohort",
    "LocalTraining",
    "MinSeparation",
    "Model",
    "Poisson",
    "Population",
    "RunResult",
    "algorithms",
    "configure",
    "expose_cpu_devices",
    "mechanisms",
    "simulate",
]
__version__ = "0.1.0"
