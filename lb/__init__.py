"""lb: a Linux Virtual Server director with an XDP/eBPF data plane."""

__version__ = "0.1.0"
