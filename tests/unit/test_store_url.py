"""A store URL fit to print: its password hidden, everything else as given."""

from __future__ import annotations

import pytest

from legion.errors import ConfigError
from legion.store import redact_url, store_from_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db?x=1", "postgresql://u:***@h:5432/db?x=1"),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db", "postgresql://h/db"),
        ("sqlite:///runs.db", "sqlite:///runs.db"),
        ("postgresql://u:pw@[::1/db", "postgresql://u:***@[::1/db"),  # unsplittable
        # as libpq reads it: '#' and '?' are part of a password, the first '@' ends it
        ("postgresql://u:Hunter#2s@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:a?b@h/db", "postgresql://u:***@h/db"),
        # a password typed raw ('/', '@', a space): all up to the last '@' is hidden, where
        # libpq would read part of it as the host or the database (so, with a '@' in
        # the query too, more than the password)
        ("postgresql://u:se/cret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:se@cr/et x@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:pw@h/db?user=x@y", "postgresql://u:***@y"),
        # passwords given as parameters
        ("postgresql://u@h/db?password=S3cret", "postgresql://u@h/db?password=***"),
        (
            "postgresql://h/db?sslmode=require&PASSWORD=a%26b&sslpassword=k&x=1",
            "postgresql://h/db?sslmode=require&PASSWORD=***&sslpassword=***&x=1",
        ),
        (
            "postgresql://h/db?application_name=password=x",
            "postgresql://h/db?application_name=password=x",
        ),
        # a scheme legion does not know, and a libpq key/value string (both refused as
        # store URLs, and echoed in the error that says so)
        ("postgresql+psycopg://bob:S3cret@h:1/db", "postgresql+psycopg://bob:***@h:1/db"),
        ("host=h port=1 password=S3cret user=u", "host=h port=1 password=*** user=u"),
        ("host=h password = 'a b\\' c' sslpassword=k", "host=h password = *** sslpassword=***"),
        ("host=h application_name=mypassword=x", "host=h application_name=mypassword=x"),
    ],
)
def test_a_password_is_hidden_and_nothing_else_changes(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_an_unknown_store_url_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigError) as refused:
        store_from_url("host=127.0.0.1 port=1 password=S3cret")
    assert "S3cret" not in str(refused.value) and "password=***" in str(refused.value)


def test_redact_text_hides_every_password_in_a_text() -> None:
    from legion.store.urls import redact_text

    text = (
        "legion bench steps --postgres=postgresql://u:p%40ss@h/db "
        "note: redis://:secret@h:6379 and host=h password=hunter2 sslpassword=x"
    )
    shown = redact_text(text)
    for secret in ("p%40ss", "secret", "hunter2", "=x"):
        assert secret not in shown, shown
    assert "postgresql://u:***@h/db" in shown and "redis://:***@h:6379" in shown
    assert redact_text("no secrets here") == "no secrets here"


def test_a_full_server_is_waited_for_not_refused() -> None:
    # At max_connections the server answers FATAL "remaining connection slots are
    # reserved ...": read as a refusal, every worker of a fleet exited 2 at once.
    import psycopg

    from legion.store.postgres import _transient

    for said in (
        "FATAL:  remaining connection slots are reserved for non-replication superuser connections",
        "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute",
        "FATAL:  sorry, too many clients already",
    ):
        assert _transient(psycopg.OperationalError(f"connection failed: {said}"))
    assert not _transient(psycopg.OperationalError("FATAL:  password authentication failed"))
