"""A small client of the Google API Keys API v2 (``apikeys.googleapis.com``), JSON over HTTPS.

Only what the Gemini key provisioner needs: ``keys.create`` / ``get`` / ``getKeyString`` /
``patch`` (restrictions) / ``delete`` / ``undelete`` and ``operations.get``. Keys are global
resources, so every key lives under ``projects/<project>/locations/global``. Mutations answer
with a long-running operation (LRO); :meth:`ApiKeysClient.wait_for` polls it with backoff for
a bounded time.

Every call has an explicit timeout and no retries of its own, except one: a 401 drops the
cached access token and the call is sent once more with a fresh one. Failures are typed
(``billing.adapters.google.errors``): retryable ones are ``ProvisioningFailed``, the rest are
``GoogleRequestRejected``. Key strings are returned by :meth:`get_key_string` only and are
never kept on the models below (a create operation's response may carry one: it is dropped).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit
from uuid import UUID

import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from billing.adapters.google.errors import (
    GoogleAlreadyExists,
    GoogleFailedPrecondition,
    GoogleNotFound,
    GoogleRequestRejected,
    GoogleUnavailable,
    clip,
)

DEFAULT_BASE_URL = "https://apikeys.googleapis.com/v2"
USER_AGENT = "OfficeX-Vendor-Billing/1 (+provisioning)"
#: Key ids: RFC 1034 labels in lowercase, 1–63 characters, starting with a letter (and, per the
#: API reference, not UUID-like).
KEY_ID_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_OPERATION_NAME = re.compile(r"^operations/[A-Za-z0-9._~:-]+$")
_ERROR_BODY_BYTES = 4_096

#: google.rpc.Code values, by number, as operations report them.
RPC_CODE_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
#: Codes a later attempt of the same request may get past.
RETRYABLE_RPC_STATUSES = frozenset(
    {"CANCELLED", "UNKNOWN", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNAVAILABLE"}
)


def plain_session() -> requests.Session:
    """A ``requests`` session that ignores proxy/netrc settings from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


def is_valid_key_id(key_id: str) -> bool:
    if not KEY_ID_PATTERN.fullmatch(key_id):
        return False
    try:
        UUID(key_id)
    except ValueError:
        return True
    return False


class AccessTokens(Protocol):
    """Bearer tokens for the API (``ServiceAccountTokens`` in production)."""

    def access_token(self) -> str: ...
    def invalidate(self) -> None: ...


class _GoogleModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class ApiKey(_GoogleModel):
    """A key's metadata as ``keys.get`` answers it. Never holds the key string."""

    name: str
    uid: str | None = None
    display_name: str = Field(default="", alias="displayName")
    annotations: dict[str, str] = Field(default_factory=dict)
    restrictions: dict[str, Any] = Field(default_factory=dict)
    etag: str | None = None
    delete_time: str | None = Field(default=None, alias="deleteTime")
    service_account_email: str | None = Field(default=None, alias="serviceAccountEmail")

    @property
    def deleted(self) -> bool:
        """Soft-deleted: unusable, restorable with ``undelete`` for 30 days, then purged."""
        return bool(self.delete_time)

    @property
    def api_target_services(self) -> frozenset[str]:
        targets = self.restrictions.get("apiTargets") or []
        return frozenset(str(target.get("service", "")) for target in targets if isinstance(target, dict))

    @property
    def allowed_ips(self) -> tuple[str, ...]:
        server = self.restrictions.get("serverKeyRestrictions") or {}
        return tuple(str(ip) for ip in server.get("allowedIps") or ())


class OperationError(_GoogleModel):
    code: int = 2
    message: str = ""

    @property
    def status(self) -> str:
        return RPC_CODE_NAMES.get(self.code, "UNKNOWN")


class Operation(_GoogleModel):
    """A long-running operation. ``key`` is the resulting key (key string dropped) when it is one."""

    name: str
    done: bool = False
    error: OperationError | None = None
    key: ApiKey | None = None


def _operation_from(data: dict[str, Any], label: str) -> Operation:
    response = data.get("response")
    try:
        key = None
        if isinstance(response, dict) and str(response.get("@type", "")).endswith("apikeys.v2.Key"):
            key = ApiKey.model_validate(response)  # extra="ignore": a keyString in it is not kept
        return Operation.model_validate(
            {
                "name": data.get("name"),
                "done": data.get("done", False),
                "error": data.get("error"),
                "key": key,
            }
        )
    except ValidationError:
        raise GoogleUnavailable(f"{label}: unexpected operation shape") from None


