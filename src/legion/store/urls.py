"""Store URLs, fit to print."""

from __future__ import annotations

import functools
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
    """The password of ``url``'s credentials, as a message about it may echo it (libpq
    quotes the part of a URL it could not parse: ``invalid percent-encoded token:
    "se%cret"``, or the tail of a password cut at its ``?``). For `scrub`."""
    found = _USERINFO.match(url)
    if found is None:
        return ()
    return (url[found.end(1) : found.end() - 1],)


SCRUBBED_RUN = 3
"""The shortest run of a password's characters `scrub` hides in a quoted part."""

_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with each of ``secrets`` as ``***``, and, in its quoted parts (where libpq
    echoes what it could not parse, a password cut where the URL's syntax cut it), every
    run of ``SCRUBBED_RUN`` or more characters that is a part of one."""
    for secret in secrets:
        if len(secret) < SCRUBBED_RUN:
            continue
        hidden = text.replace(secret, "***")
        text = _QUOTED.sub(functools.partial(_quoted_runs, secret=secret), hidden)
    return text


def _quoted_runs(quoted: re.Match[str], secret: str) -> str:
    text = quoted.group(0)
    out: list[str] = []
    i = 0
    while i < len(text):
        n = SCRUBBED_RUN
        while i + n <= len(text) and text[i : i + n] in secret:
            n += 1
        if n > SCRUBBED_RUN:
            out.append("***")
            i += n - 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def redact_text(text: str) -> str:
    """``text`` (a command line, a note, a whole JSON document) with every password of a
    URL in it, and every ``password=`` value, as ``***``."""
    if "://" not in text and "password" not in text.lower():
        return text
    return _ANY_SECRET_PARAM.sub(r"\1***", _ANY_USERINFO.sub(r"\1***@", text))
