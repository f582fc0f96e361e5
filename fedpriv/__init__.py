"""fedpriv: privacy-preserving federated learning research on JAX.

Importing fedpriv changes nothing in the process; a program that wants one XLA device per
CPU core calls :func:`expose_cpu_devices` before JAX starts (the ``fedpriv-*`` commands do).
"""

from fedpriv._cpu_devices import expose_cpu_devices

__all__ = ["expose_cpu_devices"]
__version__ = "0.1.0"
