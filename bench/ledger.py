"""Ledger debit throughput and latency against a bare ``UPDATE`` at the same concurrency.

Two workloads, each run for the ledger and for the bare update in the same run:

* **hot**: every writer debits the same purchase (row-lock contention);
* **spread**: every operation picks one of ``--purchases`` purchases at random.

Each writer owns one psycopg connection opened like the Lambda one
(``autocommit=True, prepare_threshold=None``). The ledger side is the real path,
``LedgerService(PostgresTransactions(...)).apply(debit(...))`` with a unique
idempotency key per operation; the bare side is one autocommit
``UPDATE purchases SET balance_nano = balance_nano - %s WHERE id = %s``. The two
sides use separate purchases, so after the ledger phases ``balance == Σ ledger
amounts`` is checked (exit 1 if not) and the bare side's total is checked
against the number of updates it reported.

Phases alternate (round 1: bare then ledger, round 2: ledger then bare, ...) so
drift over the run (table growth, dead tuples, cache) does not favour one side.
Every phase warms up for ``--warmup`` seconds, then counts the operations that
complete inside its ``--seconds`` window. Writers are threads by default: on a
small machine shared with Postgres, 16 writer processes burn about twice the
client CPU per operation, which the database then lacks (``--writer-model
processes`` to compare; docs/benchmarks.md has the numbers).

Exit status: 0 done, 1 a ledger invariant or a reported count did not hold,
2 with ``--enforce`` when a ledger/bare ratio is below the target.

``--variants`` adds diagnostic kinds that take the ledger apart (explicit
transaction, statement sent inline, prepared statements, no idempotency probe,
...); they run in the same rounds but are not part of the verdict. After the run
the bench EXPLAINs one more debit on the hot purchase and prints which index the
idempotency probe used and how many rows it filtered (it must be
``ledger_entries_idempotency`` with 0 rows: anything else is O(history) per debit).

Run from the repository root::

    .venv/bin/python bench/ledger.py --seconds 10
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import re
import sys
import threading
import time
import traceback
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any
from uuid import UUID

_ROOT = Path(__file__).resolve().parents[1]
for _path in (_ROOT, _ROOT / "layers" / "shared"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import psycopg  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from billing.adapters.postgres.connection import open_connection  # noqa: E402
from billing.adapters.postgres.ledger_store import (  # noqa: E402
    _ENTRY_COLUMNS,
    _KEY_UNUSED,
    PostgresLedgerStore,
)
from billing.adapters.postgres.migrate import apply_migrations  # noqa: E402
from billing.adapters.postgres.purchase_store import PostgresPurchaseStore  # noqa: E402
from billing.adapters.postgres.transactions import PostgresTransactions  # noqa: E402
from billing.domain.api_keys import KeyRole, generate_api_key, hash_api_key  # noqa: E402
from billing.domain.ledger import LedgerOperation, credit, debit  # noqa: E402
from billing.domain.purchase import NewPurchase, Triggers  # noqa: E402
from billing.services.ledger import LedgerService  # noqa: E402
from local.postgres import admin_database_url, scratch_database  # noqa: E402

TARGET_RATIO = 0.5
OPENING_CREDIT_NANO = 100_000_000 * 1_000_000_000  # 100M USD: never runs out during a bench
DEBIT_NANO = 1_000
OFFER_ID = "bench-offer"
WORKLOADS = ("hot", "spread")
CPUS = os.cpu_count() or 1

ANALYZE = "ANALYZE purchases, ledger_entries"
BARE_UPDATE = "UPDATE purchases SET balance_nano = balance_nano - %s WHERE id = %s"

# The statement inside the ledger's ledger_apply_balance_change() function (migration 0006),
# sent inline: the diagnostic variants take it apart.
_INLINE_CTE = f"""
WITH updated AS (
    UPDATE purchases
       SET balance_nano = balance_nano + %(amount)s, updated_at = now()
     WHERE id = %(purchase_id)s
       AND (%(required)s::bigint IS NULL OR balance_nano - held_nano >= %(required)s::bigint)
       AND {_KEY_UNUSED}
 RETURNING balance_nano, held_nano
)
INSERT INTO ledger_entries ({_ENTRY_COLUMNS})
SELECT %(purchase_id)s, %(kind)s, %(amount)s, 0, balance_nano, held_nano,
       %(key)s, %(fingerprint)s, NULL, %(source)s, %(meter)s, %(quantity)s, %(unit)s, %(metadata)s
  FROM updated
