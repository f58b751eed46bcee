"""Email through Amazon SES (API v2 ``SendEmail``), plain text, from one verified sender."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from billing.adapters.aws.clients import boto3_client
from billing.domain.notifications import DeliveryFailed, EmailMessage


class SesClient(Protocol):
    def send_email(self, **kwargs: Any) -> dict[str, Any]: ...


class SesEmailSender:
    """``EmailSender`` on SES v2; the client is created on first use, with explicit timeouts."""

    def __init__(
        self,
        sender: str,
        *,
        client: SesClient | None = None,
        timeout_s: float = 5.0,
        configuration_set: str | None = None,
    ) -> None:
        if not sender:
            raise ValueError("a verified sender address is required")
        self._sender = sender
        self._client = client
        self._timeout_s = timeout_s
        self._configuration_set = configuration_set
        self._lock = threading.Lock()

    def send(self, to: str, message: EmailMessage) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - boto3 loads only when used

        request: dict[str, Any] = {
            "FromEmailAddress": self._sender,
            "Destination": {"ToAddresses": [to]},
            "Content": {
                "Simple": {
                    "Subject": {"Data": message.subject, "Charset": "UTF-8"},
                    "Body": {"Text": {"Data": message.text, "Charset": "UTF-8"}},
                }
            },
        }
        if self._configuration_set:
            request["ConfigurationSetName"] = self._configuration_set
        try:
            self._ses().send_email(**request)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise DeliveryFailed(
                f"SES refused the email: {error.get('Code', '?')}: {error.get('Message', '')}"
            ) from None
        except BotoCoreError as exc:
            raise DeliveryFailed(f"SES is unreachable ({type(exc).__name__})") from None

    def _ses(self) -> SesClient:
        with self._lock:  # boto3 sessions are not thread-safe
            if self._client is None:
                self._client = boto3_client(
                    "sesv2", connect_timeout_s=self._timeout_s, read_timeout_s=self._timeout_s, attempts=2
                )
            return self._client
