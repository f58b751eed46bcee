"""Stablecoin checkout: deposit wallets, payment verification, finalize, top-ups.

Chain reads happen outside database transactions (an RPC failure writes
nothing); what they found is then reconciled under the wallet's row lock, so
concurrent verifies, finalizes and top-ups serialise per wallet, and every
on-chain transfer is credited at most once (its ledger idempotency key).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from uuid import UUID, uuid4

from aws_lambda_powertools import Logger

from billing.domain.api_keys import (
    KeyRole,
    accept_supplied_key,
    generate_api_key,
    generate_webhook_secret,
    hash_api_key,
)
from billing.domain.chains import Chain, ChainRegistry
from billing.domain.checkout import (
    DepositState,
    PaymentProgress,
    RecordedDeposit,
    Wallet,
    WalletStatus,
    deposit_idempotency_key,
    expected_on_chain_units,
    payment_progress,
    reconcile_deposits,
    rescan_start,
    wallet_status,
)
from billing.domain.deposits import nano_to_units
from billing.domain.errors import (
    DependencyUnavailable,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    NotFound,
    StateConflict,
)
from billing.domain.ledger import credit
from billing.domain.money import format_usd
from billing.domain.payment_uri import eip681_token_transfer_uri
from billing.domain.purchase import NewPurchase, PurchaseView, Triggers
from billing.services.ledger import apply_in
from billing.services.ports import ChainReader, DepositAddresses, SecretBox, Transactions, UnitOfWork
from billing.services.provisioning import ProvisioningHandoff, ResourceDelivery
from billing.services.purchases import authenticate_in

logger = Logger(child=True)


class ChainReaders(Protocol):
    def reader_for(self, chain: Chain) -> ChainReader: ...


@dataclass(frozen=True)
class CheckoutPolicy:
    wallet_ttl: timedelta = timedelta(hours=24)
    #: In-process / test chains are refused unless the operator allows them (local runner only).
    allow_dev_chains: bool = False
    #: How long finalize waits for the purchase's resource (docs/provisioning.md); the answer says
    #: ``"status": "provisioning"`` when it is not ready by then.
    provisioning_wait: timedelta = timedelta(0)


@dataclass(frozen=True)
class WalletCreated:
    wallet: Wallet
    min_target_units: int
    payment_uri: str


@dataclass(frozen=True)
class WalletReport:
    wallet: Wallet
    status: WalletStatus
    progress: PaymentProgress
    head_block: int
    deposits: list[RecordedDeposit]
    credited_now: list[RecordedDeposit] = field(default_factory=list)
    on_chain_balance_units: int = 0
    #: ``balanceOf`` agrees with the recorded transfers minus sweeps (a check, never a source of credit)
    reconciled: bool = True


@dataclass(frozen=True)
class TopupReport:
    wallet: WalletReport
    purchase: PurchaseView


@dataclass(frozen=True)
class FinalizeRequest:
    wallet_id: UUID
    officex_purchase_id: str
    customer_org_id: str
    customer_user_id: str
    customer_org_endpoint: str | None = None
    customer_org_api_key: str | None = None
    triggers: Triggers | None = None
    customer_key: str | None = None
    vendor_key: str | None = None
    notification_email: str | None = None
    webhook_url: str | None = None

    def fingerprint(self) -> str:
        """Identifies the request for Idempotency-Key replays; secrets enter only as hashes."""
        document = {
            "wallet_id": str(self.wallet_id),
            "officex_purchase_id": self.officex_purchase_id,
            "customer_org_id": self.customer_org_id,
            "customer_user_id": self.customer_user_id,
            "customer_org_endpoint": self.customer_org_endpoint,
            "customer_org_api_key": _digest(self.customer_org_api_key),
            "triggers": None if self.triggers is None else vars(self.triggers),
            "customer_key": _digest(self.customer_key),
            "vendor_key": _digest(self.vendor_key),
            "notification_email": self.notification_email,
            "webhook_url": self.webhook_url,
        }
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def _digest(secret: str | None) -> str | None:
    return hashlib.sha256(secret.encode()).hexdigest() if secret else None


@dataclass(frozen=True)
class FinalizedPurchase:
    """Everything the customer gets once, keys included (also what a replay returns)."""

    purchase_id: str
    offer_id: str
    wallet_id: str
    status: str
    balance: str
    triggers: dict[str, str]
    customer_key: str
    vendor_key: str
    deposit_address: str
    chain: str
    token: str
    resource: dict[str, Any]
    webhook_secret: str | None = None
    replayed: bool = False
    #: The resource's credentials (e.g. the bucket's access key), when they were ready in time.
    resource_credentials: dict[str, str] | None = None


class CheckoutService:
    def __init__(
        self,
        transactions: Transactions,
        *,
        chains: ChainReaders,
        addresses: Callable[[], DepositAddresses],
        secrets: Callable[[], SecretBox],
        registry: Callable[[], ChainRegistry],
        policy: CheckoutPolicy = CheckoutPolicy(),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        provisioning: ProvisioningHandoff | None = None,
    ) -> None:
        self._provisioning = provisioning
        self._transactions = transactions
        self._chains = chains
        self._addresses = addresses
        self._secrets = secrets
        self._registry = registry
        self._policy = policy
        self._clock = clock

    # ------------------------------------------------------------------ create
    def create_wallet(
        self,
        offer_id: str,
        *,
        chain: str,
        token: str,
        min_target_nano: int | None,
        customer: Mapping[str, Any],
    ) -> WalletCreated:
        offer = self._transactions.run(lambda unit: unit.catalog.offer(offer_id))
        if offer is None or not offer.active:
            raise NotFound(f"no offer {offer_id!r}")
        if not any(option.chain == chain and option.token == token for option in offer.payment_options):
            accepted = ", ".join(f"{option.token} on {option.chain}" for option in offer.payment_options)
            raise InvalidRequest(f"this offer accepts {accepted}; not {token} on {chain}")
        registry_chain = self._registry().chain(chain)
        if registry_chain.dev and not self._policy.allow_dev_chains:
            raise InvalidRequest(f"{chain} is a development chain and is not accepted here")
        contract = registry_chain.tokens[token]
        target = offer.min_deposit if min_target_nano is None else min_target_nano
        if target < offer.min_deposit:
            minimum = format_usd(offer.min_deposit)
            raise InvalidRequest(
                f"min_target_balance must be at least the offer's minimum deposit ({minimum})"
            )
        head = self._chains.reader_for(registry_chain).head()  # an RPC failure stops here: nothing written
        now = self._clock()

        def create(unit: UnitOfWork) -> Wallet:
            index = unit.checkout.next_hd_index()
            wallet = Wallet(
                id=uuid4(),
                offer_id=offer.id,
                chain=registry_chain.slug,
                chain_id=registry_chain.chain_id,
                token=token,
                token_address=contract.address,
                token_decimals=contract.decimals,
                address=self._addresses().address_at(index),
                hd_index=index,
                min_target_balance_nano=target,
                confirmations_required=registry_chain.confirmations,
                status=WalletStatus.AWAITING_PAYMENT,
                expires_at=now + self._policy.wallet_ttl,
                created_block=head,
                last_scanned_block=None,
                purchase_id=None,
                customer=dict(customer),
            )
            unit.checkout.insert_wallet(wallet)
            return wallet

        wallet = self._transactions.run(create)
        units = nano_to_units(target, contract.decimals)
        uri = eip681_token_transfer_uri(registry_chain.chain_id, contract.address, wallet.address, units)
        return WalletCreated(wallet, units, uri)

    # ------------------------------------------------------------------ verify
    def verify(self, offer_id: str, wallet_id: UUID) -> WalletReport:
        wallet = self._transactions.run(lambda unit: unit.checkout.wallet(wallet_id))
        if wallet is None or wallet.offer_id != offer_id:
            raise NotFound("no such checkout wallet for this offer")
        return self._rescan(wallet)

    def _rescan(self, wallet: Wallet) -> WalletReport:
        reader = self._chains.reader_for(self._registry().chain(wallet.chain))
        recorded = self._transactions.run(lambda unit: unit.checkout.deposits(wallet.id))
        start = rescan_start(
            recorded,
            created_block=wallet.created_block,
            last_scanned_block=wallet.last_scanned_block,
            confirmations_required=wallet.confirmations_required,
        )
        head = reader.head()
        observed = reader.transfers_to(wallet.token_address, [wallet.address], start, head)
        on_chain = reader.token_balance(wallet.token_address, wallet.address)
        now = self._clock()

        def reconcile(unit: UnitOfWork) -> WalletReport:
            locked = unit.checkout.wallet(wallet.id, lock=True)
            assert locked is not None
            changes = reconcile_deposits(
                unit.checkout.deposits(wallet.id),
                observed,
                scanned_from_block=start,
                head_block=head,
                confirmations_required=locked.confirmations_required,
                token_decimals=locked.token_decimals,
            )
            unit.checkout.apply_deposit_changes(locked, changes)
            credited_now = []
            if locked.purchase_id is not None:
                credited_now = _credit_confirmed(unit, locked, locked.purchase_id)
            deposits = unit.checkout.deposits(wallet.id)
            progress = payment_progress(deposits, locked.min_target_balance_nano)
            status = wallet_status(
                progress, finalized=locked.purchase_id is not None, expires_at=locked.expires_at, now=now
            )
            unit.checkout.record_scan(wallet.id, head, status)
            expected = expected_on_chain_units(deposits, unit.checkout.swept_units(wallet.id))
            if on_chain != expected:
                logger.warning(
                    "deposit address balance differs from the recorded transfers",
                    extra={
                        "wallet_id": str(wallet.id),
                        "on_chain_units": on_chain,
                        "expected_units": expected,
                    },
                )
            return WalletReport(
                locked, status, progress, head, deposits, credited_now, on_chain, on_chain == expected
            )

        return self._transactions.run(reconcile)

    # ---------------------------------------------------------------- finalize
    def finalize(
        self, offer_id: str, request: FinalizeRequest, idempotency_key: str | None
    ) -> FinalizedPurchase:
        wallet = self._transactions.run(lambda unit: unit.checkout.wallet(request.wallet_id))
        if wallet is None or wallet.offer_id != offer_id:
            raise NotFound("no such checkout wallet for this offer")
        if wallet.purchase_id is None:
            report = self._rescan(wallet)  # the freshest confirmations before deciding
            # FINALIZED: a concurrent request won; the locked section below replays or refuses it.
            if report.status not in (WalletStatus.PAID, WalletStatus.FINALIZED):
                raise InsufficientFunds(
                    f"the wallet is not paid yet: {format_usd(report.progress.remaining_nano)} USD remaining "
                    f"at {wallet.confirmations_required} confirmations",
                    extra={"status": report.status.value},
                )
        fingerprint = request.fingerprint()
        replay_context = {"purpose": "finalize-replay", "wallet_id": str(wallet.id)}

        def finalize(unit: UnitOfWork) -> FinalizedPurchase:
            locked = unit.checkout.wallet(wallet.id, lock=True)
            assert locked is not None
            if idempotency_key:
                stored = unit.checkout.finalize_replay(wallet.id, idempotency_key)
                if stored is not None:
                    if stored[0] != fingerprint:
                        raise IdempotencyConflict("this Idempotency-Key was used for a different finalize")
                    answer = json.loads(self._secrets().decrypt(stored[1], replay_context))
                    return FinalizedPurchase(**{**answer, "replayed": True})
            if locked.purchase_id is not None:
                raise StateConflict("this checkout was already finalized by another request")
            progress = payment_progress(unit.checkout.deposits(wallet.id), locked.min_target_balance_nano)
            if progress.remaining_nano:
                raise InsufficientFunds("the wallet is not paid yet")
            purchase = self._create_purchase(unit, locked, request)
            if idempotency_key:
                ciphertext = self._secrets().encrypt(json.dumps(vars(purchase)), replay_context)
                unit.checkout.store_finalize_replay(wallet.id, idempotency_key, fingerprint, ciphertext)
            return purchase

        purchase = self._transactions.run(finalize)
        return self._with_resource(purchase, wallet.id, idempotency_key, replay_context)

    def _with_resource(
        self,
        purchase: FinalizedPurchase,
        wallet_id: UUID,
        idempotency_key: str | None,
        replay_context: dict[str, str],
    ) -> FinalizedPurchase:
        """The resource as it is after a bounded wait, with its credentials if they are shown now.

        Runs after the purchase committed: nothing here can undo it. A new purchase waits up
        to ``provisioning_wait``; a replay only looks. Credentials shown here are wiped from
        the resource and kept in the (encrypted) replay, so a retry with the same
        Idempotency-Key gets them again, as it gets the API keys.
        """
        if self._provisioning is None:
            return purchase
        wait = timedelta(0) if purchase.replayed else self._policy.provisioning_wait
        try:
            delivery = self._provisioning.deliver(UUID(purchase.purchase_id), wait=wait)
        except DependencyUnavailable as error:
            logger.warning("resource status unavailable after finalize", extra={"reason": error.detail})
            return purchase
        updated = _merge_delivery(purchase, delivery)
        if idempotency_key and delivery.credentials:
            stored = replace(updated, replayed=False)
            try:
                ciphertext = self._secrets().encrypt(json.dumps(vars(stored)), replay_context)
                self._transactions.run_single_write(
                    lambda unit: unit.provisioning.store_finalize_replay(
                        wallet_id, idempotency_key, ciphertext
                    )
                )
            except DependencyUnavailable as error:  # the answer still carries them: never lose them here
                logger.warning("finalize replay kept without credentials", extra={"reason": error.detail})
        return updated

    def _create_purchase(
        self, unit: UnitOfWork, wallet: Wallet, request: FinalizeRequest
    ) -> FinalizedPurchase:
        offer = unit.catalog.offer(wallet.offer_id)
        if offer is None:
            raise NotFound("the offer of this checkout no longer exists")
        defaults = offer.default_triggers
        triggers = request.triggers or Triggers(defaults.low, defaults.critical, defaults.termination)
        customer_key = (
            accept_supplied_key(request.customer_key, KeyRole.CUSTOMER)
            if request.customer_key
            else generate_api_key(KeyRole.CUSTOMER)
        )
        vendor_key = (
            accept_supplied_key(request.vendor_key, KeyRole.VENDOR)
            if request.vendor_key
            else generate_api_key(KeyRole.VENDOR)
        )
        purchase_id = uuid4()
        org_key_ciphertext = None
        if request.customer_org_api_key:
            org_key_ciphertext = self._secrets().encrypt(
                request.customer_org_api_key, {"purpose": "officex-org-key", "purchase_id": str(purchase_id)}
            )
        webhook_secret = generate_webhook_secret() if request.webhook_url else None
        unit.purchases.insert(
            NewPurchase(
                id=purchase_id,
                offer_id=offer.id,
                triggers=triggers,
                customer_key_hash=hash_api_key(customer_key),
                vendor_key_hash=hash_api_key(vendor_key),
                wallet_id=wallet.id,
                officex_purchase_id=request.officex_purchase_id,
                customer_org_id=request.customer_org_id,
                customer_user_id=request.customer_user_id,
                customer_org_endpoint=request.customer_org_endpoint,
                customer_org_api_key_ciphertext=org_key_ciphertext,
                resource={"kind": offer.kind.value, "status": "provisioning"},
                notify_email=request.notification_email or wallet.customer.get("email"),
                webhook_url=request.webhook_url,
                webhook_secret_ciphertext=(
                    self._secrets().encrypt(
                        webhook_secret, {"purpose": "webhook-secret", "purchase_id": str(purchase_id)}
                    )
                    if webhook_secret
                    else None
                ),
                grace_period=timedelta(hours=defaults.grace_period_hours),
            )
        )
        _credit_confirmed(unit, wallet, purchase_id)
        unit.checkout.attach_purchase(wallet.id, purchase_id)
        # Provisioning's work (docs/provisioning.md) and the customer's OfficeX record, in the same
        # transaction as the purchase: both happen, or neither does.
        unit.provisioning.enqueue(
            purchase_id,
            "resource.provision",
            f"provision:{purchase_id}",
            {
                "event": "resource.provision",
                "purchase_id": str(purchase_id),
                "offer_id": offer.id,
                "kind": offer.kind.value,
            },
        )
        unit.provisioning.enqueue_officex_refresh(
            purchase_id, "purchase.created", f"created:{purchase_id}:officex.status"
        )
        view = unit.purchases.view(purchase_id)
        assert view is not None
        return FinalizedPurchase(
            purchase_id=str(purchase_id),
            offer_id=offer.id,
            wallet_id=str(wallet.id),
            status=view.status.value,
            balance=format_usd(view.balance_nano),
            triggers={
                "low": format_usd(triggers.low_nano),
                "critical": format_usd(triggers.critical_nano),
                "termination": format_usd(triggers.termination_nano),
            },
            customer_key=customer_key,
            vendor_key=vendor_key,
            deposit_address=wallet.address,
            chain=wallet.chain,
            token=wallet.token,
            resource={"kind": offer.kind.value, "status": "provisioning"},
            webhook_secret=webhook_secret,
        )

    # ----------------------------------------------------------------- top-ups
    def verify_topup(self, raw_purchase_id: str, customer_key: str) -> TopupReport:
        def find(unit: UnitOfWork) -> Wallet:
            purchase_id = authenticate_in(unit, raw_purchase_id, customer_key, KeyRole.CUSTOMER)
            wallet = unit.checkout.wallet_of_purchase(purchase_id)
            if wallet is None:
                raise NotFound("this purchase has no deposit address")
            return wallet

        report = self._rescan(self._transactions.run(find))
        assert report.wallet.purchase_id is not None
        purchase_id = report.wallet.purchase_id
        view = self._transactions.run(lambda unit: unit.purchases.view(purchase_id))
        if view is None:
            raise NotFound("purchase not found")
        return TopupReport(report, view)

    def scan_topups(self, chain: Chain, *, limit: int = 200) -> int:
        """Scheduled: re-scan purchases' deposit addresses on ``chain``; returns transfers credited."""
        wallets = self._transactions.run(
            lambda unit: unit.checkout.wallets_with_purchases(chain.chain_id, limit)
        )
        return sum(len(self._rescan(wallet).credited_now) for wallet in wallets)


