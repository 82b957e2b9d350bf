"""The work-unit aggregate: its lifecycle, submit, claims, reports, the sweep, queries."""
