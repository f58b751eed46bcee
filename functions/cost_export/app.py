"""S3 ObjectCreated on the cost report bucket: bill the delivery each manifest describes.

Keys arrive URL-encoded and are decoded first; objects that are not manifests (data
files, anything else) are ignored. Duplicate and out-of-order events are normal: the
service makes each delivery apply once and never lets an older one override a newer.

Outcomes: a delivery that cannot be read is marked failed, logged at ERROR and counted
(``CostExportDeliveryFailed``: alarm on it) without failing the invocation, since
retrying cannot fix it. A report bucket this function cannot read is
``CostExportUnavailable`` (an operator must act). A database or S3 outage raises, so
Lambda retries the event; nothing is half-applied.
"""

from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.adapters.aws.s3_reports import ReportFilesReader, ReportsNotConfigured, S3ReportObjects
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.observability import logger, metrics, tracer
from billing.domain.cost_export import DeliveryRejected
from billing.domain.cost_export_charging import DeliveryOutcome, OutcomeStatus, plain_decimal
from billing.domain.cost_export_manifests import decode_s3_event_key, is_manifest_key
from billing.domain.money import format_usd
from billing.services.cost_export import CostExportBilling, load_delivery

_OUTCOME_METRICS = {
    OutcomeStatus.APPLIED: "CostExportDeliveryApplied",
    OutcomeStatus.ALREADY_APPLIED: "CostExportDeliveryAlreadyApplied",
    OutcomeStatus.SUPERSEDED: "CostExportDeliverySuperseded",
    OutcomeStatus.FAILED: "CostExportDeliveryFailed",
}


@cache
def report_objects() -> S3ReportObjects:
    return S3ReportObjects()


@cache
def cost_export_billing() -> CostExportBilling:
    reader = ReportFilesReader(lambda delivery: report_objects().opener(delivery.bucket))
    return CostExportBilling(PostgresTransactions(), reader)


def _count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def _summary(key: str, outcome: DeliveryOutcome) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "key": key,
        "status": outcome.status.value,
        "report": outcome.delivery.report_name,
        "billing_period": outcome.delivery.billing_period.isoformat(),
        "delivery_id": outcome.delivery.delivery_id,
        "charged": format_usd(outcome.totals.charged_nano),
        "refunded": format_usd(outcome.totals.refunded_nano),
        "charges_changed": outcome.totals.charges_changed,
    }
    if outcome.reason:
        summary["reason"] = outcome.reason
    if outcome.unattributed:
        summary["unattributed"] = [
            {"reason": item.reason, "product": item.product, "cost": plain_decimal(item.cost)}
            for item in outcome.unattributed
        ]
    return summary


def bill_manifest(bucket: str, key: str) -> dict[str, Any]:
    """Bill one manifest's delivery; returns what happened (also logged and counted)."""
    try:
        delivery = load_delivery(report_objects(), bucket, key)
        outcome = cost_export_billing().process(delivery)
    except DeliveryRejected as rejected:  # not a usable manifest: there is no delivery to record
        logger.error(
            "cost export manifest rejected", extra={"bucket": bucket, "key": key, "reason": rejected.reason}
        )
        _count("CostExportDeliveryFailed")
        return {"key": key, "status": OutcomeStatus.FAILED.value, "reason": rejected.reason}
    except ReportsNotConfigured as error:
        logger.error(
            "cost report bucket unreadable", extra={"bucket": bucket, "key": key, "reason": str(error)}
        )
        _count("CostExportUnavailable")
        return {"key": key, "status": "unavailable", "reason": str(error)}
    _count(_OUTCOME_METRICS[outcome.status])
    if outcome.status is OutcomeStatus.APPLIED:
        _count("CostExportChargesChanged", outcome.totals.charges_changed)
        _count("CostExportUnattributedKeys", sum(item.rows for item in outcome.unattributed))
    return _summary(key, outcome)


def _bill_record(record: S3EventRecord) -> dict[str, Any]:
    bucket = record.s3.bucket.name
    key = decode_s3_event_key(record.s3.get_object.key)
    if not is_manifest_key(key):
        logger.info("not a cost export manifest; ignored", extra={"bucket": bucket, "key": key})
        return {"key": key, "status": "ignored"}
    return bill_manifest(bucket, key)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
@event_source(data_class=S3Event)
def lambda_handler(event: S3Event, context: LambdaContext) -> dict[str, Any]:
    return {"manifests": [_bill_record(record) for record in event.records]}
