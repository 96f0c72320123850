"""Store URLs, fit to print."""

from __future__ import annotations

import re

# A URL's password: after the scheme and the user name, up to the last '@'. libpq ends
# the credentials at the first '@' or '/', but a password typed raw (not percent-encoded:
# '/', '@', '?', '%', a space, as generated passwords have) then lands in the host or the
# database's name, which a message shows; so all up to the last '@' is hidden (in the
# rare URL with a '@' in its query too, more than the password).
_USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://[^:@/?#]*:).*@", re.DOTALL)
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
_ANY_USERINFO = re.compile(r"([A-Za-z][\w+.-]*://[^:@/?#\s]*:)\S*@")
_ANY_SECRET_PARAM = re.compile(r"((?:[?&\s]|^)(?:ssl)?password=)[^&\s'\"]*", re.IGNORECASE)


def url_secrets(url: str) -> tuple[str, ...]:
    """What of ``url``'s password a message about it may echo (libpq quotes the part of
    a URL it could not parse: ``invalid percent-encoded token: "se%cret"``): the password
    as written and its pieces between the characters that end a URL's parts, the short
    ones left (they would hide words of the message). For `scrub`."""
    found = _USERINFO.match(url)
    if found is None:
        return ()
    secret = url[found.end(1) : found.end() - 1]
    pieces = {secret, *re.split(r"[/?#@%&=:\s]+", secret)}
    return tuple(sorted((p for p in pieces if len(p) >= 4), key=len, reverse=True))


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with each of ``secrets`` (`url_secrets`) as ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def redact_text(text: str) -> str:
    """``text`` (a command line, a note, a whole JSON document) with every password of a
    URL in it, and every ``password=`` value, as ``***``."""
    if "://" not in text and "password" not in text.lower():
        return text
    return _ANY_SECRET_PARAM.sub(r"\1***", _ANY_USERINFO.sub(r"\1***@", text))
