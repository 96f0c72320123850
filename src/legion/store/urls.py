"""Store URLs, fit to print."""

from __future__ import annotations

import re

# How libpq reads a URL's credentials: after the scheme, up to the first '@' or '/'
# (a '#' or '?' in a password is part of it, a raw '@' ends it).
_USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://[^:@/]*:)[^@/]*@")
# Parameters that carry a secret, in the query string (``?password=...``).
_SECRET_PARAM = re.compile(r"([?&](?:ssl)?password=)[^&]*", re.IGNORECASE)
# The same in a libpq key/value string ("host=h password=secret"), quoted or not.
_SECRET_KEYWORD = re.compile(
    r"((?:^|\s)(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """``url`` with its passwords as ``***``: the one of its credentials (read as libpq
    reads them) and any ``password=`` or ``sslpassword=`` parameter (of a URL's query, or
    of a libpq key/value string). A store URL fit to print; everything else as given."""
    if "://" not in url:  # (not a URL: perhaps a key/value string)
        return _SECRET_KEYWORD.sub(r"\1***", url)
    shown = _USERINFO.sub(r"\1***@", url, count=1)
    if "?" in shown:
        head, _, query = shown.partition("?")
        shown = head + _SECRET_PARAM.sub(r"\1***", "?" + query)
    return shown


# A URL's password anywhere in a text (``... postgresql://u:secret@host/db ...``).
_ANY_USERINFO = re.compile(r"([A-Za-z][\w+.-]*://[^:@/\s]*:)[^@/\s]*@")
_ANY_SECRET_PARAM = re.compile(r"((?:[?&\s]|^)(?:ssl)?password=)[^&\s'\"]*", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` (a command line, a note, a whole JSON document) with every password of a
    URL in it, and every ``password=`` value, as ``***``."""
    if "://" not in text and "password" not in text.lower():
        return text
    return _ANY_SECRET_PARAM.sub(r"\1***", _ANY_USERINFO.sub(r"\1***@", text))
