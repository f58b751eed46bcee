"""S3 bucket provisioning on moto: the whole purchase lifecycle, crashes after every step, termination safety.

Purchases, balances and statuses move through the real services (checkout on the in-process
chain, metering, ledger credits, the minute sweep); the resource.* outbox rows they write are
run by the real provisioning worker against moto (S3, IAM, KMS).

moto and IAM: ``enable_iam_authentication()`` makes moto check the customer's requests
against the IAM user's policies (an explicit deny wins, resources are matched). moto does NOT
check an access key's Active/Inactive status, and it applies every Deny statement of a bucket
policy to every caller (principal and conditions ignored). So the tests assert the key status
and the bucket policy exactly, and show "access denied" through the user policy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core import enable_iam_authentication

from billing.adapters.aws.kms import KmsSecretBox
from billing.adapters.aws.s3_provisioner import (
    ACCESS_POLICY_NAME,
    SUSPENDED_POLICY_NAME,
    S3BucketProvisioner,
    S3ProvisionerConfig,
)
from billing.adapters.chain.hd import XpubDepositAddresses
from billing.adapters.chain.readers import EnvChainReaders
from billing.adapters.postgres.outbox_store import PostgresOutbox
from billing.adapters.postgres.provisioning_store import PostgresProvisioningStore
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain import ledger
from billing.domain.catalog import OfferKind
from billing.domain.chains import chain_registry
from billing.domain.notifications import EmailMessage, verify_webhook_signature
from billing.domain.provisioning import ResourceRef, credentials_context
from billing.services import provisioning as provisioning_service
from billing.services.checkout import CheckoutPolicy, CheckoutService, FinalizedPurchase, FinalizeRequest
from billing.services.lifecycle import PurchaseLifecycle
from billing.services.metering import MeteringService, UsageEvent
from billing.services.notifications import DispatchPolicy, OfficexRecordLinks, OutboxDispatcher
from billing.services.provisioning import (
    ProvisioningHandoff,
    ProvisioningOutcome,
    ProvisioningPolicy,
    ProvisioningWorker,
)
from billing.services.purchases import PurchaseReader
from local.handlers import LocalLambdaContext, load_handler, load_module
from local.seed import import_default_catalog
from local.template import load_template
from tests.conftest import load_event
from tests.integration.checkout_support import CheckoutKit
from tests.integration.ledger_support import ledger_on, new_purchase, run_concurrently

PREFIX = "oxb-test"
IAM_PATH = "/officex-billing/test/"
REGION = "us-east-1"
S3_OFFER = "s3-bucket"
USD = 10**9
USDC = 10**6
ORG_KEY = "officex-org-key-0123456789"
PUBLIC_BASE = "https://billing.vendor.example"
#: Lifts a test purchase out of suspension (above termination + the one-cent hysteresis margin).
TOP_UP_NANO = USD // 10


# ------------------------------------------------------------------- the cloud
@dataclass
class Cloud:
    """moto's S3/IAM/KMS, and provisioning wired to it (the bucket policy's TLS rule off: see above)."""

    box: KmsSecretBox
    boundary_arn: str
    s3: Any = field(default_factory=lambda: boto3.client("s3", region_name=REGION))
    iam: Any = field(default_factory=lambda: boto3.client("iam"))

    def provisioner(
        self,
        *,
        wrap: Callable[[Any], Any] = lambda client: client,
        **config: Any,
    ) -> S3BucketProvisioner:
        settings = {
            "bucket_prefix": PREFIX,
            "iam_path": IAM_PATH,
            "permissions_boundary_arn": self.boundary_arn,
            "tags": {"service": "vendor-billing", "stage": "test"},
            "require_tls": False,
            **config,
        }
        return S3BucketProvisioner(
            S3ProvisionerConfig(**settings),
            s3=lambda region: wrap(boto3.client("s3", region_name=region)),
            iam=lambda: wrap(boto3.client("iam")),
        )

    def worker(
        self,
        db: psycopg.Connection[Any],
        provisioner: S3BucketProvisioner | None = None,
        **policy: Any,
    ) -> ProvisioningWorker:
        return ProvisioningWorker(
            PostgresTransactions(lambda: db),
            provisioners={OfferKind.S3_BUCKET: provisioner or self.provisioner()},
            secrets=lambda: self.box,
            policy=ProvisioningPolicy(**policy),
            jitter=lambda: 0.0,
        )

    def customer(self, credentials: dict[str, str]) -> Any:
        return boto3.client(
            "s3",
            region_name=credentials["region"],
            aws_access_key_id=credentials["access_key_id"],
            aws_secret_access_key=credentials["secret_access_key"],
        )


def make_cloud(box: KmsSecretBox) -> Cloud:
    iam = boto3.client("iam")
    boundary = iam.create_policy(
        PolicyName="officex-user-boundary",
        Path="/officex-billing/",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": f"arn:aws:s3:::{PREFIX}-*"}],
            }
        ),
    )["Policy"]["Arn"]
    return Cloud(box=box, boundary_arn=boundary)


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        key_id = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["KeyId"]
        yield make_cloud(KmsSecretBox(key_id))


def run(worker: ProvisioningWorker, purchase_id: UUID | None = None) -> ProvisioningOutcome:
    return worker.run(time_left=lambda: timedelta(minutes=5), purchase_id=purchase_id)


def make_due(db: psycopg.Connection[Any]) -> None:
    """Time passes: leases and backoffs run out."""
    db.execute("UPDATE outbox SET next_attempt_at = now() WHERE delivered_at IS NULL")


def rows(db: psycopg.Connection[Any], purchase_id: UUID, kind: str) -> list[dict[str, Any]]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute(
            "SELECT * FROM outbox WHERE purchase_id = %s AND kind = %s ORDER BY id", (purchase_id, kind)
        ).fetchall()


def resource_row(db: psycopg.Connection[Any], purchase_id: UUID) -> dict[str, Any]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        row = cursor.execute(
            "SELECT * FROM provisioned_resources WHERE purchase_id = %s", (purchase_id,)
        ).fetchone()
    assert row is not None
    return row


def bucket_of(purchase_id: UUID) -> str:
    return f"{PREFIX}-{purchase_id.hex}"


def cloud_state(cloud: Cloud, bucket: str) -> dict[str, Any]:
    """Everything provisioning sets, in a form two purchases' resources can be compared by."""
    s3, iam = cloud.s3, cloud.iam
    state: dict[str, Any] = {"buckets": [b["Name"] for b in s3.list_buckets()["Buckets"]].count(bucket)}
    if state["buckets"]:
        state["versioning"] = s3.get_bucket_versioning(Bucket=bucket).get("Status")
        state["public_access_block"] = s3.get_public_access_block(Bucket=bucket)[
            "PublicAccessBlockConfiguration"
        ]
        encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
        state["encryption"] = encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]
        state["ownership"] = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
        tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
        state["tags"] = sorted(tags)
        state["tag_names_the_purchase"] = tags.get("officex_purchase_id") == str(
            UUID(bucket.rsplit("-", 1)[1])
        )
        state["lifecycle"] = [
            rule["ID"] for rule in s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
        ]
        try:
            policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
            state["bucket_policy"] = [statement["Sid"] for statement in policy["Statement"]]
        except ClientError:
            state["bucket_policy"] = None
    users = [user for user in iam.list_users(PathPrefix=IAM_PATH)["Users"] if user["UserName"] == bucket]
    state["users"] = len(users)
    if users:
        state["user_path"] = users[0]["Path"]
        state["user_policies"] = sorted(iam.list_user_policies(UserName=bucket)["PolicyNames"])
        state["keys"] = sorted(
            key["Status"] for key in iam.list_access_keys(UserName=bucket)["AccessKeyMetadata"]
        )
    return state


