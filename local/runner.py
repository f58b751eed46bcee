"""Docker-free local API: every ``HttpApi`` route of ``template.yaml``, served in-process.

``python -m local.runner [--host 127.0.0.1] [--port 3000] [--no-seed]``

Postgres is ``DATABASE_URL`` when set, else a throwaway cluster (stopped and
removed on Ctrl-C or SIGTERM); migrations are applied and demo data seeded.
AWS calls go to moto in-process. Each request becomes a real payload 2.0 event
for the real handler; what API Gateway itself answers (unknown route, body
over 10 MB, a handler that raises) is answered the way API Gateway does.

DEV ONLY, never in ``template.yaml``: an in-process chain (eth-tester with test
USDC/USDT) runs alongside, with ``POST /dev/faucet`` and ``POST /dev/mine``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TextIO

import boto3
import psycopg
from moto import mock_aws
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from web3 import Web3

from billing.adapters.chain.hd import SeedDepositKeys
from billing.adapters.postgres.connection import forget_connection
from billing.adapters.postgres.migrate import apply_migrations
from billing.api.problems import problem_body
from billing.api.provisioning_wiring import provisioning_worker, resource_handoff
from billing.domain.chains import Chain, chain_registry
from billing.domain.deposits import nano_to_units, units_to_nano
from billing.domain.errors import InvalidAmount
from billing.domain.money import parse_usd
from billing.provisioning_settings import get_provisioning_settings
from billing.settings import get_api_settings, get_checkout_settings, get_database_settings
from local.chain import TEST_MNEMONIC, serving_devchain
from local.chain.devchain import DEV_CHAIN_SLUG, DevChain, dev_chain_registry_entry
from local.events import HttpRequest, HttpResponse, build_event, http_response, match_route
from local.handlers import LocalLambdaContext, load_handler
from local.postgres import scratch_database, throwaway_cluster
from local.seed import DEMO_FILE, DemoSeed, seed_demo, write_demo_file
from local.template import DEFAULT_TEMPLATE_PATH, LambdaFunction, TemplateError, http_routes, load_template

#: API Gateway's payload limit for HTTP APIs.
MAX_API_PAYLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_WORKERS = 8


def gateway_answer(status: int, message: str) -> HttpResponse:
    """A response API Gateway itself gives (no function involved), body and all."""
    body = json.dumps({"message": message}, separators=(",", ":")).encode()
    return HttpResponse(status, [("Content-Type", "application/json")], body)


# ------------------------------------------------------- dev-only chain routes


class FaucetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: Literal["USDC", "USDT"]
    to: str
    amount: str  # USD, a decimal string

    @field_validator("to")
    @classmethod
    def _address(cls, value: str) -> str:
        # eth-utils 6's is_address no longer checks the EIP-55 checksum of mixed-case input.
        digits = value.removeprefix("0x")
        mixed_case = digits not in (digits.lower(), digits.upper())
        if not re.fullmatch(r"0x[0-9a-fA-F]{40}", value) or (
            mixed_case and not Web3.is_checksum_address(value)
        ):
            raise ValueError("not an address (mixed case must be a valid EIP-55 checksum)")
        return Web3.to_checksum_address(value)


class MineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    blocks: int = Field(ge=1, le=100)


def _json_answer(status: int, document: dict[str, Any]) -> HttpResponse:
    return HttpResponse(status, [("Content-Type", "application/json")], json.dumps(document).encode())


def _bad_dev_request(detail: str) -> HttpResponse:
    body = problem_body(HTTPStatus.BAD_REQUEST, "Invalid request", detail).encode()
    return HttpResponse(400, [("Content-Type", "application/problem+json")], body)


def _validation_detail(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in issue['loc']) or 'body'}: {issue['msg']}"
        for issue in error.errors()
    )


def dev_faucet(devchain: DevChain, body: bytes) -> HttpResponse:
    """Mint test tokens worth ``amount`` USD to ``to``, in a newly mined block."""
    try:
        request = FaucetRequest.model_validate_json(body or b"{}")
        amount_nano = parse_usd(request.amount, allow_zero=False)
    except ValidationError as error:
        return _bad_dev_request(_validation_detail(error))
    except InvalidAmount as error:
        return _bad_dev_request(f"amount: {error.detail}")
    token = Chain.model_validate(dev_chain_registry_entry(devchain)).tokens[request.token]
    amount_units = nano_to_units(amount_nano, token.decimals)
    if units_to_nano(amount_units, token.decimals) != amount_nano:
        return _bad_dev_request(f"{request.token} has {token.decimals} decimals; {request.amount} needs more")
    tx_hash = devchain.mint(token.address, request.to, amount_units)
    return _json_answer(200, {"tx_hash": tx_hash, "block_number": devchain.block_of(tx_hash)})


def dev_mine(devchain: DevChain, body: bytes) -> HttpResponse:
    """Mine 1 to 100 empty blocks (confirmations for pending deposits)."""
    try:
        request = MineRequest.model_validate_json(body or b"{}")
    except ValidationError as error:
        return _bad_dev_request(_validation_detail(error))
    return _json_answer(200, {"block_number": devchain.mine(request.blocks)})


#: Served by the runner itself, before the template's routes; absent from template.yaml on purpose.
DEV_ROUTES = {("POST", "/dev/faucet"): dev_faucet, ("POST", "/dev/mine"): dev_mine}


def handler_environment(
    functions: Iterable[LambdaFunction],
    *,
    database_url: str,
    public_base_url: str,
    environ: Mapping[str, str],
) -> dict[str, str]:
    """What the handlers see, lowest precedence first: the template's plain strings,
    local defaults, the caller's environment, then what the runner must control.
    """
    from_template: dict[str, str] = {}
    for function in functions:
        for name, value in function.environment.items():
            if from_template.setdefault(name, value) != value:
                raise TemplateError(f"{name} differs between functions; one process cannot give both values")
    merged = {
        **from_template,
        "POWERTOOLS_SERVICE_NAME": from_template.get("POWERTOOLS_SERVICE_NAME", "vendor-billing"),
        "PUBLIC_BASE_URL": public_base_url,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    merged.update({name: environ[name] for name in merged if name in environ})
    return {
        **merged,
        "DATABASE_URL": database_url,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
        # moto answers every AWS call; fake credentials make sure none reaches a real account.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
    }


def checkout_environment(
    devchain: DevChain, rpc_url: str, registry_dir: Path, *, moto_kms: bool
) -> dict[str, str]:
    """Let the checkout handlers use the dev chain through the production code path (HTTP JSON-RPC).

    The dev chain joins the registry from a file (dev chains only), deposit addresses come from the
    well-known test mnemonic's xpub, and with moto a KMS key is created for the handlers.
    """
    registry_file = registry_dir / "devchain.json"
    registry_file.write_text(json.dumps({"chains": [dev_chain_registry_entry(devchain)]}))
    environment = {
        "EXTRA_CHAINS_FILE": str(registry_file),
        "RPC_URLS_" + DEV_CHAIN_SLUG.upper(): rpc_url,
        "ALLOW_DEV_CHAINS": "true",
        "DEPOSIT_XPUB": SeedDepositKeys(TEST_MNEMONIC).account_xpub(),
    }
    if moto_kms:
        kms_key = boto3.client("kms", region_name="us-east-1").create_key(Description="local runner")
        environment["KMS_KEY_ID"] = kms_key["KeyMetadata"]["KeyId"]
    return environment


def _forget_billing_state() -> None:
    """Settings are cached per container; a new environment needs a cold start."""
    get_database_settings.cache_clear()
    get_api_settings.cache_clear()
    get_checkout_settings.cache_clear()
    get_provisioning_settings.cache_clear()
    provisioning_worker.cache_clear()
    resource_handoff.cache_clear()
    chain_registry.cache_clear()
    forget_connection()


def provisioning_environment() -> dict[str, str]:
    """Provisioning against moto: buckets ``oxb-local-…``, users under ``/officex-billing/local/``.

    The bucket policy's TLS-only statement is off: moto applies a policy's Deny statements to
    every request regardless of their conditions (docs/provisioning.md).
    """
    return {
        "PROVISIONED_BUCKET_PREFIX": "oxb-local",
        "PROVISIONED_IAM_PATH": "/officex-billing/local/",
        "PROVISIONED_RESOURCE_TAGS": "service=vendor-billing,stage=local",
        "PROVISIONED_BUCKET_REQUIRE_TLS": "false",
    }


@contextlib.contextmanager
def handler_process_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` (handlers read it) and restore it afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    _forget_billing_state()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _forget_billing_state()


class _PooledHTTPServer(ThreadingHTTPServer):
    """Requests run on a fixed pool of threads. Each keeps its database connection
    across requests (billing keeps one per thread), as a warm Lambda container does.
    """

    def __init__(self, address: tuple[str, int], local_server: LocalServer, workers: int) -> None:
        super().__init__(address, _RequestHandler)
        self.local_server = local_server
        self.workers = workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="local-lambda")

    def process_request(self, request: Any, client_address: Any) -> None:
        self.pool.submit(self.process_request_thread, request, client_address)

    def close_worker_connections(self) -> None:
        """Run ``forget_connection`` once on every worker thread (a barrier keeps them apart)."""
        barrier = threading.Barrier(self.workers)

        def close() -> None:
            forget_connection()
            barrier.wait(timeout=10)

        for future in [self.pool.submit(close) for _ in range(self.workers)]:
            with contextlib.suppress(threading.BrokenBarrierError):
                future.result()


def _read_chunked(stream: BufferedIOBase, limit: int) -> bytes | None:
    """A chunked request body, or ``None`` once it exceeds ``limit``."""
    body = bytearray()
    while True:
        size = int(stream.readline(1024).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline(65536).strip():
                pass  # trailers
            return bytes(body)
        if len(body) + size > limit:
            return None
        body += stream.read(size)
        stream.readline(8)


class _RequestHandler(BaseHTTPRequestHandler):
    def version_string(self) -> str:
        return "local-apigw"

    def _serve(self) -> None:
        started = time.perf_counter()
        assert isinstance(self.server, _PooledHTTPServer)
        body = self._read_body()
        if body is None:
            response = gateway_answer(413, "Request Entity Too Large")
            self.close_connection = True
        else:
            raw_path, _, raw_query = self.path.partition("?")
            request = HttpRequest(
                method=self.command,
                raw_path=raw_path,
                raw_query_string=raw_query,
                headers=list(self.headers.items()),
                body=body,
                source_ip=self.client_address[0],
                protocol=self.request_version,
            )
            response = self.server.local_server.dispatch(request)
        self._write(response)
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.server.local_server.log_request_line(
            self.command, self.path.partition("?")[0], response.status, elapsed_ms
        )

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _read_chunked(self.rfile, MAX_API_PAYLOAD_BYTES)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_API_PAYLOAD_BYTES:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _write(self, response: HttpResponse) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: :meth:`LocalServer.log_request_line` writes one line per request."""

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve  # noqa: N815

    def __getattr__(self, name: str) -> Any:
        """Any other method (TRACE, QUERY, …) matches no route: the gateway's 404, not http.server's 501."""
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)


