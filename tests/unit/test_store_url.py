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
    ],
)
def test_a_password_is_hidden_and_nothing_else_changes(url: str, shown: str) -> None:
    assert redact_url(url) == shown
