"""Builds the checkout service from settings, once per container (shared by the chain routes)."""

from __future__ import annotations

from datetime import timedelta
from functools import cache

from billing.adapters.chain.readers import EnvChainReaders
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.chains import chain_registry
from billing.domain.errors import DependencyUnavailable
from billing.services.checkout import CheckoutPolicy, CheckoutService
from billing.services.ports import DepositAddresses, SecretBox
from billing.services.provisioning import ProvisioningHandoff
from billing.settings import get_checkout_settings


@cache
def _deposit_addresses() -> DepositAddresses:
    from billing.adapters.chain.hd import XpubDepositAddresses  # noqa: PLC0415 - only chain routes derive

    xpub = get_checkout_settings().deposit_xpub
    if not xpub:
        raise DependencyUnavailable("deposit addresses are not configured (DEPOSIT_XPUB)")
    return XpubDepositAddresses(xpub)


@cache
def _secret_box() -> SecretBox:
    from billing.adapters.aws.kms import configured_secret_box  # noqa: PLC0415 - boto3 loads only when used

    return configured_secret_box(get_checkout_settings().kms_key_id)


def checkout_service(
    *, provisioning: ProvisioningHandoff | None = None, provisioning_wait: timedelta = timedelta(0)
) -> CheckoutService:
    """With ``provisioning``, finalize waits up to ``provisioning_wait`` for the resource."""
    settings = get_checkout_settings()
    return CheckoutService(
        PostgresTransactions(),
        chains=EnvChainReaders(),
        addresses=_deposit_addresses,
        secrets=_secret_box,
        registry=chain_registry,
        policy=CheckoutPolicy(
            wallet_ttl=timedelta(hours=settings.wallet_ttl_hours),
            allow_dev_chains=settings.allow_dev_chains,
            provisioning_wait=provisioning_wait,
        ),
        provisioning=provisioning,
    )