RETURNING id, balance_after_nano, held_after_nano, hold_id
"""

# The ledger's statement without the NOT EXISTS idempotency probe (diagnostic only:
# a reused key would then surface as a unique violation instead of a quiet no-op).
_CTE_NO_PROBE = _INLINE_CTE.replace(f"AND {_KEY_UNUSED}", "")
assert _CTE_NO_PROBE != _INLINE_CTE, "the ledger statement changed shape; update the bench"

# The very same statement inside a PL/pgSQL function (diagnostic only): PL/pgSQL keeps
# its plans per session, so the CTE is no longer parsed and planned on every call
# while the client still never uses protocol-level prepared statements.
_FUNCTION_PARAMS = (
    ("purchase_id", "uuid"),
    ("kind", "text"),
    ("amount", "bigint"),
    ("required", "bigint"),
    ("key", "text"),
    ("fingerprint", "text"),
    ("source", "text"),
    ("meter", "text"),
    ("quantity", "numeric"),
    ("unit", "text"),
    ("metadata", "jsonb"),
)
_CREATE_FUNCTION = """
CREATE OR REPLACE FUNCTION bench_apply_balance_change({signature})
RETURNS TABLE (entry_id bigint, balance_after bigint, held_after bigint, entry_hold_id uuid)
LANGUAGE plpgsql AS $fn$
BEGIN
    RETURN QUERY {body};
