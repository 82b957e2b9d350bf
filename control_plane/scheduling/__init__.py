"""Scheduling: pure placement, ordering and admission, and the adapter that applies a pass."""