def live_key(cloud: Cloud, bucket: str) -> str:
    (key,) = cloud.iam.list_access_keys(UserName=bucket)["AccessKeyMetadata"]
    return str(key["AccessKeyId"])


def stored_credentials(db: psycopg.Connection[Any], cloud: Cloud, purchase_id: UUID) -> dict[str, str]:
    row = resource_row(db, purchase_id)
    plaintext = cloud.box.decrypt(
        bytes(row["credentials_ciphertext"]), credentials_context(purchase_id, row["id"])
    )
    credentials: dict[str, str] = json.loads(plaintext)
    return credentials


def denied(call: Callable[[], Any]) -> bool:
    try:
        with enable_iam_authentication():
            call()
    except ClientError as error:
        return error.response["Error"]["Code"] in {"AccessDenied", "403", "InvalidAccessKeyId"}
    return False


# ------------------------------------------------------------ the dispatcher
@dataclass
class FakeEmail:
    sent: list[tuple[str, EmailMessage]] = field(default_factory=list)

    def send(self, to: str, message: EmailMessage) -> None:
        self.sent.append((to, message))


@dataclass
class FakeHttp:
    posts: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    def post_json(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        self.posts.append((url, body, headers))


def dispatcher_on(
    db: psycopg.Connection[Any], box: KmsSecretBox, email: FakeEmail, http: FakeHttp
) -> OutboxDispatcher:
    return OutboxDispatcher(
        PostgresOutbox(PostgresTransactions(lambda: db)),
        email=lambda: email,
        http=http,
        secrets=lambda: box,
        policy=DispatchPolicy(batch_size=50),
        officex_links=OfficexRecordLinks(public_base_url=PUBLIC_BASE),
    )


# ------------------------------------------------------------ checkout side
def checkout_with_provisioning(
    kit: CheckoutKit, db: psycopg.Connection[Any], worker: ProvisioningWorker | None, wait_s: float = 5
) -> CheckoutService:
    """The checkout service as finalize's Lambda builds it, its "async invoke" an in-process run."""
    addresses = XpubDepositAddresses(kit.keys.account_xpub())
    transactions = PostgresTransactions(lambda: db)
    kick = None if worker is None else (lambda purchase_id: run(worker, purchase_id) and None)
    return CheckoutService(
        transactions,
        chains=EnvChainReaders({}),
        addresses=lambda: addresses,
        secrets=lambda: kit.box,
        registry=chain_registry,
        policy=CheckoutPolicy(allow_dev_chains=True, provisioning_wait=timedelta(seconds=wait_s)),
        provisioning=ProvisioningHandoff(
            transactions, secrets=lambda: kit.box, kick=kick, poll_interval=timedelta(milliseconds=20)
        ),
    )


def buy_bucket(
    kit: CheckoutKit,
    service: CheckoutService,
    *,
    usd: int = 10,
    idempotency_key: str | None = None,
    **request: Any,
) -> FinalizedPurchase:
    created = kit.service.create_wallet(
        S3_OFFER,
        chain="devchain",
        token="USDC",
        min_target_nano=None,
        customer={"email": "ops@customer.example"},
    )
    kit.chain.pay(kit.usdc(), kit.payer, created.wallet.address, usd * USDC)
    kit.chain.mine(3)
    finalize = FinalizeRequest(
        wallet_id=created.wallet.id,
        officex_purchase_id="PurchaseID_s3",
        customer_org_id="DriveID_1",
        customer_user_id="UserID_1",
        **request,
    )
    return service.finalize(S3_OFFER, finalize, idempotency_key)


def spend(db: psycopg.Connection[Any], purchase: FinalizedPurchase, usd: Decimal, key: str) -> str:
    outcome = MeteringService(PostgresTransactions(lambda: db)).meter(
        purchase.purchase_id,
        purchase.vendor_key,
        [UsageEvent(idempotency_key=key, usage_amount=Decimal(1), unit="GB-day", cost_nano=int(usd * USD))],
    )
    return outcome.purchase.status.value


def end_grace(db: psycopg.Connection[Any], purchase_id: UUID) -> None:
    (grace_until,) = db.execute(
        "SELECT grace_until FROM purchases WHERE id = %s", (purchase_id,)
    ).fetchone() or (None,)
    assert grace_until is not None, "the purchase is not suspended"
    PurchaseLifecycle(PostgresTransactions(lambda: db)).sweep(grace_until + timedelta(seconds=1))
    assert db.execute("SELECT status FROM purchases WHERE id = %s", (purchase_id,)).fetchone() == (
        "terminated",
    )


# ================================================================== lifecycle
def test_full_lifecycle_finalize_suspend_top_up_suspend_again_and_delete(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any]
) -> None:
    kit = checkout_kit
    cloud = make_cloud(kit.box)
    worker = cloud.worker(db)
    service = checkout_with_provisioning(kit, db, worker)

    # finalize → bucket, user and key exist; the answer carries the key (once)
    purchase = buy_bucket(
        kit, service, customer_org_endpoint="https://org.customer.example", customer_org_api_key=ORG_KEY
    )
    purchase_id = UUID(purchase.purchase_id)
    bucket = bucket_of(purchase_id)
    assert purchase.resource["status"] == "active" and purchase.resource["bucket"] == bucket
    assert purchase.resource["region"] == REGION and purchase.resource["credentials"] == "shown"
    credentials = purchase.resource_credentials
    assert credentials is not None and set(credentials) == {
        "access_key_id",
        "secret_access_key",
        "bucket",
        "region",
        "endpoint",
    }
    active = cloud_state(cloud, bucket)
    assert active == {
        "buckets": 1,
        "versioning": "Enabled",
        "public_access_block": {
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
        "encryption": "AES256",
        "ownership": [{"ObjectOwnership": "BucketOwnerEnforced"}],
        "tags": ["officex_offer_id", "officex_purchase_id", "service", "stage"],
        "tag_names_the_purchase": True,
        "lifecycle": ["officex-housekeeping"],
        "bucket_policy": None,  # TLS-only statement off against moto (see the module docstring)
        "users": 1,
        "user_path": IAM_PATH,
        "user_policies": [ACCESS_POLICY_NAME],
        "keys": ["Active"],
    }
    assert live_key(cloud, bucket) == credentials["access_key_id"]
    recorded = db.execute(
        "SELECT step FROM provisioning_steps WHERE action = 'provision' ORDER BY recorded_at"
    )
    assert [step for (step,) in recorded.fetchall()] == [
        "bucket",
        "public_access_block",
        "ownership_controls",
        "encryption",
        "versioning",
        "lifecycle",
        "tags",
        "request_metrics",  # moto stores nothing for it: that it ran is what can be checked
        "user",
        "user_policy",
        "bucket_policy",
    ]
    row = resource_row(db, purchase_id)
    assert row["status"] == "active" and row["credentials_ciphertext"] is None  # shown: wiped
    customer = cloud.customer(credentials)
    with enable_iam_authentication():
        customer.put_object(Bucket=bucket, Key="notes/hello.txt", Body=b"hello")
        assert customer.get_object(Bucket=bucket, Key="notes/hello.txt")["Body"].read() == b"hello"
    assert denied(customer.list_buckets), "the key reaches this bucket only"
    assert denied(lambda: cloud.customer(credentials).create_bucket(Bucket=f"{PREFIX}-elsewhere"))

    # balance crosses termination → deny-all policy, key inactive, bucket policy denies the user
    assert spend(db, purchase, Decimal("9.6"), "usage-1") == "suspended"
    assert run(worker).done == 1
    suspended = cloud_state(cloud, bucket)
    assert suspended["user_policies"] == [ACCESS_POLICY_NAME, SUSPENDED_POLICY_NAME]
    assert suspended["keys"] == ["Inactive"]
    assert suspended["bucket_policy"] == ["DenySuspendedCustomer"]
    policy = json.loads(cloud.s3.get_bucket_policy(Bucket=bucket)["Policy"])
    assert policy["Statement"][0]["Principal"] == {"AWS": cloud.iam.get_user(UserName=bucket)["User"]["Arn"]}
    assert denied(lambda: customer.get_object(Bucket=bucket, Key="notes/hello.txt"))
    assert denied(lambda: customer.put_object(Bucket=bucket, Key="more.txt", Body=b"x"))
    assert resource_row(db, purchase_id)["status"] == "suspended"

    # a top-up → access restored
    kit.chain.pay(kit.usdc(), kit.payer, purchase.deposit_address, 20 * USDC)
    kit.chain.mine(3)
    topup = kit.service.verify_topup(purchase.purchase_id, purchase.customer_key)
    assert topup.purchase.status.value == "active"
    assert run(worker).done == 1
    assert cloud_state(cloud, bucket) == active
    with enable_iam_authentication():
        assert customer.get_object(Bucket=bucket, Key="notes/hello.txt")["Body"].read() == b"hello"
        # versions, a delete marker and unfinished multipart uploads for the deletion to clear
        for version in range(3):
            customer.put_object(Bucket=bucket, Key="notes/hello.txt", Body=f"v{version}".encode())
        customer.put_object(Bucket=bucket, Key="tmp.txt", Body=b"gone soon")
        customer.delete_object(Bucket=bucket, Key="tmp.txt")
        upload = customer.create_multipart_upload(Bucket=bucket, Key="big.bin")
        customer.upload_part(
            Bucket=bucket, Key="big.bin", UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
        )
        customer.create_multipart_upload(Bucket=bucket, Key="other.bin")
    versions = cloud.s3.list_object_versions(Bucket=bucket)
    assert len(versions["Versions"]) == 5 and len(versions["DeleteMarkers"]) == 1
    assert len(cloud.s3.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 2

    # crosses termination again; the grace period ends → final statement, then everything goes
    assert spend(db, purchase, Decimal("29.6"), "usage-2") == "suspended"
    assert run(worker).done == 1
    assert cloud_state(cloud, bucket) == suspended
    end_grace(db, purchase_id)
    assert run(worker).postponed == 1, "deletion waits for the final statement"
    assert cloud_state(cloud, bucket)["buckets"] == 1
    email, http = FakeEmail(), FakeHttp()
    dispatcher_on(db, kit.box, email, http).run(time_left=lambda: timedelta(minutes=2))
    statements = [message for _, message in email.sent if message.subject.startswith("Final usage statement")]
    assert len(statements) == 1 and "Usage:        39.200000000 USD" in statements[0].text
    make_due(db)
    assert run(worker).done == 1
    assert cloud_state(cloud, bucket) == {"buckets": 0, "users": 0}
    gone = resource_row(db, purchase_id)
    assert (
        gone["status"] == "deleted"
        and gone["deleted_at"] is not None
        and gone["credentials_ciphertext"] is None
    )
    actions = {action: rows(db, purchase_id, f"resource.{action}") for action in ACTIONS}
    assert {action: len(found) for action, found in actions.items()} == {
        "provision": 1,
        "suspend": 2,
        "resume": 1,
        "delete": 1,
    }
    assert all(row["delivered_at"] is not None for found in actions.values() for row in found)
    # the OfficeX record followed every step, deletion included
    dispatcher_on(db, kit.box, email, http).run(time_left=lambda: timedelta(minutes=2))
    updates = [json.loads(body) for url, body, _ in http.posts if url.endswith("/purchases/update")]
    assert [update["status"] for update in updates[:2]] == ["RUNNING", "RUNNING"]  # created, provisioned
    assert "BLOCKED" in [update["status"] for update in updates]
    assert updates[-1]["status"] == "CANCELED"
    assert f"Resource: s3_bucket {bucket} (us-east-1): deleted" in updates[-1]["vendor_notes"]


def test_finalize_answers_provisioning_when_not_ready_and_the_next_read_shows_the_key_once(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any]
) -> None:
    kit = checkout_kit
    cloud = make_cloud(kit.box)
    service = checkout_with_provisioning(kit, db, worker=None, wait_s=0.1)  # nobody provisions in time

    purchase = buy_bucket(kit, service, idempotency_key="finalize-1")

    assert purchase.resource == {"kind": "s3_bucket", "status": "provisioning"}
    assert purchase.resource_credentials is None
    reader = PurchaseReader(
        PostgresTransactions(lambda: db),
        ProvisioningHandoff(PostgresTransactions(lambda: db), secrets=lambda: kit.box),
    )
    before = reader.details_for_customer(purchase.purchase_id, purchase.customer_key)
    assert before.view.resource == {"kind": "s3_bucket", "status": "provisioning"}
    assert before.resource_credentials is None

    assert run(cloud.worker(db)).done == 1  # the schedule's run

    first = reader.details_for_customer(purchase.purchase_id, purchase.customer_key)
    second = reader.details_for_customer(purchase.purchase_id, purchase.customer_key)
    assert first.view.resource["status"] == "active" and first.view.resource["credentials"] == "shown"
    assert first.resource_credentials is not None
    assert first.resource_credentials["access_key_id"] == live_key(cloud, bucket_of(first.view.id))
    assert second.resource_credentials is None and second.view.resource["credentials"] == "shown"
    assert second.view.resource["access_key_id"] == first.resource_credentials["access_key_id"]
    # no secret anywhere in the database once shown
    dump = str(db.execute("SELECT * FROM provisioned_resources").fetchall()) + str(
        db.execute("SELECT * FROM provisioning_steps").fetchall()
    )
    assert first.resource_credentials["secret_access_key"] not in dump
    # a finalize retry replays the purchase; the resource is current, the key stays shown once
    replay = service.finalize(S3_OFFER, _same_request(db, purchase), "finalize-1")
    assert replay.replayed and replay.resource["status"] == "active" and replay.resource_credentials is None


def _same_request(db: psycopg.Connection[Any], purchase: FinalizedPurchase) -> FinalizeRequest:
    return FinalizeRequest(
        wallet_id=UUID(purchase.wallet_id),
        officex_purchase_id="PurchaseID_s3",
        customer_org_id="DriveID_1",
        customer_user_id="UserID_1",
    )


def test_credentials_shown_by_finalize_are_kept_in_its_encrypted_replay(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any]
) -> None:
    kit = checkout_kit
    cloud = make_cloud(kit.box)
    service = checkout_with_provisioning(kit, db, cloud.worker(db))

    first = buy_bucket(kit, service, idempotency_key="finalize-2")
    replay = service.finalize(S3_OFFER, _same_request(db, first), "finalize-2")

    assert first.resource_credentials is not None
    assert replay.replayed and replay.resource_credentials == first.resource_credentials
    assert resource_row(db, UUID(first.purchase_id))["credentials_ciphertext"] is None
    (ciphertext,) = db.execute("SELECT response_ciphertext FROM finalize_replays").fetchone() or (None,)
    assert first.resource_credentials["secret_access_key"].encode() not in bytes(ciphertext)


