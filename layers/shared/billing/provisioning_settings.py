"""Provisioning settings (environment), validated once per container.

Kept beside ``billing.settings`` (same conventions) so the provisioning framework can grow
without touching the other functions' settings.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, field_validator

_TAG = re.compile(r"^[\w .:/=+@-]{1,128}$")


class ProvisioningSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    #: KMS key of the one-time credentials (the provisioner encrypts, finalize and GET decrypt).
    kms_key_id: str | None = None
    # ------------------------------------------------ the provisioner function
    #: Buckets and IAM users are ``<prefix>-<purchase uuid hex>``; unset → S3 offers cannot be provisioned.
    bucket_prefix: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,28}[a-z0-9]$")
    iam_path: str = Field(default="/officex-billing/", pattern=r"^/([\x21-\x2e\x30-\x7e]+/)*$")
    permissions_boundary_arn: str | None = None
    #: The vendor's tags on every provisioned resource (``officex_purchase_id`` is always added).
    resource_tags: dict[str, str] = Field(default_factory=dict)
    #: Bucket policy denies non-TLS requests (turned off only against moto, which misreads it).
    require_tls: bool = True
    batch_size: int = Field(default=10, ge=1, le=100)
    #: A claimed action is due again after this long if its worker died (must outlast the function).
    lease_s: int = Field(default=600, ge=60, le=3_600)
    retry_base_s: int = Field(default=30, ge=1, le=3_600)
    retry_cap_s: int = Field(default=3_600, ge=1, le=86_400)
    stuck_after_attempts: int = Field(default=10, ge=1, le=1_000)
    #: Deletion waits at most this long for the final statement to be delivered.
    final_statement_wait_s: int = Field(default=3_600, ge=0, le=7 * 86_400)
    # ------------------------------------------------------ finalize / GET side
    #: The provisioner function finalize asks to start at once (async invoke); unset → the schedule.
    provisioner_function: str | None = None
    #: How long finalize waits for the resource before answering "provisioning".
    wait_s: float = Field(default=8.0, ge=0, le=20)

    @field_validator("resource_tags")
    @classmethod
    def _tags(cls, tags: dict[str, str]) -> dict[str, str]:
        for key, value in tags.items():
            if not _TAG.fullmatch(key) or not _TAG.fullmatch(value) or key.startswith("aws:"):
                raise ValueError(f"not a valid tag: {key}={value}")
        return tags


def parse_tags(text: str) -> dict[str, str]:
    """``key=value,key=value`` → dict (empty entries ignored)."""
    tags: dict[str, str] = {}
    for item in text.split(","):
        if item.strip():
            key, _, value = item.partition("=")
            tags[key.strip()] = value.strip()
    return tags


def provisioning_settings_from(environ: dict[str, str]) -> ProvisioningSettings:
    return ProvisioningSettings(
        kms_key_id=environ.get("KMS_KEY_ID") or None,
        bucket_prefix=environ.get("PROVISIONED_BUCKET_PREFIX") or None,
        iam_path=environ.get("PROVISIONED_IAM_PATH") or "/officex-billing/",
        permissions_boundary_arn=environ.get("PROVISIONED_USER_BOUNDARY_ARN") or None,
        resource_tags=parse_tags(environ.get("PROVISIONED_RESOURCE_TAGS", "")),
        require_tls=environ.get("PROVISIONED_BUCKET_REQUIRE_TLS", "true").lower() != "false",
        batch_size=int(environ.get("PROVISIONER_BATCH_SIZE", "10")),
        lease_s=int(environ.get("PROVISIONER_LEASE_S", "600")),
        retry_base_s=int(environ.get("PROVISIONER_RETRY_BASE_S", "30")),
        retry_cap_s=int(environ.get("PROVISIONER_RETRY_CAP_S", "3600")),
        stuck_after_attempts=int(environ.get("PROVISIONER_STUCK_AFTER_ATTEMPTS", "10")),
        final_statement_wait_s=int(environ.get("FINAL_STATEMENT_WAIT_S", "3600")),
        provisioner_function=environ.get("PROVISIONER_FUNCTION_NAME") or None,
        wait_s=float(environ.get("PROVISIONING_WAIT_S", "8")),
    )


@lru_cache(maxsize=1)
def get_provisioning_settings() -> ProvisioningSettings:
    return provisioning_settings_from(dict(os.environ))
