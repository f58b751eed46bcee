"""JSON POSTs to customer-chosen URLs (webhooks, OfficeX org endpoints) with ``urllib.request``.

Rules, all enforced here:
- HTTPS only, no credentials in the URL, explicit timeouts (connect and each read).
- 2xx is delivered; any other status, a redirect, a TLS or network error is a ``DeliveryFailed``
  (the dispatcher retries it). Redirects are never followed, to any host.
- No proxies from the environment. Hosts that resolve to private, loopback or link-local
  addresses are refused (no reaching into the VPC through a webhook URL), unless allowed
  for local runs; the check happens on the address actually connected to.
- Response bodies are read only up to a small limit, and only to quote in the error.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from billing.domain.notifications import DeliveryFailed, clip_error

#: Bytes of a response body kept for ``last_error``.
ERROR_BODY_BYTES = 300
USER_AGENT = "OfficeX-Vendor-Billing/1 (+outbox)"


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _connect_public(host: str, port: int, timeout: float | None) -> socket.socket:
    """Resolve ``host`` and connect to its first public address; refuse if it has none."""
    try:
        candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DeliveryFailed(f"cannot resolve {host}: {exc.strerror}") from None
    public = [entry for entry in candidates if _is_public(str(entry[4][0]))]
    if not public:
        raise DeliveryFailed(f"{host} resolves to no public address; refused")
    last_error: OSError | None = None
    for family, kind, protocol, _, address in public:
        sock = socket.socket(family, kind, protocol)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
    assert last_error is not None
    raise last_error


def _public_only_connection(context: ssl.SSLContext) -> type[http.client.HTTPSConnection]:
    """An HTTPS connection class that connects only to public addresses (checked after resolving)."""

    class PublicOnlyHTTPSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = _connect_public(self.host, self.port, self.timeout)
            self.sock = context.wrap_socket(raw, server_hostname=self.host)

    return PublicOnlyHTTPSConnection


class _HttpsOnlyHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, *, public_only: bool) -> None:
        super().__init__(context=context)
        self._tls = context
        self._connection = _public_only_connection(context) if public_only else http.client.HTTPSConnection

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req, context=self._tls)


class UrllibJsonPoster:
    """``HttpPoster``: one POST per call; no retries here (the outbox retries with backoff)."""

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        allow_private_hosts: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        # Only these handlers: no HTTPRedirectHandler (redirects are failures), no ProxyHandler,
        # no plain-HTTP handler. HTTPErrorProcessor turns non-2xx answers into HTTPError.
        self._opener = urllib.request.OpenerDirector()
        context = ssl_context or ssl.create_default_context()
        for handler in (
            _HttpsOnlyHandler(context, public_only=not allow_private_hosts),
            urllib.request.HTTPDefaultErrorHandler(),
            urllib.request.HTTPErrorProcessor(),
        ):
            self._opener.add_handler(handler)

    def post_json(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise DeliveryFailed("refused: the URL must be https://host/…")
        if parts.username is not None or parts.password is not None:
            raise DeliveryFailed("refused: credentials in the URL")
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above (https only)
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
        )
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                response.read(ERROR_BODY_BYTES)  # drain a little; the answer's content does not matter
        except urllib.error.HTTPError as exc:
            raise DeliveryFailed(_status_error(exc)) from None
        except urllib.error.URLError as exc:
            raise DeliveryFailed(f"network error: {_describe(exc.reason)}") from None
        except (TimeoutError, http.client.HTTPException, OSError) as exc:
            raise DeliveryFailed(f"network error: {_describe(exc)}") from None


def _status_error(exc: urllib.error.HTTPError) -> str:
    status = exc.code
    if 300 <= status < 400:
        target = urlsplit(exc.headers.get("Location", "") or "").hostname or "?"
        return f"HTTP {status}: redirect (to {target}) not followed"
    try:
        snippet = exc.read(ERROR_BODY_BYTES).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        snippet = ""
    finally:
        exc.close()
    return clip_error(f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}")


def _describe(error: object) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, BaseException):
        text = str(error) or type(error).__name__
        return f"{type(error).__name__}: {text}" if type(error).__name__ not in text else text
    return str(error)
