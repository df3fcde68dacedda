"""Notify programs run once per role change; two changes in quick succession (a takeover undone
a moment later: the partition healed during it) ran their programs at the same time, so a slow
"active" run could finish after the "backup" run and leave its work -- a service started, a
route added -- on what is now the backup.  Each program's runs go one at a time, in order."""
from __future__ import annotations

import asyncio

from test_ha_unit import _pulse


def test_notify_runs_of_quick_role_changes_finish_in_order(tmp_path):
    out = tmp_path / "out"
    hook = tmp_path / "hook"
    # the "active" run takes its time (starting a service, say), the "backup" run is quick
    hook.write_text(f'#!/bin/sh\n[ "$1" = active ] && sleep 0.5\necho "$1 $2" >> {out}\n')
    hook.chmod(0o755)
    p = _pulse(tmp_path, [str(hook)])

    async def go():
        p._notify("active", "backup")
        await asyncio.sleep(0.05)
        p._notify("backup", "active")
        for _ in range(100):                     # both done: two lines
            await asyncio.sleep(0.1)
            if out.exists() and len(out.read_text().splitlines()) == 2:
                break
    asyncio.run(go())
    assert out.read_text().splitlines() == ["active backup", "backup active"]
