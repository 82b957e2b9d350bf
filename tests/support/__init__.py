"""The test harness every tier shares: free ports, real processes (the control plane and node
agents), the event log read over HTTP, and one way to wait for something to happen.

- ``ports.free_port``: a TCP port on 127.0.0.1 nobody listens on;
- ``waiting.wait_until``: poll a predicate until it holds, or fail saying what was awaited
  and the last value seen (the only deadline in the suite: a guard against hanging, never a
  claim about speed; speed is measured in ``bench/``);
- ``events``: the log through ``GET /v1/events`` (paged, tailed, waited on);
- ``processes``: ``python -m control_plane.server`` and ``python -m node_agent`` as real
  processes with their logs kept for failure messages.
"""
