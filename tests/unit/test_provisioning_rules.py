"""Pure provisioning rules: names, policy documents, what customers and OfficeX see, settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from billing.adapters.aws.s3_provisioner import S3BucketProvisioner, S3ProvisionerConfig
from billing.domain.catalog import OfferKind
from billing.domain.notifications import (
    Destinations,
    FinalStatement,
    StatusChanged,
    final_statement_body,
    final_statement_email,
    officex_record,
    officex_update_body,
    pricing_line,
)
from billing.domain.provisioning import (
    RESOURCE_KINDS,
    ResourceAction,
    ResourceRecord,
    ResourceStatus,
    action_of_kind,
    resource_view,
)
from billing.domain.purchase import PurchaseStatus
from billing.provisioning_settings import provisioning_settings_from
from billing.services.provisioning import ProvisioningHandoff

PURCHASE = UUID("3f6c0a52-0d7e-4c1a-9a51-6a1f0c7e2b11")
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def _provisioner(**config: Any) -> S3BucketProvisioner:
    def no_client(*_: object) -> object:
        raise AssertionError("no AWS call expected")

    return S3BucketProvisioner(
        S3ProvisionerConfig(bucket_prefix="oxb-1a2b3c4d", **config), s3=no_client, iam=no_client
    )


def test_bucket_names_are_deterministic_dns_safe_and_short_enough() -> None:
    name = _provisioner().bucket_name(PURCHASE)
    assert name == "oxb-1a2b3c4d-3f6c0a520d7e4c1a9a516a1f0c7e2b11"
    assert name == _provisioner().bucket_name(UUID(str(PURCHASE)))
    longest = S3BucketProvisioner(S3ProvisionerConfig(bucket_prefix="a" * 30)).bucket_name(PURCHASE)
    assert len(longest) == 63


@pytest.mark.parametrize("prefix", ["", "-oxb", "oxb-", "OXB", "oxb_x", "a" * 31, "a"])
def test_bad_bucket_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="bucket_prefix"):
        S3ProvisionerConfig(bucket_prefix=prefix)


def test_the_customer_policy_reaches_its_bucket_only() -> None:
    policy = _provisioner().access_policy("oxb-1a2b3c4d-abc")
    resources = {statement["Sid"]: statement["Resource"] for statement in policy["Statement"]}
    assert resources == {
        "Bucket": "arn:aws:s3:::oxb-1a2b3c4d-abc",
        "Objects": "arn:aws:s3:::oxb-1a2b3c4d-abc/*",
    }
    actions = [action for statement in policy["Statement"] for action in statement["Action"]]
    assert all(action.startswith("s3:") and "*" not in action for action in actions)
    assert not {"s3:PutBucketPolicy", "s3:DeleteBucket", "s3:PutBucketAcl"} & set(actions)
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])


def test_suspension_denies_everything_to_the_user_and_in_the_bucket_policy() -> None:
    provisioner = _provisioner()
    assert provisioner.deny_all_policy()["Statement"] == [
        {"Sid": "Suspended", "Effect": "Deny", "Action": "*", "Resource": "*"}
    ]
    user = "arn:aws:iam::123456789012:user/officex-billing/s/oxb-1a2b3c4d-abc"
    suspended = provisioner.bucket_policy("oxb-1a2b3c4d-abc", deny_user_arn=user)["Statement"]
    assert [statement["Sid"] for statement in suspended] == ["DenyInsecureTransport", "DenySuspendedCustomer"]
    assert suspended[1]["Principal"] == {"AWS": user} and suspended[1]["Effect"] == "Deny"
    active = provisioner.bucket_policy("oxb-1a2b3c4d-abc", deny_user_arn=None)["Statement"]
    assert [statement["Sid"] for statement in active] == ["DenyInsecureTransport"]
    assert active[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert _provisioner(require_tls=False).bucket_policy("b", deny_user_arn=None)["Statement"] == []


def _record(**changes: Any) -> ResourceRecord:
    values: dict[str, Any] = {
        "id": UUID("00000000-0000-4000-8000-0000000000aa"),
        "purchase_id": PURCHASE,
        "kind": OfferKind.S3_BUCKET,
        "name": "oxb-1a2b3c4d-abc",
        "region": "us-east-1",
        "status": ResourceStatus.ACTIVE,
        "summary": {"bucket": "oxb-1a2b3c4d-abc", "endpoint": "https://x", "access_key_id": "AKIA1"},
        "credentials_ciphertext": None,
        "credentials_shown_at": None,
        "last_error": None,
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(changes)
    return ResourceRecord(**values)


def test_the_resource_view_never_carries_a_secret_and_says_where_the_credentials_are() -> None:
    pending = resource_view(_record(credentials_ciphertext=b"ciphertext"))
    shown = resource_view(_record(credentials_shown_at=NOW))
    assert pending["credentials"] == "pending" and shown["credentials"] == "shown"
    assert resource_view(_record())["credentials"] == "none"
    assert (
        pending["status"] == "active"
        and pending["kind"] == "s3_bucket"
        and pending["access_key_id"] == "AKIA1"
    )
    assert b"ciphertext" not in json.dumps(pending).encode()


def test_resource_kinds_map_to_actions() -> None:
    assert RESOURCE_KINDS == ("resource.provision", "resource.suspend", "resource.resume", "resource.delete")
    assert [action_of_kind(kind) for kind in RESOURCE_KINDS] == list(ResourceAction)
    with pytest.raises(ValueError, match="not a resource action"):
        action_of_kind("notify.email")


def _event(**changes: Any) -> StatusChanged:
    payload: dict[str, Any] = {
        "event": "purchase.status_changed",
        "purchase_id": str(PURCHASE),
        "offer_id": "s3-bucket",
        "from": "active",
        "to": "suspended",
        "transition": 3,
        "balance_nano": 400_000_000,
        "held_nano": 0,
        "triggers": {"low_nano": 5 * 10**9, "critical_nano": 2 * 10**9, "termination_nano": 500_000_000},
        "grace_until": "2026-11-28T10:00:00Z",
        "occurred_at": "2026-11-25T10:00:00Z",
    }
    payload.update(changes)
    return StatusChanged.model_validate(payload)


def test_officex_body_is_unchanged_without_the_record_and_complete_with_it() -> None:
    assert json.loads(officex_update_body("P1", PurchaseStatus.SUSPENDED)) == {
        "id": "P1",
        "status": "BLOCKED",
    }
    where = Destinations(
        offer_title="Private S3 storage bucket",
        offer_pricing={"meter": "s3_cost_export", "markup": "1.25", "region": "us-east-1"},
        deposit_address="0xabc",
        deposit_chain_id=8453,
        deposit_token="USDC",
        resource={"kind": "s3_bucket", "name": "oxb-1", "region": "us-east-1", "status": "suspended"},
    )
    record = officex_record(_event(), where, public_base_url="https://billing.example/")
    body = json.loads(officex_update_body("P1", PurchaseStatus.SUSPENDED, record))
    assert (
        body["status"] == "BLOCKED" and body["billing_url"] == f"https://billing.example/purchase/{PURCHASE}"
    )
    assert (
        body["pricing"].startswith("Amazon S3 in us-east-1 at AWS cost x 1.25")
        and len(body["pricing"]) <= 250
    )
    notes = body["vendor_notes"]
    for expected in (
        "Balance: 0.400000000 USD",
        "suspension 0.500000000 USD",
        "Resources are deleted at 2026-11-28 10:00 UTC",
        "Resource: s3_bucket oxb-1 (us-east-1): suspended",
        "Top up: send USDC on chain 8453 to 0xabc",
        "https://billing.example/openapi.json",
    ):
        assert expected in notes, expected


def test_pricing_lines_per_meter() -> None:
    assert pricing_line(
        {"meter": "gemini_tokens", "markup": "1.20", "prices_as_of": "2026-03-01"}
    ).startswith("Gemini tokens at Google list price x 1.20 (prices as of 2026-03-01)")
    assert pricing_line(None, "Something") == "Something; prepaid in USDC/USDT"


def test_final_statement_texts() -> None:
    statement = FinalStatement(
        event="purchase.final_statement",
        purchase_id=PURCHASE,
        offer_id="s3-bucket",
        opened_at=NOW - timedelta(days=30),
        closed_at=NOW,
        deposits_nano=30 * 10**9,
        usage_nano=29_600_000_000,
        adjustments_nano=0,
        balance_nano=400_000_000,
        held_nano=0,
        usage_events=2,
        resource={"kind": "s3_bucket", "name": "oxb-1"},
        issued_at=NOW,
    )
    email = final_statement_email(statement)
    assert email.subject == "Final usage statement (s3-bucket, purchase 3f6c0a52)"
    assert "Usage:        29.600000000 USD (2 events)" in email.text and "s3_bucket oxb-1" in email.text
    document = json.loads(final_statement_body("final-statement:x:notify.webhook", statement))
    assert document["event"] == "purchase.final_statement" and document["balance"] == "0.400000000"
    assert document["period"] == {"start": "2026-10-26T10:00:00Z", "end": "2026-11-25T10:00:00Z"}


def test_settings_from_the_environment() -> None:
    settings = provisioning_settings_from(
        {
            "KMS_KEY_ID": "key-1",
            "PROVISIONED_BUCKET_PREFIX": "oxb-1a2b3c4d",
            "PROVISIONED_IAM_PATH": "/officex-billing/stack/",
            "PROVISIONED_RESOURCE_TAGS": "service=vendor-billing, stage=prod,,",
            "PROVISIONER_FUNCTION_NAME": "stack-ProvisionerFunction",
        }
    )
    assert settings.resource_tags == {"service": "vendor-billing", "stage": "prod"}
    assert settings.require_tls and settings.wait_s == 8 and settings.lease_s == 600
    with pytest.raises(ValueError, match="tag"):
        provisioning_settings_from({"PROVISIONED_RESOURCE_TAGS": "aws:reserved=x"})
    with pytest.raises(ValueError, match="bucket_prefix"):
        provisioning_settings_from({"PROVISIONED_BUCKET_PREFIX": "Bad_Prefix"})


class _NoRecords:
    """Transactions whose resource never appears: the handoff's wait must stay bounded."""

    reads = 0

    def run(self, work: Any) -> Any:
        _NoRecords.reads += 1
        return None

    def run_single_write(self, work: Any) -> Any:  # pragma: no cover - nothing to write
        raise AssertionError


def test_the_finalize_wait_is_bounded_and_a_failed_kick_is_not_fatal() -> None:
    clock = {"now": 0.0}
    kicked: list[UUID] = []

    def kick(purchase_id: UUID) -> None:
        kicked.append(purchase_id)
        raise RuntimeError("lambda is down")

    def sleep(seconds: float) -> None:
        clock["now"] += seconds

    handoff = ProvisioningHandoff(
        _NoRecords(),  # type: ignore[arg-type]
        secrets=None,
        kick=kick,
        poll_interval=timedelta(milliseconds=500),
        monotonic=lambda: clock["now"],
        sleep=sleep,
    )
    delivery = handoff.deliver(PURCHASE, wait=timedelta(seconds=8))
    assert delivery.resource is None and delivery.credentials is None
    assert kicked == [PURCHASE] and clock["now"] == pytest.approx(8.0)
    assert _NoRecords.reads == 17  # every 0.5 s for 8 s, then one last look
