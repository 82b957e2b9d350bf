"""How the CLI shows things: each module turns one kind of object (a unit, an event, a
placement decision, a node, the capacity report, billing) into rich renderables or lines of
text. Nothing here prints or talks HTTP; the commands (and the demo) decide where it goes."""
