"""Cost-export deliveries and what billing needs from them (DESIGN §6).

The contract between reading a delivery (manifest + data files → costs per
bucket, day and charge kind) and charging it (restatement-safe differences
through the ledger). Costs here are AWS's, exact Decimals; the vendor price
(cost × the offer's markup, rounded once) is decided when charging.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple


class ExportFormat(StrEnum):
    LEGACY_CUR = "legacy_cur"  # CUR 1.0: <report>/<yyyymmdd-yyyymmdd>/<assemblyId>/…Manifest.json
    CUR2 = "cur2"  # Data Exports CUR 2.0: …/data/BILLING_PERIOD=YYYY-MM/…, manifest under metadata/
    FOCUS = "focus"  # Data Exports FOCUS 1.x, same layout as CUR 2.0


class ChargeKind(StrEnum):
    STORAGE = "storage"
    REQUESTS = "requests"
    DATA_TRANSFER = "data_transfer"
    OTHER = "other"


@dataclass(frozen=True)
class Delivery:
    """One delivery of a report, as its manifest describes it.

    Each delivery is month-to-date and complete for its billing period: it
    replaces what earlier deliveries of the same period said. Deliveries of a
    period are ordered by ``delivered_at`` (then ``delivery_id``).
    """

    format: ExportFormat
    report_name: str
    billing_period: date  # first day of the month, UTC
    delivery_id: str  # the legacy assemblyId, or the Data Exports execution/manifest id
    delivered_at: datetime  # when AWS wrote the manifest (aware)
    bucket: str
    manifest_key: str
    data_keys: tuple[str, ...]  # exactly the files the manifest lists


class ChargeKey(NamedTuple):
    """What one charge is for: restatements are settled per key.

    Named tuples, not dataclasses: a month's export has about a million keys, and a frozen
    dataclass costs twice as much to build (docs/benchmarks.md, "Cost export").
    """

    bucket: str
    purchase_tag: str | None  # the `officex_purchase_id` resource tag, when the row carries it
    usage_day: date
    kind: ChargeKind


class BucketDayCost(NamedTuple):
    key: ChargeKey
    cost: Decimal  # AWS cost for the key, net of credits and refunds in the same delivery


@dataclass(frozen=True)
class UnattributedCost:
    """Cost the delivery holds that no bucket of ours explains, summarised for the operator."""

    reason: str  # e.g. "not_s3", "s3_without_resource", "tax"
    product: str
    cost: Decimal
    rows: int


@dataclass
class ParsedDelivery:
    """A delivery read to the end: ``costs`` is consumed once, in any order."""

    delivery: Delivery
    rows_read: int
    s3_rows: int
    costs: Iterator[BucketDayCost]
    unattributed: list[UnattributedCost] = field(default_factory=list)
    #: AmazonS3 rows per charge kind (every line item type; sums to ``s3_rows``).
    s3_rows_by_kind: dict[ChargeKind, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryStats:
    """What reading a delivery to its end counted; kept on ``DeliveryRejected`` when known."""

    rows_read: int
    s3_rows: int
    s3_rows_by_kind: dict[ChargeKind, int]
    s3_cost: Decimal  # net AWS cost of the AmazonS3 rows


class DeliveryRejected(Exception):
    """The delivery cannot be billed as it is (unreadable, truncated, no resource ids…).

    Nothing of it is applied; the reason is recorded on the delivery and alerted on.
    """

    def __init__(self, reason: str, stats: DeliveryStats | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stats = stats  # set when the files were read to the end before rejecting