END
$fn$
""".format(
    signature=", ".join(f"p_{name} {type_}" for name, type_ in _FUNCTION_PARAMS),
    body=re.sub(r"%\((\w+)\)s", r"p_\1", _INLINE_CTE.strip()),
)
_CALL_FUNCTION = "SELECT * FROM bench_apply_balance_change({})".format(
    ", ".join(f"%({name})s" for name, _ in _FUNCTION_PARAMS)
)


@dataclass(frozen=True)
class Kind:
    name: str
    #: writes ledger entries, so it runs on the ledger purchases and keeps the invariant
    ledger: bool
    description: str
    #: psycopg ``prepare_threshold`` for the phase (``None``: never prepare, as in Lambda)
    prepare_threshold: int | None = None
    #: run once on the scratch database before the first phase
    setup_sql: str | None = None


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("bare", False, "autocommit UPDATE purchases SET balance_nano = balance_nano - x"),
        Kind("ledger", True, "LedgerService.apply(debit(...)), the production path"),
        Kind("bare_tx", False, "the bare UPDATE inside conn.transaction(): BEGIN; UPDATE; COMMIT"),
        Kind("cte", True, "the ledger's statement sent inline (planned per call), autocommit"),
        Kind("cte_tx", True, "as cte, inside conn.transaction(): the first version's BEGIN; CTE; COMMIT"),
        Kind("cte_prepared", True, "as cte, with server-side prepared statements", prepare_threshold=0),
        Kind("ledger_prepared", True, "as ledger, with server-side prepared statements", prepare_threshold=0),
        Kind("cte_noprobe", True, "as cte, without the NOT EXISTS idempotency probe"),
        Kind("cte_pipeline", True, "BEGIN; CTE; COMMIT sent in one round trip (psycopg pipeline)"),
        Kind("fn", True, "the statement in a PL/pgSQL function, direct call", setup_sql=_CREATE_FUNCTION),
        Kind("fn_tx", True, "as fn, inside conn.transaction()", setup_sql=_CREATE_FUNCTION),
    )
}


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class PhaseSpec:
    phase_id: str
    kind: str
    targets: tuple[str, ...]
    start_ns: int
    measure_ns: int
    end_ns: int
    seed: int


@dataclass
class WorkerResult:
    ops: int = 0  # completed inside the measured window
    errors: int = 0  # failed inside the measured window
    done_total: int = 0  # every successful operation of the phase, warm-up included
    error_types: dict[str, int] = field(default_factory=dict)
    latencies_ns: bytes = b""  # array('q') of the measured operations
    cpu_s: float = 0.0  # this worker's own CPU time over the whole phase


def store_params(operation: LedgerOperation) -> dict[str, Any]:
    """The parameters ``PostgresLedgerStore.try_apply`` binds for a balance change."""
    return {
        "purchase_id": operation.purchase_id,
        "key": operation.idempotency_key,
        "fingerprint": operation.fingerprint(),
        "kind": operation.kind.value,
        "amount": operation.amount_nano,
        "held_delta": operation.held_delta_nano,
        "required": operation.required_available_nano,
        "hold_id": operation.hold_id,
        "expires_at": operation.hold_expires_at,
        "source": operation.source,
        "meter": operation.meter,
        "quantity": operation.quantity,
        "unit": operation.unit,
        "metadata": Jsonb(operation.metadata),
    }


def _operation(connection: psycopg.Connection[Any], spec: PhaseSpec, worker: int) -> Callable[[], None]:
    """One debit of ``spec.kind`` on a random target; unique idempotency key per call."""
    rng = random.Random(spec.seed * 1_000 + worker)
    targets = [UUID(target) for target in spec.targets]
    counter = iter(range(1 << 62))
    service = LedgerService(PostgresTransactions(lambda: connection))
    store = PostgresLedgerStore(connection)

    def target() -> UUID:
        return targets[0] if len(targets) == 1 else rng.choice(targets)

    def key() -> str:
        return f"{spec.phase_id}-{worker}-{next(counter)}"

    def bare() -> None:
        connection.execute(BARE_UPDATE, (DEBIT_NANO, target()))

    def bare_tx() -> None:
        with connection.transaction():
            connection.execute(BARE_UPDATE, (DEBIT_NANO, target()))

    def ledger() -> None:
        service.apply(debit(target(), DEBIT_NANO, key()))

    def cte() -> None:
        if store.try_apply(debit(target(), DEBIT_NANO, key())) is None:
            raise RuntimeError("debit not applied")

    def cte_tx() -> None:
        with connection.transaction():
            cte()

    def cte_noprobe() -> None:
        params = store_params(debit(target(), DEBIT_NANO, key()))
        if connection.execute(_CTE_NO_PROBE, params).fetchone() is None:
            raise RuntimeError("debit not applied")

    def cte_pipeline() -> None:
        with connection.pipeline():
            connection.execute("BEGIN")
            cursor = connection.execute(_INLINE_CTE, store_params(debit(target(), DEBIT_NANO, key())))
            connection.execute("COMMIT")
        if cursor.fetchone() is None:
            raise RuntimeError("debit not applied")

    def fn() -> None:
        params = store_params(debit(target(), DEBIT_NANO, key()))
        if connection.execute(_CALL_FUNCTION, params).fetchone() is None:
            raise RuntimeError("debit not applied")

    def fn_tx() -> None:
        with connection.transaction():
            fn()

    operations: dict[str, Callable[[], None]] = {
        "bare": bare,
        "bare_tx": bare_tx,
        "ledger": ledger,
        "ledger_prepared": ledger,
        "cte": cte,
        "cte_prepared": cte,
        "cte_tx": cte_tx,
        "cte_noprobe": cte_noprobe,
        "cte_pipeline": cte_pipeline,
        "fn": fn,
        "fn_tx": fn_tx,
    }
    return operations[spec.kind]


def _run_phase(
    connection: psycopg.Connection[Any], spec: PhaseSpec, worker: int, cpu: Callable[[], float]
) -> WorkerResult:
    connection.prepare_threshold = KINDS[spec.kind].prepare_threshold
    operation = _operation(connection, spec, worker)
    result = WorkerResult()
    errors: Counter[str] = Counter()
    latencies = array("q")
    clock, monotonic = time.perf_counter_ns, time.monotonic_ns
    while monotonic() < spec.start_ns:
        time.sleep(0.001)
    cpu_start = cpu()
    while monotonic() < spec.end_ns:
        started = clock()
        try:
            operation()
            failed = None
        except Exception as exc:  # counted and reported, never hidden
            failed = type(exc).__name__
        elapsed = clock() - started
        finished = monotonic()
        if failed is None:
            result.done_total += 1
        if spec.measure_ns <= finished <= spec.end_ns:
            if failed is None:
                result.ops += 1
                latencies.append(elapsed)
            else:
                result.errors += 1
                errors[failed] += 1
    result.cpu_s = cpu() - cpu_start
    result.error_types = dict(errors)
    result.latencies_ns = latencies.tobytes()
    connection.prepare_threshold = None
    return result


def _serve(channel: Pipe, url: str, worker: int, use_processes: bool) -> None:
    """A writer: one connection for its whole life, one phase per request until ``None``."""
    cpu = time.process_time if use_processes else time.thread_time
    connection = open_connection(url)
    channel.send("ready")
    try:
        while True:
            spec = channel.recv()
            if spec is None:
                return
            if connection.broken or connection.closed:
                connection = open_connection(url)
            try:
                channel.send(_run_phase(connection, spec, worker, cpu))
            except Exception:  # the coordinator reports it and stops the run
                channel.send(traceback.format_exc())
    finally:
        connection.close()


class Writers:
    """``count`` writers as threads or processes, each on its own connection."""

    def __init__(self, url: str, count: int, *, use_processes: bool) -> None:
        self._channels: list[Pipe] = []
        self._runners: list[multiprocessing.process.BaseProcess | threading.Thread] = []
        context = multiprocessing.get_context("spawn")
        for worker in range(count):
            ours, theirs = context.Pipe()
            runner: multiprocessing.process.BaseProcess | threading.Thread
            if use_processes:
                runner = context.Process(target=_serve, args=(theirs, url, worker, True), daemon=True)
            else:
                runner = threading.Thread(target=_serve, args=(theirs, url, worker, False), daemon=True)
            runner.start()
            self._channels.append(ours)
            self._runners.append(runner)
        for channel in self._channels:
            if channel.recv() != "ready":
                raise RuntimeError("a writer failed to start")

    def run(self, spec: PhaseSpec) -> list[WorkerResult]:
        for channel in self._channels:
            channel.send(spec)
        answers = [channel.recv() for channel in self._channels]
        failures = [answer for answer in answers if not isinstance(answer, WorkerResult)]
        if failures:
            raise RuntimeError(f"{len(failures)} writers failed; the first said:\n{failures[0]}")
        return answers

    def close(self) -> None:
        for channel in self._channels:
            channel.send(None)
        for runner in self._runners:
            runner.join(timeout=10)


# --------------------------------------------------------------------------- measurement side


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat; (0, 0) elsewhere."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


@dataclass
class PhaseResult:
    kind: str
    workload: str
    round: int
    seconds: float
    ops: int
    errors: int
    done_total: int
    error_types: dict[str, int]
    client_cpu_s: float
    machine_busy: float  # share of all cores busy during the window
    latencies_ns: list[int] = field(repr=False)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds


def _percentile(sorted_values: list[int], fraction: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1] / 1e6


@dataclass(frozen=True)
class Summary:
    kind: str
    workload: str
    seconds: float
    ops: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    rounds_ops_per_s: list[float]
    client_cpu_us_per_op: float
    #: machine CPU per operation minus the writers' own: mostly Postgres (an estimate)
    server_cpu_us_per_op: float
    machine_busy: float


def summarise(phases: list[PhaseResult]) -> Summary:
    latencies = sorted(value for phase in phases for value in phase.latencies_ns)
    seconds = sum(phase.seconds for phase in phases)
    ops = sum(phase.ops for phase in phases)
    done = sum(phase.done_total for phase in phases)
    client_us = sum(phase.client_cpu_s for phase in phases) / max(done, 1) * 1e6
    machine_us = sum(phase.machine_busy * CPUS * phase.seconds for phase in phases) / max(ops, 1) * 1e6
    return Summary(
        kind=phases[0].kind,
        workload=phases[0].workload,
        seconds=seconds,
        ops=ops,
        ops_per_s=ops / seconds,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        errors=sum(phase.errors for phase in phases),
        rounds_ops_per_s=[round(phase.ops_per_s, 1) for phase in phases],
        client_cpu_us_per_op=client_us,
        server_cpu_us_per_op=machine_us - client_us,
        machine_busy=sum(phase.machine_busy for phase in phases) / len(phases),
    )


class InvariantBroken(Exception):
    pass


def _create_purchases(connection: psycopg.Connection[Any], count: int) -> list[UUID]:
    """``count`` purchases shaped like real ones, funded by a ledger deposit each."""
    connection.execute(
        """INSERT INTO offers (id, sku, kind, title, min_deposit_nano)
           VALUES (%s, %s, 's3_bucket', 'Bench offer', 0) ON CONFLICT DO NOTHING""",
        (OFFER_ID, OFFER_ID.upper()),
    )
    ids = [uuid.uuid4() for _ in range(count)]
    store = PostgresPurchaseStore(connection)
    with connection.transaction():
        for purchase_id in ids:
            store.insert(
                NewPurchase(
                    id=purchase_id,
                    offer_id=OFFER_ID,
                    triggers=Triggers(low_nano=3_000, critical_nano=2_000, termination_nano=1_000),
                    customer_key_hash=hash_api_key(generate_api_key(KeyRole.CUSTOMER)),
                    vendor_key_hash=hash_api_key(generate_api_key(KeyRole.VENDOR)),
                )
            )
    service = LedgerService(PostgresTransactions(lambda: connection))
    for purchase_id in ids:
        service.apply(credit(purchase_id, OPENING_CREDIT_NANO, f"opening-{purchase_id}"))
    return ids


def check_ledger_invariant(connection: psycopg.Connection[Any], purchase_ids: list[UUID]) -> None:
    """balance == Σ amount_nano and the newest entry's running balance matches, for every id."""
    broken = connection.execute(
        """SELECT p.id, p.balance_nano, s.total, last.balance_after_nano
             FROM purchases p
             JOIN LATERAL (SELECT COALESCE(sum(amount_nano), 0) AS total
                             FROM ledger_entries e WHERE e.purchase_id = p.id) s ON true
             JOIN LATERAL (SELECT balance_after_nano FROM ledger_entries e
                            WHERE e.purchase_id = p.id ORDER BY id DESC LIMIT 1) last ON true
            WHERE p.id = ANY(%s)
              AND (p.balance_nano <> s.total OR p.balance_nano <> last.balance_after_nano)""",
        (purchase_ids,),
    ).fetchall()
    if broken:
        raise InvariantBroken(f"balance != Σ ledger amounts for {len(broken)} purchases, e.g. {broken[0]}")


