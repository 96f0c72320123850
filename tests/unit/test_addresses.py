"""The addresses legion's servers listen on: loopback or not, and the URL they print."""

from __future__ import annotations

import pytest

from legion.addresses import http_url, is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_ipv6_host_is_printed_in_brackets() -> None:
    # `legion gateway --host ::1` printed http://::1:8090/v1, which no client opens.
    assert http_url("::1", 8090) == "http://[::1]:8090"
    assert http_url("127.0.0.1", 8090) == "http://127.0.0.1:8090"
