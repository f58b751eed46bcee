"""Reading a cost-export delivery: the data files its manifest lists → costs per bucket, day and kind.

API (the charging side depends on exactly this)::

    read_delivery(delivery: Delivery, open_file: Callable[[str], IO[bytes]],
                  settings: ReaderSettings = ReaderSettings()) -> ParsedDelivery

``open_file(key)`` returns the data file as a binary file, read once from its start and
closed by the reader when done with it (``billing.adapters.aws.s3_reports`` downloads each
object to a temp file that is deleted on close, so only one data file is on disk at a time).
Files are read strictly one after another, in the manifest's order. Every file is read to
its end before anything is returned: ``ParsedDelivery.rows_read``/``s3_rows``/``unattributed``
are final, and ``costs`` then streams the grouped ``BucketDayCost``s out of DuckDB
(``fetchmany``; never a whole list). Anything that makes the delivery unbillable raises
``DeliveryRejected`` (nothing has been returned yet, so nothing can have been applied); a
handle that fails while it is read (a reset stream, a disk error) is an outage, not bad data:
``DependencyUnavailable``, so the delivery is retried rather than marked failed.

**Engine.** DuckDB, imported lazily (only the cost-export function ships it, in its own
layer). It reads CSV and Parquet natively in bounded memory (``memory_limit``; beyond it the
grouped rows and hash tables spill to ``temp_directory`` under ``/tmp``). Gzip files are inflated
by a thread of ours with ``zlib-ng`` (``zlib`` if absent), which checks every member's CRC-32 and
length (DuckDB notices a truncated gzip but checks no CRC: a flipped byte can inflate to a different
amount), and handed to DuckDB as plain CSV through one FIFO per DuckDB thread (cut at line ends,
checked afterwards: see ``_DeliveryReading._aggregate``), so each file is inflated once. CSV is
read with every column as VARCHAR under positional names (``c0``, ``c1``…; CUR tag columns may
differ only in case, which DuckDB identifiers do not), with the dialect fixed (``,`` ``"`` ``"``,
header, strict column count) and no sniffing. Each file is grouped per charge key as it is read;
only the keys are kept. Normalisation happens in SQL:

* **Column sets**, told from each file's header: legacy CUR (``lineItem/…``,
  ``resourceTags/user:officex_purchase_id``), CUR 2.0 and legacy-CUR-Parquet
  (``line_item_…``, ``resource_tags`` map/JSON with key ``user_officex_purchase_id``, or a
  flat ``resource_tags_user_officex_purchase_id``), FOCUS 1.x (``ResourceId``,
  ``BilledCost``, ``ChargePeriodStart``, ``ServiceName``/``x_ServiceCode``,
  ``ChargeCategory``, ``x_UsageType``/``SkuMeter``, ``Tags`` JSON with key
  ``user:officex_purchase_id`` or ``officex_purchase_id``). The manifest's format is not
  trusted for this: legacy CUR in Parquet, for instance, has CUR-2.0-style names.
* **Amounts** (unblended cost; FOCUS ``BilledCost``) are cast text → ``DECIMAL(38,18)``:
  ``1.81E-8`` is exactly 0.0000000181. Parquet doubles go through their shortest text form
  first (``1.81e-08``), so no binary-float digits leak in. An amount that does not parse, or
  is missing, rejects the delivery (nothing is billed as zero).
* **Usage day** = the UTC date of the usage start (``2023-11-04T23:00:00.000Z``, with or
  without ``T``, milliseconds or zone; a zone-less time is UTC).
* **S3 rows**: product code ``AmazonS3`` (legacy/CUR 2.0), FOCUS ``x_ServiceCode =
  'AmazonS3'`` or ``ServiceName = 'Amazon Simple Storage Service'``; data transfer is included.
  They are summarised under the product ``AmazonS3`` whatever the column set calls it.
* **Charge kind** from the usage type: ``…TimedStorage…`` storage, ``…Requests…`` requests,
  ``…DataTransfer…``/``…-In-Bytes``/``…-Out-Bytes`` data transfer, anything else other. FOCUS
  files without a usage-type column fall back on the pricing unit (GB-Mo → storage,
  requests) and the charge description ("data transfer").
* **Bucket** = resource id, ``arn:aws:s3:::name[/…]`` → ``name``.
* **Unattributed** (summarised per reason and product, net): ``tax`` (Tax line items of
  any product), ``not_s3``, ``s3_without_resource``, ``s3_resource_not_a_bucket``,
  ``s3_outside_billing_period`` (no usable usage start, or a day outside the delivery's
  month). Credits, refunds and unknown line-item types are summed as they come: negative
  amounts net into the same key.

**Rejected** (``DeliveryRejected``, the reason names the file): a header without a
resource-id column (attribution impossible; the delivery is still read to the end so the
reason can say what it held, and ``DeliveryRejected.stats`` has the counts), a column set we do
not know or a required column missing, a CSV error (wrong column count, bad quoting), an
amount or an S3 usage start that does not parse, a missing amount, a truncated or corrupt gzip
(CRC-32 or length wrong, bad deflate data), an unreadable Parquet file, and a delivery with no
rows at all (an empty month-to-date delivery would restate the month to zero).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import gzip
import os
import select
import shutil
import sys
import tempfile
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import IO, Any, cast

from billing.domain.cost_export import (
    BucketDayCost,
    ChargeKey,
    ChargeKind,
    Delivery,
    DeliveryRejected,
    DeliveryStats,
    ParsedDelivery,
    UnattributedCost,
)
from billing.domain.cost_export_manifests import data_file_kind
from billing.domain.errors import DependencyUnavailable

OpenFile = Callable[[str], IO[bytes]]

#: The purchase tag: legacy CUR column, CUR 2.0 map key, FOCUS ``Tags`` keys.
LEGACY_TAG_COLUMN = "resourceTags/user:officex_purchase_id"
CUR2_TAG_KEY = "user_officex_purchase_id"
FOCUS_TAG_KEYS = ("user:officex_purchase_id", "officex_purchase_id")

UNATTRIBUTED_TAX = "tax"
UNATTRIBUTED_NOT_S3 = "not_s3"
UNATTRIBUTED_NO_RESOURCE = "s3_without_resource"
UNATTRIBUTED_NOT_A_BUCKET = "s3_resource_not_a_bucket"
UNATTRIBUTED_OUTSIDE_PERIOD = "s3_outside_billing_period"

_CHUNK_BYTES = 256 * 1024
#: DuckDB's CSV read buffer (its default is larger, allocated outside the aggregate's spillable memory).
_CSV_BUFFER_BYTES = 4 * 1024 * 1024
_INFLATE_BYTES = 1024 * 1024
_POLL_SECONDS = 0.1
_OPEN_RETRY_SECONDS = 0.002
_CLOSED = -1  # a FIFO descriptor already closed
#: A line longer than this is not cut into FIFOs (DuckDB's own limit, max_line_size, is 2 MB).
_LONGEST_LINE_BYTES = 8 * 1024 * 1024
_MAX_REASON = 400
_STALE_FOLDER_SECONDS = 6 * 3600  # longer than any read (the function times out after 15 minutes)
_DATA_TRANSFER = r"DataTransfer|-(In|Out)-A?Bytes"
_BUCKET_NAME = r"[A-Za-z0-9._-]{3,255}"
#: Charge kinds as TINYINT inside DuckDB (smaller group keys than text).
_STORAGE, _REQUESTS, _TRANSFER, _OTHER = 1, 2, 3, 4
_KINDS = {
    _STORAGE: ChargeKind.STORAGE,
    _REQUESTS: ChargeKind.REQUESTS,
    _TRANSFER: ChargeKind.DATA_TRANSFER,
    _OTHER: ChargeKind.OTHER,
}


@dataclass(frozen=True)
class ReaderSettings:
    """DuckDB limits. Defaults measured with bench/cost_export.py (docs/benchmarks.md)."""

    memory_limit: str = "192MB"
    #: DuckDB threads; a gzip CSV is cut into as many FIFOs, one parsed per thread (our inflating
    #: thread is extra). They share ``memory_limit``.
    threads: int = 2
    temp_directory: str | None = None  # default: <tempdir>/cost-export-duckdb
    fetch_rows: int = 10_000


# ---------------------------------------------------------------------- column sets
@dataclass(frozen=True)
class _Fields:
    """SQL expressions (VARCHAR unless said) for the fields of one data file."""

    column_set: str
    resource_column: str
    resource: str | None  # None: the file has no resource-id column
    cost_column: str
    cost: str
    start_column: str
    start: str
    product: str
    is_s3: str  # BOOLEAN
    is_tax: str  # BOOLEAN
    kind: str  # a ``_KINDS`` code (TINYINT), for S3 rows
    tag: str


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class _Columns:
    """A file's columns by header name, as SQL expressions over its source."""

    def __init__(self, names: list[str], types: list[str] | None) -> None:
        self.names = names
        self._position: dict[str, int] = {}
        for index, name in enumerate(names):
            self._position.setdefault(name, index)
        self._types = types  # None: CSV (every column VARCHAR, positional names)

    def has(self, name: str) -> bool:
        return name in self._position

    def text(self, name: str) -> str | None:
        """The column as VARCHAR, ``None`` if the file has no such column."""
        index = self._position.get(name)
        if index is None:
            return None
        if self._types is None:
            return f"c{index}"
        column = _quote_identifier(self.names[index])
        column_type = self._types[index].upper()
        if column_type == "VARCHAR":
            return column
        if column_type.startswith(("MAP", "STRUCT")):
            return f"to_json({column})"
        return f"CAST({column} AS VARCHAR)"

    def required(self, key: str, *names: str) -> list[str]:
        missing = [name for name in names if not self.has(name)]
        if missing:
            raise DeliveryRejected(f"{key}: required column(s) missing: {', '.join(missing)}")
        return [self.text(name) or "NULL" for name in names]


