"""Bodies of POST /purchase/{id}/historical-billing: the request, the JSON report and its CSV form."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from pydantic import AwareDatetime, Field, PrivateAttr, model_validator

from billing.api.models import ResponseModel, StrictModel
from billing.domain.billing_history import (
    DEFAULT_BUCKETS,
    EARLIEST_START,
    MAX_BUCKETS,
    BillingBucket,
    BillingInterval,
    BillingPeriod,
    BillingReport,
    MeterUsage,
    resolve_period,
)
from billing.domain.money import SignedUsdAmount, UsdAmount, format_usd

CSV_CONTENT_TYPE = "text/csv; charset=utf-8"


def _now() -> datetime:
    """The request's clock (the default end); the rules themselves take ``now`` as an argument."""
    return datetime.now(UTC)


class HistoricalBillingBody(StrictModel):
    interval: BillingInterval = Field(description="Bucket width; buckets are aligned in UTC")
    start: AwareDatetime | None = Field(
        default=None,
        description=(
            f"Inclusive, ISO-8601 with a time zone, not before {EARLIEST_START.date().isoformat()}. "
            "Default: the report has "
            + " / ".join(f"{count} {interval.value}" for interval, count in DEFAULT_BUCKETS.items())
            + " buckets (by interval) up to end, the first one whole"
        ),
    )
    end: AwareDatetime | None = Field(
        default=None, description="Exclusive, ISO-8601 with a time zone. Default: now"
    )
    group_by: Literal["meter"] | None = Field(
        default=None, description="meter: usage quantity and cost per meter and unit in every bucket"
    )
    format: Literal["json", "csv"] = Field(default="json", description="csv answers text/csv")

    _period: BillingPeriod | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _bounded(self) -> HistoricalBillingBody:
        # InvalidBillingRange is a ValueError: pydantic reports it as a 422 with its message.
        self._period = resolve_period(self.interval, self.start, self.end, _now())
        return self

    @property
    def period(self) -> BillingPeriod:
        """The validated range, defaults applied."""
        assert self._period is not None
        return self._period

    @property
    def by_meter(self) -> bool:
        return self.group_by == "meter"


class MeterUsageView(ResponseModel):
    meter: str | None
    unit: str | None
    quantity: str | None = Field(description="Sum of the usage quantities, a decimal string")
    cost: UsdAmount


class BillingBucketView(ResponseModel):
    start: datetime = Field(description="Inclusive (the first bucket starts at the range's start)")
    end: datetime = Field(description="Exclusive (the last bucket ends at the range's end)")
    opening_balance: SignedUsdAmount = Field(description="Balance at start (the previous bucket's closing)")
    usage_cost: UsdAmount = Field(description="Usage charged in the bucket")
    deposits: UsdAmount = Field(description="Deposits credited in the bucket")
    adjustments: SignedUsdAmount = Field(description="Adjustments and reversals, signed")
    closing_balance: SignedUsdAmount = Field(
        description="Balance at end: opening_balance + deposits - usage_cost + adjustments"
    )
    entries: int = Field(description="Ledger entries that changed the balance")
    usage: list[MeterUsageView] | None = Field(description="Per meter and unit; only with group_by=meter")

    @classmethod
    def of(cls, bucket: BillingBucket) -> BillingBucketView:
        return cls.model_construct(
            start=bucket.start,
            end=bucket.end,
            opening_balance=bucket.opening_balance_nano,
            usage_cost=bucket.usage_cost_nano,
            deposits=bucket.deposits_nano,
            adjustments=bucket.adjustments_nano,
            closing_balance=bucket.closing_balance_nano,
            entries=bucket.entries,
            usage=[_meter_view(usage) for usage in bucket.usage] if bucket.usage is not None else None,
        )


class HistoricalBillingResponse(ResponseModel):
    purchase_id: UUID
    interval: BillingInterval
    start: datetime = Field(description="The range's start (inclusive), defaults applied")
    end: datetime = Field(description="The range's end (exclusive), defaults applied")
    group_by: Literal["meter"] | None
    buckets: list[BillingBucketView]
    totals: BillingBucketView = Field(description="The whole range; equals the ledger's sums over it")

    @classmethod
    def of(cls, report: BillingReport) -> HistoricalBillingResponse:
        return cls.model_construct(
            purchase_id=report.purchase_id,
            interval=report.period.interval,
            start=report.period.start,
            end=report.period.end,
            group_by="meter" if report.by_meter else None,
            buckets=[BillingBucketView.of(bucket) for bucket in report.buckets],
            totals=BillingBucketView.of(report.totals),
        )


