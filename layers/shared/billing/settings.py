"""Environment settings, validated once per container (cold start)."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DatabaseSettings(BaseModel):
    """Where Postgres is. ``DATABASE_URL`` wins; otherwise the RDS secret plus host/name."""

    model_config = ConfigDict(frozen=True)

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
    model_config = ConfigDict(frozen=True)

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
    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

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
