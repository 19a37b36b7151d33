"""What a client connects to: the guard in front of every HTTP route, ``/mcp`` for both protocol
eras and its sessions, stdio mode, and the operator's routes (admin API, health)."""
