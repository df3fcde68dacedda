"""Data planes: the only code that writes the forwarding table (BPF maps, or kernel IPVS).

The engine hands a data plane a TableSpec (what should be forwarded) and the data plane applies
the difference.  `xdp` is the default; an IPVS backend will implement the same interface.
"""
from .spec import PortGroup, RealSpec, ServiceSpec, TableSpec, service_spec  # noqa: F401
