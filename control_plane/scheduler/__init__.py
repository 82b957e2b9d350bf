"""Scheduling: pure placement, ordering and admission decisions, and the commands using them."""
