"""fedpriv: privacy-preserving federated learning research on JAX."""

from fedpriv._cpu_devices import expose_cpu_cores as _expose_cpu_cores

_expose_cpu_cores()

__version__ = "0.1.0"