def _kind_from_usage_type(usage_type: str) -> str:
    return (
        f"CASE WHEN {usage_type} IS NULL THEN NULL"
        f" WHEN contains({usage_type}, 'TimedStorage') THEN {_STORAGE}"
        f" WHEN contains({usage_type}, 'Requests') THEN {_REQUESTS}"
        f" WHEN regexp_matches({usage_type}, '{_DATA_TRANSFER}') THEN {_TRANSFER}"
        f" ELSE {_OTHER} END"
    )


def _json_keys(document: str, keys: tuple[str, ...]) -> str:
    lookups = ", ".join(
        f"json_extract_string({document}, {_literal('$.' + _quote_identifier(k))})" for k in keys
    )
    return f"CASE WHEN json_valid({document}) THEN coalesce({lookups}) END"


@dataclass(frozen=True)
class _LineItemColumns:
    """Where a CUR (legacy or 2.0) keeps what the bill needs: the same columns under two spellings."""

    column_set: str
    cost: str
    start: str
    product: str
    usage_type: str
    line_item_type: str
    resource: str


_LEGACY_COLUMNS = _LineItemColumns(
    column_set="legacy CUR",
    cost="lineItem/UnblendedCost",
    start="lineItem/UsageStartDate",
    product="lineItem/ProductCode",
    usage_type="lineItem/UsageType",
    line_item_type="lineItem/LineItemType",
    resource="lineItem/ResourceId",
)
_CUR2_COLUMNS = _LineItemColumns(
    column_set="CUR 2.0",
    cost="line_item_unblended_cost",
    start="line_item_usage_start_date",
    product="line_item_product_code",
    usage_type="line_item_usage_type",
    line_item_type="line_item_line_item_type",
    resource="line_item_resource_id",
)


def _line_items(columns: _Columns, key: str, names: _LineItemColumns, tag: str) -> _Fields:
    cost, start, product, usage_type, line_item_type = columns.required(
        key, names.cost, names.start, names.product, names.usage_type, names.line_item_type
    )
    return _Fields(
        column_set=names.column_set,
        resource_column=names.resource,
        resource=columns.text(names.resource),
        cost_column=names.cost,
        cost=cost,
        start_column=names.start,
        start=start,
        product=product,
        is_s3=f"{product} = 'AmazonS3'",
        is_tax=f"{line_item_type} = 'Tax'",
        kind=f"coalesce({_kind_from_usage_type(usage_type)}, {_OTHER})",
        tag=tag,
    )


