"""Tracing off means no X-Ray SDK import and undecorated handlers; on means Powertools' Tracer."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, cast

import pytest
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.api import jobs
from billing.api.observability import TracingOff, handler_tracer
from billing.domain.errors import DependencyUnavailable
from local.handlers import LocalLambdaContext

LAYER = Path(__file__).resolve().parents[2] / "layers" / "shared"


def _handler(event: dict[str, str], context: object) -> str:
    return "ok"


def test_tracing_off_leaves_handlers_as_they_are() -> None:
    tracer = handler_tracer({"POWERTOOLS_TRACE_DISABLED": "true"})

    assert isinstance(tracer, TracingOff)
    assert tracer.capture_lambda_handler(_handler) is _handler
    assert tracer.capture_lambda_handler(capture_response=False)(_handler) is _handler


def test_tracing_off_never_imports_the_xray_sdk() -> None:
    probe = (
        "import sys, billing.api.http; "
        "print('aws_xray_sdk' in sys.modules, 'botocore.session' in sys.modules)"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe],
        env={
            "PYTHONPATH": str(LAYER),
            "POWERTOOLS_TRACE_DISABLED": "true",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.split() == ["False", "False"]


def test_tracing_on_uses_the_powertools_tracer() -> None:
    tracer = handler_tracer({})

    assert type(tracer).__name__ == "Tracer"


@pytest.fixture
def job_metrics(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """The metrics a job adds (Powertools writes them to a stream pytest cannot hand back)."""
    added: dict[str, float] = {}
    monkeypatch.setattr(
        jobs.metrics, "add_metric", lambda name, unit, value: added.__setitem__(name, float(value))
    )
    return added


def _run(handler: jobs.JobHandler, caplog: pytest.LogCaptureFixture) -> dict[str, int]:
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no application metrics": add_metric is recorded, not sent
        return handler({}, cast(LambdaContext, LocalLambdaContext("TestJob")))


def test_a_job_turns_its_counts_into_metrics_and_a_log_line(
    job_metrics: dict[str, float], caplog: pytest.LogCaptureFixture
) -> None:
    @jobs.scheduled_job("test job", unavailable_metric="TestJobUnavailable")
    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
        return {"Claimed": 3, "Sent": 2}

    assert _run(handler, caplog) == {"Claimed": 3, "Sent": 2}
    assert job_metrics == {"Claimed": 3.0, "Sent": 2.0}
    (done,) = [record for record in caplog.records if record.getMessage() == "test job done"]
    assert (done.__dict__["Claimed"], done.__dict__["Sent"]) == (3, 2)


def test_a_job_whose_dependency_is_down_counts_it_and_logs_why(
    job_metrics: dict[str, float], caplog: pytest.LogCaptureFixture
) -> None:
    @jobs.scheduled_job("test job", unavailable_metric="TestJobUnavailable")
    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
        raise DependencyUnavailable("the database is unreachable")

    assert _run(handler, caplog) == {"TestJobUnavailable": 1}
    assert job_metrics == {"TestJobUnavailable": 1.0}
    (error,) = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert error.getMessage() == "test job could not run"
    assert error.__dict__["reason"] == "the database is unreachable"
