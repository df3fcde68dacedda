"""Route announcement and active-active scale-out ([bgp]): VIPs announced over BGP by ExaBGP.

    announcer.py  the engine's side: which VIPs this director can serve, written as a lease
    lease.py      routes, the lease and the agent's status file (shared with the agent)
    agent.py      ExaBGP's API process: the lease's routes while it holds, none once it lapses
    speaker.py    ExaBGP's configuration and process (started by lb, outlives it)
"""
from lb.bgp.announcer import Announcer, BgpError, format_status, reload_problem

__all__ = ["Announcer", "BgpError", "format_status", "reload_problem"]
