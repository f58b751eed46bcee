"""KMS encryption of small secrets (OfficeX org keys, finalize replays), bound to an encryption context.

KMS authenticates the context with the ciphertext: it decrypts only under the exact
context it was encrypted with (e.g. ``{"purpose": "officex-org-key", "purchase_id": …}``),
so a ciphertext copied to another purchase's row is refused, not silently decrypted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from billing.adapters.aws.clients import boto3_client, error_code
from billing.domain.errors import CiphertextMismatch, DependencyUnavailable

logger = Logger(child=True)

#: KMS ``Encrypt`` takes at most 4 KiB of plaintext.
MAX_PLAINTEXT_BYTES = 4_096
#: Errors that mean "this ciphertext is not for this key and context" — retrying cannot help.
_MISMATCH_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})
#: botocore logs request params and response bodies (plaintexts, base64) at DEBUG level.
_WIRE_LOGGERS = ("botocore.endpoint", "botocore.parsers")


class KmsClient(Protocol):
    def encrypt(self, **kwargs: Any) -> dict[str, Any]: ...
    def decrypt(self, **kwargs: Any) -> dict[str, Any]: ...


class KmsSecretBox:
    """``SecretBox`` on a KMS symmetric key; the client is created on first use."""

    def __init__(self, key_id: str, client: KmsClient | None = None) -> None:
        if not key_id:
            raise ValueError("a KMS key id (or ARN, or alias) is required")
        self._key_id = key_id
        self._client = client
        self._lock = threading.Lock()

    def encrypt(self, plaintext: str, context: dict[str, str]) -> bytes:
        data = plaintext.encode()
        if not 0 < len(data) <= MAX_PLAINTEXT_BYTES:
            raise ValueError(f"KMS encrypts 1 to {MAX_PLAINTEXT_BYTES} bytes; got {len(data)}")
        _require_context(context)
        with _kms_errors("Encrypt"):
            answer = self._kms().encrypt(KeyId=self._key_id, Plaintext=data, EncryptionContext=context)
        return bytes(answer["CiphertextBlob"])

    def decrypt(self, ciphertext: bytes, context: dict[str, str]) -> str:
        _require_context(context)
        with _kms_errors("Decrypt"):
            answer = self._kms().decrypt(
                KeyId=self._key_id, CiphertextBlob=ciphertext, EncryptionContext=context
            )
        return bytes(answer["Plaintext"]).decode()

    def _kms(self) -> KmsClient:
        with self._lock:  # the local runner serves threads; boto3 sessions are not thread-safe
            if self._client is None:
                for name in _WIRE_LOGGERS:
                    logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger(name).level))
                self._client = boto3_client("kms", connect_timeout_s=3, read_timeout_s=3, attempts=2)
            return self._client


def _require_context(context: dict[str, str]) -> None:
    if not context:
        raise ValueError("an encryption context is required: it binds the ciphertext to its row")


@contextmanager
def _kms_errors(operation: str) -> Iterator[None]:
    """KMS failures → ``DependencyUnavailable`` (503), except a ciphertext that is not for this context."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        if code in _MISMATCH_CODES:
            raise CiphertextMismatch(
                "the ciphertext does not match this KMS key and encryption context"
            ) from None
        logger.warning("KMS call failed", extra={"operation": operation, "error_code": code})
        raise DependencyUnavailable("KMS is unavailable; nothing was written") from exc
    except BotoCoreError as exc:
        logger.warning("KMS call failed", extra={"operation": operation, "error": type(exc).__name__})
        raise DependencyUnavailable("KMS is unavailable; nothing was written") from exc


def configured_secret_box(key_id: str | None) -> KmsSecretBox:
    """The application's secret box under ``KMS_KEY_ID``; a 503 when it is not configured."""
    if not key_id:
        raise DependencyUnavailable("encryption is not configured (KMS_KEY_ID)")
    return KmsSecretBox(key_id)
