"""The web console (the Piranha Configuration Tool's successor).

:mod:`lb.web.app` is the aiohttp application, served by `lb web` (:mod:`lb.web.main`), a process
of its own beside the daemon; :mod:`lb.web.password` is the password file `lb passwd` writes;
:mod:`lb.web.clients` says whom the console's caps and throttling (and the metrics endpoint's
caps) count as one client.  Nothing here imports aiohttp until the console starts.
"""
