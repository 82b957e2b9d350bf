"""Trust and health: a pure per-node fold over the event log, and heartbeat freshness."""
