"""The lab's HA pair as `lb run` configs: director (primary) and director2 (backup) sharing the
client segment and the real servers' segment, the VIP 198.18.0.10:80 over rs1..rs3 (rr, no
monitor), the NAT router address floating with the VIP.  tests/test_ha_lab.py and
bench/failover.py start both directors from it."""
from __future__ import annotations

HA_SECTION = """\
[ha]
primary = "198.18.0.1"
backup = "198.18.0.3"
primary_private = "198.18.1.1"
backup_private = "198.18.1.3"
key_file = "{key}"
keepalive = {keepalive}
deadtime = {deadtime}
garp_count = 3
garp_interval = 0.05
garp_refresh = 1.0
sync_interval = 0.1
"""

HA_CONFIG = """\
[global]
instance = "{instance}"
public_interface = "pub0"
private_interface = "priv0"
network = "{network}"
nat_router = "198.18.1.254/24"

{ha}
[[virtual_server]]
name = "web"
address = "198.18.0.10"
port = 80
scheduler = "rr"
  [virtual_server.monitor]
  kind = "none"
  [[virtual_server.real_server]]
  address = "198.18.1.11"
  [[virtual_server.real_server]]
  address = "198.18.1.12"
  [[virtual_server.real_server]]
  address = "198.18.1.13"
"""


def ha_config(instance: str, key_file, network: str = "nat", keepalive: float = 0.2, deadtime: float = 1.0) -> str:
    return HA_CONFIG.format(instance=instance, network=network,
                            ha=ha_section(key_file, keepalive, deadtime))


def ha_section(key_file, keepalive: float = 0.2, deadtime: float = 1.0) -> str:
    """The [ha] table of the lab's pair (director primary, director2 backup), for any config."""
    return HA_SECTION.format(key=key_file, keepalive=keepalive, deadtime=deadtime)
