"""Environment settings, validated once per container (cold start)."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DatabaseSettings(BaseModel):
    """Where Postgres is. ``DATABASE_URL`` wins; otherwise the RDS secret plus host/name."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    url: str | None = None
    secret_arn: str | None = None
    host: str | None = None
    port: int = Field(default=5432, ge=1, le=65535)
    name: str = "billing"
    sslmode: str = "require"
    connect_timeout_s: int = Field(default=5, ge=1, le=60)
    statement_timeout_ms: int = Field(default=10_000, ge=100, le=900_000)

    @model_validator(mode="after")
    def _one_source(self) -> DatabaseSettings:
        if not self.url and not self.secret_arn:
            raise ValueError("set DATABASE_URL, or DB_SECRET_ARN (with DB_HOST for an RDS Proxy)")
        return self


class ApiSettings(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)

    max_body_bytes: int = Field(default=65_536, ge=1_024, le=6_000_000)
    #: Custom domain for links in responses; ``None`` means "the host the request came to".
    public_base_url: str | None = None


def database_settings_from(environ: dict[str, str]) -> DatabaseSettings:
    return DatabaseSettings(
        url=environ.get("DATABASE_URL") or None,
        secret_arn=environ.get("DB_SECRET_ARN") or None,
        host=environ.get("DB_HOST") or None,
        port=int(environ.get("DB_PORT", "5432")),
        name=environ.get("DB_NAME", "billing"),
        sslmode=environ.get("DB_SSLMODE", "require"),
        statement_timeout_ms=int(environ.get("DB_STATEMENT_TIMEOUT_MS", "10000")),
    )


def api_settings_from(environ: dict[str, str]) -> ApiSettings:
    return ApiSettings(
        max_body_bytes=int(environ.get("MAX_BODY_BYTES", "65536")),
        public_base_url=environ.get("PUBLIC_BASE_URL") or None,
    )


@lru_cache(maxsize=1)
def get_database_settings() -> DatabaseSettings:
    return database_settings_from(dict(os.environ))


@lru_cache(maxsize=1)
def get_api_settings() -> ApiSettings:
    return api_settings_from(dict(os.environ))


class CheckoutSettings(BaseModel):
    """What the checkout functions need; the API side holds only the account xpub, never a private key."""

    # A mistakenly pasted xprv must never reach a log through a validation error.
    model_config = ConfigDict(frozen=True, hide_input_in_errors=True, defer_build=True)

    deposit_xpub: str | None = None
    kms_key_id: str | None = None
    wallet_ttl_hours: int = Field(default=24, ge=1, le=24 * 30)
    allow_dev_chains: bool = False


def checkout_settings_from(environ: dict[str, str]) -> CheckoutSettings:
    return CheckoutSettings(
        deposit_xpub=environ.get("DEPOSIT_XPUB") or None,
        kms_key_id=environ.get("KMS_KEY_ID") or None,
        wallet_ttl_hours=int(environ.get("WALLET_TTL_HOURS", "24")),
        allow_dev_chains=environ.get("ALLOW_DEV_CHAINS", "").lower() == "true",
    )


@lru_cache(maxsize=1)
def get_checkout_settings() -> CheckoutSettings:
    return checkout_settings_from(dict(os.environ))


