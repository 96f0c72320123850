"""The provider errors: where they sit in the tree, and that they survive
pickling (a process executor sends them between processes)."""

from __future__ import annotations

import pickle

import pytest

from legion.errors import (
    AgentError,
    MalformedResponse,
    Permanent,
    ProviderAuthError,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    is_retryable,
)


@pytest.mark.parametrize("cls", [RateLimited, ProviderUnavailable, MalformedResponse])
def test_transient_provider_errors_are_retryable(cls: type[ProviderError]) -> None:
    error = cls("boom", provider="openai", status=503, retry_after=1.5)
    assert isinstance(error, AgentError) and is_retryable(error)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls and str(copy) == "boom"
    assert (copy.provider, copy.status, copy.retry_after) == ("openai", 503, 1.5)


def test_rejections_are_permanent_and_auth_errors_fatal() -> None:
    rejected = ProviderRejected("no", provider="anthropic", status=404)
    auth = ProviderAuthError("bad key", provider="openai", status=401)
    assert isinstance(rejected, Permanent) and not is_retryable(rejected)
    assert not is_retryable(auth) and auth.fatal and not getattr(rejected, "fatal", False)
    copy = pickle.loads(pickle.dumps(auth))
    assert type(copy) is ProviderAuthError
    assert (str(copy), copy.provider, copy.status) == ("bad key", "openai", 401)
