"""The fleet: node registration, heartbeats, health and trust."""