class LocalServer:
    """The local API on a background thread; ``port=0`` picks a free port.

    ``with LocalServer(template_path, database_url) as server:`` then send
    requests to ``server.base_url``; the caller migrates and seeds the database.
    ``server.devchain`` is the dev chain (test accounts pay from it); while the
    server runs it is also ``local.chain.current_devchain()`` and is served over
    JSON-RPC at ``server.devchain_rpc_url``.
    """

    def __init__(
        self,
        template_path: Path,
        database_url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        workers: int = DEFAULT_WORKERS,
        aws_mock: bool = True,
        log: TextIO | None = None,
        devchain: DevChain | None = None,
        provision_every_s: float | None = None,
    ) -> None:
        #: Run the provisioner (as its schedule would) this often, against moto; None: never.
        self._provision_every_s = provision_every_s if aws_mock else None
        self.template = load_template(template_path)
        self.routes = http_routes(self.template)
        self._functions = {
            function.logical_id: function for function in self.template.functions if function.routes
        }
        # Powertools resolvers keep the current event on the instance, so each
        # function serves one request at a time, like one Lambda container.
        self._function_locks = {logical_id: threading.Lock() for logical_id in self._functions}
        self._database_url = database_url
        self._address = (host, port)
        self._workers = workers
        self._aws_mock = aws_mock
        self._log = log or sys.stderr
        self._stack = contextlib.ExitStack()
        self.base_url = ""
        self.devchain = devchain or DevChain()
        self.devchain_rpc_url = ""

    def start(self) -> str:
        """Bind, set the handlers' environment, serve; returns the base URL."""
        with contextlib.ExitStack() as stack:
            httpd = _PooledHTTPServer(self._address, self, self._workers)
            stack.callback(httpd.server_close)
            host, port = httpd.server_address[:2]
            base_url = f"http://{host!s}:{port}"
            environment = handler_environment(
                self._functions.values(),
                database_url=self._database_url,
                public_base_url=base_url,
                environ=os.environ,
            )
            stack.enter_context(handler_process_environment(environment))
            if self._aws_mock:
                stack.enter_context(mock_aws())
            if self.devchain.tokens is None:
                self.devchain.deploy_tokens()
            stack.enter_context(serving_devchain(self.devchain))
            devchain_rpc_url = stack.enter_context(self.devchain.serve_json_rpc(str(host)))
            registry_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="devchain-")))
            stack.enter_context(
                handler_process_environment(
                    checkout_environment(
                        self.devchain, devchain_rpc_url, registry_dir, moto_kms=self._aws_mock
                    )
                )
            )
            if self._provision_every_s:
                stack.enter_context(handler_process_environment(provisioning_environment()))
                stop = threading.Event()
                provisioner = threading.Thread(
                    target=self._provision_periodically,
                    args=(self._provision_every_s, stop),
                    name="local-provisioner",
                    daemon=True,
                )
                provisioner.start()
                stack.callback(provisioner.join)
                stack.callback(stop.set)
            thread = threading.Thread(target=httpd.serve_forever, name="local-apigw", daemon=True)
            thread.start()
            stack.callback(self._stop_serving, httpd, thread)
            self._stack = stack.pop_all()
        self.base_url = base_url
        self.devchain_rpc_url = devchain_rpc_url
        return base_url

    def _provision_periodically(self, every_s: float, stop: threading.Event) -> None:
        """The provisioner's schedule, locally: resource.* rows run against moto every few seconds."""
        while not stop.wait(every_s):
            try:
                outcome = provisioning_worker().run(time_left=lambda: timedelta(minutes=5))
            except Exception:
                print(f"provisioner failed:\n{traceback.format_exc()}", file=self._log, flush=True)
                continue
            if outcome.done or outcome.retried or outcome.postponed:
                print(f"provisioner: {outcome.as_metrics()}", file=self._log, flush=True)
        forget_connection()  # this thread's connection

    @staticmethod
    def _stop_serving(httpd: _PooledHTTPServer, thread: threading.Thread) -> None:
        httpd.shutdown()
        thread.join()
        httpd.close_worker_connections()
        httpd.pool.shutdown(wait=True)

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def dispatch(self, request: HttpRequest) -> HttpResponse:
        """What API Gateway and the route's function answer to ``request``."""
        request_id = str(uuid.uuid4())
        dev_route = DEV_ROUTES.get((request.method, request.raw_path))
        if dev_route is not None:
            response = dev_route(self.devchain, request.body)
        elif (match := match_route(self.routes, request.method, request.raw_path)) is None:
            response = gateway_answer(404, "Not Found")
        else:
            response = self._invoke(
                match.route.function_id, build_event(request, match, request_id=request_id)
            )
        response.headers.append(("Apigw-Requestid", request_id))
        return response

    def _invoke(self, function_id: str, event: dict[str, Any]) -> HttpResponse:
        function = self._functions[function_id]
        try:
            with self._function_locks[function_id]:
                result = load_handler(function)(event, LocalLambdaContext.for_function(function))
            return http_response(result)
        except Exception:
            print(f"{function_id} failed:\n{traceback.format_exc()}", file=self._log, flush=True)
            return gateway_answer(500, "Internal Server Error")

    def log_request_line(self, method: str, path: str, status: int, elapsed_ms: float) -> None:
        print(f"{method} {path} {status} {elapsed_ms:.1f}ms", file=self._log, flush=True)


