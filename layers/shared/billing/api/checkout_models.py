"""Bodies of the checkout routes and of verify-topup."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import Field, StringConstraints, model_validator

from billing.api.models import ResponseModel, StrictModel
from billing.domain.checkout import RecordedDeposit, WalletStatus
from billing.domain.deposits import confirmations
from billing.domain.money import PositiveUsdAmount, SignedUsdAmount, UsdAmount
from billing.domain.purchase import PurchaseStatus, Triggers
from billing.services.checkout import (
    FinalizedPurchase,
    FinalizeRequest,
    TopupReport,
    WalletCreated,
    WalletReport,
)

OfficexId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_:.\-]+$")]
Email = Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]


HttpsUrl = Annotated[str, StringConstraints(max_length=500, pattern=r"^https://[^\s]+$")]


class CreateWalletBody(StrictModel):
    chain: str = Field(max_length=40, examples=["base"])
    token: str = Field(max_length=10, examples=["USDC"])
    min_target_balance: PositiveUsdAmount | None = None
    email: Email | None = None
    officex_purchase_id: OfficexId | None = None
    customer_org_id: OfficexId | None = None
    customer_user_id: OfficexId | None = None

    def customer(self) -> dict[str, Any]:
        fields = ("email", "officex_purchase_id", "customer_org_id", "customer_user_id")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


class WalletCreatedResponse(ResponseModel):
    wallet_id: UUID
    address: str
    chain: str
    chain_id: int
    token: str
    token_address: str
    decimals: int
    min_target_balance: UsdAmount
    min_target_units: str = Field(description="The same amount in token base units")
    confirmations_required: int
    expires_at: datetime
    payment_uri: str = Field(description="EIP-681 token transfer URI for wallets")

    @classmethod
    def of(cls, created: WalletCreated) -> WalletCreatedResponse:
        wallet = created.wallet
        return cls.model_construct(
            wallet_id=wallet.id,
            address=wallet.address,
            chain=wallet.chain,
            chain_id=wallet.chain_id,
            token=wallet.token,
            token_address=wallet.token_address,
            decimals=wallet.token_decimals,
            min_target_balance=wallet.min_target_balance_nano,
            min_target_units=str(created.min_target_units),
            confirmations_required=wallet.confirmations_required,
            expires_at=wallet.expires_at,
            payment_uri=created.payment_uri,
        )


class TransferView(ResponseModel):
    tx_hash: str
    log_index: int
    sender: str
    block_number: int
    amount: UsdAmount
    amount_units: str
    confirmations: int
    state: str


class WalletStatusResponse(ResponseModel):
    wallet_id: UUID
    status: WalletStatus
    confirmed_received: UsdAmount
    pending_received: UsdAmount
    remaining: UsdAmount
    min_target_balance: UsdAmount
    confirmations_required: int
    head_block: int
    expires_at: datetime
    purchase_id: UUID | None
    transfers: list[TransferView]
    on_chain_balance_units: str = Field(description="balanceOf(deposit address): a reconciliation check only")
    reconciled: bool

    @classmethod
    def of(cls, report: WalletReport) -> WalletStatusResponse:
        return cls.model_construct(
            wallet_id=report.wallet.id,
            status=report.status,
            confirmed_received=report.progress.confirmed_nano,
            pending_received=report.progress.pending_nano,
            remaining=report.progress.remaining_nano,
            min_target_balance=report.wallet.min_target_balance_nano,
            confirmations_required=report.wallet.confirmations_required,
            head_block=report.head_block,
            expires_at=report.wallet.expires_at,
            purchase_id=report.wallet.purchase_id,
            transfers=[_transfer(deposit, report.head_block) for deposit in report.deposits],
            on_chain_balance_units=str(report.on_chain_balance_units),
            reconciled=report.reconciled,
        )


def _transfer(deposit: RecordedDeposit, head_block: int) -> TransferView:
    return TransferView.model_construct(
        tx_hash=deposit.tx_hash,
        log_index=deposit.log_index,
        sender=deposit.sender,
        block_number=deposit.block_number,
        amount=deposit.amount_nano,
        amount_units=str(deposit.amount_units),
        confirmations=confirmations(head_block, deposit.block_number),
        state=deposit.state.value,
    )


class TriggersBody(StrictModel):
    low: UsdAmount
    critical: UsdAmount
    termination: UsdAmount

    @model_validator(mode="after")
    def _ordered(self) -> TriggersBody:
        if not self.low > self.critical > self.termination >= 0:
            raise ValueError("triggers must satisfy low > critical > termination >= 0")
        return self


class FinalizeBody(StrictModel):
    wallet_id: UUID
    officex_purchase_id: OfficexId
    customer_org_id: OfficexId
    customer_user_id: OfficexId
    customer_org_endpoint: HttpsUrl | None = None
    customer_org_api_key: Annotated[str, StringConstraints(min_length=8, max_length=500)] | None = None
    triggers: TriggersBody | None = None
    customer_check_billing_api_key: Annotated[str, StringConstraints(max_length=200)] | None = None
    vendor_update_billing_api_key: Annotated[str, StringConstraints(max_length=200)] | None = None
    notification_email: Email | None = Field(
        default=None, description="Where balance notices go; defaults to the checkout's email"
    )
    webhook_url: HttpsUrl | None = Field(
        default=None,
        description="Receives signed status-change webhooks; the signing secret is returned once",
    )

    def to_request(self) -> FinalizeRequest:
        triggers = None
        if self.triggers is not None:
            triggers = Triggers(self.triggers.low, self.triggers.critical, self.triggers.termination)
        return FinalizeRequest(
            wallet_id=self.wallet_id,
            officex_purchase_id=self.officex_purchase_id,
            customer_org_id=self.customer_org_id,
            customer_user_id=self.customer_user_id,
            customer_org_endpoint=self.customer_org_endpoint,
            customer_org_api_key=self.customer_org_api_key,
            triggers=triggers,
            customer_key=self.customer_check_billing_api_key,
            vendor_key=self.vendor_update_billing_api_key,
            notification_email=self.notification_email,
            webhook_url=self.webhook_url,
        )


class FinalizedResponse(ResponseModel):
    purchase_id: UUID
    offer_id: str
    wallet_id: UUID
    status: str
    balance: str = Field(description="USD, the confirmed amount received")
    triggers: dict[str, str]
    customer_check_billing_api_key: str = Field(
        description="Shown once: keep it. Read access to the purchase"
    )
    vendor_update_billing_api_key: str = Field(description="Shown once: keep it. Metering access")
    deposit_address: str = Field(description="Top up by sending to the same address")
    chain: str
    token: str
    resource: dict[str, Any] = Field(
        description=(
            "The purchase's resource; status provisioning means it is still being made: its "
            "credentials then come once with the next GET /purchase/{purchase_id}"
        )
    )
    resource_credentials: dict[str, str] | None = Field(
        default=None,
        description="Shown once when the resource was ready in time (e.g. the bucket's access key)",
    )
    webhook_secret: str | None = Field(
        default=None,
        description="Shown once when webhook_url was given: signs the webhooks (docs/notifications.md)",
    )

    @classmethod
    def of(cls, purchase: FinalizedPurchase) -> FinalizedResponse:
        return cls(
            purchase_id=UUID(purchase.purchase_id),
            offer_id=purchase.offer_id,
            wallet_id=UUID(purchase.wallet_id),
            status=purchase.status,
            balance=purchase.balance,
            triggers=purchase.triggers,
            customer_check_billing_api_key=purchase.customer_key,
            vendor_update_billing_api_key=purchase.vendor_key,
            deposit_address=purchase.deposit_address,
            chain=purchase.chain,
            token=purchase.token,
            resource=purchase.resource,
            resource_credentials=purchase.resource_credentials,
            webhook_secret=purchase.webhook_secret,
        )


class TopupResponse(ResponseModel):
    purchase_id: UUID
    credited: list[TransferView] = Field(
        description="Transfers credited by this call (each is credited once)"
    )
    credited_total: UsdAmount
    balance: SignedUsdAmount
    status: PurchaseStatus
    wallet: WalletStatusResponse

    @classmethod
    def of(cls, report: TopupReport) -> TopupResponse:
        wallet = report.wallet
        return cls.model_construct(
            purchase_id=report.purchase.id,
            credited=[_transfer(deposit, wallet.head_block) for deposit in wallet.credited_now],
            credited_total=sum(deposit.amount_nano for deposit in wallet.credited_now),
            balance=report.purchase.balance_nano,
            status=report.purchase.status,
            wallet=WalletStatusResponse.of(wallet),
        )
