"""A local fake of Google's token endpoint and the API Keys API v2, served over real HTTP.

It speaks the REST shapes the production client uses (``oauth2.googleapis.com/token`` and
``apikeys.googleapis.com/v2``), on ``127.0.0.1`` in a thread:

- ``POST /token`` — the JWT bearer grant: the assertion's RS256 signature is checked against the
  service account's public key, as are ``iss``, ``aud`` and the ``cloud-platform`` scope.
- ``POST   /v2/projects/{p}/locations/global/keys?keyId=…``  create → operation
- ``GET    /v2/projects/{p}/locations/global/keys/{id}``     get (soft-deleted keys carry ``deleteTime``)
- ``GET    /v2/projects/{p}/locations/global/keys/{id}/keyString``
- ``PATCH  /v2/projects/{p}/locations/global/keys/{id}?updateMask=…`` → operation
- ``DELETE /v2/projects/{p}/locations/global/keys/{id}``     → operation (soft delete)
- ``POST   /v2/projects/{p}/locations/global/keys/{id}:undelete`` → operation
- ``GET    /v2/operations/{id}``

Operations are long-running: not done on the first poll (``polls_until_done``), or done by
themselves after ``settle_s`` seconds, and their effect shows only once they are done. A key id is
taken from the moment it is asked for (``ALREADY_EXISTS`` on a second create), and visible once its
creation is done. Errors use Google's ``{"error": {"code", "message", "status", "details"}}`` body.

Injectable failures: an HTTP error on the next matching call (``fail_next_http``), an operation
that completes with ``error`` (``fail_next_operation``), a request processed but its answer lost
(``lose_next_response``), revoked access tokens, refused grants, a purge after the 30-day window.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
PROJECT_NUMBER = "123456789012"
_KEY_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_STATUS_HTTP = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
}


@dataclass(frozen=True)
class FakeServiceAccount:
    """A freshly generated service-account JSON key and the public half the fake verifies with."""

    info: dict[str, Any]
    public_key_pem: bytes

    @property
    def email(self) -> str:
        return str(self.info["client_email"])


def new_service_account(project_id: str = "officex-test", name: str = "billing") -> FakeServiceAccount:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    email = f"{name}@{project_id}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": private_pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**20)),
        "token_uri": GOOGLE_TOKEN_AUDIENCE,
    }
    return FakeServiceAccount(info=info, public_key_pem=public_pem)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class FakeKey:
    key_id: str
    uid: str
    display_name: str
    key_string: str
    annotations: dict[str, str]
    restrictions: dict[str, Any]
    service_account_email: str | None
    create_time: str = field(default_factory=_now)
    update_time: str = field(default_factory=_now)
    delete_time: str | None = None
    visible: bool = False  # False while its creation is still running
    etag: str = field(default_factory=lambda: f'W/"{secrets.token_hex(8)}"')

    def resource(self, *, with_key_string: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "@type": "type.googleapis.com/google.api.apikeys.v2.Key",
            "name": f"projects/{PROJECT_NUMBER}/locations/global/keys/{self.key_id}",
            "uid": self.uid,
            "displayName": self.display_name,
            "createTime": self.create_time,
            "updateTime": self.update_time,
            "restrictions": self.restrictions,
            "etag": self.etag,
        }
        if self.annotations:
            data["annotations"] = self.annotations
        if self.service_account_email:
            data["serviceAccountEmail"] = self.service_account_email
        if self.delete_time:
            data["deleteTime"] = self.delete_time
        if with_key_string:
            data["keyString"] = self.key_string
        return data


@dataclass
class FakeOperation:
    name: str
    kind: str  # create, patch, delete, undelete
    key_id: str
    started: float
    polls_until_done: int
    change: dict[str, Any]
    error: dict[str, Any] | None = None
    polls: int = 0
    done: bool = False

    def resource(self, keys: dict[str, FakeKey]) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "done": self.done}
        if self.done and self.error:
            data["error"] = self.error
        elif self.done and self.key_id in keys:
            # Google's create response can carry the key string: the client must drop it.
            data["response"] = keys[self.key_id].resource(with_key_string=self.kind == "create")
        return data


@dataclass
class _HttpFailure:
    method: str
    path: re.Pattern[str]
    status: str
    message: str
    reason: str | None
    lose_response: bool = False


class GoogleApiError(Exception):
    def __init__(self, status: str, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": _STATUS_HTTP[self.status],
            "message": self.message,
            "status": self.status,
        }
        if self.reason:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": self.reason,
                    "domain": "googleapis.com",
                }
            ]
        return {"error": error}


class FakeGoogle:
    """Token endpoint + API Keys API for one project; use as a context manager."""

    def __init__(
        self,
        service_account: FakeServiceAccount,
        *,
        project_id: str = "officex-test",
        token_lifetime_s: int = 3600,
        polls_until_done: int = 2,
        settle_s: float = 60.0,
        max_keys: int = 300,
    ) -> None:
        self.service_account = service_account
        self.project_id = project_id
        self.token_lifetime_s = token_lifetime_s
        self.polls_until_done = polls_until_done
        self.settle_s = settle_s
        self.max_keys = max_keys
        self.keys: dict[str, FakeKey] = {}
        self.operations: dict[str, FakeOperation] = {}
        self.calls: list[tuple[str, str]] = []
        self.grants: list[dict[str, Any]] = []
        self.issued_tokens: list[str] = []
        self.refuse_grants = False
        #: Answer ``keys.get`` of a soft-deleted key with NOT_FOUND (Google's documentation leaves it open).
        self.hide_deleted_keys = False
        self._valid_tokens: dict[str, float] = {}
        self._failures: list[_HttpFailure] = []
        self._operation_failures: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> FakeGoogle:
        handler = _handler_for(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def origin(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v2"

    @property
    def token_uri(self) -> str:
        return f"{self.origin}/token"

    # --- failure injection ---------------------------------------------------------------------

    def fail_next_http(
        self,
        method: str,
        path_pattern: str,
        *,
        status: str = "UNAVAILABLE",
        message: str = "The service is currently unavailable.",
        reason: str | None = None,
    ) -> None:
        """The next request matching ``method`` and the path regex answers this error (once)."""
        with self._lock:
            self._failures.append(_HttpFailure(method, re.compile(path_pattern), status, message, reason))

    def lose_next_response(self, method: str, path_pattern: str) -> None:
        """The next matching request is carried out, but the connection closes before the answer."""
        with self._lock:
            self._failures.append(
                _HttpFailure(method, re.compile(path_pattern), "", "", None, lose_response=True)
            )

    def fail_next_operation(
        self, kind: str, *, code: int = 14, message: str = "Backend temporarily unavailable."
    ) -> None:
        """The next ``kind`` operation (create/patch/delete/undelete) completes with ``error`` (once)."""
        with self._lock:
            self._operation_failures.setdefault(kind, []).append({"code": code, "message": message})

    def revoke_tokens(self) -> None:
        with self._lock:
            self._valid_tokens.clear()

    def purge(self, key_id: str) -> None:
        """What Google does 30 days after a deletion."""
        with self._lock:
            assert self.keys[key_id].delete_time, "only deleted keys are purged"
            del self.keys[key_id]

    def delete_now(self, key_id: str) -> None:
        """An operator deleting the key in the console."""
        with self._lock:
            self.keys[key_id].delete_time = _now()

    # --- views for assertions -------------------------------------------------------------------

    def visible_keys(self) -> dict[str, FakeKey]:
        with self._lock:
            self._settle()
            return {key_id: key for key_id, key in self.keys.items() if key.visible}

    def calls_to(self, method: str, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._lock:
            return sum(1 for m, path in self.calls if m == method and regex.search(path))

    # --- request handling -----------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any] | None:
        """``(status, json)`` to answer, or ``None`` to drop the connection without an answer."""
        parts = urlsplit(target)
        path, query = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            self.calls.append((method, path))
            self._settle()
            lose = False
            for failure in self._failures:
                if failure.method == method and failure.path.search(path):
                    self._failures.remove(failure)
                    if not failure.lose_response:
                        error = GoogleApiError(failure.status, failure.message, failure.reason)
                        return _STATUS_HTTP[failure.status], error.body()
                    lose = True
                    break
            try:
                if path == "/token" and method == "POST":
                    answer: tuple[int, Any] = self._token(body)
                else:
                    self._authenticate(headers)
                    answer = (200, self._route(method, path, query, body))
            except GoogleApiError as error:
                answer = (_STATUS_HTTP[error.status], error.body())
            return None if lose else answer

    def _token(self, body: bytes) -> tuple[int, Any]:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != JWT_BEARER_GRANT or "assertion" not in form:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}
        if self.refuse_grants:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        try:
            claims = jwt.decode(
                form["assertion"], certs=self.service_account.public_key_pem, audience=GOOGLE_TOKEN_AUDIENCE
            )
        except ValueError:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if claims.get("iss") != self.service_account.email:
            return 400, {"error": "invalid_grant", "error_description": "Invalid issuer."}
        if CLOUD_PLATFORM_SCOPE not in str(claims.get("scope", "")).split():
            return 400, {"error": "invalid_scope", "error_description": "Missing scope."}
        token = f"ya29.fake-{secrets.token_urlsafe(24)}"
        self.grants.append(claims)
        self.issued_tokens.append(token)
        self._valid_tokens[token] = time.monotonic() + self.token_lifetime_s
        return 200, {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}

    def _authenticate(self, headers: dict[str, str]) -> None:
        value = headers.get("authorization", "")
        token = value[len("Bearer ") :] if value.startswith("Bearer ") else ""
        if self._valid_tokens.get(token, 0.0) <= time.monotonic():
            raise GoogleApiError("UNAUTHENTICATED", "Request had invalid authentication credentials.")

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> dict[str, Any]:
        if match := re.fullmatch(r"/v2/(operations/[^/]+)", path):
            if method != "GET":
                raise GoogleApiError("INVALID_ARGUMENT", "Unsupported method.")
            return self._poll(match.group(1))
        match = re.fullmatch(
            r"/v2/projects/([^/]+)/locations/([^/]+)/keys(?:/([^/:]+)(/keyString|:undelete)?)?", path
        )
        if not match:
            raise GoogleApiError("NOT_FOUND", f"Unknown path {path}.")
        project, location, key_id, suffix = match.groups()
        if project not in (self.project_id, PROJECT_NUMBER):
            raise GoogleApiError("PERMISSION_DENIED", f"Permission denied on resource project {project}.")
        if location != "global":
            raise GoogleApiError("INVALID_ARGUMENT", "Key is a global resource; location must be global.")
        payload = json.loads(body) if body else {}
        if key_id is None and method == "POST":
            return self._create(query.get("keyId", ""), payload)
        if key_id is None:
            raise GoogleApiError("INVALID_ARGUMENT", "Unsupported method.")
        key = self._key(key_id)
        if suffix == "/keyString" and method == "GET":
            if key.delete_time:
                raise GoogleApiError("FAILED_PRECONDITION", "The key is deleted.")
            return {"keyString": key.key_string}
        if suffix == ":undelete" and method == "POST":
            if not key.delete_time:
                raise GoogleApiError("FAILED_PRECONDITION", "The key is not deleted.")
            return self._start("undelete", key_id, {})
        if suffix is None and method == "GET":
            if key.delete_time and self.hide_deleted_keys:
                raise GoogleApiError("NOT_FOUND", f"Key {key_id} not found.")
            return key.resource()
        if suffix is None and method == "PATCH":
            if key.delete_time:
                raise GoogleApiError("FAILED_PRECONDITION", "The key is deleted.")
            mask = [name for name in query.get("updateMask", "").split(",") if name]
            change = {name: payload.get(name) for name in mask or payload}
            if "restrictions" in change:
                _check_restrictions(change["restrictions"] or {})
            return self._start("patch", key_id, change)
        if suffix is None and method == "DELETE":
            if key.delete_time:
                raise GoogleApiError("FAILED_PRECONDITION", "The key is already deleted.")
            return self._start("delete", key_id, {})
        raise GoogleApiError("INVALID_ARGUMENT", "Unsupported method.")

    def _key(self, key_id: str) -> FakeKey:
        key = self.keys.get(key_id)
        if key is None or not key.visible:
            raise GoogleApiError(
                "NOT_FOUND", f"Key projects/{PROJECT_NUMBER}/locations/global/keys/{key_id} not found."
            )
        return key

    def _create(self, key_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        if not _KEY_ID.fullmatch(key_id):
            raise GoogleApiError("INVALID_ARGUMENT", "keyId must match [a-z]([a-z0-9-]{0,61}[a-z0-9])?.")
        try:
            uuid.UUID(key_id)
        except ValueError:
            pass
        else:
            raise GoogleApiError("INVALID_ARGUMENT", "keyId must not be a UUID-like string.")
        if key_id in self.keys:
            raise GoogleApiError("ALREADY_EXISTS", f"Key with id {key_id} already exists.")
        if len(self.keys) >= self.max_keys:
            raise GoogleApiError("RESOURCE_EXHAUSTED", "Quota exceeded for keys per project.")
        unknown = set(payload) - {"displayName", "restrictions", "annotations", "serviceAccountEmail"}
        if unknown:
            raise GoogleApiError("INVALID_ARGUMENT", f"Cannot set {sorted(unknown)} at creation.")
        if len(payload.get("displayName", "")) > 63:
            raise GoogleApiError("INVALID_ARGUMENT", "displayName is longer than 63 characters.")
        _check_restrictions(payload.get("restrictions") or {})
        bound = payload.get("serviceAccountEmail")
        self.keys[key_id] = FakeKey(
            key_id=key_id,
            uid=str(uuid.uuid4()),
            display_name=payload.get("displayName", ""),
            key_string=("AQ.Ab" if bound else "AIzaSy") + secrets.token_urlsafe(25)[:33],
            annotations=dict(payload.get("annotations") or {}),
            restrictions=payload.get("restrictions") or {},
            service_account_email=bound,
        )
        return self._start("create", key_id, {})

    def _start(self, kind: str, key_id: str, change: dict[str, Any]) -> dict[str, Any]:
        name = f"operations/akmf.p7-{secrets.token_hex(10)}"
        failures = self._operation_failures.get(kind) or []
        operation = FakeOperation(
            name=name,
            kind=kind,
            key_id=key_id,
            started=time.monotonic(),
            polls_until_done=self.polls_until_done,
            change=change,
            error=failures.pop(0) if failures else None,
        )
        self.operations[name] = operation
        return operation.resource(self.keys)

    def _poll(self, name: str) -> dict[str, Any]:
        operation = self.operations.get(name)
        if operation is None:
            raise GoogleApiError("NOT_FOUND", f"Operation {name} not found.")
        if not operation.done:
            operation.polls += 1
            if operation.polls >= operation.polls_until_done:
                self._complete(operation)
        return operation.resource(self.keys)

    def _settle(self) -> None:
        """Operations finish by themselves after ``settle_s``, polled or not."""
        now = time.monotonic()
        for operation in self.operations.values():
            if not operation.done and now - operation.started >= self.settle_s:
                self._complete(operation)

    def _complete(self, operation: FakeOperation) -> None:
        operation.done = True
        key = self.keys.get(operation.key_id)
        if operation.error is not None:
            if operation.kind == "create" and key is not None and not key.visible:
                del self.keys[operation.key_id]  # the failed creation frees the id
            return
        if key is None:
            return
        if operation.kind == "create":
            key.visible = True
        elif operation.kind == "patch":
            for name, value in operation.change.items():
                attribute = {"displayName": "display_name"}.get(name, name)
                setattr(key, attribute, value if value is not None else {})
        elif operation.kind == "delete":
            key.delete_time = _now()
        elif operation.kind == "undelete":
            key.delete_time = None
        key.update_time = _now()
        key.etag = f'W/"{secrets.token_hex(8)}"'


def _check_restrictions(restrictions: dict[str, Any]) -> None:
    allowed = {
        "apiTargets",
        "browserKeyRestrictions",
        "serverKeyRestrictions",
        "androidKeyRestrictions",
        "iosKeyRestrictions",
    }
    if set(restrictions) - allowed:
        raise GoogleApiError(
            "INVALID_ARGUMENT", f"Unknown restrictions {sorted(set(restrictions) - allowed)}."
        )
    for target in restrictions.get("apiTargets") or []:
        if not re.fullmatch(r"[a-z0-9.-]+\.googleapis\.com", str(target.get("service", ""))):
            raise GoogleApiError("INVALID_ARGUMENT", "apiTargets[].service must be a service name.")
    for address in (restrictions.get("serverKeyRestrictions") or {}).get("allowedIps") or []:
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            raise GoogleApiError("INVALID_ARGUMENT", f"Invalid IP address {address}.") from None


def _handler_for(fake: FakeGoogle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            answer = fake.handle(self.command, self.path, headers, body)
            if answer is None:
                self.close_connection = True
                return
            status, payload = answer
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_PATCH(self) -> None:
            self._serve()

        def do_DELETE(self) -> None:
            self._serve()

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def fake_google(service_account: FakeServiceAccount, **options: Any) -> Iterator[FakeGoogle]:
    with FakeGoogle(service_account, **options) as google:
        yield google
