"""Errors of the Google adapters, split by what a caller should do about them.

- Retryable (5xx, 429, network trouble, an operation that failed with a transient code,
  a token endpoint that is down): :class:`GoogleUnavailable`, a ``ProvisioningFailed``,
  so the provisioning worker retries the action later from its step log.
- Not retryable (400/401/403/404/409 and operations failing with such codes):
  :class:`GoogleRequestRejected` and its subclasses. Retrying cannot help; the worker
  should stop and alert an operator (a missing role, a disabled API, the 300-keys quota…).

Messages name the HTTP status, Google's status string and message, and a hint; they never
carry an access token, a key string or anything from the service-account secret.
"""

from __future__ import annotations

from billing.domain.provisioning import ProvisioningFailed

#: Longest part of a Google error message kept in ours.
MESSAGE_CHARS = 300


class GoogleUnavailable(ProvisioningFailed):
    """Google could not answer now (5xx, 429, timeout, network, transient operation error)."""


class GoogleRequestRejected(Exception):
    """Google refused the request; retrying the same request cannot succeed. Alert on it."""

    def __init__(self, message: str, *, http_status: int | None = None, status: str | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        #: Google's canonical status name (``PERMISSION_DENIED``, ``NOT_FOUND``, …) when known.
        self.status = status


class GoogleNotFound(GoogleRequestRejected):
    """404 / ``NOT_FOUND``: the key (or operation) does not exist, e.g. purged 30 days after deletion."""


class GoogleAlreadyExists(GoogleRequestRejected):
    """409 / ``ALREADY_EXISTS``: a key with this id exists (or is being created) in the project."""


class GoogleFailedPrecondition(GoogleRequestRejected):
    """400 ``FAILED_PRECONDITION``: the key is not in a state that allows the call (e.g. already deleted)."""


def clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"