def test_concurrent_reads_hand_the_credentials_out_exactly_once(
    cloud: Cloud, db: psycopg.Connection[Any], database_url: str
) -> None:
    purchase_id, customer_key = _provisioned_purchase(cloud, db)

    def read(connection: psycopg.Connection[Any], _: int) -> bool:
        transactions = PostgresTransactions(lambda: connection)
        reader = PurchaseReader(transactions, ProvisioningHandoff(transactions, secrets=lambda: cloud.box))
        return reader.details_for_customer(str(purchase_id), customer_key).resource_credentials is not None

    assert sum(run_concurrently(database_url, 10, read)) == 1


def test_get_purchase_route_shows_the_resource_and_its_credentials_once(
    cloud: Cloud, db: psycopg.Connection[Any], handler_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    purchase_id, customer_key = _provisioned_purchase(cloud, db)
    (function,) = [f for f in load_template().functions if f.folder == "purchase_get"]
    module = load_module(function)
    transactions = PostgresTransactions()
    # what the module builds from KMS_KEY_ID at cold start, with moto's key
    monkeypatch.setattr(
        module,
        "purchases",
        PurchaseReader(transactions, ProvisioningHandoff(transactions, secrets=lambda: cloud.box)),
    )
    event = load_event("purchase_get_demo")
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/purchase/{purchase_id}"
    event["pathParameters"] = {"purchase_id": str(purchase_id)}
    event["headers"]["authorization"] = f"Bearer {customer_key}"

    def get() -> dict[str, Any]:
        response = load_handler(function)(event, LocalLambdaContext.for_function(function))
        assert response["statusCode"] == 200, response
        body: dict[str, Any] = json.loads(response["body"])
        return body

    first, second = get(), get()

    assert first["resource"]["status"] == "active" and first["resource"]["bucket"] == bucket_of(purchase_id)
    assert first["resource"]["endpoint"] == f"https://{bucket_of(purchase_id)}.s3.{REGION}.amazonaws.com"
    assert first["resource_credentials"]["access_key_id"] == live_key(cloud, bucket_of(purchase_id))
    assert second["resource_credentials"] is None and second["resource"]["credentials"] == "shown"


def _provisioned_purchase(cloud: Cloud, db: psycopg.Connection[Any], **policy: Any) -> tuple[UUID, str]:
    purchase_id, customer_key = _new_s3_purchase(db)
    assert run(cloud.worker(db, **policy)).done == 1
    return purchase_id, customer_key


def _new_s3_purchase(db: psycopg.Connection[Any], **extra: Any) -> tuple[UUID, str]:
    """A funded purchase of the S3 offer with its resource.provision row, as finalize leaves it.

    new_purchase's triggers (low 3,000, critical 2,000, termination 1,000 nano-USD): 10,000 funds
    it, spending 9,500 suspends it.
    """
    import_default_catalog(db)
    purchase_id, customer_key, _ = new_purchase(db, S3_OFFER, **extra)
    ledger_on(db).apply(ledger.credit(purchase_id, 10_000, f"deposit-{purchase_id}"))
    store = PostgresProvisioningStore(db)
    store.enqueue(
        purchase_id, "resource.provision", f"provision:{purchase_id}", {"purchase_id": str(purchase_id)}
    )
    return purchase_id, customer_key


# ======================================================= crashes and reruns
class SimulatedCrash(BaseException):
    """The process dies (not an error the worker could catch and retry)."""


MUTATING = ("create_", "put_", "delete_", "update_", "abort_", "upload_")


@dataclass
class CallCounter:
    crash_after: int | None = None
    calls: list[str] = field(default_factory=list)

    def tick(self, operation: str) -> None:
        self.calls.append(operation)
        if self.crash_after is not None and len(self.calls) == self.crash_after:
            raise SimulatedCrash(f"crash after call {len(self.calls)}: {operation}")


class CrashingClient:
    """A boto3 client that dies right after its N-th mutating call succeeded (before it is recorded)."""

    def __init__(self, client: Any, counter: CallCounter) -> None:
        self._client = client
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or not name.startswith(MUTATING):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            self._counter.tick(name)
            return result

        return call


def _counting(cloud: Cloud, counter: CallCounter, **config: Any) -> S3BucketProvisioner:
    return cloud.provisioner(
        wrap=lambda client: CrashingClient(client, counter), delete_batch_size=3, **config
    )


ACTIONS = ("provision", "suspend", "resume", "delete")


def _purchase_before(action: str, cloud: Cloud, db: psycopg.Connection[Any]) -> UUID:
    """A purchase whose next resource action is ``action`` (with objects in the bucket for delete)."""
    purchase_id, _ = _new_s3_purchase(db)
    if action == "provision":
        return purchase_id
    clean = cloud.worker(db)
    assert run(clean).done == 1
    bucket = bucket_of(purchase_id)
    if action == "delete":
        for index in range(4):
            cloud.s3.put_object(Bucket=bucket, Key=f"k{index % 2}", Body=b"v")
        cloud.s3.delete_object(Bucket=bucket, Key="k0")
        cloud.s3.create_multipart_upload(Bucket=bucket, Key="upload")
    ledger_on(db).apply(ledger.debit(purchase_id, 9_500, f"spend-{purchase_id}", require_available=False))
    if action == "suspend":
        return purchase_id
    assert run(clean).done == 1
    if action == "resume":
        ledger_on(db).apply(ledger.credit(purchase_id, TOP_UP_NANO, f"topup-{purchase_id}"))
        return purchase_id
    end_grace(db, purchase_id)
    return purchase_id


def _end_state(cloud: Cloud, db: psycopg.Connection[Any], purchase_id: UUID) -> dict[str, Any]:
    bucket = bucket_of(purchase_id)
    state = cloud_state(cloud, bucket)
    if state["buckets"]:
        versions = cloud.s3.list_object_versions(Bucket=bucket)
        state["objects"] = len(versions.get("Versions", [])) + len(versions.get("DeleteMarkers", []))
    row = resource_row(db, purchase_id)
    state["resource_status"] = row["status"]
    state["pending_rows"] = db.execute(
        """SELECT count(*) FROM outbox
            WHERE purchase_id = %s AND kind LIKE 'resource.%%' AND delivered_at IS NULL""",
        (purchase_id,),
    ).fetchone()
    if row["credentials_ciphertext"] is not None:
        # the credentials kept for the customer are the one live key's
        state["stored_key_is_live"] = stored_credentials(db, cloud, purchase_id)["access_key_id"] == live_key(
            cloud, bucket
        )
    return state


@pytest.mark.parametrize("action", ACTIONS)
def test_a_crash_after_every_cloud_call_then_a_rerun_ends_in_the_same_state(
    action: str, cloud: Cloud, db: psycopg.Connection[Any]
) -> None:
    reference_counter = CallCounter()
    reference = _purchase_before(action, cloud, db)
    assert run(cloud.worker(db, _counting(cloud, reference_counter))).done == 1
    expected = _end_state(cloud, db, reference)
    assert len(reference_counter.calls) >= 3, reference_counter.calls

    for crash_after in range(1, len(reference_counter.calls) + 1):
        purchase_id = _purchase_before(action, cloud, db)
        crashing = cloud.worker(db, _counting(cloud, CallCounter(crash_after=crash_after)))
        with pytest.raises(SimulatedCrash):
            run(crashing, purchase_id)
        make_due(db)  # the crashed run's lease runs out
        outcome = run(cloud.worker(db), purchase_id)
        assert outcome.done == 1, (crash_after, reference_counter.calls[crash_after - 1], outcome)
        assert _end_state(cloud, db, purchase_id) == expected, (
            crash_after,
            reference_counter.calls[crash_after - 1],
        )


class CrashingSteps(provisioning_service.PostgresBackedStepLog):
    """Dies right after the N-th step was recorded (the next step never starts)."""

    budget: ClassVar[list[int]] = []

    def record(self, step: str, outcome: dict[str, Any]) -> None:
        super().record(step, outcome)
        if self.budget:
            self.budget[0] -= 1
            if self.budget[0] == 0:
                raise SimulatedCrash(f"crash after recording {step}")


@pytest.mark.parametrize("action", ACTIONS)
def test_a_crash_after_every_recorded_step_then_a_rerun_ends_in_the_same_state(
    action: str, cloud: Cloud, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _purchase_before(action, cloud, db)
    assert run(cloud.worker(db)).done == 1
    expected = _end_state(cloud, db, reference)
    (steps,) = db.execute(
        """SELECT count(*) FROM provisioning_steps s JOIN provisioned_resources r ON r.id = s.resource_id
            WHERE r.purchase_id = %s AND s.action = %s""",
        (reference, action),
    ).fetchone() or (0,)
    assert steps >= 3

    monkeypatch.setattr(provisioning_service, "PostgresBackedStepLog", CrashingSteps)
    for crash_after in range(1, steps + 1):
        purchase_id = _purchase_before(action, cloud, db)
        CrashingSteps.budget = [crash_after]
        with pytest.raises(SimulatedCrash):
            run(cloud.worker(db), purchase_id)
        CrashingSteps.budget = []
        make_due(db)
        assert run(cloud.worker(db), purchase_id).done == 1, crash_after
        assert _end_state(cloud, db, purchase_id) == expected, crash_after


def test_a_key_created_by_a_crashed_run_is_revoked_never_two_live_keys(
    cloud: Cloud, db: psycopg.Connection[Any]
) -> None:
    _new_s3_purchase(db)
    probe = CallCounter()
    assert run(cloud.worker(db, _counting(cloud, probe))).done == 1
    assert probe.calls[-1] == "create_access_key"  # the last call of provisioning
    other, _ = _new_s3_purchase(db)
    with pytest.raises(SimulatedCrash):
        run(cloud.worker(db, _counting(cloud, CallCounter(crash_after=len(probe.calls)))), other)
    lost = live_key(cloud, bucket_of(other))  # created, never recorded nor shown
    make_due(db)
    assert run(cloud.worker(db), other).done == 1
    keys = cloud.iam.list_access_keys(UserName=bucket_of(other))["AccessKeyMetadata"]
    assert len(keys) == 1 and keys[0]["AccessKeyId"] != lost
    assert stored_credentials(db, cloud, other)["access_key_id"] == keys[0]["AccessKeyId"]


# ================================================================= ordering
def test_a_resume_never_overtakes_an_unfinished_suspend(cloud: Cloud, db: psycopg.Connection[Any]) -> None:
    purchase_id = _purchase_before("suspend", cloud, db)
    ledger_on(db).apply(
        ledger.credit(purchase_id, TOP_UP_NANO, f"topup-{purchase_id}")
    )  # resume row now queued
    failing = CallCounter(crash_after=None)

    class Refusing(CrashingClient):
        def __getattr__(self, name: str) -> Any:
            if name == "put_user_policy":

                def refuse(**_: Any) -> Any:
                    raise ClientError(
                        {"Error": {"Code": "ServiceFailure", "Message": "down"}}, "PutUserPolicy"
                    )

                return refuse
            return super().__getattr__(name)

    refusing = cloud.provisioner(wrap=lambda client: Refusing(client, failing))
    outcome = run(cloud.worker(db, refusing))
    assert (outcome.done, outcome.retried) == (0, 1)
    make_due(db)
    outcome = run(cloud.worker(db, refusing))
    assert (outcome.done, outcome.retried) == (0, 1), "the resume waited behind the failing suspend"
    suspend, resume = (
        rows(db, purchase_id, "resource.suspend")[0],
        rows(db, purchase_id, "resource.resume")[0],
    )
    assert suspend["attempts"] == 2 and "ServiceFailure" in suspend["last_error"] and resume["attempts"] == 0
    assert "PutUserPolicy" in (resource_row(db, purchase_id)["last_error"] or "")

    make_due(db)
    assert run(cloud.worker(db)).done == 2  # suspend, then resume
    state = cloud_state(cloud, bucket_of(purchase_id))
    assert state["keys"] == ["Active"] and state["user_policies"] == [ACCESS_POLICY_NAME]
    assert resource_row(db, purchase_id)["status"] == "active"


# ======================================================= termination safety
def test_deletion_waits_while_a_top_up_that_would_restore_the_balance_is_unconfirmed(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any]
) -> None:
    kit = checkout_kit
    cloud = make_cloud(kit.box)
    worker = cloud.worker(db)
    purchase = buy_bucket(kit, checkout_with_provisioning(kit, db, worker))
    purchase_id = UUID(purchase.purchase_id)
    assert spend(db, purchase, Decimal("9.6"), "usage-1") == "suspended"
    run(worker)
    # Terminated first: a rescue seen before the grace sweep keeps the purchase suspended instead
    # (tests/integration/test_triggers.py); one seen after it must still hold the deletion back.
    end_grace(db, purchase_id)
    wallet = kit.service.verify_topup(purchase.purchase_id, purchase.customer_key).wallet.wallet
    kit.chain.pay(kit.usdc(), kit.payer, wallet.address, 5 * USDC)  # one confirmation of three
    seen = kit.service.verify_topup(purchase.purchase_id, purchase.customer_key)
    assert [deposit.state.value for deposit in seen.wallet.deposits][-1] == "seen"
    db.execute(
        "UPDATE outbox SET delivered_at = now() WHERE kind LIKE 'notify.%%' AND purchase_id = %s",
        (purchase_id,),
    )

    for _ in range(3):  # however often it comes back, nothing is deleted while the top-up is pending
        outcome = run(worker)
        assert outcome.postponed == 1 and outcome.done == 0
        make_due(db)
    (delete,) = rows(db, purchase_id, "resource.delete")
    assert delete["delivered_at"] is None and delete["last_error"].startswith("postponed: a top-up")
    assert delete["attempts"] == 0, "postponements are not failures"
    assert cloud_state(cloud, bucket_of(purchase_id))["buckets"] == 1

    kit.chain.mine(2)  # confirmed: credited (terminated is final, the money is kept)
    assert kit.service.verify_topup(purchase.purchase_id, purchase.customer_key).wallet.credited_now
    outcome = run(worker)
    assert outcome.postponed == 1, "now the final statement goes out first"
    db.execute(
        "UPDATE outbox SET delivered_at = now() WHERE kind LIKE 'notify.%%' AND purchase_id = %s",
        (purchase_id,),
    )
    make_due(db)
    assert run(worker).done == 1
    assert cloud_state(cloud, bucket_of(purchase_id)) == {"buckets": 0, "users": 0}


def test_a_pending_top_up_too_small_to_restore_does_not_hold_deletion_back(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any]
) -> None:
    kit = checkout_kit
    cloud = make_cloud(kit.box)
    worker = cloud.worker(db, statement_wait=timedelta(0))
    purchase = buy_bucket(kit, checkout_with_provisioning(kit, db, worker))
    purchase_id = UUID(purchase.purchase_id)
    assert spend(db, purchase, Decimal("9.9"), "usage-1") == "suspended"  # 0.1 left, termination 0.5
    run(worker)
    wallet = kit.service.verify_topup(purchase.purchase_id, purchase.customer_key).wallet.wallet
    kit.chain.pay(kit.usdc(), kit.payer, wallet.address, USDC // 10)  # 0.1 + 0.1 stays below 0.5
    kit.service.verify_topup(purchase.purchase_id, purchase.customer_key)
    end_grace(db, purchase_id)

    outcome = run(worker)  # writes the final statement, waits for it no longer than statement_wait (0)

    assert outcome.done == 1 and outcome.postponed == 0
    assert cloud_state(cloud, bucket_of(purchase_id)) == {"buckets": 0, "users": 0}


def test_the_final_statement_goes_out_by_email_and_signed_webhook_before_deletion(
    cloud: Cloud, db: psycopg.Connection[Any]
) -> None:
    purchase_id, _ = _new_s3_purchase(db, notify_email="ops@customer.example")
    secret = "whsec_final_statement_secret_0123456789"
    db.execute(
        "UPDATE purchases SET webhook_url = %s, webhook_secret_ciphertext = %s WHERE id = %s",
        (
            "https://hooks.customer.example/billing",
            cloud.box.encrypt(secret, {"purpose": "webhook-secret", "purchase_id": str(purchase_id)}),
            purchase_id,
        ),
    )
    worker = cloud.worker(db)
    run(worker)
    ledger_on(db).apply(ledger.debit(purchase_id, 9_500, "spend", require_available=False))
    run(worker)
    end_grace(db, purchase_id)
    email, http = FakeEmail(), FakeHttp()
    dispatcher = dispatcher_on(db, cloud.box, email, http)
    dispatcher.run(time_left=lambda: timedelta(minutes=2))  # status notices; no statement yet
    assert not any(message.subject.startswith("Final") for _, message in email.sent)

    assert run(worker).postponed == 1
    assert run(worker).done == 0  # still waiting (its backoff)
    statement_rows = db.execute(
        "SELECT kind, delivered_at FROM outbox WHERE dedupe_key LIKE 'final-statement:%' ORDER BY kind"
    ).fetchall()
    assert [kind for kind, _ in statement_rows] == ["notify.email", "notify.webhook"]
    assert all(delivered is None for _, delivered in statement_rows)
    make_due(db)
    assert run(worker).postponed == 1, "undelivered: deletion keeps waiting"
    assert cloud_state(cloud, bucket_of(purchase_id))["buckets"]

    dispatcher.run(time_left=lambda: timedelta(minutes=2))
    ((to, message),) = [(to, m) for to, m in email.sent if m.subject.startswith("Final usage statement")]
    assert to == "ops@customer.example" and "Deposits:     0.000010000 USD" in message.text
    (hook,) = [(body, headers) for url, body, headers in http.posts if b"purchase.final_statement" in body]
    body, headers = hook
    assert verify_webhook_signature(
        secret, headers["OfficeX-Billing-Signature"], body, datetime.now(UTC).timestamp()
    )
    document = json.loads(body)
    assert document["usage"] == "0.000009500" and document["resource"]["bucket"] == bucket_of(purchase_id)
    make_due(db)
    assert run(worker).done == 1
    assert cloud_state(cloud, bucket_of(purchase_id)) == {"buckets": 0, "users": 0}


# ============================================================ OfficeX record
def test_officex_record_gets_status_pricing_and_notes_after_finalize_and_provisioning(
    checkout_kit: CheckoutKit, db: psycopg.Connection[Any]
) -> None:
    kit = checkout_kit
    cloud = make_cloud(kit.box)
    purchase = buy_bucket(
        kit,
        checkout_with_provisioning(kit, db, cloud.worker(db)),
        customer_org_endpoint="https://org.customer.example",
        customer_org_api_key=ORG_KEY,
    )
    email, http = FakeEmail(), FakeHttp()

    dispatcher_on(db, kit.box, email, http).run(time_left=lambda: timedelta(minutes=2))

    updates = [(url, json.loads(body), headers) for url, body, headers in http.posts]
    assert [url for url, _, _ in updates] == [
        "https://org.customer.example/v1/drive/DriveID_1/purchases/update"
    ] * 2
    created, provisioned = (body for _, body, _ in updates)
    assert {headers["Authorization"] for _, _, headers in updates} == {f"Bearer {ORG_KEY}"}
    assert created["id"] == "PurchaseID_s3" and created["status"] == "RUNNING"
    assert created["pricing"].startswith("Amazon S3 in us-east-1 at AWS cost x 1.25")
    assert "Balance: 10.000000000 USD" in created["vendor_notes"]
    assert f"{PUBLIC_BASE}/purchase/{purchase.purchase_id}" in created["vendor_notes"]
    assert created["billing_url"] == f"{PUBLIC_BASE}/purchase/{purchase.purchase_id}"
    bucket = bucket_of(UUID(purchase.purchase_id))
    assert f"Resource: s3_bucket {bucket} (us-east-1): active" in provisioned["vendor_notes"]


# ================================================================ big buckets
def test_a_bucket_too_large_for_one_run_gets_an_expiry_rule_and_deletion_continues(
    cloud: Cloud, db: psycopg.Connection[Any]
) -> None:
    provisioner = cloud.provisioner(delete_batch_size=2, delete_batches_per_run=1)
    purchase_id, _ = _new_s3_purchase(db)
    worker = cloud.worker(db, provisioner)
    run(worker)
    bucket = bucket_of(purchase_id)
    for index in range(5):
        cloud.s3.put_object(Bucket=bucket, Key=f"object-{index}", Body=b"data")
    ledger_on(db).apply(ledger.debit(purchase_id, 9_500, "spend", require_available=False))
    run(worker)
    end_grace(db, purchase_id)

    first = run(worker)

    assert first.continuing == 1 and first.done == 0
    assert [rule["ID"] for rule in cloud.s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]] == [
        "officex-delete-everything",
        "officex-delete-markers",
    ]
    assert len(cloud.s3.list_object_versions(Bucket=bucket)["Versions"]) == 3
    (delete,) = rows(db, purchase_id, "resource.delete")
    assert delete["last_error"].startswith("in progress: bucket") and delete["attempts"] == 0
    for _ in range(3):
        make_due(db)
        run(worker)
    assert cloud_state(cloud, bucket) == {"buckets": 0, "users": 0}
    assert resource_row(db, purchase_id)["status"] == "deleted"


