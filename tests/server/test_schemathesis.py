"""Property-based tests of the public routes from the OpenAPI document: never a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .process import serve

pytestmark = pytest.mark.slow

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


def test_no_route_answers_a_server_error(tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        run = subprocess.run(
            [
                SCHEMATHESIS,
                "run",
                f"{server.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {server.key}",
                "--checks",
                "not_a_server_error",
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
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout.split("SUMMARY")[-1]
