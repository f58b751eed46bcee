"""Secrets Manager reads, cached by Powertools for a few minutes (rotation friendly)."""

from __future__ import annotations

from typing import Any, cast


def read_json_secret(secret_arn: str, *, max_age_s: int = 300) -> dict[str, Any]:
    from aws_lambda_powertools.utilities import parameters  # noqa: PLC0415 - boto3 loads only when used

    return cast(dict[str, Any], parameters.get_secret(secret_arn, transform="json", max_age=max_age_s))
