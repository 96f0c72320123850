"""The addresses legion's servers listen on (``legion serve``, ``gateway``, ``sim``):
whether one is this machine's only, and the URL a person can open."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def http_url(host: str, port: int) -> str:
    """The address a person can open: an IPv6 host in brackets (``http://[::1]:8080``)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
