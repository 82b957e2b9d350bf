"""Scheduling: pure placement, queue ordering and admission decisions, and the commands that use them."""