def _key_from(data: dict[str, Any], label: str) -> ApiKey:
    try:
        return ApiKey.model_validate(data)
    except ValidationError:
        raise GoogleUnavailable(f"{label}: unexpected key shape") from None


def raise_for_operation(operation: Operation, what: str) -> Operation:
    """The operation if it succeeded; its error, typed, otherwise."""
    if operation.error is None:
        return operation
    status = operation.error.status
    message = f"{what}: operation {operation.name} failed with {status}: {clip(operation.error.message)}"
    if status in RETRYABLE_RPC_STATUSES:
        raise GoogleUnavailable(message)
    error_class = {
        "NOT_FOUND": GoogleNotFound,
        "ALREADY_EXISTS": GoogleAlreadyExists,
        "FAILED_PRECONDITION": GoogleFailedPrecondition,
    }.get(status, GoogleRequestRejected)
    raise error_class(message, status=status)


def check_base_url(base_url: str) -> str:
    """HTTPS, or plain HTTP to a loopback address (the local fake in tests)."""
    parts = urlsplit(base_url)
    if parts.scheme == "https" and parts.hostname:
        return base_url.rstrip("/")
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return base_url.rstrip("/")
    raise ValueError("the API Keys base URL must be https:// (or http:// to a loopback address in tests)")


class ApiKeysClient:
    """Keys of one Google Cloud project (id or number)."""

    def __init__(
        self,
        project: str,
        tokens: AccessTokens,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 10.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        first_poll_delay_s: float = 0.5,
        max_poll_delay_s: float = 5.0,
    ) -> None:
        if not project:
            raise ValueError("a Google Cloud project id is required")
        self.project = project
        self._tokens = tokens
        self._base_url = check_base_url(base_url)
        self._timeout_s = timeout_s
        self._session = session or plain_session()
        self._sleep = sleep
        self._clock = clock
        self._first_poll_delay_s = first_poll_delay_s
        self._max_poll_delay_s = max_poll_delay_s

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/global"

    def key_name(self, key_id: str) -> str:
        return f"{self.parent}/keys/{key_id}"

    # --- keys -------------------------------------------------------------------------------

    def create_key(
        self,
        key_id: str,
        *,
        display_name: str,
        restrictions: dict[str, Any],
        annotations: dict[str, str] | None = None,
        service_account_email: str | None = None,
    ) -> Operation:
        """``keys.create`` with our key id; ``GoogleAlreadyExists`` if the id is taken (or being created)."""
        if not is_valid_key_id(key_id):
            raise ValueError(f"invalid API key id {key_id!r} (lowercase RFC 1034 label, not a UUID)")
        if len(display_name) > 63:
            raise ValueError("an API key display name has at most 63 characters")
        body: dict[str, Any] = {"displayName": display_name, "restrictions": restrictions}
        if annotations:
            body["annotations"] = annotations
        if service_account_email:
            body["serviceAccountEmail"] = service_account_email
        data = self._call("POST", f"{self.parent}/keys", params={"keyId": key_id}, body=body)
        return _operation_from(data, f"keys.create {key_id}")

    def get_key(self, key_id: str) -> ApiKey:
        """``keys.get``; soft-deleted keys are returned with ``delete_time`` set."""
        return _key_from(self._call("GET", self.key_name(key_id)), f"keys.get {key_id}")

    def get_key_string(self, key_id: str) -> str:
        """``keys.getKeyString``: the secret itself. Hand it over; never log or store it in clear."""
        data = self._call("GET", f"{self.key_name(key_id)}/keyString")
        key_string = data.get("keyString")
        if not isinstance(key_string, str) or not key_string:
            raise GoogleUnavailable(f"keys.getKeyString of {key_id} answered without a key string")
        return key_string

    def update_restrictions(self, key_id: str, restrictions: dict[str, Any]) -> Operation:
        """``keys.patch`` of the restrictions only (``updateMask=restrictions``): replaces them whole."""
        data = self._call(
            "PATCH",
            self.key_name(key_id),
            params={"updateMask": "restrictions"},
            body={"restrictions": restrictions},
        )
        return _operation_from(data, f"keys.patch {key_id}")

    def delete_key(self, key_id: str) -> Operation:
        """``keys.delete``: a soft delete; the key can be undeleted for 30 days, then it is purged."""
        return _operation_from(self._call("DELETE", self.key_name(key_id)), f"keys.delete {key_id}")

    def undelete_key(self, key_id: str) -> Operation:
        """``keys.undelete`` of a key deleted less than 30 days ago (same key string as before)."""
        data = self._call("POST", f"{self.key_name(key_id)}:undelete", body={})
        return _operation_from(data, f"keys.undelete {key_id}")

    # --- operations -------------------------------------------------------------------------

    def get_operation(self, name: str) -> Operation:
        if not _OPERATION_NAME.fullmatch(name):
            raise ValueError(f"not an API Keys operation name: {name!r}")
        return _operation_from(self._call("GET", name), f"operations.get {name}")

    def wait_for(self, operation: Operation, *, timeout_s: float) -> Operation:
        """Poll until the operation is done (successfully or not) or ``timeout_s`` has passed.

        Delays grow 0.5 s, 1 s, 2 s … up to 5 s. Still running at the deadline → ``GoogleUnavailable``
        (retryable: the caller's step log remembers the operation, a later run polls it again).
        """
        deadline = self._clock() + timeout_s
        delay = self._first_poll_delay_s
        while not operation.done:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise GoogleUnavailable(
                    f"operation {operation.name} still running after {timeout_s:g} s; polled again next run"
                )
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, self._max_poll_delay_s)
            operation = self.get_operation(operation.name)
        return operation

    # --- HTTP -------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        url = f"{self._base_url}/{path}"
        label = f"{method} {path}"
        for attempt in (1, 2):
            headers = {
                "Authorization": f"Bearer {self._tokens.access_token()}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            }
            try:
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    json=body,
                    headers=headers,
                    timeout=self._timeout_s,
                    allow_redirects=False,
                )
            except requests.Timeout:
                raise GoogleUnavailable(f"{label}: timed out after {self._timeout_s:g} s") from None
            except requests.RequestException as exc:
                raise GoogleUnavailable(f"{label}: network error ({type(exc).__name__})") from None
            with response:
                if response.status_code == 401 and attempt == 1:
                    self._tokens.invalidate()  # expired or revoked token: once more with a new one
                    continue
                if 200 <= response.status_code < 300:
                    try:
                        data = response.json()
                    except ValueError:
                        raise GoogleUnavailable(f"{label}: answer is not JSON") from None
                    if not isinstance(data, dict):
                        raise GoogleUnavailable(f"{label}: answer is not a JSON object")
                    return data
                raise _http_error(label, response)
        raise AssertionError("unreachable")  # pragma: no cover


