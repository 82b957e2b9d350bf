"""Wire models shared by the control plane and the node agent.

Nothing here does I/O; this package imports only the standard library and pydantic.
"""
