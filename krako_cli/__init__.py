"""``krako``: the command-line client for people (HTTP only, like the agent)."""