def check_totals(
    connection: psycopg.Connection[Any], purchase_ids: list[UUID], debits: int, *, ledger: bool
) -> None:
    """Every debit a writer reported is in the database, and no more."""
    (balance,) = connection.execute(
        "SELECT sum(balance_nano) FROM purchases WHERE id = ANY(%s)", (purchase_ids,)
    ).fetchone() or (None,)
    expected = OPENING_CREDIT_NANO * len(purchase_ids) - DEBIT_NANO * debits
    if balance != expected:
        raise InvariantBroken(f"balances sum to {balance}, the writers' reported debits imply {expected}")
    if ledger:
        (entries,) = connection.execute(
            "SELECT count(*) FROM ledger_entries WHERE purchase_id = ANY(%s) AND kind = 'usage'",
            (purchase_ids,),
        ).fetchone() or (None,)
        if entries != debits:
            raise InvariantBroken(f"{entries} usage entries, the writers reported {debits} debits")


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def explain_probe(connection: psycopg.Connection[Any], purchase_id: UUID) -> dict[str, Any]:
    """EXPLAIN ANALYZE one more ledger debit on ``purchase_id`` (rolled back): how is the key probed?"""
    (entries,) = connection.execute(
        "SELECT count(*) FROM ledger_entries WHERE purchase_id = %s", (purchase_id,)
    ).fetchone() or (0,)
    params = store_params(debit(purchase_id, DEBIT_NANO, f"explain-{uuid.uuid4().hex}"))
    with connection.transaction(force_rollback=True):
        row = connection.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + _INLINE_CTE, params).fetchone()
    assert row is not None
    explained = row[0][0]
    probes = [
        node
        for node in _plan_nodes(explained["Plan"])
        if node.get("Relation Name") == "ledger_entries" and "Index Name" in node
    ]
    probe = probes[0] if probes else {}
    return {
        "entries_of_purchase": entries,
        "probe_index": probe.get("Index Name"),
        "probe_rows_removed_by_filter": probe.get("Rows Removed by Filter", 0),
        "probe_shared_buffers": probe.get("Shared Hit Blocks", 0) + probe.get("Shared Read Blocks", 0),
        "probe_ms": probe.get("Actual Total Time"),
        "statement_ms": explained.get("Execution Time"),
        "planning_ms": explained.get("Planning Time"),
    }


