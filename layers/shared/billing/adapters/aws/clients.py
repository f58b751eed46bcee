"""The boto3 client every AWS adapter builds, and the error code of a botocore ``ClientError``.

boto3 is imported inside ``boto3_client`` only: a function whose path never calls AWS never
pays for loading it (cold start). Each adapter keeps its own lock and cache around the call
(boto3 sessions are not thread-safe).
"""

from __future__ import annotations

from typing import Any


def boto3_client(
    service: str,
    *,
    region: str | None = None,
    connect_timeout_s: float,
    read_timeout_s: float,
    attempts: int,
) -> Any:
    """A client on a fresh session, with explicit timeouts and at most ``attempts`` attempts."""
    import boto3  # noqa: PLC0415 - boto3 loads only when a client is needed
    from botocore.config import Config  # noqa: PLC0415

    config = Config(
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"mode": "standard", "total_max_attempts": attempts},
    )
    return boto3.session.Session().client(service, region_name=region, config=config)


def error_code(error: BaseException) -> str:
    """The AWS error code of a ``ClientError`` (``""`` when there is none, or for other errors)."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
