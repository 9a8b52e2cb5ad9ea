"""The host agent: dials the server, converges its host to the desired release, reports.

    settings.py   AgentSettings (what the CLI hands over)
    runtime.py    run_agent(): the channel to the server and the reconnect loop
    servers.py    --server lists: parsing, and which server the channel uses now (failover)
    converge.py   the controller: switch plan, supervision, recovery after a crash
    executors.py  how the app is started and stopped (process | commands)
    artifacts.py  fetch, verify, cache and stage release tarballs
    health.py     http / tcp / command probes
    journal.py    the switch journal (what a half-done switch was doing)
    appstate.py   app.json (which process runs which release) and finding the app in /proc
    files.py      atomic writes
"""
