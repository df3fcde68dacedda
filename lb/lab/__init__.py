"""The namespace lab used by the demo and the namespace tests.

    from lb import lab
    lab.up("direct")            # or "nat", "tunnel"; tears down any existing lab first
    lab.run("director", ["curl", "-s", "http://198.18.1.11/"]).stdout   # 'rs1\\n'
    s = lab.connect("client", lab.VIP, 80)
    lab.down()

All addresses are in 198.18.0.0/15 and everything lives in the lb-* network namespaces.
"""

from .nsutil import (
    ALL_NODES,
    LAB_NET,
    NODES,
    SWITCH,
    LabCommandError,
    check_lab_addr,
    connect,
    exec_argv,
    http_get,
    in_netns,
    netns_name,
    netns_path,
    popen,
    run,
    socket_in,
)
from .topology import (
    CLIENT,
    CLIENT6,
    DIRECTOR2_PRIV6,
    DIRECTOR2_PUB6,
    DIRECTOR_PRIV6,
    DIRECTOR_PUB6,
    REALS6,
    VIP6,
    DIRECTOR2_PRIV,
    DIRECTOR2_PUB,
    DIRECTOR_PRIV,
    DIRECTOR_PUB,
    DIRECTORS,
    NAT_ROUTER,
    NETWORKS,
    REALS,
    RUN_DIR,
    VIP,
    LabError,
    down,
    is_up,
    nginx_pid,
    read_sysctl,
    restore_addresses,
    start_real,
    status,
    stop_real,
    up,
)

__all__ = [
    "ALL_NODES", "CLIENT", "DIRECTOR2_PRIV", "DIRECTOR2_PUB", "DIRECTORS", "DIRECTOR_PRIV", "DIRECTOR_PUB", "LAB_NET", "NAT_ROUTER", "NETWORKS",
    "NODES", "REALS", "RUN_DIR", "SWITCH", "VIP", "LabCommandError", "LabError", "check_lab_addr",
    "connect", "down", "exec_argv", "http_get", "in_netns", "is_up", "netns_name", "netns_path",
    "nginx_pid", "popen", "read_sysctl", "restore_addresses", "run", "socket_in", "start_real", "status", "stop_real", "up",
    "CLIENT6", "DIRECTOR2_PRIV6", "DIRECTOR2_PUB6", "DIRECTOR_PRIV6", "DIRECTOR_PUB6", "REALS6", "VIP6",
]
