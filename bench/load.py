"""The whole customer journey over HTTP, many clients at once, against the local runner (issue #8).

Each client is a thread with its own HTTP connection (``http.client``; reused
whenever the server keeps it open) and runs the journey in a loop until
``--seconds`` have passed (a journey that has started is finished):

1. ``GET /appstore/suggest`` → ``GET /appstore/list/{id}`` → ``GET /offer/gemini-api-key``;
2. ``POST …/checkout/wallet/create`` (dev chain, USDC), ``POST /dev/faucet`` (the offer's
   minimum), ``POST /dev/mine`` (the confirmations), ``POST …/verify`` (must be ``paid``),
   ``POST …/checkout/finalize`` (must be 201: a 402 here is an error);
3. a meter-usage storm with the vendor key: ``--singles`` single events, ``--batches``
   batches of ``--batch-size`` events, one authorize + capture, and duplicates on
   purpose (a few single events and one whole batch sent again: 200 with
   ``replayed: true``, nothing charged twice);
4. a top-up: ``/dev/faucet`` + ``/dev/mine`` again, ``POST /purchase/{id}/verify-topup``;
5. ``GET /purchase/{id}`` and ``POST …/historical-billing`` in JSON (hourly) and CSV (daily)
   with the customer key: balance, deposits and usage must be what the client paid and charged.

Every route has one expected status (201 for wallet create, finalize and authorize; 200 for the
rest); any other answer, a transport error, or a 2xx whose body fails the journey's checks is an
error of that route. Per route the bench prints count, requests/s, p50, p99 and errors.

At the end it checks, directly in Postgres, for every purchase: ``balance == Σ
ledger_entries.amount_nano`` (and the newest entry's running balance), ``held == Σ
held_delta_nano == Σ active holds``, no idempotency key twice, and for every purchase a
client finished: the balance the client expects. Exit 1 when a check fails or the error rate
is above ``--max-error-rate``.

By default the server is a ``LocalServer`` in a child process (its own interpreter, so the
clients do not share its GIL) on a scratch database, migrated and seeded with the demo
catalog. ``--base-url`` drives a running ``make dev`` instead; then ``--database-url`` (the
runner's database) is needed for the checks.

Run from the repository root::

    .venv/bin/python bench/load.py --seconds 60 --clients 8     # or: make bench-load
    .venv/bin/python bench/load.py --quick                       # smoke run, ~15 s
    .venv/bin/python bench/load.py --base-url http://127.0.0.1:3000 \\
        --database-url postgresql://postgres@127.0.0.1:PORT/DB   # against make dev
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import io
import json
import math
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
for _path in (_ROOT, _ROOT / "layers" / "shared"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import psycopg  # noqa: E402

from billing.adapters.postgres.migrate import apply_migrations  # noqa: E402
from local.postgres import admin_database_url, scratch_database  # noqa: E402
from local.runner import LocalServer  # noqa: E402
from local.seed import import_default_catalog  # noqa: E402
from local.template import DEFAULT_TEMPLATE_PATH  # noqa: E402

OFFER_ID = "gemini-api-key"
TOPUP_USD = Decimal("5")
EVENT_COST = Decimal("0.001000000")  # per usage event: 20 USD lasts far longer than any run
CAPTURE_COST = Decimal("0.002500000")
HOLD_AMOUNT = "0.010000000"
NANO = Decimal("0.000000001")


def usd(value: Decimal) -> str:
    return f"{value.quantize(NANO):f}"


# --------------------------------------------------------------------------- server side


def _serve_in_child(database_url: str, workers: int, log_path: str, pipe: Pipe) -> None:
    """The local runner's server in this (child) process, until the parent says stop."""
    # The handlers print too (Powertools flushes EMF metrics every 100 even when disabled): into the log.
    with (
        open(log_path, "a", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        with psycopg.connect(database_url, autocommit=True) as connection:
            apply_migrations(connection)
        with LocalServer(DEFAULT_TEMPLATE_PATH, database_url, workers=workers, log=log) as server:
            # After the start, as the runner does: the dev chain must be in the registry.
            with psycopg.connect(database_url, autocommit=True) as connection:
                import_default_catalog(connection)
            pipe.send(server.base_url)
            pipe.recv()  # stop


@contextlib.contextmanager
def child_server(database_url: str, workers: int, log_path: str) -> Iterator[str]:
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    child = context.Process(
        target=_serve_in_child, args=(database_url, workers, log_path, child_end), name="load-server"
    )
    child.start()
    try:
        if not parent_end.poll(120):
            raise RuntimeError(f"the server did not start within 120 s (log: {log_path})")
        yield str(parent_end.recv())
    finally:
        with contextlib.suppress(BrokenPipeError, OSError):
            parent_end.send("stop")
        child.join(30)
        if child.is_alive():
            child.terminate()
            child.join()


# --------------------------------------------------------------------------- client side


class JourneyFailed(Exception):
    """A step answered something else than expected; the rest of this journey is skipped."""


@dataclass
class RouteStats:
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    first_error: str | None = None


@dataclass
class ClientResult:
    routes: dict[str, RouteStats] = field(default_factory=dict)
    journeys: int = 0
    journeys_failed: int = 0
    #: purchase id → the balance (nano) the client expects after a complete journey
    expected_balance_nano: dict[str, int] = field(default_factory=dict)
    purchases: list[str] = field(default_factory=list)
    meter_events: int = 0
    replays: int = 0


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One simulated customer (and their vendor's AI server) on one HTTP connection."""

    def __init__(self, base_url: str, index: int, plan: Plan) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._connection = http.client.HTTPConnection(self._host, self._port, timeout=60)
        self.index = index
        self.plan = plan
        self.result = ClientResult()

    def close(self) -> None:
        self._connection.close()

    # ---------------------------------------------------------------- HTTP

    def call(
        self,
        route: str,
        method: str,
        path: str,
        *,
        expect: int,
        body: Any = None,
        key: str | None = None,
    ) -> Answer:
        """One request, timed and counted under ``route``; an unexpected status ends the journey."""
        headers = {"Accept": "*/*"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if key:
            headers["Authorization"] = f"Bearer {key}"
        stats = self.result.routes.setdefault(route, RouteStats())
        started = time.perf_counter_ns()
        try:
            self._connection.request(method, path, body=data, headers=headers)
            response = self._connection.getresponse()
            answer = Answer(response.status, dict(response.getheaders()), response.read())
        except (OSError, http.client.HTTPException) as error:
            self._connection.close()  # reconnects on the next request
            stats.latencies_ns.append(time.perf_counter_ns() - started)
            self._error(stats, f"{method} {path}: {type(error).__name__}: {error}")
            raise JourneyFailed(route) from error
        stats.latencies_ns.append(time.perf_counter_ns() - started)
        stats.statuses[answer.status] = stats.statuses.get(answer.status, 0) + 1
        if answer.status != expect:
            self._error(stats, f"{method} {path}: {answer.status} (expected {expect}): {answer.body[:300]!r}")
            raise JourneyFailed(route)
        return answer

    def check(self, route: str, condition: bool, message: str) -> None:
        """A 2xx whose content is wrong is an error of its route too."""
        if not condition:
            self._error(self.result.routes.setdefault(route, RouteStats()), message)
            raise JourneyFailed(route)

    @staticmethod
    def _error(stats: RouteStats, message: str) -> None:
        stats.errors += 1
        if stats.first_error is None:
            stats.first_error = message

    # ---------------------------------------------------------------- the journey

    def run_until(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self.result.journeys += 1
            try:
                self.journey()
            except JourneyFailed:
                self.result.journeys_failed += 1

    def journey(self) -> None:
        suggested = self.call(
            "GET /appstore/suggest",
            "GET",
            "/appstore/suggest?keyboard=de&profession=developer&country=DE",
            expect=200,
        ).json()
        lists = [entry["list_id"] for entry in suggested["lists"]]
        self.check("GET /appstore/suggest", "developer-cloud" in lists, f"suggest gave {lists}")
        listing = self.call(
            "GET /appstore/list/{list_id}", "GET", "/appstore/list/developer-cloud", expect=200
        ).json()
        offers = [offer["offer_id"] for offer in listing["offers"]]
        self.check("GET /appstore/list/{list_id}", OFFER_ID in offers, f"list gave {offers}")
        offer = self.call("GET /offer/{offer_id}", "GET", f"/offer/{OFFER_ID}", expect=200).json()
        minimum = Decimal(offer["min_deposit"])

        wallet = self.call(
            "POST /offer/{offer_id}/checkout/wallet/create",
            "POST",
            f"/offer/{OFFER_ID}/checkout/wallet/create",
            expect=201,
            body={"chain": "devchain", "token": "USDC"},
        ).json()
        self.pay(wallet["address"], minimum, int(wallet["confirmations_required"]))
        verify_route = "POST /offer/{offer_id}/checkout/wallet/{wallet_id}/verify"
        report = self.call(
            verify_route,
            "POST",
            f"/offer/{OFFER_ID}/checkout/wallet/{wallet['wallet_id']}/verify",
            expect=200,
        ).json()
        self.check(verify_route, report["status"] == "paid", f"verify after payment: {report}")
        journey_id = f"load-{self.index}-{uuid.uuid4().hex[:12]}"
        purchase = self.call(
            "POST /offer/{offer_id}/checkout/finalize",
            "POST",
            f"/offer/{OFFER_ID}/checkout/finalize",
            expect=201,
            body={
                "wallet_id": wallet["wallet_id"],
                "officex_purchase_id": journey_id,
                "customer_org_id": f"org-{self.index}",
                "customer_user_id": f"user-{self.index}",
            },
        ).json()
        purchase_id = purchase["purchase_id"]
        vendor_key = purchase["vendor_update_billing_api_key"]
        customer_key = purchase["customer_check_billing_api_key"]
        self.result.purchases.append(purchase_id)
        self.check(
            "POST /offer/{offer_id}/checkout/finalize",
            Decimal(purchase["balance"]) == minimum,
            f"finalize balance {purchase['balance']} != {minimum}",
        )

        charged = self.meter_storm(purchase_id, vendor_key)

        self.pay(wallet["address"], TOPUP_USD, int(wallet["confirmations_required"]))
        topup = self.call(
            "POST /purchase/{purchase_id}/verify-topup",
            "POST",
            f"/purchase/{purchase_id}/verify-topup",
            expect=200,
            body={},
            key=customer_key,
        ).json()
        balance = minimum + TOPUP_USD - charged
        self.check(
            "POST /purchase/{purchase_id}/verify-topup",
            (topup["credited_total"], topup["balance"]) == (usd(TOPUP_USD), usd(balance)),
            f"top-up: {topup}, expected credited {TOPUP_USD} and balance {balance}",
        )

        view = self.call(
            "GET /purchase/{purchase_id}", "GET", f"/purchase/{purchase_id}", expect=200, key=customer_key
        ).json()
        self.check(
            "GET /purchase/{purchase_id}",
            (view["balance"], view["held"]) == (usd(balance), usd(Decimal(0))),
            f"purchase view {view['balance']}/{view['held']}, expected {balance}/0",
        )
        self.billing_reports(purchase_id, customer_key, minimum + TOPUP_USD, charged, balance)
        self.result.expected_balance_nano[purchase_id] = int(balance / NANO)

    def pay(self, address: str, amount: Decimal, confirmations: int) -> None:
        self.call(
            "POST /dev/faucet",
            "POST",
            "/dev/faucet",
            expect=200,
            body={"token": "USDC", "to": address, "amount": str(amount)},
        )
        self.call("POST /dev/mine", "POST", "/dev/mine", expect=200, body={"blocks": confirmations})

    def meter_storm(self, purchase_id: str, vendor_key: str) -> Decimal:
        """Single and batched events, an authorize + capture, and duplicates; returns what was charged."""
        route = "POST /purchase/{purchase_id}/meter-usage"
        path = f"/purchase/{purchase_id}/meter-usage"
        charged = Decimal(0)

        def event(name: str) -> dict[str, Any]:
            return {
                "idempotency_key": name,
                "usage_amount": "1200",
                "unit": "tokens",
                "cost_incurred": usd(EVENT_COST),
            }

        singles = [event(f"single-{n}") for n in range(self.plan.singles)]
        for single in singles:
            answer = self.call(route, "POST", path, expect=200, body=single, key=vendor_key).json()
            self.check(route, not answer["events"][0]["replayed"], f"first send replayed: {answer}")
            charged += EVENT_COST
        batches = [
            {"events": [event(f"batch-{b}-{n}") for n in range(self.plan.batch_size)]}
            for b in range(self.plan.batches)
        ]
        for batch in batches:
            answer = self.call(route, "POST", path, expect=200, body=batch, key=vendor_key).json()
            self.check(
                route,
                len(answer["events"]) == self.plan.batch_size
                and not any(result["replayed"] for result in answer["events"])
                and answer["charged"] == usd(EVENT_COST * self.plan.batch_size),
                "batch: events missing or replayed on first send",
            )
            charged += EVENT_COST * self.plan.batch_size
        self.result.meter_events += len(singles) + self.plan.batches * self.plan.batch_size

        # Duplicates on purpose, as a retrying client sends them: replays, charged once.
        for duplicate in [*singles[:3], *batches[:1]]:
            answer = self.call(route, "POST", path, expect=200, body=duplicate, key=vendor_key).json()
            self.check(
                route,
                all(result["replayed"] and result["cost"] == usd(EVENT_COST) for result in answer["events"]),
                f"duplicate not replayed: {answer}",
            )
            self.result.replays += len(answer["events"])

        authorize_route = "POST /purchase/{purchase_id}/authorize"
        hold = self.call(
            authorize_route,
            "POST",
            f"/purchase/{purchase_id}/authorize",
            expect=201,
            body={"idempotency_key": "call-1", "amount": HOLD_AMOUNT},
            key=vendor_key,
        ).json()
        captured = self.call(
            route,
            "POST",
            path,
            expect=200,
            body={**event("call-1-usage"), "cost_incurred": usd(CAPTURE_COST), "hold_id": hold["hold_id"]},
            key=vendor_key,
        ).json()
        self.check(
            route,
            captured["events"][0]["hold_status"] == "captured" and captured["held"] == usd(Decimal(0)),
            f"capture: {captured}",
        )
        self.result.meter_events += 1
        return charged + CAPTURE_COST

    def billing_reports(
        self, purchase_id: str, customer_key: str, deposits: Decimal, charged: Decimal, balance: Decimal
    ) -> None:
        route = "POST /purchase/{purchase_id}/historical-billing"
        path = f"/purchase/{purchase_id}/historical-billing"
        report = self.call(
            route,
            "POST",
            path,
            expect=200,
            body={"interval": "hour", "group_by": "meter", "format": "json"},
            key=customer_key,
        ).json()
        totals = report["totals"]
        self.check(
            route,
            (totals["deposits"], totals["usage_cost"], totals["closing_balance"])
            == (usd(deposits), usd(charged), usd(balance)),
            f"json totals {totals}, expected deposits {deposits}, usage {charged}, closing {balance}",
        )
        answer = self.call(
            route, "POST", path, expect=200, body={"interval": "day", "format": "csv"}, key=customer_key
        )
        rows = [
            row for row in csv.DictReader(io.StringIO(answer.body.decode())) if row["row_type"] == "total"
        ]
        self.check(
            route,
            len(rows) == 1
            and (rows[0]["usage_cost"], rows[0]["closing_balance"]) == (usd(charged), usd(balance)),
            f"csv total rows {rows}",
        )


# --------------------------------------------------------------------------- checks in Postgres


def ledger_violations(connection: psycopg.Connection[Any], expected: dict[str, int]) -> list[str]:
    """Every purchase: balance and held against its ledger and holds, keys unique, the clients' balances."""
    problems: list[str] = []
    for row in connection.execute(
        """SELECT p.id, p.balance_nano, p.held_nano, s.amount_total, s.held_total, last.balance_after_nano,
                  last.held_after_nano, h.active_total
             FROM purchases p
             JOIN LATERAL (SELECT COALESCE(sum(amount_nano), 0) AS amount_total,
                                  COALESCE(sum(held_delta_nano), 0) AS held_total
                             FROM ledger_entries e WHERE e.purchase_id = p.id) s ON true
             LEFT JOIN LATERAL (SELECT balance_after_nano, held_after_nano FROM ledger_entries e
                                 WHERE e.purchase_id = p.id ORDER BY id DESC LIMIT 1) last ON true
             JOIN LATERAL (SELECT COALESCE(sum(amount_nano), 0) AS active_total
                             FROM holds WHERE holds.purchase_id = p.id AND status = 'active') h ON true
            WHERE p.balance_nano <> s.amount_total OR p.held_nano <> s.held_total
               OR p.held_nano <> h.active_total
               OR p.balance_nano <> COALESCE(last.balance_after_nano, 0)
               OR p.held_nano <> COALESCE(last.held_after_nano, 0)"""
    ).fetchall():
        problems.append(f"ledger/holds disagree with purchase {row[0]}: {row[1:]}")
    for row in connection.execute(
        """SELECT purchase_id, idempotency_key, count(*) FROM ledger_entries
            GROUP BY purchase_id, idempotency_key HAVING count(*) > 1 LIMIT 10"""
    ).fetchall():
        problems.append(f"idempotency key twice: {row}")
    balances = dict(
        connection.execute(
            "SELECT id::text, balance_nano FROM purchases WHERE id = ANY(%s::uuid[])", (list(expected),)
        ).fetchall()
    )
    for purchase_id, balance_nano in expected.items():
        if balances.get(purchase_id) != balance_nano:
            problems.append(f"purchase {purchase_id}: balance {balances.get(purchase_id)} != {balance_nano}")
    return problems


# --------------------------------------------------------------------------- report


def percentile_ms(sorted_ns: list[int], fraction: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_ns:
        return math.nan
    return sorted_ns[max(1, math.ceil(fraction * len(sorted_ns))) - 1] / 1e6


@dataclass(frozen=True)
class Plan:
    seconds: float
    clients: int
    singles: int
    batches: int
    batch_size: int
    max_error_rate: float


def merge(results: list[ClientResult]) -> dict[str, RouteStats]:
    merged: dict[str, RouteStats] = {}
    for result in results:
        for route, stats in result.routes.items():
            into = merged.setdefault(route, RouteStats())
            into.latencies_ns += stats.latencies_ns
            into.errors += stats.errors
            into.first_error = into.first_error or stats.first_error
            for status, count in stats.statuses.items():
                into.statuses[status] = into.statuses.get(status, 0) + count
    return merged


def route_table(merged: dict[str, RouteStats], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for route, stats in [*sorted(merged.items(), key=lambda item: -len(item[1].latencies_ns))]:
        latencies = sorted(stats.latencies_ns)
        rows.append(
            {
                "route": route,
                "count": len(latencies),
                "per_s": len(latencies) / seconds,
                "p50_ms": percentile_ms(latencies, 0.50),
                "p99_ms": percentile_ms(latencies, 0.99),
                "errors": stats.errors,
                "statuses": {str(status): count for status, count in sorted(stats.statuses.items())},
            }
        )
    every = sorted(latency for stats in merged.values() for latency in stats.latencies_ns)
    rows.append(
        {
            "route": "total",
            "count": len(every),
            "per_s": len(every) / seconds,
            "p50_ms": percentile_ms(every, 0.50),
            "p99_ms": percentile_ms(every, 0.99),
            "errors": sum(stats.errors for stats in merged.values()),
            "statuses": {},
        }
    )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(row["route"]) for row in rows)
    print(f"{'route':<{width}} {'count':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for row in rows:
        print(
            f"{row['route']:<{width}} {row['count']:>7} {row['per_s']:>8.1f} {row['p50_ms']:>8.1f}"
            f" {row['p99_ms']:>8.1f} {row['errors']:>6}"
        )


def drive(base_url: str, plan: Plan) -> tuple[list[ClientResult], float]:
    """One warm-up journey (cold starts; not counted), then every client for ``plan.seconds``."""
    warmup = Client(base_url, -1, plan)
    try:
        warmup.journey()
    except JourneyFailed:
        routes = merge([warmup.result])
        raise SystemExit(
            "warm-up journey failed: " + "; ".join(str(s.first_error) for s in routes.values() if s.errors)
        ) from None
    finally:
        warmup.close()
    clients = [Client(base_url, index, plan) for index in range(plan.clients)]
    started = time.monotonic()
    deadline = started + plan.seconds
    threads = [
        threading.Thread(target=client.run_until, args=(deadline,), name=f"load-client-{client.index}")
        for client in clients
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    for client in clients:
        client.close()
    return [warmup.result, *[client.result for client in clients]], elapsed


def run(plan: Plan, base_url: str, database_url: str, json_path: str | None = None) -> int:
    load_before = os.getloadavg()
    print(
        f"{plan.clients} clients for {plan.seconds:.0f} s against {base_url}; "
        f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
        f"on {os.cpu_count()} CPUs",
        flush=True,
    )
    results, elapsed = drive(base_url, plan)
    load_after = os.getloadavg()
    warmup, measured = results[0], results[1:]
    merged = merge(measured)
    rows = route_table(merged, elapsed)
    total = rows[-1]
    journeys = sum(result.journeys for result in measured)
    failed = sum(result.journeys_failed for result in measured)
    print(
        f"\n{elapsed:.1f} s, {journeys} journeys ({failed} failed), "
        f"{sum(r.meter_events for r in measured)} usage events charged, "
        f"{sum(r.replays for r in measured)} replayed on purpose; load average after: "
        f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}\n"
    )
    print_table(rows)
    for route, stats in merged.items():
        if stats.errors:
            print(f"  first error of {route}: {stats.first_error}")

    expected = {k: v for result in results for k, v in result.expected_balance_nano.items()}
    with psycopg.connect(database_url, autocommit=True) as connection:
        problems = ledger_violations(connection, expected)
        (purchases, entries) = connection.execute(
            "SELECT (SELECT count(*) FROM purchases), (SELECT count(*) FROM ledger_entries)"
        ).fetchone() or (0, 0)
    created = sum(len(result.purchases) for result in results)
    print(
        f"\nledger invariant over all {purchases} purchases ({created} created by this run, "
        f"{entries} entries): " + ("held" if not problems else f"{len(problems)} VIOLATIONS")
    )
    for problem in problems[:20]:
        print(f"  {problem}")
    error_rate = total["errors"] / total["count"] if total["count"] else 1.0
    print(f"error rate {error_rate:.4%} (limit {plan.max_error_rate:.4%})")
    if json_path:
        Path(json_path).write_text(
            json.dumps(
                {
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "plan": plan.__dict__,
                    "seconds": elapsed,
                    "journeys": journeys,
                    "journeys_failed": failed,
                    "load_before": load_before,
                    "load_after": load_after,
                    "routes": rows,
                    "violations": problems,
                    "warmup_journeys": warmup.journeys,
                },
                indent=2,
            )
        )
    if problems or error_rate > plan.max_error_rate or journeys == 0:
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--singles", type=int, default=10, help="single meter-usage events per journey")
    parser.add_argument("--batches", type=int, default=2, help="batched meter-usage requests per journey")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8, help="the child server's request threads")
    parser.add_argument(
        "--max-error-rate", type=float, default=0.001, help="exit 1 above this (0.001 = 0.1 %%)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 clients, 8 s")
    parser.add_argument("--base-url", help="a running server (make dev) instead of a child server")
    parser.add_argument(
        "--database-url",
        help="with --base-url: the server's database (for the checks); else the server to make a scratch "
        "database on (default: DATABASE_URL, a local server, or a throwaway cluster)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.seconds, arguments.clients = min(arguments.seconds, 8.0), min(arguments.clients, 4)
    plan = Plan(
        seconds=arguments.seconds,
        clients=arguments.clients,
        singles=arguments.singles,
        batches=arguments.batches,
        batch_size=arguments.batch_size,
        max_error_rate=arguments.max_error_rate,
    )
    if arguments.base_url:
        if not arguments.database_url:
            parser.error("--base-url needs --database-url (the runner's database, for the ledger checks)")
        return run(plan, arguments.base_url.rstrip("/"), arguments.database_url, arguments.json)

    with contextlib.ExitStack() as stack:
        admin_url = arguments.database_url or stack.enter_context(admin_database_url())
        database_url = stack.enter_context(scratch_database(admin_url, prefix="billing_load"))
        log_path = stack.enter_context(tempfile.NamedTemporaryFile(prefix="load-server-", suffix=".log")).name
        base_url = stack.enter_context(child_server(database_url, arguments.workers, log_path))
        status = run(plan, base_url, database_url, arguments.json)
        failures = [line for line in Path(log_path).read_text().splitlines() if " failed:" in line]
        if failures:
            print(f"server log ({log_path}): {len(failures)} handler failures, e.g. {failures[0]}")
        return status


if __name__ == "__main__":
    sys.exit(main())
