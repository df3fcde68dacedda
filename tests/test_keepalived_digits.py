"""keepalived.conf numbers that str.isdigit() takes but int() does not ("²", 5000 digits): a
ConfigError naming file, line and field, never a traceback."""
from __future__ import annotations

import pytest

from lb.config import ConfigError, keepalived

HEAD = "global_defs {\n lb_public_interface eth0\n%s}\n"
VS = "virtual_server %s {\n lb_kind DR\n%s real_server 198.18.1.1 %s {\n  weight 1\n }\n}\n"


@pytest.mark.parametrize("text", [
    HEAD % "" + VS % ("198.18.0.10 80", "", "\u00b2"),                       # real_server port
    HEAD % "" + VS % ("198.18.0.10 80", "", "9" * 5000),                     # beyond Python's int()
    HEAD % " lvs_timeouts tcp \u00b2\n" + VS % ("198.18.0.10 80", "", "80"),  # lvs_timeouts
    HEAD % "" + VS % ("fwmark \u00b2", "", "80"),                            # fwmark
    HEAD % "" + VS % ("198.18.0.10 \u00b9", "", "80"),                        # virtual_server port
    HEAD % "" + VS % ("198.18.0.10 80", " persistence_granularity \u00b3\n", "80"),
])
def test_non_ascii_digits_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        keepalived.loads(text, "k.conf", config_id="lvs1")
    assert all(i.path == "k.conf" and i.line is not None for i in e.value.issues)