def _settings(connection: psycopg.Connection[Any]) -> dict[str, str]:
    names = (
        "server_version",
        "fsync",
        "synchronous_commit",
        "wal_sync_method",
        "shared_buffers",
        "autovacuum",
    )
    return {name: str((connection.execute(f"SHOW {name}").fetchone() or ("?",))[0]) for name in names}


def _order(kinds: list[str], round_index: int) -> list[str]:
    """Rotate the kinds each round: bare/ledger, then ledger/bare, ..."""
    shift = round_index % len(kinds)
    return kinds[shift:] + kinds[:shift]


@dataclass
class Plan:
    seconds: float
    warmup: float
    rounds: int
    writers: int
    purchases: int
    kinds: list[str]
    use_processes: bool
    #: ANALYZE purchases and ledger_entries halfway through every warm-up (outside the timed window)
    analyze: bool = False
    #: diagnostic statements run on the scratch database after migrating (e.g. DROP INDEX ...)
    scratch_sql: list[str] = field(default_factory=list)


def background_busy(seconds: float = 2.0) -> float:
    """Share of the machine's CPUs busy while this bench is idle: other load skews every figure."""
    before = _cpu_ticks()
    time.sleep(seconds)
    after = _cpu_ticks()
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else math.nan


def run(plan: Plan, url: str, log: Callable[[str], None]) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as connection:
        apply_migrations(connection)
        for setup in dict.fromkeys(KINDS[name].setup_sql for name in plan.kinds):
            if setup:
                connection.execute(setup)
        for statement in plan.scratch_sql:
            log(f"scratch database: {statement}")
            connection.execute(statement)
        settings = _settings(connection)
        idle = background_busy()
        log(f"machine busy before the run (background load): {idle:.0%}")
        if idle > 0.1:
            log("WARNING: other load on this machine; the figures of this run are skewed")
        log(f"creating {2 * plan.purchases + 2} funded purchases ...")
        purchases = {
            ("ledger", "hot"): _create_purchases(connection, 1),
            ("ledger", "spread"): _create_purchases(connection, plan.purchases),
            ("bare", "hot"): _create_purchases(connection, 1),
            ("bare", "spread"): _create_purchases(connection, plan.purchases),
        }
        connection.execute("ANALYZE")
        debits: Counter[tuple[str, str]] = Counter()
        phases: list[PhaseResult] = []
        log(f"starting {plan.writers} writer {'processes' if plan.use_processes else 'threads'} ...")
        writers = Writers(url, plan.writers, use_processes=plan.use_processes)
        try:
            for round_index in range(plan.rounds):
                for workload in WORKLOADS:
                    for kind_name in _order(plan.kinds, round_index):
                        kind = KINDS[kind_name]
                        side = "ledger" if kind.ledger else "bare"
                        targets = purchases[(side, workload)]
                        start = time.monotonic_ns() + 200_000_000
                        measure = start + int(plan.warmup * 1e9)
                        end = measure + int(plan.seconds * 1e9)
                        spec = PhaseSpec(
                            phase_id=f"r{round_index}-{workload}-{kind_name}-{uuid.uuid4().hex[:8]}",
                            kind=kind_name,
                            targets=tuple(str(target) for target in targets),
                            start_ns=start,
                            measure_ns=measure,
                            end_ns=end,
                            seed=random.randrange(1 << 30),
                        )
                        during_warmup = (lambda: connection.execute(ANALYZE)) if plan.analyze else None
                        phases.append(_measure(writers, spec, workload, round_index, during_warmup))
                        last = phases[-1]
                        log(
                            f"round {round_index + 1} {workload:6} {kind_name:15} {last.ops_per_s:9.1f} ops/s"
                            f"  errors {last.errors}  machine busy {last.machine_busy:.0%}"
                        )
                        debits[(side, workload)] += last.done_total
                        if kind.ledger:
                            check_ledger_invariant(connection, targets)
                        check_totals(connection, targets, debits[(side, workload)], ledger=kind.ledger)
        finally:
            writers.close()
        size = connection.execute(
            "SELECT count(*), pg_size_pretty(pg_total_relation_size('ledger_entries')) FROM ledger_entries"
        ).fetchone()
        probe = explain_probe(connection, purchases[("ledger", "hot")][0])
    summaries = {
        (kind, workload): summarise([p for p in phases if p.kind == kind and p.workload == workload])
        for kind in plan.kinds
        for workload in WORKLOADS
    }
    ratios = {
        workload: summaries[("ledger", workload)].ops_per_s / summaries[("bare", workload)].ops_per_s
        for workload in WORKLOADS
    }
    return {
        "plan": asdict(plan),
        "server": settings,
        "cpus": CPUS,
        "background_busy_before": idle,
        "ledger_entries_at_end": {"rows": size[0], "size": size[1]} if size else None,
        "hot_purchase_probe": probe,
        "results": [asdict(summary) for summary in summaries.values()],
        "ratios": ratios,
        "target": TARGET_RATIO,
        "meets_target": all(ratio >= TARGET_RATIO for ratio in ratios.values()),
    }