# ---------------------------------------------------------------------- CLI


@contextlib.contextmanager
def _throwaway_database() -> Iterator[str]:
    with throwaway_cluster() as admin_url, scratch_database(admin_url, prefix="billing_local") as url:
        yield url


def _describe(database_url: str) -> str:
    """Host, port and database name only: the URL may hold a password."""
    parts = conninfo_to_dict(database_url)
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _banner(base_url: str, database: str, seed: DemoSeed | None, devchain: DevChain, rpc_url: str) -> str:
    assert devchain.tokens is not None
    lines = [
        f"Local vendor billing API on {base_url}  (Postgres {database}; AWS: moto in-process)",
        "",
        f"  curl -s {base_url}/health",
        f"  curl -s {base_url}/openapi.json",
        "",
        f"DEV ONLY (not in template.yaml): in-process chain {devchain.chain_id}, JSON-RPC {rpc_url}",
        f"  USDC {devchain.tokens.usdc}   USDT {devchain.tokens.usdt}",
        f"  curl -s -X POST {base_url}/dev/faucet -d " + """'{"token":"USDC","to":"0x…","amount":"25.5"}'""",
        f"  curl -s -X POST {base_url}/dev/mine -d " + """'{"blocks":3}'""",
    ]
    if seed is not None:
        lines += [
            f"  curl -s -H 'Authorization: Bearer {seed.customer_key}' \\\n"
            f"       {base_url}/purchase/{seed.purchase_id}",
            "",
            f"Demo keys (customer and vendor) are in {DEMO_FILE}.",
        ]
    lines.append("Ctrl-C stops the server.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.runner", description="Serve the API locally, no Docker."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--no-seed", action="store_true", help="do not seed the demo offer and purchase")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE_PATH)
    parser.add_argument(
        "--provision-every",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="run the provisioner (S3 buckets on moto) this often; 0 turns it off",
    )
    arguments = parser.parse_args(argv)
    # Both unwind the stack below (stopping the throwaway cluster), also when
    # started in the background, where SIGINT is inherited as ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with contextlib.ExitStack() as stack:
            database_url = os.environ.get("DATABASE_URL") or stack.enter_context(_throwaway_database())
            with psycopg.connect(database_url, autocommit=True) as connection:
                apply_migrations(connection)
            server = stack.enter_context(
                LocalServer(
                    arguments.template,
                    database_url,
                    host=arguments.host,
                    port=arguments.port,
                    provision_every_s=arguments.provision_every or None,
                )
            )
            # After the server started: the dev chain is in the registry, so offers can accept it.
            with psycopg.connect(database_url, autocommit=True) as connection:
                seed = None if arguments.no_seed else seed_demo(connection)
            if seed is not None:
                write_demo_file(seed, server.base_url)
            banner = _banner(
                server.base_url, _describe(database_url), seed, server.devchain, server.devchain_rpc_url
            )
            print(banner, flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