def _legacy(columns: _Columns, key: str) -> _Fields:
    return _line_items(columns, key, _LEGACY_COLUMNS, columns.text(LEGACY_TAG_COLUMN) or "NULL")


def _cur2(columns: _Columns, key: str) -> _Fields:
    flat = columns.text(f"resource_tags_{CUR2_TAG_KEY}")  # legacy CUR in Parquet, or a split-out key
    candidates = [flat] if flat is not None else []
    document = columns.text("resource_tags")
    if document is not None:
        candidates.append(_json_keys(document, (CUR2_TAG_KEY, "user:officex_purchase_id")))
    tag = f"coalesce({', '.join(candidates)})" if candidates else "NULL"
    return _line_items(columns, key, _CUR2_COLUMNS, tag)


def _focus(columns: _Columns, key: str) -> _Fields:
    cost, start, category = columns.required(key, "BilledCost", "ChargePeriodStart", "ChargeCategory")
    service_code = columns.text("x_ServiceCode")
    service_name = columns.text("ServiceName")
    if service_code is None and service_name is None:
        raise DeliveryRejected(f"{key}: required column(s) missing: ServiceName (or x_ServiceCode)")
    s3_tests = []
    if service_code is not None:
        s3_tests.append(f"{service_code} = 'AmazonS3'")
    if service_name is not None:
        s3_tests.append(f"{service_name} = 'Amazon Simple Storage Service'")
    product = f"coalesce({', '.join(e for e in (service_code, service_name) if e is not None)})"
    usage_types = [e for name in ("x_UsageType", "SkuMeter") if (e := columns.text(name)) is not None]
    unit = [e for name in ("PricingUnit", "ConsumedUnit") if (e := columns.text(name)) is not None]
    description = columns.text("ChargeDescription")
    fallback = ["CASE"]
    if unit:
        lowered_unit = f"lower(coalesce({', '.join(unit)}, ''))"
        fallback.append(
            f" WHEN regexp_matches({lowered_unit}, '^(gb|gibibyte)[- /]?mo') THEN {_STORAGE}"
            f" WHEN contains({lowered_unit}, 'request') THEN {_REQUESTS}"
        )
    if description is not None:
        fallback.append(
            f" WHEN contains(lower({description}), 'data transfer')"
            f" OR regexp_matches({description}, '{_DATA_TRANSFER}') THEN {_TRANSFER}"
        )
    fallback.append(f" ELSE {_OTHER} END")
    kind = "".join(fallback) if len(fallback) > 2 else str(_OTHER)
    if usage_types:
        kind = f"coalesce({_kind_from_usage_type('coalesce(' + ', '.join(usage_types) + ')')}, {kind})"
    document = columns.text("Tags")
    return _Fields(
        column_set="FOCUS",
        resource_column="ResourceId",
        resource=columns.text("ResourceId"),
        cost_column="BilledCost",
        cost=cost,
        start_column="ChargePeriodStart",
        start=start,
        product=product,
        is_s3=" OR ".join(s3_tests),
        is_tax=f"{category} = 'Tax'",
        kind=kind,
        tag=_json_keys(document, FOCUS_TAG_KEYS) if document is not None else "NULL",
    )


def _fields_for(columns: _Columns, key: str) -> _Fields:
    names = columns.names
    if any(name.startswith("lineItem/") for name in names):
        return _legacy(columns, key)
    if any(name.startswith("line_item_") for name in names):
        return _cur2(columns, key)
    if columns.has("BilledCost") or columns.has("ChargePeriodStart"):
        return _focus(columns, key)
    shown = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
    raise DeliveryRejected(
        f"{key}: the columns are neither legacy CUR, CUR 2.0 nor FOCUS (header: {shown or 'empty'})"
    )