def _credit_confirmed(unit: UnitOfWork, wallet: Wallet, purchase_id: UUID) -> list[RecordedDeposit]:
    """Credit every confirmed, not yet credited deposit of ``wallet`` to the purchase, once each."""
    credited = []
    for deposit in unit.checkout.deposits(wallet.id):
        if deposit.state is not DepositState.CONFIRMED or deposit.amount_nano == 0:
            continue
        receipt = apply_in(
            unit,
            credit(
                purchase_id,
                deposit.amount_nano,
                deposit_idempotency_key(wallet.chain_id, deposit.tx_hash, deposit.log_index),
                source="chain",
                metadata={
                    "chain_id": wallet.chain_id,
                    "token": wallet.token,
                    "tx_hash": deposit.tx_hash,
                    "log_index": deposit.log_index,
                    "amount_units": str(deposit.amount_units),
                },
            ),
        )
        unit.checkout.mark_credited(wallet.chain_id, deposit, purchase_id, receipt.entry_id)
        credited.append(deposit)
    return credited


def _merge_delivery(purchase: FinalizedPurchase, delivery: ResourceDelivery) -> FinalizedPurchase:
    resource = delivery.resource or purchase.resource
    credentials = delivery.credentials or purchase.resource_credentials
    return replace(purchase, resource=resource, resource_credentials=credentials)
