"""Builds provisioning's pieces from settings, once per container.

- ``resource_handoff()``: finalize and GET /purchase show the resource and hand its credentials
  out once (KMS decrypt); finalize also asks the provisioner function to start (async invoke).
- ``provisioning_worker()``: the provisioner function's worker with every configured provisioner.
  A new offer kind plugs in by adding its provisioner to ``provisioners()``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import cache
from uuid import UUID

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.catalog import OfferKind
from billing.domain.notifications import RetryPolicy
from billing.domain.provisioning import ResourceProvisioner
from billing.provisioning_settings import get_provisioning_settings
from billing.services.ports import SecretBox
from billing.services.provisioning import ProvisioningHandoff, ProvisioningPolicy, ProvisioningWorker
from billing.settings import get_google_settings


@cache
def _secret_box() -> SecretBox:
    from billing.adapters.aws.kms import configured_secret_box  # noqa: PLC0415 - boto3 loads only when used

    return configured_secret_box(get_provisioning_settings().kms_key_id)


def _kick() -> Callable[[UUID], None] | None:
    function = get_provisioning_settings().provisioner_function
    if not function:
        return None
    from billing.adapters.aws.provisioner_invoke import LambdaProvisionerKick  # noqa: PLC0415

    return LambdaProvisionerKick(function)


@cache
def resource_handoff(*, kick: bool = False) -> ProvisioningHandoff:
    settings = get_provisioning_settings()
    return ProvisioningHandoff(
        PostgresTransactions(),
        secrets=_secret_box if settings.kms_key_id else None,
        kick=_kick() if kick else None,
    )


def provisioning_wait() -> timedelta:
    """Finalize waits only when it can ask the provisioner to start (else the schedule is a minute away)."""
    settings = get_provisioning_settings()
    return timedelta(seconds=settings.wait_s) if settings.provisioner_function else timedelta(0)


def provisioners() -> dict[OfferKind, ResourceProvisioner]:
    """Every provisioner this deployment is configured for (an unconfigured kind is retried, logged)."""
    settings = get_provisioning_settings()
    found: dict[OfferKind, ResourceProvisioner] = {}
    if settings.bucket_prefix:
        from billing.adapters.aws.s3_provisioner import S3BucketProvisioner, S3ProvisionerConfig  # noqa: PLC0415

        found[OfferKind.S3_BUCKET] = S3BucketProvisioner(
            S3ProvisionerConfig(
                bucket_prefix=settings.bucket_prefix,
                iam_path=settings.iam_path,
                permissions_boundary_arn=settings.permissions_boundary_arn,
                tags=settings.resource_tags,
                require_tls=settings.require_tls,
            )
        )
    google = get_google_settings()
    if google.configured:  # docs/gemini-keys.md
        from billing.adapters.google.gemini_provisioner import gemini_key_provisioner_from  # noqa: PLC0415

        found[OfferKind.GEMINI_API_KEY] = gemini_key_provisioner_from(google, tags=settings.resource_tags)
    return found


@cache
def provisioning_worker() -> ProvisioningWorker:
    settings = get_provisioning_settings()
    return ProvisioningWorker(
        PostgresTransactions(),
        provisioners=provisioners(),
        secrets=_secret_box,
        policy=ProvisioningPolicy(
            batch_size=settings.batch_size,
            lease=timedelta(seconds=settings.lease_s),
            retry=RetryPolicy(
                base=timedelta(seconds=settings.retry_base_s),
                cap=timedelta(seconds=settings.retry_cap_s),
                stuck_after_attempts=settings.stuck_after_attempts,
            ),
            statement_wait=timedelta(seconds=settings.final_statement_wait_s),
        ),
    )
