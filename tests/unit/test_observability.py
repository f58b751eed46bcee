"""Tracing off means no X-Ray SDK import and undecorated handlers; on means Powertools' Tracer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from billing.api.observability import TracingOff, handler_tracer

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
