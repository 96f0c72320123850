"""Property-based tests of the public routes from the OpenAPI document: every check of
schemathesis (no 5xx, statuses and bodies as documented, valid inputs accepted, invalid ones
refused, Allow headers, authentication), in bounded time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.process import serve

pytestmark = pytest.mark.slow

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


def test_the_api_does_what_its_openapi_document_says(tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        run = subprocess.run(
            [
                SCHEMATHESIS,
                "run",
                f"{server.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {server.key}",
                "--checks",
                "all",
                "--exclude-path",
                "/v1/progress",  # an endless stream, by design
                "--max-examples",
                "15",
                "--seed",
                "20261121",
                "--workers",
                "1",
                "--request-timeout",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
    report = run.stdout
    assert "SUMMARY" in report and "generated" in report, report[-6000:] + run.stderr[-2000:]
    # One refusal is by design: the fuzzer sends an idempotency key again with another body,
    # which is answered 422 idempotency_conflict (the IETF idempotency-key draft), never
    # with the first task. Every other finding fails the test.
    findings = re.split(r"\n- ST\d+ ", report.split("SUMMARY")[0])[1:]
    unexpected = [f for f in findings if "idempotency_conflict" not in f.split("Reproduce")[0]]
    assert not unexpected, report[-8000:]
    if run.returncode != 0:
        assert findings, report[-6000:] + run.stderr[-2000:]
