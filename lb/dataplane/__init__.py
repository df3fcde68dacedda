"""Data planes: the only code that writes the forwarding table (BPF maps, or kernel IPVS).

The engine hands a data plane a TableSpec (what should be forwarded) and the data plane applies
the difference.  Both backends implement lb.dataplane.base.Dataplane: `xdp` (XdpDataplane, the
default) and `ipvs` (IpvsDataplane, kernel IPVS over netlink, the fallback); what they read back
are the records of lb.dataplane.records.
"""
from .spec import PortGroup, RealSpec, ServiceSpec, TableSpec, service_spec  # noqa: F401