class NotificationSettings(BaseModel):
    """The outbox dispatcher: email sender, KMS key of the stored secrets, timeouts, retry policy."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    #: Verified SES identity (address) emails are sent from; unset → email rows wait (and retry).
    sender: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    kms_key_id: str | None = None
    #: Per socket operation (connect, each read) of webhook and OfficeX calls.
    http_timeout_s: float = Field(default=5.0, gt=0, le=30)
    #: SES connect/read timeout.
    aws_timeout_s: float = Field(default=5.0, gt=0, le=30)
    batch_size: int = Field(default=25, ge=1, le=500)
    #: A claimed row is due again after this long if its dispatcher died (must outlast the function).
    lease_s: int = Field(default=300, ge=30, le=3_600)
    retry_base_s: int = Field(default=30, ge=1, le=3_600)
    retry_cap_s: int = Field(default=3_600, ge=1, le=86_400)
    stuck_after_attempts: int = Field(default=10, ge=1, le=1_000)
    #: Local runs and tests only: allow webhook/OfficeX hosts that resolve to private addresses.
    allow_private_hosts: bool = False


def notification_settings_from(environ: dict[str, str]) -> NotificationSettings:
    return NotificationSettings(
        sender=environ.get("NOTIFICATION_SENDER") or None,
        kms_key_id=environ.get("KMS_KEY_ID") or None,
        http_timeout_s=float(environ.get("OUTBOX_HTTP_TIMEOUT_S", "5")),
        aws_timeout_s=float(environ.get("OUTBOX_AWS_TIMEOUT_S", "5")),
        batch_size=int(environ.get("OUTBOX_BATCH_SIZE", "25")),
        lease_s=int(environ.get("OUTBOX_LEASE_S", "300")),
        retry_base_s=int(environ.get("OUTBOX_RETRY_BASE_S", "30")),
        retry_cap_s=int(environ.get("OUTBOX_RETRY_CAP_S", "3600")),
        stuck_after_attempts=int(environ.get("OUTBOX_STUCK_AFTER_ATTEMPTS", "10")),
        allow_private_hosts=environ.get("OUTBOX_ALLOW_PRIVATE_HOSTS", "").lower() == "true",
    )


@lru_cache(maxsize=1)
def get_notification_settings() -> NotificationSettings:
    return notification_settings_from(dict(os.environ))


class GoogleSettings(BaseModel):
    """The Google Cloud project Gemini API keys are created in, and the service account that manages them.

    The service account's JSON key lives in Secrets Manager (never in the environment); it needs
    ``roles/serviceusage.apiKeysAdmin`` on the project. See docs/gemini-keys.md.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    #: Project id (6–30 chars) or number; unset → the Gemini provisioner is unavailable.
    project_id: str | None = Field(default=None, pattern=r"^([a-z][a-z0-9-]{4,28}[a-z0-9]|[0-9]{1,20})$")
    service_account_secret_arn: str | None = None
    #: Bind new keys to this service account (Gemini "auth keys"). Required: the Gemini API stopped
    #: accepting standard API keys in September 2026 (docs/gemini-keys.md).
    key_service_account: str | None = Field(
        default=None, pattern=r"^[^@\s]+@[^@\s]+\.iam\.gserviceaccount\.com$"
    )
    #: Escape hatch for projects Google still lets use standard (restricted) keys, and for local fakes.
    allow_standard_keys: bool = False
    #: Overrides for tests and the local fake; production uses Google's endpoints.
    api_keys_base_url: str = "https://apikeys.googleapis.com/v2"
    token_uri: str | None = None
    #: Per HTTP call (connect, and each read) to Google.
    http_timeout_s: float = Field(default=10.0, gt=0, le=60)
    #: How long one action waits for one long-running operation before retrying later.
    operation_timeout_s: float = Field(default=30.0, gt=0, le=600)

    @property
    def configured(self) -> bool:
        return bool(
            self.project_id
            and self.service_account_secret_arn
            and (self.key_service_account or self.allow_standard_keys)
        )


def google_settings_from(environ: dict[str, str]) -> GoogleSettings:
    return GoogleSettings(
        project_id=environ.get("GOOGLE_PROJECT_ID") or None,
        service_account_secret_arn=environ.get("GOOGLE_SERVICE_ACCOUNT_SECRET_ARN") or None,
        key_service_account=environ.get("GEMINI_KEY_SERVICE_ACCOUNT") or None,
        allow_standard_keys=environ.get("GEMINI_ALLOW_STANDARD_KEYS", "").lower() == "true",
        api_keys_base_url=environ.get("GOOGLE_API_KEYS_BASE_URL") or "https://apikeys.googleapis.com/v2",
        token_uri=environ.get("GOOGLE_TOKEN_URI") or None,
        http_timeout_s=float(environ.get("GOOGLE_HTTP_TIMEOUT_S", "10")),
        operation_timeout_s=float(environ.get("GOOGLE_OPERATION_TIMEOUT_S", "30")),
    )


@lru_cache(maxsize=1)
def get_google_settings() -> GoogleSettings:
    return google_settings_from(dict(os.environ))