# ---------------------------------------------------------------------- files
class _FilePass(threading.Thread):
    """Reads a data file once through the caller's handle (download progress, local replays).

    With ``pipes_to`` (a gzip CSV) the file is inflated here (``zlib-ng``, else ``zlib``), every
    member checked against its CRC-32 and length (DuckDB notices truncation but checks no CRC),
    and the inflated CSV is written into those FIFOs, which DuckDB reads as plain CSV: one inflate
    per file, on a thread of its own; without, the handle is only read to its end. With several
    FIFOs the CSV is cut at line ends and each piece goes to whichever FIFO DuckDB is ready to
    read, after a copy of the header line, so DuckDB parses them on as many threads; the line ends
    are counted (``_Lines``), which lets the caller prove that no cut fell inside a quoted field.
    ``error`` says what is wrong with the data; ``outage`` holds what the handle raised (an I/O
    failure: the delivery is retried, never rejected); ``completed`` that everything was written
    and the FIFOs closed.
    """

    def __init__(self, handle: IO[bytes], *, pipes_to: tuple[str, ...] = ()) -> None:
        super().__init__(name="cost-export-file-pass", daemon=True)
        self._handle = handle
        self._inflate = bool(pipes_to)  # only a gzip CSV goes through FIFOs
        self._pipes_to = pipes_to
        self._stop_requested = threading.Event()
        self.error: str | None = None
        self.outage: BaseException | None = None
        self.completed = False
        self._lines: _Lines | None = None  # how the CSV was cut (several FIFOs, read to its end)

    def rows_if_split_at_records(self) -> int | None:
        """``_Lines.rows_if_split_at_records``; ``None`` also when the CSV was not cut, or not to its end."""
        return self._lines.rows_if_split_at_records() if self._lines is not None else None

    def run(self) -> None:
        inflate_errors: tuple[type[Exception], ...] = (zlib.error,)
        pipes: _Pipes | None = None
        try:
            inflater_type, inflate_errors = _inflater_type()
            if self._pipes_to:
                pipes = _Pipes(self._pipes_to, self._stop_requested)
            self._read(inflater_type, pipes)
            read_to_the_end = not self._stop_requested.is_set()
            if pipes is not None:
                flushed = pipes.close()
                pipes = None
                read_to_the_end = read_to_the_end and flushed
            self.completed = read_to_the_end
        except BrokenPipeError:
            pass  # DuckDB stopped reading: ``completed`` stays false
        except inflate_errors as error:
            self.error = f"corrupt gzip data ({error})"
        except Exception as error:
            # A reset connection, a read timeout, a disk error: the data may be fine, so this is
            # an outage (re-raised by the caller: the event is retried), not a rejected delivery.
            self.outage = error
        finally:
            if pipes is not None:
                pipes.close(flush=False)

    def finish(self, *, reader_failed: bool) -> None:
        """Wait for the pass to end; stop it first when the reader failed or is done with the FIFOs.

        DuckDB sees the end of a FIFO only once the pass has closed it, so after a successful
        read a pass still writing means DuckDB stopped reading early (``completed`` stays false).
        """
        if reader_failed or self._pipes_to:
            self._stop_requested.set()
        self.join()

    def _read(self, inflater_type: Callable[..., Any], pipes: _Pipes | None) -> None:
        inflater: Any = None
        members = 0
        lines = _Lines(pipes) if pipes is not None and pipes.count > 1 else None
        send = lines.send if lines is not None else pipes.send if pipes is not None else None
        while not self._stop_requested.is_set():
            chunk = self._handle.read(_CHUNK_BYTES)
            if not chunk:
                break
            if not self._inflate:
                continue
            data = chunk
            while data and not self._stop_requested.is_set():
                if inflater is None:
                    inflater = inflater_type(wbits=31)
                inflated = inflater.decompress(data, _INFLATE_BYTES)
                if send is not None:
                    send(inflated)
                if inflater.eof:
                    members += 1
                    data = inflater.unused_data
                    inflater = None
                else:
                    data = inflater.unconsumed_tail
        if self._inflate and not self._stop_requested.is_set():
            self._end_of_gzip(ended_inside_a_member=inflater is not None, members=members, lines=lines)

    def _end_of_gzip(self, *, ended_inside_a_member: bool, members: int, lines: _Lines | None) -> None:
        if ended_inside_a_member:
            self.error = "truncated gzip file (it ends inside a gzip member)"
        elif members == 0:
            self.error = "empty file (no gzip data)"
        elif lines is not None:
            lines.finish()
            self._lines = lines


def _inflater_type() -> tuple[Callable[..., Any], tuple[type[Exception], ...]]:
    """``zlib-ng`` (about twice as fast, same checks and messages) when installed, else ``zlib``."""
    try:
        from zlib_ng import zlib_ng  # noqa: PLC0415 - only the cost-export layer ships it
    except ImportError:  # pragma: no cover - the layer and the dev requirements have it
        return zlib.decompressobj, (zlib.error,)
    # zlib_ng.pyi declares ``error`` as an instance; it is the module's exception class.
    zlib_ng_error = cast("type[Exception]", zlib_ng.error)
    return zlib_ng.decompressobj, (zlib_ng_error, zlib.error)


