"""Scheduled outbox dispatch (every minute): status-change emails, signed webhooks, OfficeX updates.

Not reachable from the internet. Reads the webhook secrets and OfficeX org keys
(KMS-encrypted, per purchase) only to send them; they are never logged. A run
stops claiming ~30 s before its timeout and gives unsent rows back.
"""

from datetime import timedelta
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.adapters.http_delivery import UrllibJsonPoster
from billing.adapters.postgres.outbox_store import PostgresOutbox
from billing.api.jobs import scheduled_job
from billing.domain.notifications import RetryPolicy
from billing.services.notifications import (
    DispatchPolicy,
    OfficexRecordLinks,
    OutboxDispatcher,
    OutboxDispatchInput,
    unconfigured_email,
)
from billing.services.ports import EmailSender, SecretBox
from billing.settings import get_api_settings, get_notification_settings


@cache
def _secret_box() -> SecretBox:
    from billing.adapters.aws.kms import configured_secret_box  # noqa: PLC0415 - boto3 loads only when used

    return configured_secret_box(get_notification_settings().kms_key_id)


@cache
def _email_sender() -> EmailSender:
    from billing.adapters.aws.ses import SesEmailSender  # noqa: PLC0415 - boto3 loads only when used

    settings = get_notification_settings()
    if not settings.sender:
        return unconfigured_email("email (NOTIFICATION_SENDER)")
    return SesEmailSender(settings.sender, timeout_s=settings.aws_timeout_s)


@cache
def dispatcher() -> OutboxDispatcher:
    """Built once per container from the settings (validated at the first run)."""
    settings = get_notification_settings()
    base_url = get_api_settings().public_base_url
    return OutboxDispatcher(
        PostgresOutbox(),
        email=_email_sender,
        http=UrllibJsonPoster(
            timeout_s=settings.http_timeout_s, allow_private_hosts=settings.allow_private_hosts
        ),
        secrets=_secret_box,
        policy=DispatchPolicy(
            batch_size=settings.batch_size,
            lease=timedelta(seconds=settings.lease_s),
            retry=RetryPolicy(
                base=timedelta(seconds=settings.retry_base_s),
                cap=timedelta(seconds=settings.retry_cap_s),
                stuck_after_attempts=settings.stuck_after_attempts,
            ),
        ),
        # OfficeX records carry the pricing line, vendor notes and links (docs/provisioning.md).
        officex_links=OfficexRecordLinks(public_base_url=base_url) if base_url else None,
    )


@scheduled_job("outbox dispatch", unavailable_metric="OutboxDispatchUnavailable")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    """If the database is down, nothing was claimed, or claimed rows come back after their lease."""
    request = OutboxDispatchInput.model_validate(event)
    return (
        dispatcher()
        .run(
            time_left=lambda: timedelta(milliseconds=context.get_remaining_time_in_millis()),
            kinds=request.kinds,
        )
        .as_metrics()
    )
