"""The node's mesh DNS resolver: its zone (zone.py), the resolver that
routes a question to the zone, a forwarded zone or the upstream
(resolver.py), and the UDP/TCP server around them (server.py)."""
