"""Logger, Tracer and Metrics shared by every function (one place to configure them).

X-Ray tracing is opt-in (stack parameter ``EnableXRayTracing``): the X-Ray SDK and botocore
cost about 300 ms of every cold start to import. With ``POWERTOOLS_TRACE_DISABLED=true`` (the
default in template.yaml and locally) the tracer is a no-op and neither is imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from aws_lambda_powertools import Logger, Metrics

SERVICE = "vendor-billing"


class HandlerTracer(Protocol):
    """The part of Powertools' Tracer the functions use."""

    def capture_lambda_handler(
        self,
        lambda_handler: Callable[..., Any] | None = None,
        capture_response: bool | None = None,
        capture_error: bool | None = None,
    ) -> Callable[..., Any]: ...


class TracingOff:
    """Stands in for the Tracer when tracing is disabled: handlers run undecorated."""

    def capture_lambda_handler(
        self,
        lambda_handler: Callable[..., Any] | None = None,
        capture_response: bool | None = None,
        capture_error: bool | None = None,
    ) -> Callable[..., Any]:
        if lambda_handler is None:
            return lambda handler: handler
        return lambda_handler


def handler_tracer(environ: dict[str, str] | os._Environ[str] = os.environ) -> HandlerTracer:
    if environ.get("POWERTOOLS_TRACE_DISABLED", "").lower() == "true":
        return TracingOff()
    from aws_lambda_powertools import Tracer  # noqa: PLC0415 - imports the X-Ray SDK

    return Tracer(service=SERVICE)


logger = Logger(service=SERVICE)
tracer = handler_tracer()
metrics = Metrics(namespace="OfficeXVendorBilling", service=SERVICE)
