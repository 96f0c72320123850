"""A store URL fit to print: its password hidden, everything else as given."""

from __future__ import annotations

import pytest

from legion.store import redact_url


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
        ("postgresql://u:pw@h/db?user=x@y", "postgresql://u:***@h/db?user=x@y"),
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
    ],
)
def test_a_password_is_hidden_and_nothing_else_changes(url: str, shown: str) -> None:
    assert redact_url(url) == shown
