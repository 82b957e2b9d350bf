"""The work-unit aggregate: its lifecycle (the one writer of unit state), submit, cancel,
claims, reports, the sweep, queries and rows."""
