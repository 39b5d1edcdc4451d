"""The chaos suite: ``python chaos/run.py [scenario ...] [--quick]`` (see docs/reliability.md).

Not part of the test suite: each scenario starts its own Redis servers and worker processes,
disturbs them (kills, restarts, dropped connections, stalls) and checks, from a ledger the jobs
write to another Redis server, that no job was lost and how many ran twice.
"""