def _measure(
    writers: Writers,
    spec: PhaseSpec,
    workload: str,
    round_index: int,
    during_warmup: Callable[[], object] | None = None,
) -> PhaseResult:
    """Run one phase; ``during_warmup`` runs halfway through the warm-up, never in the window."""
    ticks: dict[str, tuple[int, int]] = {}

    def sample() -> None:
        if during_warmup is not None:
            time.sleep(max(0.0, ((spec.start_ns + spec.measure_ns) // 2 - time.monotonic_ns()) / 1e9))
            during_warmup()
        for moment, at in (("start", spec.measure_ns), ("end", spec.end_ns)):
            time.sleep(max(0.0, (at - time.monotonic_ns()) / 1e9))
            ticks[moment] = _cpu_ticks()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results = writers.run(spec)
    sampler.join()
    busy = ticks["end"][0] - ticks["start"][0]
    total = ticks["end"][1] - ticks["start"][1]
    errors: Counter[str] = Counter()
    latencies: list[int] = []
    for result in results:
        errors.update(result.error_types)
        latencies.extend(array("q", result.latencies_ns))
    return PhaseResult(
        kind=spec.kind,
        workload=workload,
        round=round_index,
        seconds=(spec.end_ns - spec.measure_ns) / 1e9,
        ops=sum(result.ops for result in results),
        errors=sum(result.errors for result in results),
        done_total=sum(result.done_total for result in results),
        error_types=dict(errors),
        client_cpu_s=sum(result.cpu_s for result in results),
        machine_busy=busy / total if total else math.nan,
        latencies_ns=latencies,
    )


def render(report: dict[str, Any]) -> Iterator[str]:
    plan = report["plan"]
    yield (
        f"{plan['writers']} writer {'processes' if plan['use_processes'] else 'threads'}, "
        f"{plan['rounds']} rounds x {plan['seconds']:g} s per phase (+{plan['warmup']:g} s warm-up), "
        f"spread over {plan['purchases']} purchases"
    )
    yield (
        f"machine: {CPUS} CPUs, {report['background_busy_before']:.0%} busy before the run; "
        "CPU/op = CPU seconds per operation (client: the writers, server: the rest)"
    )
    yield "server: " + ", ".join(f"{name}={value}" for name, value in report["server"].items())
    yield ""
    yield (
        f"{'workload':8} {'kind':16} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
        f"  {'CPU/op client':>13} {'server':>7} {'busy':>5}  per round ops/s"
    )
    for row in report["results"]:
        yield (
            f"{row['workload']:8} {row['kind']:16} {row['ops_per_s']:9.1f} {row['p50_ms']:8.2f} "
            f"{row['p99_ms']:8.2f} {row['errors']:6d}  {row['client_cpu_us_per_op']:10.0f} us "
            f"{row['server_cpu_us_per_op']:4.0f} us "
            f"{row['machine_busy']:5.0%}  {row['rounds_ops_per_s']}"
        )
    yield ""
    for workload, ratio in report["ratios"].items():
        verdict = "meets" if ratio >= report["target"] else "BELOW"
        yield f"ratio ledger/bare, {workload:6}: {ratio:.3f}  ({verdict} target {report['target']})"
    probe = report["hot_purchase_probe"]
    yield (
        f"idempotency probe on the hot purchase after the run ({probe['entries_of_purchase']} entries): "
        f"index {probe['probe_index']}, {probe['probe_rows_removed_by_filter']} rows filtered, "
        f"{probe['probe_shared_buffers']} buffers, {probe['probe_ms']:.2f} ms of a "
        f"{probe['statement_ms']:.2f} ms statement (+{probe['planning_ms']:.2f} ms planning)"
    )
    verdict = "PASS" if report["meets_target"] else "FAIL"
    yield f"verdict: {verdict} (target >= {report['target']} in both workloads)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="kinds: " + "; ".join(f"{kind.name}: {kind.description}" for kind in KINDS.values()),
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the order of kinds rotates each round")
    parser.add_argument("--writers", type=int, default=16, help="concurrent writers (default 16)")
    parser.add_argument("--purchases", type=int, default=1000, help="purchases in the spread workload")
    parser.add_argument("--database-url", help="admin URL of the server (default: DATABASE_URL or local)")
    parser.add_argument(
        "--writer-model",
        choices=("threads", "processes"),
        default="threads",
        help="writers as threads of this process (default) or as separate processes",
    )
    parser.add_argument(
        "--variants",
        default="",
        help="extra diagnostic kinds, comma separated: "
        + ", ".join(name for name in KINDS if name not in ("bare", "ledger")),
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="ANALYZE purchases and ledger_entries halfway through every warm-up (fresh planner statistics)",
    )
    parser.add_argument(
        "--scratch-sql",
        action="append",
        default=[],
        metavar="SQL",
        help="diagnostic statement run on the scratch database after migrating (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--enforce", action="store_true", help=f"exit 2 if a ratio is below {TARGET_RATIO}")
    args = parser.parse_args(argv)

    variants = [name for name in args.variants.split(",") if name]
    unknown = [name for name in variants if name not in KINDS or name in ("bare", "ledger")]
    if unknown:
        parser.error(f"unknown variants: {', '.join(unknown)}")
    plan = Plan(
        seconds=args.seconds,
        warmup=args.warmup,
        rounds=args.rounds,
        writers=args.writers,
        purchases=args.purchases,
        kinds=["bare", "ledger", *variants],
        use_processes=args.writer_model == "processes",
        analyze=args.analyze,
        scratch_sql=args.scratch_sql,
    )

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        if args.database_url:
            with scratch_database(args.database_url, prefix="bench_ledger") as url:
                report = run(plan, url, log)
        else:
            with admin_database_url() as admin_url, scratch_database(admin_url, prefix="bench_ledger") as url:
                report = run(plan, url, log)
    except InvariantBroken as exc:
        print(f"INVARIANT BROKEN: {exc}", file=sys.stderr)
        return 1
    log("")
    for line in render(report):
        log(line)
    if args.json:
        print(json.dumps(report, indent=2))
    if args.enforce and not report["meets_target"]:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
