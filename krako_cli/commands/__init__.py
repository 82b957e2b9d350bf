"""The ``krako`` commands, one module per concept; ``krako_cli.main`` puts them together."""