class _Pipes:
    """Non-blocking writers into FIFOs that DuckDB reads, each piece to whichever is free first.

    A FIFO is opened for writing once DuckDB has opened it for reading (opening it earlier would
    block, and closing it before DuckDB opens it would leave DuckDB waiting for a writer), so
    DuckDB may open the FIFOs in any order, or one after another: what is queued on a FIFO not
    yet open waits in memory (one piece), the next pieces go to the others. ``close`` waits until
    DuckDB has opened every FIFO and taken all that was queued. Waits last at most
    ``_POLL_SECONDS`` at a time, so a stop request is seen promptly. A FIFO that DuckDB closed
    early raises ``BrokenPipeError``.
    """

    def __init__(self, paths: tuple[str, ...], stop_requested: threading.Event) -> None:
        self._paths = paths
        self._stop_requested = stop_requested
        self._descriptors: list[int | None] = [None] * len(paths)
        self._pending: list[memoryview | None] = [None] * len(paths)
        self._next = 0
        self.count = len(paths)

    def send(self, data: bytes | memoryview, pipe: int | None = None) -> None:
        """Queue ``data`` whole on one FIFO (``pipe``, or the next one without queued bytes)."""
        if not data:
            return
        while not self._stop_requested.is_set():
            chosen = pipe if pipe is not None else self._free_pipe()
            if chosen is not None and self._pending[chosen] is None:
                self._pending[chosen] = memoryview(data)
                self._write(chosen)
                return
            self._wait()

    def _free_pipe(self) -> int | None:
        for offset in range(self.count):
            index = (self._next + offset) % self.count
            if self._pending[index] is None:
                self._next = (index + 1) % self.count
                return index
        return None

    def _opened(self, index: int) -> int | None:
        descriptor = self._descriptors[index]
        if descriptor is None:
            try:
                descriptor = os.open(self._paths[index], os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno == errno.ENXIO:  # DuckDB has not opened it yet
                    return None
                raise
            self._descriptors[index] = descriptor
            _grow_pipe(descriptor)
        return descriptor if descriptor != _CLOSED else None

    def _write(self, index: int) -> None:
        view = self._pending[index]
        descriptor = self._opened(index)
        if view is None or descriptor is None:
            return
        try:
            written = os.write(descriptor, view)
        except BlockingIOError:
            return
        self._pending[index] = view[written:] if written < len(view) else None

    def _wait(self) -> None:
        """Write on until DuckDB has taken more (or a stop is requested)."""
        poller = select.poll()
        waiting_for_open = False
        for index, view in enumerate(self._pending):
            if self._descriptors[index] == _CLOSED:
                continue
            descriptor = self._opened(index)
            if descriptor is None:
                waiting_for_open = True
            elif view is not None:
                poller.register(descriptor, select.POLLOUT)
        timeout = _OPEN_RETRY_SECONDS if waiting_for_open else _POLL_SECONDS
        for descriptor, _events in poller.poll(timeout * 1000):
            self._write(self._descriptors.index(descriptor))

    def close(self, *, flush: bool = True) -> bool:
        """Close each FIFO once DuckDB has opened it and taken what is queued on it (or it is dropped).

        DuckDB then sees the end of that FIFO, and may go on to open the next. A FIFO is never
        closed before DuckDB opened it: DuckDB would wait for a writer forever. Without ``flush``
        (the pass failed) what is queued is dropped. Waits until every FIFO is closed or a stop is
        requested; returns whether every FIFO was closed first (with ``flush``: everything queued
        was written).
        """
        if not flush:
            self._pending = [None] * self.count
        while True:
            for index, descriptor in enumerate(self._descriptors):
                if descriptor not in (None, _CLOSED) and self._pending[index] is None:
                    os.close(descriptor)
                    self._descriptors[index] = _CLOSED
            if all(descriptor == _CLOSED for descriptor in self._descriptors):
                return True
            if self._stop_requested.is_set():
                break
            self._wait()
        for index, descriptor in enumerate(self._descriptors):
            if descriptor not in (None, _CLOSED):
                os.close(descriptor)
            self._descriptors[index] = _CLOSED
        return False


class _Lines:
    """Cuts inflated CSV at line ends into pieces for several FIFOs, each led by the header line.

    The cut is blind to quotes: a quoted field may hold a line end. ``count`` says how many line
    ends there were; the caller compares the rows DuckDB read with it, and reads the file again
    through one FIFO when they differ (see ``_DeliveryReading._aggregate``).
    """

    def __init__(self, pipes: _Pipes) -> None:
        self._pipes = pipes
        self._header: bytes | None = None
        self._rest = b""  # a line begun in the previous piece
        self.count = 0  # line ends
        self.ends_without_line_end = False  # a last line without "\n"
        self.unsplittable = False  # a line too long to cut at, or a lone CR: the count proves nothing

    def send(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        end = data.rfind(b"\n") + 1
        if not end:
            self._rest = data
            self._spill_long_line()
            return
        self._rest = data[end:]
        self.count += data.count(b"\n", 0, end)
        if data.find(b"\r", 0, end) >= 0 and data.count(b"\r", 0, end) != data.count(b"\r\n", 0, end):
            self.unsplittable = True  # a lone CR may end a record too: the line count proves nothing
        start = 0
        if self._header is None:
            start = data.index(b"\n") + 1
            self._header = data[:start]
            for pipe in range(self._pipes.count):
                self._pipes.send(self._header, pipe)
        self._pipes.send(memoryview(data)[start:end])

    def _spill_long_line(self) -> None:
        """A line longer than any CSV record we accept: let DuckDB say so (through one FIFO)."""
        if len(self._rest) > _LONGEST_LINE_BYTES:
            self._pipes.send(self._rest, 0)
            self._rest = b""
            self.unsplittable = True  # the caller reads the file again, through one FIFO

    def finish(self) -> None:
        if self._rest:
            self.ends_without_line_end = True
            self._pipes.send(self._rest, 0 if self._header is None else None)
            self._rest = b""

    def rows_if_split_at_records(self) -> int | None:
        """The rows DuckDB reads when every line end is a record's end; ``None`` if not worked out."""
        if self.unsplittable or self.count == 0:
            return None
        return self.count - 1 + (1 if self.ends_without_line_end else 0)  # less the header line


def _outage(key: str, error: BaseException) -> DependencyUnavailable:
    """A data file whose reading failed on the way (not in its content): retry the delivery."""
    outage = DependencyUnavailable(f"{key}: reading the file failed ({type(error).__name__}: {error})")
    outage.__cause__ = error
    return outage


def _grow_pipe(descriptor: int) -> None:
    """1 MiB pipe buffer (Linux; the default 64 KiB costs a context switch per 64 KiB)."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(descriptor, set_size, _INFLATE_BYTES)


def _local_path(handle: IO[bytes]) -> str | None:
    name = getattr(handle, "name", None)
    if isinstance(name, str) and os.path.isfile(name):
        return name
    return None


def _csv_header(path: str, *, gzipped: bool, key: str) -> list[str]:
    try:
        with (
            gzip.open(path, "rt", encoding="utf-8-sig", newline="")
            if gzipped
            else open(path, encoding="utf-8-sig", newline="")
        ) as text:
            header = next(csv.reader(text), None)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as error:
        raise DeliveryRejected(
            f"{key}: the header cannot be read ({type(error).__name__}: {error})"
        ) from None
    if not header:
        raise DeliveryRejected(f"{key}: empty file (no header)")
    return header


def _about_the_file(error: BaseException, path: str) -> bool:
    message = str(error)
    return path in message or "gzip" in message.lower()


def _duckdb_reason(error: BaseException) -> str:
    kept: list[str] = []
    for raw in str(error).splitlines():
        line = raw.strip()
        if not line or line.startswith(("Original Line:", "LINE ", "^")):
            continue
        if line.startswith(("Possible fixes", "Possible Solution", "See also", "* ")):
            break
        kept.append(line)
    reason = "; ".join(kept) or type(error).__name__
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 1] + "…"


# ---------------------------------------------------------------------- SQL
# Per row, only what needs the row: the S3 flag, the product (``AmazonS3`` for every S3 row), the
# bucket (ARNs unwrapped), tag, usage day and charge kind (S3 rows only: other services group by
# product alone), and the amount. Each file is grouped into ``agg`` on those; the reason a group is
# unattributed (bucket name, billing period…) is then decided per group, in ``classified``. With one
# data file ``agg`` is already one row per charge key and is streamed as it is; with several, keys
# are summed across files.
_CREATE_AGGREGATE = """
CREATE TEMP TABLE agg (
    file_no INTEGER, product VARCHAR, s3 BOOLEAN, tax BOOLEAN, bucket VARCHAR, tag VARCHAR,
    usage_day DATE, kind TINYINT, cost DECIMAL(38, 18), row_count BIGINT, costs BIGINT,
    bad_starts BIGINT
)
"""
S3_PRODUCT = "AmazonS3"


def _create_classified(period_start: date, period_end: date) -> str:
    return f"""
CREATE TEMP VIEW classified AS
SELECT *,
    CASE
        WHEN tax THEN '{UNATTRIBUTED_TAX}'
        WHEN NOT s3 THEN '{UNATTRIBUTED_NOT_S3}'
        WHEN bucket IS NULL THEN '{UNATTRIBUTED_NO_RESOURCE}'
        WHEN NOT regexp_full_match(bucket, '{_BUCKET_NAME}') THEN '{UNATTRIBUTED_NOT_A_BUCKET}'
        WHEN usage_day IS NULL OR usage_day < DATE '{period_start.isoformat()}'
            OR usage_day >= DATE '{period_end.isoformat()}' THEN '{UNATTRIBUTED_OUTSIDE_PERIOD}'
    END AS reason
FROM agg
"""


_STATS = """
SELECT coalesce(sum(row_count), 0), coalesce(sum(row_count) FILTER (WHERE s3), 0),
       coalesce(sum(cost) FILTER (WHERE s3), 0)
FROM agg
"""
_S3_KINDS = "SELECT kind, sum(row_count) FROM agg WHERE s3 GROUP BY kind"
_UNATTRIBUTED = """
SELECT reason, product, sum(cost), sum(row_count) FROM classified WHERE reason IS NOT NULL
GROUP BY reason, product ORDER BY reason, product
"""
# Text out of DuckDB: Python builds str → date/Decimal faster than DuckDB converts DATE/DECIMAL(38,18).
_COSTS_ONE_FILE = """
SELECT bucket, tag, CAST(usage_day AS VARCHAR), kind, CAST(cost AS VARCHAR)
FROM classified WHERE reason IS NULL
"""
_COSTS_SUMMED = """
SELECT bucket, tag, CAST(usage_day AS VARCHAR), kind, CAST(sum(cost) AS VARCHAR)
FROM classified WHERE reason IS NULL
GROUP BY bucket, tag, usage_day, kind
"""
_FILE_PROBLEMS = """
SELECT coalesce(sum(row_count - costs), 0), coalesce(sum(bad_starts), 0)
FROM agg WHERE file_no = ?
"""


def _source(kind: str, width: int) -> str:
    if kind == "parquet":
        return "read_parquet(?)"
    columns = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(width)) + "}"
    compression = "gzip" if kind == "csv.gz" else "none"
    return (
        f"read_csv(?, columns={columns}, header=true, auto_detect=false, delim=',', quote='\"',"
        f" escape='\"', compression='{compression}', strict_mode=true, null_padding=false,"
        f" buffer_size={_CSV_BUFFER_BYTES}, nullstr=['', 'NULL'])"
    )


def _rows(fields: _Fields, source: str) -> str:
    """One file's rows, reduced to what grouping needs (bucket, tag, day and kind on S3 rows only)."""
    resource = f"nullif({fields.resource}, '')" if fields.resource is not None else "NULL::VARCHAR"
    return f"""
WITH flagged AS (
    SELECT coalesce({fields.is_s3}, false) AS s3, {resource} AS resource, * FROM {source}
), dated AS (
    SELECT
        CASE WHEN s3 THEN '{S3_PRODUCT}' ELSE coalesce({fields.product}, '') END AS product,
        s3,
        coalesce({fields.is_tax}, false) AS tax,
        CASE WHEN NOT s3 THEN NULL
             WHEN starts_with(resource, 'arn:')
                 THEN nullif(regexp_extract(resource, '^arn:aws[a-z-]*:s3:::([^/]*)', 1), '')
             ELSE resource END AS bucket,
        CASE WHEN s3 THEN nullif({fields.tag}, '') END AS tag,
        CASE WHEN s3 AND resource IS NOT NULL THEN {fields.start} END AS start_text,
        CASE WHEN s3 THEN {fields.kind} END AS kind,
        {fields.cost} AS cost_text
    FROM flagged
)
SELECT *,
    CAST(timezone('UTC', TRY_CAST(start_text AS TIMESTAMPTZ)) AS DATE) AS usage_day,
    TRY_CAST(cost_text AS DECIMAL(38, 18)) AS cost
FROM dated
"""


def _insert_file(file_no: int, fields: _Fields, source: str) -> str:
    return f"""
INSERT INTO agg
SELECT {file_no}, *
FROM (
    SELECT product, s3, tax, bucket, tag, usage_day, kind,
        sum(cost), count(*), count(cost),
        count(*) FILTER (WHERE start_text IS NOT NULL AND usage_day IS NULL)
    FROM ({_rows(fields, source)})
    GROUP BY product, s3, tax, bucket, tag, usage_day, kind
)
"""


def _first_bad_values(fields: _Fields, source: str) -> str:
    """Counts and examples for the reason, read again only when a file was found wanting."""
    return f"""
SELECT
    count(*) FILTER (WHERE cost_text IS NULL),
    count(*) FILTER (WHERE cost IS NULL AND cost_text IS NOT NULL),
    any_value(cost_text) FILTER (WHERE cost IS NULL AND cost_text IS NOT NULL),
    any_value(start_text) FILTER (WHERE start_text IS NOT NULL AND usage_day IS NULL)
FROM ({_rows(fields, source)})
"""


def _period_end(start: date) -> date:
    return date(start.year + start.month // 12, start.month % 12 + 1, 1)


# ---------------------------------------------------------------------- reading
def _temp_directory(settings: ReaderSettings) -> str:
    return settings.temp_directory or os.path.join(tempfile.gettempdir(), "cost-export-duckdb")


def _remove_stale_folders(base: str) -> None:
    """Folders of reads that died (a Lambda timeout, a killed process) would fill ``/tmp`` over time."""
    cutoff = time.time() - _STALE_FOLDER_SECONDS
    with os.scandir(base) as entries:
        for entry in entries:
            if entry.name.startswith("delivery-") and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)


class _Database:
    """An in-memory DuckDB database for one delivery, with a private folder under the temp directory.

    ``memory_limit`` caps what it holds: beyond it DuckDB spills the grouped rows and the hash
    tables into the folder, so peak memory stays flat whatever the number of rows or keys. The
    FIFOs the gzip files pass through live there too. ``close`` removes the folder.
    """

    def __init__(self, settings: ReaderSettings) -> None:
        import duckdb  # noqa: PLC0415 - only the cost-export function loads DuckDB

        base = _temp_directory(settings)
        os.makedirs(base, exist_ok=True)
        _remove_stale_folders(base)
        self.directory = tempfile.mkdtemp(prefix="delivery-", dir=base)
        self.threads = max(1, settings.threads)
        self.connection = duckdb.connect(
            ":memory:",
            config={
                "memory_limit": settings.memory_limit,
                "threads": settings.threads,
                "temp_directory": self.directory,
                "preserve_insertion_order": False,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
            },
        )
        self.connection.execute("SET TimeZone = 'UTC'")

    def close(self) -> None:
        """Idempotent: the stream closes it when done, and a finalizer if the stream is dropped unread."""
        self.connection.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True)
class _DataFile:
    number: int
    key: str
    kind: str  # "csv.gz" | "csv" | "parquet"
    path: str  # on local disk, for DuckDB


class _DeliveryReading:
    def __init__(self, database: _Database, delivery: Delivery) -> None:
        import duckdb  # noqa: PLC0415 - only the cost-export function loads DuckDB

        self.connection = database.connection
        self.directory = database.directory
        self.pipes = database.threads
        self.delivery = delivery
        self.period_end = _period_end(delivery.billing_period)
        self.without_resource_ids: list[tuple[str, _Fields]] = []
        self.io_error: type[Exception] = duckdb.IOException
        self.data_errors: tuple[type[Exception], ...] = (
            duckdb.ConversionException,
            duckdb.InvalidInputException,
            duckdb.IOException,
        )

    def read_files(self, open_file: OpenFile) -> None:
        self.connection.execute(_CREATE_AGGREGATE)
        self.connection.execute(_create_classified(self.delivery.billing_period, self.period_end))
        for number, key in enumerate(self.delivery.data_keys):
            handle = open_file(key)
            try:
                self._read_file(number, key, handle)
            finally:
                handle.close()

    def _read_file(self, number: int, key: str, handle: IO[bytes]) -> None:
        kind = data_file_kind(key)
        path = _local_path(handle)
        if path is not None:
            self._aggregate(_DataFile(number, key, kind, path), handle)
            return
        # Not a file on disk: copy it there first (the pass that feeds DuckDB then checks it).
        with tempfile.NamedTemporaryFile(prefix="spooled-", suffix="." + kind, dir=self.directory) as spooled:
            try:
                shutil.copyfileobj(handle, spooled, _CHUNK_BYTES)
            except Exception as error:  # the handle or the spool file failed: retry, never reject
                raise _outage(key, error) from error
            spooled.flush()
            with open(spooled.name, "rb") as again:
                self._aggregate(_DataFile(number, key, kind, spooled.name), again)

    def _columns(self, data_file: _DataFile) -> _Columns:
        if data_file.kind != "parquet":
            return _Columns(
                _csv_header(data_file.path, gzipped=data_file.kind == "csv.gz", key=data_file.key), None
            )
        try:
            description = self.connection.execute(
                "SELECT * FROM read_parquet(?) LIMIT 0", [data_file.path]
            ).description
        except self.data_errors as error:
            raise DeliveryRejected(
                f"{data_file.key}: not a readable Parquet file ({_duckdb_reason(error)})"
            ) from None
        return _Columns([str(c[0]) for c in description], [str(c[1]) for c in description])

    def _aggregate(self, data_file: _DataFile, handle: IO[bytes]) -> None:
        """One file into ``agg``, while a ``_FilePass`` reads ``handle`` (the same file) alongside.

        A gzip CSV reaches DuckDB inflated (and checked) by the pass, through one FIFO per DuckDB
        thread. The pass cuts the CSV at line ends, blind to quotes; when DuckDB then read exactly
        one row per line (less the header), no cut fell inside a quoted field and the result is
        the one a single FIFO gives (``_Lines``). Otherwise, or when DuckDB failed, the file is read
        again through one FIFO: for the result, or for the exact reason (its line numbers).
        """
        columns = self._columns(data_file)
        fields = _fields_for(columns, data_file.key)
        if fields.resource is None:
            self.without_resource_ids.append((data_file.key, fields))
        width = len(columns.names)
        pipes = self.pipes if data_file.kind == "csv.gz" else 1
        file_pass, failure = self._insert(data_file, fields, width, handle, pipes)
        if (
            pipes > 1
            and file_pass.outage is None
            and file_pass.error is None
            and (failure is not None or not self._read_one_row_per_line(data_file, file_pass))
        ):
            self.connection.execute("DELETE FROM agg WHERE file_no = ?", [data_file.number])
            with open(data_file.path, "rb") as again:
                file_pass, failure = self._insert(data_file, fields, width, again, 1)
        if file_pass.outage is not None:  # before DuckDB's complaint about the pipe it cut short
            raise _outage(data_file.key, file_pass.outage)
        if file_pass.error is not None:
            raise DeliveryRejected(f"{data_file.key}: {file_pass.error}")
        if failure is not None:
            raise DeliveryRejected(f"{data_file.key}: {_duckdb_reason(failure)}")
        if not file_pass.completed:
            raise DeliveryRejected(f"{data_file.key}: the file was not read to its end")
        self._check_values(data_file, fields, _source(data_file.kind, width))

    def _insert(
        self, data_file: _DataFile, fields: _Fields, width: int, handle: IO[bytes], pipes: int
    ) -> tuple[_FilePass, Exception | None]:
        """Group the file into ``agg``; the pass that read it, and DuckDB's complaint about the data."""
        paths: tuple[str, ...] = ()
        if data_file.kind == "csv.gz":
            paths = tuple(
                os.path.join(self.directory, f"inflated-{data_file.number}-{pipe}.csv")
                for pipe in range(pipes)
            )
            for path in paths:
                os.mkfifo(path, 0o600)
            file_pass = _FilePass(handle, pipes_to=paths)
            sql = _insert_file(data_file.number, fields, _source("csv", width))
            target: str | list[str] = paths[0] if len(paths) == 1 else list(paths)
        else:
            file_pass = _FilePass(handle)
            sql, target = (
                _insert_file(data_file.number, fields, _source(data_file.kind, width)),
                data_file.path,
            )
        file_pass.start()
        failure: Exception | None = None
        try:
            self.connection.execute(sql, [target])
        except self.data_errors as error:
            if isinstance(error, self.io_error) and not any(
                _about_the_file(error, path) for path in paths or (data_file.path,)
            ):
                raise  # e.g. the spill directory is full: not the delivery's fault, retry
            failure = error
        finally:
            file_pass.finish(reader_failed=sys.exc_info()[0] is not None or failure is not None)
            for path in paths:
                os.unlink(path)
        return file_pass, failure

    def _read_one_row_per_line(self, data_file: _DataFile, file_pass: _FilePass) -> bool:
        expected = file_pass.rows_if_split_at_records()
        if expected is None:
            return False
        row = self.connection.execute(
            "SELECT coalesce(sum(row_count), 0) FROM agg WHERE file_no = ?", [data_file.number]
        ).fetchone()
        return row is not None and int(row[0]) == expected

    def _check_values(self, data_file: _DataFile, fields: _Fields, source: str) -> None:
        """Amounts missing or not numbers, S3 usage starts that are not times: reject, with an example.

        The grouped counts only say that something is wrong; the file is read again to say what.
        """
        row = self.connection.execute(_FILE_PROBLEMS, [data_file.number]).fetchone()
        assert row is not None
        unusable_costs, bad_starts = row
        if not (unusable_costs or bad_starts):
            return
        example = self.connection.execute(_first_bad_values(fields, source), [data_file.path]).fetchone()
        assert example is not None
        missing_costs, bad_costs, bad_cost, bad_start = example
        key = data_file.key
        if bad_costs:
            raise DeliveryRejected(
                f"{key}: {bad_costs} row(s) have a {fields.cost_column} that is not a number,"
                f" e.g. {bad_cost!r}"
            )
        if missing_costs:
            raise DeliveryRejected(f"{key}: {missing_costs} row(s) have no {fields.cost_column}")
        raise DeliveryRejected(
            f"{key}: {bad_starts} S3 row(s) have a {fields.start_column} that is not a time,"
            f" e.g. {bad_start!r}"
        )

    def stats(self) -> DeliveryStats:
        row = self.connection.execute(_STATS).fetchone()
        assert row is not None
        rows_read, s3_rows, s3_cost = row
        kinds = self.connection.execute(_S3_KINDS).fetchall()
        by_kind = {_KINDS[code]: int(count) for code, count in kinds}
        return DeliveryStats(
            rows_read=int(rows_read), s3_rows=int(s3_rows), s3_rows_by_kind=by_kind, s3_cost=Decimal(s3_cost)
        )

    def reject_without_resource_ids(self, stats: DeliveryStats) -> None:
        if not self.without_resource_ids:
            return
        key, fields = self.without_resource_ids[0]
        advice = {
            "legacy CUR": "enable 'Include resource IDs' in the report's content settings",
            "CUR 2.0": (
                "include resource IDs in the export (INCLUDE_RESOURCES) and select line_item_resource_id"
            ),
            "FOCUS": "select the ResourceId column in the export",
        }[fields.column_set]
        others = len(self.without_resource_ids) - 1
        more = f" (and {others} more file(s))" if others else ""
        transfer = stats.s3_rows_by_kind.get(ChargeKind.DATA_TRANSFER, 0)
        raise DeliveryRejected(
            f"{key}{more} has no resource id column ({fields.resource_column}): {advice}. Without it S3"
            " costs cannot be attributed to buckets, so nothing was charged. The delivery held"
            f" {stats.rows_read:,} rows, {stats.s3_rows:,} of them AmazonS3 ({transfer:,} data transfer)"
            f" costing {stats.s3_cost.normalize():f} USD.",
            stats,
        )

    def unattributed(self) -> list[UnattributedCost]:
        return [
            UnattributedCost(reason=str(reason), product=str(product), cost=Decimal(cost), rows=int(rows))
            for reason, product, cost, rows in self.connection.execute(_UNATTRIBUTED).fetchall()
        ]


def _stream_costs(database: _Database, fetch_rows: int, *, files: int) -> Iterator[BucketDayCost]:
    days: dict[str, date] = {}  # a month has few days: parse each once
    try:
        result = database.connection.execute(_COSTS_ONE_FILE if files == 1 else _COSTS_SUMMED)
        while rows := result.fetchmany(fetch_rows):
            for bucket, tag, day_text, kind, cost in rows:
                usage_day = days.get(day_text)
                if usage_day is None:
                    usage_day = days[day_text] = date.fromisoformat(day_text)
                key = ChargeKey(bucket=bucket, purchase_tag=tag, usage_day=usage_day, kind=_KINDS[kind])
                yield BucketDayCost(key=key, cost=Decimal(cost))
    finally:
        database.close()


def read_delivery(
    delivery: Delivery, open_file: OpenFile, settings: ReaderSettings | None = None
) -> ParsedDelivery:
    """Read every data file of ``delivery`` (see the module docstring) or raise ``DeliveryRejected``."""
    settings = settings or ReaderSettings()
    database = _Database(settings)
    try:
        reading = _DeliveryReading(database, delivery)
        reading.read_files(open_file)
        stats = reading.stats()
        reading.reject_without_resource_ids(stats)
        if stats.rows_read == 0:
            raise DeliveryRejected(
                "the delivery's data files hold no rows; an empty month-to-date delivery is not applied"
                " (it would restate the whole month to zero)"
            )
        unattributed = reading.unattributed()
    except BaseException:
        database.close()
        raise
    costs = _stream_costs(database, settings.fetch_rows, files=len(delivery.data_keys))
    weakref.finalize(costs, database.close)  # an unstarted generator runs no ``finally``
    return ParsedDelivery(
        delivery=delivery,
        rows_read=stats.rows_read,
        s3_rows=stats.s3_rows,
        costs=costs,
        unattributed=unattributed,
        s3_rows_by_kind=dict(stats.s3_rows_by_kind),
    )
