"""Store URLs, fit to print."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """``url`` with its password, if it has one, as ``***``: a store URL fit to print."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # too malformed to split (a bad IPv6 host): hide what looks like one
        return re.sub(r"^([A-Za-z][\w+.-]*://[^:/@?#]*:)[^@/?#]*@", r"\1***@", url)
    if not password:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
