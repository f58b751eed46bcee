"""Finalize asks the provisioner function to start on a new purchase now (Lambda async invoke).

``InvocationType=Event`` returns as soon as Lambda queued the call, so finalize never waits on
the cloud calls themselves; it then polls the database for the resource (bounded). The payload
is only the purchase id: no secret ever travels through Lambda's invocation records.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from uuid import UUID

from billing.adapters.aws.clients import boto3_client


class LambdaProvisionerKick:
    """Callable ``(purchase_id) -> None``; failures raise (the caller logs and carries on)."""

    def __init__(self, function_name: str, *, client: Any | None = None, timeout_s: float = 2.0) -> None:
        if not function_name:
            raise ValueError("the provisioner function's name is required")
        self._function_name = function_name
        self._client = client
        self._timeout_s = timeout_s
        self._lock = threading.Lock()

    def __call__(self, purchase_id: UUID) -> None:
        self._lambda().invoke(
            FunctionName=self._function_name,
            InvocationType="Event",
            Payload=json.dumps({"purchase_id": str(purchase_id)}).encode(),
        )

    def _lambda(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = boto3_client(
                    "lambda", connect_timeout_s=self._timeout_s, read_timeout_s=self._timeout_s, attempts=2
                )
            return self._client
