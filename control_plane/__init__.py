"""Krako control plane: the FastAPI app that owns the event log."""
