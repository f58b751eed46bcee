"""meter-usage throughput and latency through the real handler, and the minute sweep over 100,000 purchases.

Metering scenarios (issue #5), each driven through ``functions/meter_usage``'s
``lambda_handler`` in-process with API Gateway payload-2.0 events built by the
local runner's builder (``Authorization: Bearer vk_…``, JSON body,
``Content-Type: application/json``):

* **single-hot**: one event per request, every request on one purchase;
* **single-spread**: one event per request, a random purchase of ``--purchases``;
* **batch-hot** / **batch-spread**: the same with ``{"events": [...]}`` of 100 events;
* **single-crossing** (extra): one event per request over purchases funded with
  $1 at $0.05 an event, so every purchase crosses low, critical and
  termination within its first 18 events (status trigger, outbox rows); the
  rest are charged to suspended purchases (``allowed: false``);
* **store-single-hot** (reference, not a target): single-hot without the
  handler and without the service: ``PostgresUsageStore.charge_batch`` (the
  one metering statement, migration 0013) with a charge built in advance, on
  the worker's own connection: what the database side allows per purchase here;
* **reference-bare-hot** (reference, not a target): an autocommit
  ``UPDATE purchases SET balance_nano = balance_nano - x`` on one row from the
  same worker processes: the ceiling for anything that changes one hot row
  per request on this machine.

Each worker is a separate process with the handler loaded once and its own
database connection (``DATABASE_URL``), as a warm Lambda container; a request
runs to completion before the worker sends the next one. Every scenario runs
with each ``--workers`` count (default ``4,1``). Every answer must be a 200 with
as many events as were sent and none replayed; at the end ``balance == Σ
amount_nano`` (and the newest entry's running balance) must hold for every
purchase, and the number of usage ledger entries and ``usage_events`` rows
must equal the number of events the workers had answered. Anything else
exits 1: a benchmark that silently fails requests is worthless.

**sweep**: a separate scratch database with ``--sweep-purchases`` (100,000)
purchases bulk-inserted with ``generate_series``: 1 % with an expired hold,
1 % suspended with the grace period over, 1 % with a stale status (balance
lowered with the status trigger disabled), the rest active. Times
``PurchaseLifecycle(...).sweep(now)`` (the whole job the sweep function runs for
``events/sweep_holds_and_balances.json``), then again with nothing to do, and
checks what each run did.

Run from the repository root::

    .venv/bin/python bench/metering.py               # or: make bench-metering
    .venv/bin/python bench/metering.py --quick       # smoke run, a few seconds

Exit status: 0 done, 1 a request failed or a check did not hold, 2 with
``--enforce`` when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import multiprocessing
import os
import random
import statistics
import sys
import threading
import time
import traceback
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any
from uuid import UUID

_ROOT = Path(__file__).resolve().parents[1]
for _path in (_ROOT, _ROOT / "layers" / "shared"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import psycopg  # noqa: E402

from bench.ledger import (  # noqa: E402
    InvariantBroken,
    _cpu_ticks,
    _percentile,
    _settings,
    background_busy,
    check_ledger_invariant,
)
from billing.adapters.postgres.connection import open_connection, shared_connection  # noqa: E402
from billing.adapters.postgres.migrate import apply_migrations  # noqa: E402
from billing.adapters.postgres.purchase_store import PostgresPurchaseStore  # noqa: E402
from billing.adapters.postgres.transactions import PostgresTransactions  # noqa: E402
from billing.adapters.postgres.usage_store import PostgresUsageStore  # noqa: E402
from billing.domain.api_keys import KeyRole, generate_api_key, hash_api_key  # noqa: E402
from billing.domain.ledger import credit  # noqa: E402
from billing.domain.purchase import NewPurchase, Triggers  # noqa: E402
from billing.services.ledger import LedgerService  # noqa: E402
from billing.services.lifecycle import PurchaseLifecycle  # noqa: E402
from billing.services.metering import MeteringService, UsageEvent, _usage_charge  # noqa: E402
from local.events import HttpRequest, RouteMatch, build_event  # noqa: E402
from local.handlers import LocalLambdaContext, load_handler  # noqa: E402
from local.postgres import admin_database_url, scratch_database  # noqa: E402
from local.template import load_template  # noqa: E402

CPUS = os.cpu_count() or 1
FUNCTION_FOLDER = "meter_usage"
OFFER_ID = "bench-offer"
BATCH = 100
USD = 1_000_000_000
OPENING_CREDIT_NANO = 100_000_000 * USD  # never runs out, never nears a threshold
EVENT_COST_NANO = 1_000  # $0.000001 per event
CROSSING_OPENING_NANO = USD  # $1 ...
CROSSING_COST_NANO = 50_000_000  # ... at $0.05 an event: low, critical and termination within 18 events
ROOMY_TRIGGERS = Triggers(low_nano=5 * USD, critical_nano=2 * USD, termination_nano=USD // 2)
CROSSING_TRIGGERS = Triggers(low_nano=USD // 2, critical_nano=USD // 4, termination_nano=USD // 10)

#: A ledger with history before any phase: purchases of their own, charged through the service.
HISTORY_PURCHASES = 100
HISTORY_EVENTS = 50_000

TARGET_SINGLE_HOT_EVENTS_PER_S = 2_000.0
TARGET_BATCH_EVENTS_PER_S = 20_000.0
TARGET_SWEEP_S = 2.0


@dataclass(frozen=True)
class Scenario:
    name: str
    batch: int  # events per request; 0: the bare UPDATE reference
    pool: str  # which purchases: "hot" (one), "spread" (--purchases), "crossing", "bare"
    description: str
    target_events_per_s: float | None = None
    #: "handler": lambda_handler with a payload-2.0 event; "service": MeteringService.meter directly;
    #: "store": the usage store's one statement (PostgresUsageStore.charge_batch) directly
    via: str = "handler"


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario("single-hot", 1, "hot", "1 event per request, one purchase", TARGET_SINGLE_HOT_EVENTS_PER_S),
        Scenario("single-spread", 1, "spread", "1 event per request, random purchase"),
        Scenario(
            "batch-hot", BATCH, "hot", "100 events per request, one purchase", TARGET_BATCH_EVENTS_PER_S
        ),
        Scenario(
            "batch-spread",
            BATCH,
            "spread",
            "100 events per request, random purchase",
            TARGET_BATCH_EVENTS_PER_S,
        ),
        Scenario("single-crossing", 1, "crossing", "1 event per request, thresholds crossed (extra)"),
        Scenario(
            "service-single-hot",
            1,
            "hot",
            "as single-hot, MeteringService.meter called directly: no Powertools, JSON or HTTP models",
            via="service",
        ),
        Scenario(
            "store-single-hot",
            1,
            "hot",
            "as single-hot, only the metering statement (usage store): no handler, no service",
            via="store",
        ),
        Scenario("reference-bare-hot", 0, "bare", "autocommit UPDATE of one row (reference ceiling)"),
    )
}
DEFAULT_SCENARIOS = [*SCENARIOS, "sweep"]


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class Target:
    purchase_id: str
    vendor_key: str


@dataclass(frozen=True)
class PhaseSpec:
    phase_id: str
    scenario: str
    workers: int  # workers taking part; the others answer at once
    start_ns: int
    measure_ns: int
    end_ns: int  # time-bound window (0 when requests_per_worker is set)
    requests_per_worker: int  # request-bound window (0 when end_ns is set)
    seed: int


@dataclass
class WorkerResult:
    requests: int = 0  # answered 200 inside the measured window
    events: int = 0  # their events
    errors: int = 0  # anything else inside the window
    done_requests: int = 0  # 200 answers of the whole phase, warm-up included
    done_events: int = 0
    failed_requests: int = 0  # non-200 answers of the whole phase
    statuses: dict[str, int] = field(default_factory=dict)
    first_failure: str | None = None
    not_allowed: int = 0  # 200 answers with "allowed": false
    latencies_ns: bytes = b""  # array('q') of the measured requests
    cpu_s: float = 0.0  # the worker's own CPU over the whole phase (warm-up included)
    server_cpu_s: float = 0.0  # its Postgres backend's CPU over the same time (0 when unknown)
    finished_ns: int = 0  # when the worker's last measured request ended


def _handler_environment(database_url: str) -> dict[str, str]:
    """The template's plain environment (what Lambda sets), pointed at the scratch database."""
    function = load_template().function_by_folder(FUNCTION_FOLDER)
    return {
        **function.environment,
        "DATABASE_URL": database_url,
        "AWS_DEFAULT_REGION": "us-east-1",
        # No X-Ray daemon here. Metrics stay on (EMF JSON to stdout, as in Lambda); stdout is discarded.
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


class _Client:
    """One worker's view of the handler: builds payload-2.0 events and checks every answer."""

    def __init__(self, pools: dict[str, list[Target]], bare_url: str) -> None:
        template = load_template()
        self.function = template.function_by_folder(FUNCTION_FOLDER)
        (self.route,) = self.function.routes
        self.handler = load_handler(self.function)
        self.context_for = LocalLambdaContext.for_function
        self.pools = pools
        self.bare_url = bare_url
        self._bare: psycopg.Connection[Any] | None = None
        # the handler's own connection (shared_connection, from DATABASE_URL), without the handler
        self.metering = MeteringService(PostgresTransactions())
        self.key_hash = functools.cache(hash_api_key)

    def event(self, target: Target, body: bytes) -> dict[str, Any]:
        path = f"/purchase/{target.purchase_id}/meter-usage"
        headers = [
            ("Host", "bench.execute-api.us-east-1.amazonaws.com"),
            ("User-Agent", "bench-metering/1"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Authorization", f"Bearer {target.vendor_key}"),
        ]
        request = HttpRequest("POST", path, "", headers, body, source_ip="203.0.113.10")
        return build_event(request, RouteMatch(self.route, {"purchase_id": target.purchase_id}))

    def bare_connection(self) -> psycopg.Connection[Any]:
        if self._bare is None:
            self._bare = open_connection(self.bare_url)
        return self._bare

    def backend_pid(self, scenario: Scenario) -> int:
        """The Postgres backend serving this worker (the handler's own connection, or the bare one)."""
        connection = self.bare_connection() if scenario.batch == 0 else shared_connection()
        return int(connection.info.backend_pid)


def _process_cpu_s(pid: int) -> float:
    """utime + stime of a process on this machine, from /proc (0.0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _body(keys: list[str], cost_nano: int) -> bytes:
    cost = f"{cost_nano // USD}.{cost_nano % USD:09d}"
    events = [
        {"idempotency_key": key, "usage_amount": "1", "unit": "tokens", "cost_incurred": cost} for key in keys
    ]
    return json.dumps(events[0] if len(events) == 1 else {"events": events}).encode()


def _run_phase(client: _Client, spec: PhaseSpec, worker: int) -> WorkerResult:
    scenario = SCENARIOS[spec.scenario]
    rng = random.Random(spec.seed * 1_000 + worker)
    pool = client.pools[scenario.name]  # every scenario has purchases of its own
    cost = CROSSING_COST_NANO if scenario.pool == "crossing" else EVENT_COST_NANO
    result = WorkerResult()
    statuses: Counter[str] = Counter()
    latencies = array("q")
    clock, monotonic = time.perf_counter_ns, time.monotonic_ns
    counter = 0

    def one_request() -> tuple[int, bool, int, str | None]:
        """(events answered, allowed, elapsed ns, failure) for one request."""
        nonlocal counter
        target = pool[0] if len(pool) == 1 else rng.choice(pool)
        counter += 1
        if scenario.batch == 0:
            connection = client.bare_connection()
            started = clock()
            connection.execute(
                "UPDATE purchases SET balance_nano = balance_nano - %s WHERE id = %s",
                (EVENT_COST_NANO, target.purchase_id),
            )
            return 1, True, clock() - started, None
        keys = [f"{spec.phase_id}-{worker}-{counter}-{index}" for index in range(scenario.batch)]
        usage = (
            [UsageEvent(key, Decimal(1), "tokens", cost_nano=cost) for key in keys]
            if scenario.via != "handler"
            else []
        )
        if scenario.via == "store":
            purchase_id, occurred_at = UUID(target.purchase_id), datetime.now(UTC)
            charges = [_usage_charge(purchase_id, event, occurred_at, None) for event in usage]
            store = PostgresUsageStore(shared_connection())
            started = clock()
            batch = store.charge_batch(purchase_id, client.key_hash(target.vendor_key), charges)
            elapsed = clock() - started
            if len(batch.entries) != len(keys) or any(entry.replayed for entry in batch.entries):
                return 0, True, elapsed, f"store answered {len(batch.entries)} events or a replay"
            return len(keys), True, elapsed, None
        if scenario.via == "service":
            started = clock()
            outcome = client.metering.meter(target.purchase_id, target.vendor_key, usage)
            elapsed = clock() - started
            if len(outcome.events) != len(keys) or any(item.replayed for item in outcome.events):
                return 0, True, elapsed, f"service answered {len(outcome.events)} events or a replay"
            return len(keys), outcome.allowed, elapsed, None
        event = client.event(target, _body(keys, cost))
        context = client.context_for(client.function)
        started = clock()
        response = client.handler(event, context)
        elapsed = clock() - started
        status = int(response.get("statusCode", 0))
        if status != 200:
            return 0, True, elapsed, f"{status}: {str(response.get('body'))[:300]}"
        answer = json.loads(response["body"])
        answered = answer.get("events") or []
        if len(answered) != scenario.batch or any(item.get("replayed") for item in answered):
            return 0, True, elapsed, f"200 with {len(answered)} events or a replay: {response['body'][:300]}"
        return len(answered), bool(answer.get("allowed")), elapsed, None

    backend = client.backend_pid(scenario) if worker < spec.workers else 0
    while monotonic() < spec.start_ns:
        time.sleep(0.001)
    cpu_start, server_cpu_start = time.process_time(), _process_cpu_s(backend)
    measured_requests = 0
    while True:
        now = monotonic()
        if spec.requests_per_worker:
            if now >= spec.measure_ns and measured_requests >= spec.requests_per_worker:
                break
        elif now >= spec.end_ns:
            break
        if worker >= spec.workers:
            break
        try:
            events, allowed, elapsed, failure = one_request()
        except Exception:  # counted and reported, never hidden
            events, allowed, elapsed, failure = 0, True, 0, traceback.format_exc(limit=3)
        finished = monotonic()
        in_window = finished >= spec.measure_ns and (spec.requests_per_worker or finished <= spec.end_ns)
        if failure is None:
            result.done_requests += 1
            result.done_events += events
            result.not_allowed += 0 if allowed else 1
        else:
            result.failed_requests += 1
            statuses[failure.split(":", 1)[0]] += 1
            result.first_failure = result.first_failure or failure
        if in_window and started_in_window(finished, elapsed, spec):
            measured_requests += 1
            result.finished_ns = finished
            if failure is None:
                result.requests += 1
                result.events += events
                latencies.append(elapsed)
            else:
                result.errors += 1
    result.cpu_s = time.process_time() - cpu_start
    result.server_cpu_s = _process_cpu_s(backend) - server_cpu_start if backend else 0.0
    result.statuses = dict(statuses)
    result.latencies_ns = latencies.tobytes()
    return result


def started_in_window(finished: int, elapsed: int, spec: PhaseSpec) -> bool:
    """Request-bound phases count only requests sent after the warm-up (time-bound: all that end inside)."""
    return not spec.requests_per_worker or finished - elapsed >= spec.measure_ns


def _serve(channel: Pipe, environment: dict[str, str], pools: dict[str, list[Target]], worker: int) -> None:
    """A worker process: a warm 'Lambda container' serving one phase per message until ``None``."""
    os.environ.update(environment)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the handler's EMF metrics and log lines, as Lambda would ship them away
    try:
        client = _Client(pools, environment["DATABASE_URL"])
    except Exception:
        channel.send(traceback.format_exc())
        return
    channel.send("ready")
    while True:
        spec = channel.recv()
        if spec is None:
            return
        try:
            channel.send(_run_phase(client, spec, worker))
        except Exception:
            channel.send(traceback.format_exc())


class Workers:
    """``count`` worker processes, each with the handler loaded and its own connection."""

    def __init__(self, count: int, environment: dict[str, str], pools: dict[str, list[Target]]) -> None:
        context = multiprocessing.get_context("spawn")
        self._channels: list[Pipe] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for worker in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, environment, pools, worker), daemon=True)
            process.start()
            self._channels.append(ours)
            self._processes.append(process)
        for channel in self._channels:
            answer = channel.recv()
            if answer != "ready":
                raise RuntimeError(f"a worker failed to start:\n{answer}")

    def run(self, spec: PhaseSpec) -> list[WorkerResult]:
        for channel in self._channels:
            channel.send(spec)
        answers = [channel.recv() for channel in self._channels]
        failures = [answer for answer in answers if not isinstance(answer, WorkerResult)]
        if failures:
            raise RuntimeError(f"{len(failures)} workers crashed; the first said:\n{failures[0]}")
        return answers[: spec.workers]

    def close(self) -> None:
        for channel in self._channels:
            with contextlib.suppress(OSError):
                channel.send(None)
        for process in self._processes:
            process.join(timeout=10)


# --------------------------------------------------------------------------- measurement side


@dataclass
class PhaseResult:
    scenario: str
    workers: int
    batch: int
    seconds: float
    requests: int
    events: int
    errors: int
    done_requests: int
    done_events: int
    failed_requests: int
    statuses: dict[str, int]
    first_failure: str | None
    not_allowed: int
    client_cpu_s: float
    server_cpu_s: float
    machine_busy: float  # share of all CPUs busy over the phase (warm-up included)
    others_busy: float  # the same, minus the workers and their backends: everything else on the machine
    p50_ms: float
    p99_ms: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else math.nan

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else math.nan


def _measure(workers: Workers, spec: PhaseSpec, scenario: Scenario) -> PhaseResult:
    """Run one phase; the machine's CPU is sampled over the whole phase, as the workers' own CPU is."""
    ticks: dict[str, tuple[int, int]] = {}

    def sample_start() -> None:
        time.sleep(max(0.0, (spec.start_ns - time.monotonic_ns()) / 1e9))
        ticks["start"] = _cpu_ticks()

    sampler = threading.Thread(target=sample_start, daemon=True)
    sampler.start()
    results = workers.run(spec)
    ticks["end"] = _cpu_ticks()
    sampler.join()
    end_ns = spec.end_ns or max((result.finished_ns for result in results), default=spec.measure_ns)
    seconds = max(end_ns - spec.measure_ns, 1) / 1e9
    busy = ticks["end"][0] - ticks["start"][0]
    total = ticks["end"][1] - ticks["start"][1]
    ours = sum(result.cpu_s + result.server_cpu_s for result in results) * os.sysconf("SC_CLK_TCK")
    latencies = sorted(value for result in results for value in array("q", result.latencies_ns))
    statuses: Counter[str] = Counter()
    for result in results:
        statuses.update(result.statuses)
    return PhaseResult(
        scenario=scenario.name,
        workers=spec.workers,
        batch=scenario.batch,
        seconds=seconds,
        requests=sum(result.requests for result in results),
        events=sum(result.events for result in results),
        errors=sum(result.errors for result in results),
        done_requests=sum(result.done_requests for result in results),
        done_events=sum(result.done_events for result in results),
        failed_requests=sum(result.failed_requests for result in results),
        statuses=dict(statuses),
        first_failure=next((result.first_failure for result in results if result.first_failure), None),
        not_allowed=sum(result.not_allowed for result in results),
        client_cpu_s=sum(result.cpu_s for result in results),
        server_cpu_s=sum(result.server_cpu_s for result in results),
        machine_busy=busy / total if total else math.nan,
        others_busy=max(0.0, busy - ours) / total if total else math.nan,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
    )


def _create_purchases(
    connection: psycopg.Connection[Any], count: int, *, opening_nano: int, triggers: Triggers
) -> list[Target]:
    """``count`` purchases created like finalize creates them, funded through the ledger."""
    targets = []
    store = PostgresPurchaseStore(connection)
    with connection.transaction():
        for _ in range(count):
            purchase_id, vendor_key = uuid.uuid4(), generate_api_key(KeyRole.VENDOR)
            store.insert(
                NewPurchase(
                    id=purchase_id,
                    offer_id=OFFER_ID,
                    triggers=triggers,
                    customer_key_hash=hash_api_key(generate_api_key(KeyRole.CUSTOMER)),
                    vendor_key_hash=hash_api_key(vendor_key),
                    notify_email="owner@example.com",
                )
            )
            targets.append(Target(str(purchase_id), vendor_key))
    service = LedgerService(PostgresTransactions(lambda: connection))
    for target in targets:
        service.apply(credit(UUID(target.purchase_id), opening_nano, f"opening-{target.purchase_id}"))
    return targets


def _seed_history(connection: psycopg.Connection[Any], events: int) -> None:
    """Give the ledger a history before it is analyzed, as a production ledger has.

    This server runs without autovacuum. A session plans its statements once (PL/pgSQL, prepared
    statements), with the statistics of the moment: planned on a ledger of a few rows, the
    idempotency probe scans the table instead of its unique index, and every write then costs
    O(ledger) until the next ANALYZE (docs/benchmarks.md, "Metering"). Autovacuum analyzes a
    production ledger as it grows; here the ledger gets a history of its own purchases first.
    """
    if events <= 0:
        return
    targets = _create_purchases(
        connection, HISTORY_PURCHASES, opening_nano=OPENING_CREDIT_NANO, triggers=ROOMY_TRIGGERS
    )
    service = MeteringService(PostgresTransactions(lambda: connection))
    for batch in range(max(1, events // BATCH)):
        target = targets[batch % len(targets)]
        history = [
            UsageEvent(f"history-{batch}-{index}", Decimal(1), "tokens", cost_nano=EVENT_COST_NANO)
            for index in range(BATCH)
        ]
        service.meter(target.purchase_id, target.vendor_key, history)


def _count(connection: psycopg.Connection[Any], sql: str, params: Any = None) -> int:
    row = connection.execute(sql, params).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def check_metering(
    connection: psycopg.Connection[Any],
    pools: dict[str, list[Target]],
    answered_events: Counter[str],
) -> dict[str, Any]:
    """Every answered event is one usage entry and one usage row, and the ledger balances."""
    checked: dict[str, Any] = {}
    for pool, targets in pools.items():
        if SCENARIOS[pool].pool == "bare":  # the reference bypasses the ledger on purpose
            continue
        ids = [UUID(target.purchase_id) for target in targets]
        check_ledger_invariant(connection, ids)
        entries = _count(
            connection,
            "SELECT count(*) FROM ledger_entries WHERE purchase_id = ANY(%s) AND kind = 'usage'",
            (ids,),
        )
        rows = _count(connection, "SELECT count(*) FROM usage_events WHERE purchase_id = ANY(%s)", (ids,))
        held = _count(
            connection, "SELECT COALESCE(sum(held_nano), 0) FROM purchases WHERE id = ANY(%s)", (ids,)
        )
        spent = _count(
            connection,
            """SELECT %s::numeric * count(*) - COALESCE(sum(balance_nano), 0)
                 FROM purchases WHERE id = ANY(%s)""",
            (CROSSING_OPENING_NANO if SCENARIOS[pool].pool == "crossing" else OPENING_CREDIT_NANO, ids),
        )
        cost = CROSSING_COST_NANO if SCENARIOS[pool].pool == "crossing" else EVENT_COST_NANO
        expected = answered_events[pool]
        if entries != expected or rows != expected:
            raise InvariantBroken(
                f"{pool}: workers had {expected} events answered, the database holds {entries} usage "
                f"entries and {rows} usage rows"
            )
        if spent != expected * cost or held != 0:
            raise InvariantBroken(
                f"{pool}: balances dropped by {spent}, expected {expected * cost}; held {held}"
            )
        checked[pool] = {"purchases": len(ids), "usage_entries": entries, "usage_rows": rows}
    crossing = [UUID(target.purchase_id) for target in pools.get("single-crossing", [])]
    if crossing and answered_events["single-crossing"]:
        statuses = connection.execute(
            "SELECT status, count(*) FROM purchases WHERE id = ANY(%s) GROUP BY status ORDER BY status",
            (crossing,),
        ).fetchall()
        outbox = _count(connection, "SELECT count(*) FROM outbox WHERE purchase_id = ANY(%s)", (crossing,))
        checked["single-crossing"].update({"statuses": dict(statuses), "outbox_rows": outbox})
    return checked


# --------------------------------------------------------------------------- sweep


#: The sweep's purchases, by ``i % 100``: 0 expired hold, 1 suspended with the grace over, 2 stale status.
_SWEEP_SEED = """
INSERT INTO offers (id, sku, kind, title, min_deposit_nano)
VALUES ('bench-offer', 'BENCH-OFFER', 's3_bucket', 'Bench offer', 0);

CREATE TEMP TABLE seed AS
SELECT i, md5('bench-sweep-' || i)::uuid AS id,
       CASE mod(i, 100) WHEN 0 THEN 'hold' WHEN 1 THEN 'grace' WHEN 2 THEN 'stale' ELSE 'healthy' END AS mix
  FROM generate_series(1, %(purchases)s) AS i;

INSERT INTO purchases (id, offer_id, officex_purchase_id, customer_org_id, customer_user_id,
                       customer_org_endpoint, customer_org_api_key_ciphertext, low_trigger_nano,
                       critical_trigger_nano, termination_trigger_nano, customer_key_hash, vendor_key_hash,
                       notify_email,
                       balance_nano, held_nano, status, suspended_at, grace_until, status_version,
                       status_changed_at, created_at, updated_at)
SELECT id, 'bench-offer', 'P' || i, 'D' || i, 'U' || i, 'https://org-' || i || '.example.com',
       sha256(('org-key-' || i)::bytea), 5000000000, 2000000000, 500000000,
       sha256(('ck-' || i)::bytea), sha256(('vk-' || i)::bytea),
       'owner-' || i || '@example.com',
       CASE mix WHEN 'grace' THEN -1000000000 ELSE 50000000000 END,
       CASE mix WHEN 'hold' THEN 1000000000 ELSE 0 END,
       CASE mix WHEN 'grace' THEN 'suspended' ELSE 'active' END,
       CASE mix WHEN 'grace' THEN now() - interval '80 hours' END,
       CASE mix WHEN 'grace' THEN now() - interval '8 hours' END,
       CASE mix WHEN 'grace' THEN 1 ELSE 0 END,
       CASE mix WHEN 'grace' THEN now() - interval '80 hours' END,
       now() - interval '30 days', now() - interval '1 day'
  FROM seed;

INSERT INTO ledger_entries (purchase_id, kind, amount_nano, held_delta_nano, balance_after_nano,
                            held_after_nano, idempotency_key, request_fingerprint, source)
SELECT id, 'deposit', 50000000000, 0, 50000000000, 0, 'opening', 'bench', 'bench' FROM seed;

INSERT INTO ledger_entries (purchase_id, kind, amount_nano, held_delta_nano, balance_after_nano,
                            held_after_nano, idempotency_key, request_fingerprint, source)
SELECT id, 'usage', -51000000000, 0, -1000000000, 0, 'overdrawn', 'bench', 'bench'
  FROM seed WHERE mix = 'grace';

INSERT INTO holds (id, purchase_id, amount_nano, expires_at, created_at)
SELECT md5('bench-hold-' || i)::uuid, id, 1000000000,
       now() - interval '1 minute', now() - interval '6 minutes'
  FROM seed WHERE mix = 'hold';

INSERT INTO ledger_entries (purchase_id, kind, amount_nano, held_delta_nano, balance_after_nano,
                            held_after_nano, idempotency_key, request_fingerprint, hold_id, source)
SELECT id, 'hold', 0, 1000000000, 50000000000, 1000000000, 'hold', 'bench', md5('bench-hold-' || i)::uuid,
       'bench'
  FROM seed WHERE mix = 'hold';

ALTER TABLE purchases DISABLE TRIGGER purchases_follow_balance;
UPDATE purchases p SET balance_nano = 1000000000 FROM seed s WHERE s.id = p.id AND s.mix = 'stale';
ALTER TABLE purchases ENABLE TRIGGER purchases_follow_balance;

INSERT INTO ledger_entries (purchase_id, kind, amount_nano, held_delta_nano, balance_after_nano,
                            held_after_nano, idempotency_key, request_fingerprint, source)
SELECT id, 'usage', -49000000000, 0, 1000000000, 0, 'spent', 'bench', 'bench' FROM seed WHERE mix = 'stale';
"""

_SWEEP_CHECK = """
SELECT count(*) FILTER (WHERE p.balance_nano <> s.total OR p.held_nano <> s.held) AS unbalanced,
       count(*) FILTER (WHERE p.status = 'terminated') AS terminated,
       count(*) FILTER (WHERE p.status = 'critical') AS critical,
       count(*) FILTER (WHERE p.held_nano <> 0) AS holding
  FROM purchases p
  JOIN (SELECT purchase_id, sum(amount_nano) AS total, sum(held_delta_nano) AS held
          FROM ledger_entries GROUP BY purchase_id) s ON s.purchase_id = p.id
"""


def run_sweep_scenario(
    admin_url: str, purchases: int, idle_runs: int, log: Callable[[str], None]
) -> dict[str, Any]:
    share = purchases // 100
    with scratch_database(admin_url, prefix="bench_sweep") as url:
        with psycopg.connect(url, autocommit=True) as connection:
            apply_migrations(connection)
            log(
                f"sweep: seeding {purchases:,} purchases "
                f"({share:,} each: expired hold, grace over, stale status) ..."
            )
            started = time.perf_counter()
            with connection.transaction():
                for statement in _SWEEP_SEED.split(";"):
                    if statement.strip():
                        connection.execute(statement, {"purchases": purchases} if "%(" in statement else None)
            connection.execute("VACUUM ANALYZE")
            log(f"sweep: seeded in {time.perf_counter() - started:.1f} s (then VACUUM ANALYZE)")
            outbox_before = _count(connection, "SELECT count(*) FROM outbox")
        with open_connection(url) as lambda_connection:  # opened like the sweep function's
            lifecycle = PurchaseLifecycle(PostgresTransactions(lambda: lambda_connection))
            now = datetime.now(UTC)
            started = time.perf_counter()
            first = lifecycle.sweep(now)
            first_s = time.perf_counter() - started
            log(f"sweep: run 1 {first_s:.3f} s {first}")
            idle_times = []
            idle: dict[str, int] = {}
            for _ in range(idle_runs):
                started = time.perf_counter()
                idle = lifecycle.sweep(now)
                idle_times.append(time.perf_counter() - started)
            log(
                f"sweep: nothing to do, {idle_runs} runs: "
                + ", ".join(f"{value:.3f}" for value in idle_times)
            )
        with psycopg.connect(url, autocommit=True) as connection:
            unbalanced, terminated, critical, holding = connection.execute(_SWEEP_CHECK).fetchone() or (
                -1,
                -1,
                -1,
                -1,
            )
            outbox = _count(connection, "SELECT count(*) FROM outbox") - outbox_before
    expected = {"holds_expired": share, "statuses_corrected": share, "purchases_terminated": share}
    if first != expected or any(idle.values()):
        raise InvariantBroken(f"sweep did {first} then {idle}, expected {expected} then nothing")
    if unbalanced or terminated != share or critical != share or holding:
        raise InvariantBroken(
            f"after the sweep: {unbalanced} purchases off their ledger, {terminated} terminated, "
            f"{critical} critical, {holding} still holding"
        )
    return {
        "purchases": purchases,
        "first_run_s": first_s,
        "first_run": first,
        "idle_runs_s": idle_times,
        "idle_run_median_s": statistics.median(idle_times),
        "outbox_rows_written": outbox,
        "target_s": TARGET_SWEEP_S,
        "meets_target": first_s <= TARGET_SWEEP_S and max(idle_times) <= TARGET_SWEEP_S,
    }


# --------------------------------------------------------------------------- orchestration


@dataclass
class Plan:
    duration: float
    requests: int  # per scenario and worker count, split over the workers; 0: --duration
    warmup: float
    workers: list[int]
    scenarios: list[str]
    purchases: int
    crossing_purchases: int
    sweep_purchases: int
    sweep_idle_runs: int
    history_events: int  # usage events already in the ledger when the phases start


def run_metering(plan: Plan, url: str, log: Callable[[str], None]) -> dict[str, Any]:
    scenarios = [SCENARIOS[name] for name in plan.scenarios if name in SCENARIOS]
    with psycopg.connect(url, autocommit=True) as connection:
        apply_migrations(connection)
        settings = _settings(connection)
        connection.execute(
            """INSERT INTO offers (id, sku, kind, title, min_deposit_nano)
               VALUES (%s, %s, 's3_bucket', 'Bench offer', 0)""",
            (OFFER_ID, OFFER_ID.upper()),
        )
        pools: dict[str, list[Target]] = {}
        for scenario in scenarios:
            count = {"spread": plan.purchases, "crossing": plan.crossing_purchases}.get(scenario.pool, 1)
            crossing = scenario.pool == "crossing"
            log(f"creating {count} funded purchase(s) for {scenario.name} ...")
            pools[scenario.name] = _create_purchases(
                connection,
                count,
                opening_nano=CROSSING_OPENING_NANO if crossing else OPENING_CREDIT_NANO,
                triggers=CROSSING_TRIGGERS if crossing else ROOMY_TRIGGERS,
            )
        started = time.perf_counter()
        _seed_history(connection, plan.history_events)
        connection.execute("ANALYZE")
        log(
            f"seeded {plan.history_events:,} usage events of history in {time.perf_counter() - started:.1f} s"
        )
        log(f"starting {max(plan.workers)} worker processes (handler loaded once in each) ...")
        workers = Workers(max(plan.workers), _handler_environment(url), pools)
        phases: list[PhaseResult] = []
        answered: Counter[str] = Counter()
        try:
            for scenario in scenarios:
                for count in plan.workers:
                    start = time.monotonic_ns() + 200_000_000
                    measure = start + int(plan.warmup * 1e9)
                    by_requests = plan.requests > 0
                    per_worker = max(1, plan.requests // count) if by_requests else 0
                    spec = PhaseSpec(
                        phase_id=f"{scenario.name}-{count}-{uuid.uuid4().hex[:8]}",
                        scenario=scenario.name,
                        workers=count,
                        start_ns=start,
                        measure_ns=measure,
                        end_ns=0 if by_requests else measure + int(plan.duration * 1e9),
                        requests_per_worker=per_worker,
                        seed=random.randrange(1 << 30),
                    )
                    phase = _measure(workers, spec, scenario)
                    phases.append(phase)
                    answered[scenario.name] += phase.done_events
                    log(
                        f"{scenario.name:18} {count:2} worker(s) {phase.events_per_s:9.1f} events/s "
                        f"p50 {phase.p50_ms:7.2f} ms p99 {phase.p99_ms:7.2f} ms"
                        f"  failed {phase.failed_requests}"
                        f"  machine busy {phase.machine_busy:.0%} (others {phase.others_busy:.0%})"
                    )
                    if phase.failed_requests:
                        log(f"  first failure: {phase.first_failure}")
        finally:
            workers.close()
        checks = check_metering(connection, pools, answered)
    failed = sum(phase.failed_requests for phase in phases)
    return {
        "server": settings,
        "phases": [_phase_summary(phase) for phase in phases],
        "checks": checks,
        "failed_requests": failed,
    }


def _phase_summary(phase: PhaseResult) -> dict[str, Any]:
    events = max(phase.done_events, 1)
    return asdict(phase) | {
        "events_per_s": phase.events_per_s,
        "requests_per_s": phase.requests_per_s,
        "client_cpu_us_per_event": phase.client_cpu_s / events * 1e6,
        "server_cpu_us_per_event": phase.server_cpu_s / events * 1e6,
    }


def verdicts(report: dict[str, Any], main_workers: int) -> list[tuple[str, float, float, bool]]:
    """(what, measured, target, met) for every target the run measured."""
    found = []
    for phase in report.get("metering", {}).get("phases", []):
        target = SCENARIOS[phase["scenario"]].target_events_per_s
        if target is not None and phase["workers"] == main_workers:
            found.append(
                (
                    f"{phase['scenario']} events/s",
                    phase["events_per_s"],
                    target,
                    phase["events_per_s"] >= target,
                )
            )
    sweep = report.get("sweep")
    if sweep:
        found.append(
            (
                "sweep s (work to do)",
                sweep["first_run_s"],
                TARGET_SWEEP_S,
                sweep["first_run_s"] <= TARGET_SWEEP_S,
            )
        )
        found.append(
            (
                "sweep s (nothing to do)",
                max(sweep["idle_runs_s"]),
                TARGET_SWEEP_S,
                max(sweep["idle_runs_s"]) <= TARGET_SWEEP_S,
            )
        )
    return found


def render(report: dict[str, Any]) -> Iterator[str]:
    plan = report["plan"]
    busy = report["background_busy_before"]
    yield (
        f"machine: {CPUS} CPUs, {busy:.0%} busy before the run; workers are processes, one connection "
        "each; CPU us/event: the workers' own CPU, and their Postgres backends' (WAL writer and the "
        "rest of the server not included), per answered event; others: the machine's CPU used by "
        "anything else during the phase"
    )
    if "metering" in report:
        yield "server: " + ", ".join(
            f"{name}={value}" for name, value in report["metering"]["server"].items()
        )
        window = f"{plan['requests']} requests" if plan["requests"] else f"{plan['duration']:g} s"
        yield (
            f"each phase: {plan['warmup']:g} s warm-up, then {window}; "
            f"spread over {plan['purchases']} purchases"
        )
        yield ""
        yield (
            f"{'scenario':18} {'workers':>7} {'events/s':>9} {'requests/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'failed':>6} {'CPU us/event: workers':>21} {'backends':>8} {'busy':>5} {'others':>6}"
        )
        for phase in report["metering"]["phases"]:
            yield (
                f"{phase['scenario']:18} {phase['workers']:7d} {phase['events_per_s']:9.1f} "
                f"{phase['requests_per_s']:10.1f} {phase['p50_ms']:8.2f} {phase['p99_ms']:8.2f} "
                f"{phase['failed_requests']:6d} {phase['client_cpu_us_per_event']:21.0f} "
                f"{phase['server_cpu_us_per_event']:8.0f} {phase['machine_busy']:5.0%} "
                f"{phase['others_busy']:6.0%}"
            )
        yield ""
        for pool, checked in report["metering"]["checks"].items():
            yield f"checked {pool}: " + ", ".join(f"{name} {value}" for name, value in checked.items())
    if "sweep" in report:
        sweep = report["sweep"]
        yield ""
        yield (
            f"sweep over {sweep['purchases']:,} purchases: {sweep['first_run_s']:.3f} s with work "
            f"({sweep['first_run']}, {sweep['outbox_rows_written']} outbox rows); nothing to do: median "
            f"{sweep['idle_run_median_s']:.3f} s of {len(sweep['idle_runs_s'])} runs "
            f"(max {max(sweep['idle_runs_s']):.3f} s)"
        )
    yield ""
    for what, measured, target, met in report["verdicts"]:
        comparison = ">=" if "events/s" in what else "<="
        verdict = "meets" if met else "MISSES"
        yield f"{verdict} target: {what} {measured:,.3f} (target {comparison} {target:,g})"
    ceilings: dict[str, float] = {}
    for phase in report.get("metering", {}).get("phases", []):
        if phase["scenario"] in ("store-single-hot", "reference-bare-hot"):
            ceilings[phase["scenario"]] = max(ceilings.get(phase["scenario"], 0.0), phase["events_per_s"])
    if ceilings:
        yield (
            "one hot purchase on this machine, best over the worker counts (no handler): "
            + ", ".join(f"{name} {value:,.0f} events/s" for name, value in ceilings.items())
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="scenarios: "
        + "; ".join(f"{scenario.name}: {scenario.description}" for scenario in SCENARIOS.values())
        + "; sweep: PurchaseLifecycle.sweep over --sweep-purchases purchases",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per phase (default 10)"
    )
    parser.add_argument(
        "--requests", type=int, default=0, help="measure this many requests per phase instead of --duration"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="warm-up seconds before each phase (default 2)"
    )
    parser.add_argument(
        "--workers",
        default="4,1",
        help="worker process counts, comma separated; the first is judged (default 4,1)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "sweep", "all"],
        help="run only these (repeatable; default all)",
    )
    parser.add_argument("--purchases", type=int, default=1000, help="purchases in the spread scenarios")
    parser.add_argument("--crossing-purchases", type=int, default=50, help="purchases in single-crossing")
    parser.add_argument(
        "--sweep-purchases", type=int, default=100_000, help="purchases in the sweep scenario"
    )
    parser.add_argument("--sweep-idle-runs", type=int, default=5, help="sweeps with nothing to do, timed")
    parser.add_argument(
        "--history-events",
        type=int,
        default=HISTORY_EVENTS,
        help=f"usage events in the ledger before the phases (default {HISTORY_EVENTS:,}; 0: none)",
    )
    parser.add_argument("--database-url", help="admin URL of the server (default: DATABASE_URL or local)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: short phases, small pools, 2,000-purchase sweep"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--enforce", action="store_true", help="exit 2 if a target is missed")
    args = parser.parse_args(argv)

    if args.quick:
        args.duration, args.warmup = min(args.duration, 0.5), min(args.warmup, 0.2)
        args.purchases, args.crossing_purchases = min(args.purchases, 20), min(args.crossing_purchases, 5)
        args.sweep_purchases, args.sweep_idle_runs = min(args.sweep_purchases, 2_000), 1
        args.history_events = min(args.history_events, 1_000)
        if args.workers == parser.get_default("workers"):
            args.workers = "2"
    chosen = args.scenario or ["all"]
    scenarios = (
        DEFAULT_SCENARIOS if "all" in chosen else [name for name in DEFAULT_SCENARIOS if name in chosen]
    )
    try:
        worker_counts = [int(value) for value in args.workers.split(",") if value.strip()]
    except ValueError:
        parser.error("--workers takes comma-separated integers, e.g. 4,1")
    if not worker_counts or min(worker_counts) < 1:
        parser.error("--workers needs at least one count >= 1")
    if args.sweep_purchases < 100:
        parser.error("--sweep-purchases must be at least 100 (1 % of each kind)")
    plan = Plan(
        duration=args.duration,
        requests=args.requests,
        warmup=args.warmup,
        workers=worker_counts,
        scenarios=scenarios,
        purchases=args.purchases,
        crossing_purchases=args.crossing_purchases,
        sweep_purchases=args.sweep_purchases,
        sweep_idle_runs=args.sweep_idle_runs,
        history_events=args.history_events,
    )

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    report: dict[str, Any] = {"plan": asdict(plan), "cpus": CPUS}
    report["background_busy_before"] = background_busy(0.5 if args.quick else 2.0)
    log(f"machine busy before the run (background load): {report['background_busy_before']:.0%}")
    if report["background_busy_before"] > 0.1:
        log("WARNING: other load on this machine; the figures of this run are skewed")
    try:
        with contextlib.ExitStack() as stack:
            admin_url = args.database_url or stack.enter_context(admin_database_url())
            if any(name in SCENARIOS for name in scenarios):
                with scratch_database(admin_url, prefix="bench_metering") as url:
                    report["metering"] = run_metering(plan, url, log)
            if "sweep" in scenarios:
                report["sweep"] = run_sweep_scenario(
                    admin_url, plan.sweep_purchases, plan.sweep_idle_runs, log
                )
    except InvariantBroken as exc:
        print(f"CHECK FAILED: {exc}", file=sys.stderr)
        return 1
    report["verdicts"] = verdicts(report, worker_counts[0])
    log("")
    for line in render(report):
        log(line)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    if report.get("metering", {}).get("failed_requests"):
        print(
            f"FAILED: {report['metering']['failed_requests']} requests were not answered 200", file=sys.stderr
        )
        return 1
    if args.enforce and not all(met for *_, met in report["verdicts"]):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
