"""``bench/metering.py --quick`` runs end to end on the test server, and its own checks hold (~10 s)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_the_metering_bench_runs_and_every_request_is_answered(database_url: str) -> None:
    # The bench makes its own scratch databases on the server of the URL it is given.
    finished = subprocess.run(
        [sys.executable, "bench/metering.py", "--quick", "--json", "--database-url", database_url],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout)
    phases = report["metering"]["phases"]
    assert {phase["scenario"] for phase in phases} >= {
        "single-hot",
        "single-spread",
        "batch-hot",
        "batch-spread",
        "store-single-hot",
    }
    assert all(phase["failed_requests"] == 0 and phase["events"] > 0 for phase in phases)
    assert report["metering"]["checks"]["batch-hot"]["usage_entries"] > 0
    assert report["sweep"]["first_run"] == {
        "holds_expired": 20,
        "statuses_corrected": 20,
        "purchases_terminated": 20,
    }
