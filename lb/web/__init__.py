"""The web console (the Piranha Configuration Tool's successor).

:mod:`lb.web.app` is the aiohttp application, served on the daemon's own asyncio loop
(lb.engine.Engine.run starts it when [web] enabled = true); :mod:`lb.web.password` is the
password file `lb passwd` writes.  Nothing here imports aiohttp until the console starts.
"""