def _http_error(label: str, response: requests.Response) -> Exception:  # noqa: PLR0911 - one per kind
    http_status = response.status_code
    status, message, reasons = _google_error(response)
    text = f"{label}: HTTP {http_status} {status or ''}".rstrip() + (f": {message}" if message else "")
    if http_status == 429 or http_status >= 500 or status in RETRYABLE_RPC_STATUSES:
        return GoogleUnavailable(text)
    if http_status == 404 or status == "NOT_FOUND":
        return GoogleNotFound(text, http_status=http_status, status=status or "NOT_FOUND")
    if status == "ALREADY_EXISTS" or (http_status == 409 and not status):
        return GoogleAlreadyExists(text, http_status=http_status, status="ALREADY_EXISTS")
    if status == "FAILED_PRECONDITION":
        return GoogleFailedPrecondition(text, http_status=http_status, status=status)
    if http_status == 403:
        if "SERVICE_DISABLED" in reasons:
            hint = "enable apikeys.googleapis.com in the project"
        else:
            hint = "grant the service account roles/serviceusage.apiKeysAdmin on the project"
        return GoogleRequestRejected(f"{text} ({hint})", http_status=http_status, status=status)
    if http_status == 401:
        return GoogleRequestRejected(
            f"{text} (a fresh access token was refused too)", http_status=http_status, status=status
        )
    if 300 <= http_status < 400:
        return GoogleRequestRejected(
            f"{label}: HTTP {http_status}: redirect not followed", http_status=http_status
        )
    return GoogleRequestRejected(text, http_status=http_status, status=status)


def _google_error(response: requests.Response) -> tuple[str | None, str, frozenset[str]]:
    """``(status, message, reasons)`` from Google's ``{"error": {...}}`` body, as far as it has them."""
    try:
        payload = response.json()
    except ValueError:
        return None, clip(response.text[:_ERROR_BODY_BYTES]), frozenset()
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None, "", frozenset()
    status = error.get("status")
    reasons = frozenset(
        str(detail.get("reason"))
        for detail in error.get("details") or ()
        if isinstance(detail, dict) and detail.get("reason")
    )
    return (str(status) if status else None), clip(str(error.get("message") or "")), reasons


__all__ = [
    "DEFAULT_BASE_URL",
    "AccessTokens",
    "ApiKey",
    "ApiKeysClient",
    "Operation",
    "OperationError",
    "is_valid_key_id",
    "raise_for_operation",
]