class Recording(CrashingClient):
    """Remembers the keyword arguments of every mutating call."""

    requests: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def __getattr__(self, name: str) -> Any:
        attribute = super().__getattr__(name)
        if not name.startswith(MUTATING):
            return attribute

        def call(**kwargs: Any) -> Any:
            Recording.requests.append((name, kwargs))
            return attribute(**kwargs)

        return call


def test_buckets_outside_us_east_1_and_names_are_deterministic(cloud: Cloud) -> None:
    Recording.requests = []
    provisioner = cloud.provisioner(
        wrap=lambda client: Recording(client, CallCounter()),
        request_metrics=False,  # moto lacks PutBucketMetricsConfiguration outside us-east-1
    )
    purchase_id = UUID("3f6c0a52-0d7e-4c1a-9a51-6a1f0c7e2b11")
    name = provisioner.bucket_name(purchase_id)
    assert name == "oxb-test-3f6c0a520d7e4c1a9a516a1f0c7e2b11" and len(name) <= 63
    resource = ResourceRef(purchase_id, OfferKind.S3_BUCKET, name, "eu-west-1", {"officex_purchase_id": "x"})
    steps = _MemorySteps()

    provisioned = provisioner.provision(resource, steps)
    again = provisioner.provision(resource, _MemorySteps())  # a second full run: nothing new but the key

    eu = boto3.client("s3", region_name="eu-west-1")
    assert eu.get_bucket_location(Bucket=name)["LocationConstraint"] == "eu-west-1"
    assert provisioned.summary["endpoint"] == f"https://{name}.s3.eu-west-1.amazonaws.com"
    assert [k["AccessKeyId"] for k in cloud.iam.list_access_keys(UserName=name)["AccessKeyMetadata"]] == [
        again.credentials["access_key_id"]
    ]
    assert "request_metrics" not in steps.recorded
    # moto does not keep a user's permissions boundary: the request must carry it
    (create_user, *_) = [request for name, request in Recording.requests if name == "create_user"]
    assert create_user["PermissionsBoundary"] == cloud.boundary_arn and create_user["Path"] == IAM_PATH
    (create_bucket, *_) = [request for name, request in Recording.requests if name == "create_bucket"]
    assert create_bucket["CreateBucketConfiguration"] == {"LocationConstraint": "eu-west-1"}
    assert create_bucket["ObjectOwnership"] == "BucketOwnerEnforced"


@dataclass
class _MemorySteps:
    recorded: dict[str, dict[str, Any]] = field(default_factory=dict)

    def outcome(self, step: str) -> dict[str, Any] | None:
        return self.recorded.get(step)

    def record(self, step: str, outcome: dict[str, Any]) -> None:
        self.recorded[step] = outcome
