"""OAuth 2.0 access tokens for Google APIs from a service-account JSON key kept in Secrets Manager.

google-auth does the work: it signs the JWT bearer grant (RFC 7523) with the service
account's private key, posts it to the token endpoint, and tells when the token is stale
(3 min 45 s before it expires). This module adds what a Lambda needs around it: the key is
read on first use (never at import), one token is cached per container and refreshed only
when stale, the token endpoint is injectable (tests point it at a local fake), every HTTP
call has an explicit timeout, and failures become the adapter's typed errors.

Nothing here logs or repeats the private key, the signed assertion or the token: the wire
loggers of google-auth's transport (which would print the assertion at DEBUG) are held at INFO.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import requests
from google.auth import exceptions as google_exceptions
from google.auth.transport.requests import Request
from google.oauth2 import service_account

from billing.adapters.google.api_keys import plain_session
from billing.adapters.google.errors import GoogleRequestRejected, GoogleUnavailable, clip

#: Read/write access to the project's Google Cloud resources (the API Keys API needs it).
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
SCOPES = (CLOUD_PLATFORM_SCOPE,)
#: google-auth's request/response logger prints token-endpoint request bodies (the signed
#: assertion) at DEBUG; urllib3 prints URLs.
_WIRE_LOGGERS = ("google.auth.transport.requests", "google.auth.transport", "urllib3")

ServiceAccountLoader = Callable[[], Mapping[str, Any]]


class _TimedRequest(Request):
    """google-auth's ``requests`` transport, with our timeout on every call (its default is 120 s)."""

    def __init__(self, session: requests.Session, timeout_s: float) -> None:
        super().__init__(session=session)
        self._timeout_s = timeout_s

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        return super().__call__(  # type: ignore[no-untyped-call]  # google-auth is not annotated here
            url, method=method, body=body, headers=headers, timeout=timeout or self._timeout_s, **kwargs
        )


class ServiceAccountTokens:
    """``AccessTokens`` for one service account: cached until stale, refreshed once per expiry, thread-safe.

    ``load_service_account`` returns the parsed JSON key (``billing.adapters.aws.secrets``
    in production); it is called on first use and again after a refused grant, so a
    rotated key in Secrets Manager is picked up without a redeploy.
    """

    def __init__(
        self,
        load_service_account: ServiceAccountLoader,
        *,
        token_uri: str | None = None,
        timeout_s: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self._load = load_service_account
        self._token_uri = token_uri
        self._request = _TimedRequest(session or plain_session(), timeout_s)
        self._credentials: service_account.Credentials | None = None
        self._lock = threading.Lock()
        for name in _WIRE_LOGGERS:
            library_logger = logging.getLogger(name)
            if library_logger.getEffectiveLevel() < logging.INFO:
                library_logger.setLevel(logging.INFO)

    def access_token(self) -> str:
        """A bearer token valid for at least a few more minutes."""
        with self._lock:
            credentials = self._ensure_credentials()
            if not credentials.valid:
                self._refresh(credentials)
            return str(credentials.token)

    def invalidate(self) -> None:
        """Forget the cached token (an API answered 401 with it); the next call fetches a new one."""
        with self._lock:
            if self._credentials is not None:
                self._credentials.token = None

    def _ensure_credentials(self) -> service_account.Credentials:
        if self._credentials is None:
            self._credentials = self._build_credentials()
        return self._credentials

    def _build_credentials(self) -> service_account.Credentials:
        try:
            info = dict(self._load())
        except Exception as exc:  # Secrets Manager down, secret missing, not JSON…
            raise GoogleUnavailable(
                f"could not read the Google service-account secret ({type(exc).__name__})"
            ) from None
        if info.get("type") != "service_account":
            raise GoogleRequestRejected(
                'the Google secret is not a service-account JSON key ("type": "service_account")'
            )
        from_info = service_account.Credentials.from_service_account_info
        try:
            credentials: service_account.Credentials = from_info(info, scopes=SCOPES)  # type: ignore[no-untyped-call]
        except (ValueError, KeyError, TypeError):
            # Never chain: the original exception may quote parts of the key.
            raise GoogleRequestRejected(
                "the Google service-account JSON key is malformed (client_email, private_key, token_uri)"
            ) from None
        if self._token_uri:
            credentials = credentials.with_token_uri(self._token_uri)
        return credentials

    def _refresh(self, credentials: service_account.Credentials) -> None:
        try:
            credentials.refresh(self._request)  # type: ignore[no-untyped-call]
        except google_exceptions.RefreshError as exc:
            if getattr(exc, "retryable", False):
                raise GoogleUnavailable(
                    f"the Google token endpoint is unavailable: {_grant_error(exc)}"
                ) from None
            # A refused grant (deleted/disabled key, wrong clock, revoked account): rebuild from
            # the secret next time, in case it was rotated.
            self._credentials = None
            raise GoogleRequestRejected(
                f"Google refused the service account's token grant: {_grant_error(exc)} "
                "(is the key deleted or disabled, or the account removed?)",
                http_status=400,
                status="invalid_grant",
            ) from None
        except google_exceptions.TransportError as exc:
            raise GoogleUnavailable(
                f"network error reaching the Google token endpoint ({_cause_name(exc)})"
            ) from None
        except google_exceptions.GoogleAuthError as exc:
            raise GoogleRequestRejected(
                f"could not obtain a Google access token ({type(exc).__name__})"
            ) from None


def _grant_error(exc: google_exceptions.RefreshError) -> str:
    """``error: error_description`` from the token endpoint's answer, and nothing else of it."""
    data = exc.args[1] if len(exc.args) > 1 else None
    if isinstance(data, Mapping):
        error = str(data.get("error") or "error")
        description = str(data.get("error_description") or "")
        return clip(f"{error}: {description}" if description else error)
    return clip(str(exc.args[0]) if exc.args else type(exc).__name__)


def _cause_name(exc: BaseException) -> str:
    cause = exc.__cause__ or (exc.args[0] if exc.args else None)
    return type(cause).__name__ if isinstance(cause, BaseException) else type(exc).__name__


def tokens_from_secret(
    secret_arn: str,
    *,
    token_uri: str | None = None,
    timeout_s: float = 10.0,
    session: requests.Session | None = None,
) -> ServiceAccountTokens:
    """Tokens for the service account whose JSON key is the Secrets Manager secret ``secret_arn``."""
    from billing.adapters.aws.secrets import read_json_secret  # noqa: PLC0415 - boto3 only when used

    return ServiceAccountTokens(
        lambda: read_json_secret(secret_arn),
        token_uri=token_uri,
        timeout_s=timeout_s,
        session=session,
    )
