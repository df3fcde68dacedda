"""A real server's effective weight and why it has it: one rule, used by the engine to build the
table and by `lb status`, the control socket and the web console to show it.

Layers, strongest first: a server that is inactive in the config, or down without `quiesce`, is
out of the table; down with `quiesce` it is in at weight 0; otherwise the operator's override
(`lb weight` / `lb quiesce`) beats the load monitor's weight, which beats the configured one.
The sorry server stands in, at weight 1, for a pool with no usable server.
"""
from __future__ import annotations

from dataclasses import dataclass

CONFIGURED = "configured"
LOAD_MONITOR = "load_monitor"
OVERRIDE = "override"
DOWN_QUIESCED = "down_quiesced"     # health check failing, the service quiesces: weight 0
DOWN = "down"                       # health check failing: out of the table
INACTIVE = "inactive"               # active = false in the config: out of the table
SORRY_SERVER = "sorry_server"
SOURCES = (CONFIGURED, LOAD_MONITOR, OVERRIDE, DOWN_QUIESCED, DOWN, INACTIVE, SORRY_SERVER)
OUT_OF_TABLE = (DOWN, INACTIVE)


@dataclass(frozen=True)
class Weight:
    value: int                      # what the schedulers use (0 when out of the table)
    source: str                     # one of SOURCES
    configured: int | None          # the config's weight (None: the sorry server)
    load: int | None = None         # the load monitor's, when it has one
    override: int | None = None     # the operator's, when set

    @property
    def in_table(self) -> bool:
        return self.source not in OUT_OF_TABLE

    def text(self) -> str:
        """"weight 0: quiesced by operator; configured 3" (see weight_text)."""
        return weight_text(self.value, self.source, self.configured, self.load, self.override)


def effective(configured: int, *, active: bool = True, up: bool = True, quiesce: bool = False,
              load: int | None = None, override: int | None = None) -> Weight:
    """The effective weight of a configured real server (see the module docstring)."""
    if not active:
        return Weight(0, INACTIVE, configured, load, override)
    if not up:
        return Weight(0, DOWN_QUIESCED if quiesce else DOWN, configured, load, override)
    if override is not None:
        return Weight(override, OVERRIDE, configured, load, override)
    if load is not None:
        return Weight(load, LOAD_MONITOR, configured, load, override)
    return Weight(configured, CONFIGURED, configured, load, override)


def from_status(r: dict) -> Weight:
    """The Weight of a real server of `lb status --json` (the control socket's status reply)."""
    return Weight(r["weight"], r.get("weight_source", CONFIGURED), r.get("configured_weight"),
                  r.get("dynamic_weight"), r.get("override"))


def sorry_server() -> Weight:
    return Weight(1, SORRY_SERVER, None)


_WHY = {
    CONFIGURED: "configured",
    LOAD_MONITOR: "set by its load monitor",
    DOWN_QUIESCED: "down, quiesced until its health checks pass",
    DOWN: "down, out of the table until its health checks pass",
    INACTIVE: "inactive (active = false), out of the table",
    SORRY_SERVER: "sorry server, standing in for a pool with no usable real server",
}


def weight_text(value: int, source: str, configured: int | None, load: int | None = None,
                override: int | None = None) -> str:
    """One line: the effective weight, why, and the layers it beats, e.g.
    "weight 0: quiesced by operator; configured 3" or "weight 4: set by its load monitor;
    configured 5".  Takes the fields of `lb status --json` (weight, weight_source,
    configured_weight, dynamic_weight, override), so the CLI and the web console say the same."""
    if source == OVERRIDE:
        why = "quiesced by operator" if value == 0 else "set by operator"
    else:
        why = _WHY.get(source, source)
    if source in (CONFIGURED, SORRY_SERVER) or configured is None:
        return f"weight {value}: {why}"
    layers = [f"configured {configured}"]
    if load is not None and source != LOAD_MONITOR:
        layers.append(f"load monitor {load}")
    if override is not None and source != OVERRIDE:
        layers.append(f"operator override {override}")
    return f"weight {value}: {why}; {', '.join(layers)}"


def nexthop_text(r: dict) -> str | None:
    """What a `lb status` row's next hop says (its "nexthop_error": the data plane cannot resolve
    it), as `lb status` and the web console print it; None when it has nothing to say."""
    nh = r.get("nexthop_error")
    if not nh:
        return None
    return f"next hop: {nh.get('reason')}; " + ("new connections go to the one resolved before" if nh.get("kept")
                                                else "NO NEW CONNECTIONS until it answers")