def _quantity(quantity: Decimal | None) -> str | None:
    return format(quantity, "f") if quantity is not None else None


def _meter_view(usage: MeterUsage) -> MeterUsageView:
    return MeterUsageView.model_construct(
        meter=usage.meter, unit=usage.unit, quantity=_quantity(usage.quantity), cost=usage.cost_nano
    )


# ------------------------------------------------------------------ CSV

CSV_COLUMNS = (
    "row_type",
    "start",
    "end",
    "meter",
    "unit",
    "quantity",
    "usage_cost",
    "deposits",
    "adjustments",
    "opening_balance",
    "closing_balance",
    "entries",
)

CSV_DESCRIPTION = (
    "With `format: csv`: `text/csv; charset=utf-8`, a header row, then per bucket one `bucket` row "
    "(and with `group_by: meter` one `bucket_meter` row per meter and unit), then one `total` row for "
    "the whole range (and `total_meter` rows). Columns: " + ", ".join(CSV_COLUMNS) + ". Money is USD "
    "with 9 decimals, times are ISO-8601 UTC; the `bucket` rows sum to the `total` row, and the "
    "`bucket_meter` rows of a bucket sum to its usage_cost. Meter and unit text starting with "
    "= + - @ is prefixed with an apostrophe (spreadsheet formula guard)."
)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _text_cell(text: str | None) -> str:
    """Vendor-supplied text, made inert for spreadsheets (no formulas)."""
    if not text:
        return ""
    return f"'{text}" if text[0] in "=+-@\t\r" else text


def _money_row(row_type: str, bucket: BillingBucket) -> list[str]:
    return [
        row_type,
        _iso(bucket.start),
        _iso(bucket.end),
        "",
        "",
        "",
        format_usd(bucket.usage_cost_nano),
        format_usd(bucket.deposits_nano),
        format_usd(bucket.adjustments_nano),
        format_usd(bucket.opening_balance_nano),
        format_usd(bucket.closing_balance_nano),
        str(bucket.entries),
    ]


def _meter_rows(row_type: str, bucket: BillingBucket) -> list[list[str]]:
    return [
        [
            row_type,
            _iso(bucket.start),
            _iso(bucket.end),
            _text_cell(usage.meter),
            _text_cell(usage.unit),
            _quantity(usage.quantity) or "",
            format_usd(usage.cost_nano),
            "",
            "",
            "",
            "",
            "",
        ]
        for usage in bucket.usage or ()
    ]


def render_csv(report: BillingReport) -> str:
    """The report as CSV (RFC 4180, CRLF line ends); see :data:`CSV_DESCRIPTION`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for bucket in report.buckets:
        writer.writerow(_money_row("bucket", bucket))
        writer.writerows(_meter_rows("bucket_meter", bucket))
    writer.writerow(_money_row("total", report.totals))
    writer.writerows(_meter_rows("total_meter", report.totals))
    return buffer.getvalue()


def csv_response(report: BillingReport) -> Response[HistoricalBillingResponse | str]:
    filename = f"historical-billing-{report.purchase_id}-{report.period.interval.value}.csv"
    return Response(
        status_code=200,
        content_type=CSV_CONTENT_TYPE,
        body=render_csv(report),
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def json_response(report: BillingReport) -> Response[HistoricalBillingResponse | str]:
    return Response(
        status_code=200, content_type="application/json", body=HistoricalBillingResponse.of(report)
    )


def success_response() -> OpenAPIResponse:
    """The 200 of the route: the JSON report, or the same report as CSV."""
    return {
        "description": (
            f"The report: buckets (at most {MAX_BUCKETS}) with usage cost, deposits, adjustments and "
            "balances, and totals that equal the ledger's sums over the range; as text/csv with format csv"
        ),
        "content": {
            "application/json": {"model": HistoricalBillingResponse},
            "text/csv": {"schema": {"type": "string", "description": CSV_DESCRIPTION}},
        },
    }
