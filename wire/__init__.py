"""wire: a self-hosted WireGuard mesh VPN built on Twisted."""

__version__ = "0.1.0"
