"""The S3 bucket offer: a private bucket, an IAM user scoped to it and one access key.

Every action is a list of named steps; each step is one idempotent AWS call (or a small
group of them) recorded in the action's :class:`StepLog` once it succeeded, and skipped when
a rerun finds it recorded. "Already exists" on create and "not found" on delete count as
success, so a crash between a call and its record is harmless. The access key is the only
unrecorded step (its secret must never sit in the step log): it is the last thing
``provision`` does, and it first deletes every key the user has, so however often provisioning
is cut short and rerun, at most one key is live (docs/provisioning.md).

provision  bucket (region from the offer, owner-enforced) → public access block → ownership →
           default encryption (SSE-S3) → versioning → lifecycle (noncurrent versions, aborted
           uploads) → tags → request metrics → IAM user (under the stack's path, permissions
           boundary) → user policy (this bucket only) → bucket policy (TLS only) → access key
suspend    user policy deny-all → access keys inactive → bucket policy denies the user
resume     bucket policy back to TLS-only → access keys active → deny-all policy removed
delete     access keys deleted → bucket policy deleted → bucket emptied (multipart uploads
           aborted, every version and delete marker deleted in batches of 1,000; a bucket too
           large for one run gets an expire-everything lifecycle rule and the action continues
           later) → bucket deleted → user policies deleted → user deleted
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

from billing.adapters.aws.clients import boto3_client, error_code
from billing.domain.catalog import Offer, OfferKind, S3Pricing
from billing.domain.provisioning import (
    Provisioned,
    ProvisioningFailed,
    ProvisioningIncomplete,
    ResourceRef,
    StepLog,
)

#: boto3 clients are untyped; these aliases say which service a parameter talks to.
S3Client = Any
IamClient = Any

BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
BUCKET_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,28}[a-z0-9]$")
IAM_PATH = re.compile(r"^/([\x21-\x2e\x30-\x7e]+/)*$")
ACCESS_POLICY_NAME = "officex-bucket-access"
SUSPENDED_POLICY_NAME = "officex-suspended"
METRICS_ID = "EntireBucket"
_NOT_FOUND = frozenset({"NoSuchEntity", "NoSuchBucket", "NoSuchKey", "NoSuchUpload", "404", "NotFound"})


@dataclass(frozen=True)
class S3ProvisionerConfig:
    """Where and how buckets are made (from the provisioner function's settings)."""

    #: Buckets and IAM users are named ``<prefix>-<purchase uuid hex>`` (≤ 63 chars, DNS-safe).
    bucket_prefix: str
    #: IAM users are created under this path (the function may only touch users under it).
    iam_path: str = "/officex-billing/"
    #: Managed policy every created user gets as permissions boundary (required in AWS by the
    #: function's own policy); ``None`` only for local runs and tests.
    permissions_boundary_arn: str | None = None
    #: Region when an offer names none.
    default_region: str = "us-east-1"
    partition: str = "aws"
    #: The vendor's tags on every bucket and user (``officex_purchase_id`` is always added).
    tags: dict[str, str] = field(default_factory=dict)
    versioning: bool = True
    noncurrent_version_days: int = 30
    abort_multipart_days: int = 7
    #: CloudWatch request metrics (``EntireBucket``), read by a later issue. (moto does not
    #: implement the call: outside us-east-1 it mistakes it for CreateBucket.)
    request_metrics: bool = True
    #: Bucket policy statement denying any request not made over TLS. (moto evaluates bucket
    #: policy conditions wrongly, denying every object request, so tests turn it off.)
    require_tls: bool = True
    #: Deletion works in batches of 1,000 versions; after this many batches a run stops, sets an
    #: expire-everything lifecycle rule, and the action continues ``continue_after`` later.
    delete_batches_per_run: int = 50
    #: Versions per ListObjectVersions / DeleteObjects batch (DeleteObjects takes at most 1,000).
    delete_batch_size: int = 1_000
    continue_after: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if not BUCKET_PREFIX.fullmatch(self.bucket_prefix):
            raise ValueError("bucket_prefix: 2-30 lowercase letters, digits or hyphens, not at the ends")
        if not IAM_PATH.fullmatch(self.iam_path):
            raise ValueError("iam_path must start and end with '/', e.g. /officex-billing/")
        if not 1 <= self.delete_batch_size <= 1_000:
            raise ValueError("delete_batch_size: 1 to 1,000 (the DeleteObjects limit)")


@contextmanager
def _aws(operation: str) -> Iterator[None]:
    """AWS failures become ``ProvisioningFailed`` (retried later), with the error code only."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - boto3 loads only when used

    try:
        yield
    except ClientError as error:
        raise ProvisioningFailed(f"{operation} failed: {error_code(error) or 'unknown error'}") from error
    except BotoCoreError as error:
        raise ProvisioningFailed(f"{operation} failed: {type(error).__name__}") from error


def _is_not_found(error: BaseException) -> bool:
    return error_code(error) in _NOT_FOUND


def _default_s3(region: str) -> S3Client:
    return boto3_client("s3", region=region, connect_timeout_s=5, read_timeout_s=20, attempts=3)


def _default_iam() -> IamClient:
    return boto3_client("iam", connect_timeout_s=5, read_timeout_s=10, attempts=3)


class S3BucketProvisioner:
    """``Provisioner`` (and ``NamesResources``) for ``s3_bucket`` offers."""

    kind = OfferKind.S3_BUCKET

    def __init__(
        self,
        config: S3ProvisionerConfig,
        *,
        s3: Callable[[str], S3Client] = _default_s3,
        iam: Callable[[], IamClient] = _default_iam,
    ) -> None:
        self._config = config
        self._s3_factory = s3
        self._iam_factory = iam
        self._s3_clients: dict[str, S3Client] = {}
        self._iam_client: IamClient | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------- naming
    def bucket_name(self, purchase_id: UUID) -> str:
        name = f"{self._config.bucket_prefix}-{purchase_id.hex}"
        assert BUCKET_NAME.fullmatch(name) and len(name) <= 63, name
        return name

    def resource_for(self, purchase_id: UUID, offer: Offer) -> ResourceRef:
        region = offer.pricing.region if isinstance(offer.pricing, S3Pricing) else self._config.default_region
        tags = {**self._config.tags, "officex_offer_id": offer.id, "officex_purchase_id": str(purchase_id)}
        return ResourceRef(purchase_id, OfferKind.S3_BUCKET, self.bucket_name(purchase_id), region, tags)

    # ------------------------------------------------------------- clients
    def _s3(self, region: str) -> S3Client:
        with self._lock:
            if region not in self._s3_clients:
                self._s3_clients[region] = self._s3_factory(region)
            return self._s3_clients[region]

    def _iam(self) -> IamClient:
        with self._lock:
            if self._iam_client is None:
                self._iam_client = self._iam_factory()
            return self._iam_client

    def _region(self, resource: ResourceRef) -> str:
        return resource.region or self._config.default_region

    def _bucket_arn(self, bucket: str) -> str:
        return f"arn:{self._config.partition}:s3:::{bucket}"

    @staticmethod
    def endpoint(bucket: str, region: str) -> str:
        return f"https://{bucket}.s3.{region}.amazonaws.com"

    # ----------------------------------------------------------- provision
    def provision(self, resource: ResourceRef, steps: StepLog) -> Provisioned:
        bucket, region = resource.name, self._region(resource)
        s3 = self._s3(region)
        config = self._config
        _step(steps, "bucket", lambda: self._create_bucket(s3, bucket, region))
        _step(steps, "public_access_block", lambda: self._block_public_access(s3, bucket))
        _step(steps, "ownership_controls", lambda: self._enforce_ownership(s3, bucket))
        _step(steps, "encryption", lambda: self._encrypt(s3, bucket))
        if config.versioning:
            _step(steps, "versioning", lambda: self._enable_versioning(s3, bucket))
        _step(steps, "lifecycle", lambda: self._put_lifecycle(s3, bucket, self._everyday_rules()))
        _step(steps, "tags", lambda: self._tag_bucket(s3, bucket, resource.tags))
        if config.request_metrics:
            _step(steps, "request_metrics", lambda: self._request_metrics(s3, bucket))
        user = _step(steps, "user", lambda: self._create_user(bucket, resource.tags))
        _step(steps, "user_policy", lambda: self._put_access_policy(bucket))
        _step(steps, "bucket_policy", lambda: self._put_bucket_policy(s3, bucket, deny_user_arn=None))
        key = self._issue_access_key(bucket)  # unrecorded on purpose (see the module docstring)
        endpoint = self.endpoint(bucket, region)
        summary = {
            "bucket": bucket,
            "region": region,
            "endpoint": endpoint,
            "iam_user": bucket,
            "iam_user_arn": user["arn"],
            "access_key_id": key["AccessKeyId"],
            "versioning": config.versioning,
        }
        credentials = {
            "access_key_id": key["AccessKeyId"],
            "secret_access_key": key["SecretAccessKey"],
            "bucket": bucket,
            "region": region,
            "endpoint": endpoint,
        }
        return Provisioned(summary=summary, credentials=credentials)

    def _create_bucket(self, s3: S3Client, bucket: str, region: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        request: dict[str, Any] = {"Bucket": bucket, "ObjectOwnership": "BucketOwnerEnforced"}
        if region != "us-east-1":
            request["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with _aws("S3 CreateBucket"):
            try:
                s3.create_bucket(**request)
            except ClientError as error:
                if error_code(error) == "BucketAlreadyExists":
                    raise ProvisioningFailed(
                        f"the bucket name {bucket} belongs to another AWS account; "
                        "choose another bucket prefix"
                    ) from None
                if error_code(error) != "BucketAlreadyOwnedByYou":
                    raise
        return {"bucket": bucket, "region": region}

    def _block_public_access(self, s3: S3Client, bucket: str) -> dict[str, Any]:
        with _aws("S3 PutPublicAccessBlock"):
            s3.put_public_access_block(
                Bucket=bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )
        return {}

    def _enforce_ownership(self, s3: S3Client, bucket: str) -> dict[str, Any]:
        with _aws("S3 PutBucketOwnershipControls"):
            s3.put_bucket_ownership_controls(
                Bucket=bucket, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
            )
        return {}

    def _encrypt(self, s3: S3Client, bucket: str) -> dict[str, Any]:
        with _aws("S3 PutBucketEncryption"):
            s3.put_bucket_encryption(
                Bucket=bucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            )
        return {"sse": "AES256"}

    def _enable_versioning(self, s3: S3Client, bucket: str) -> dict[str, Any]:
        with _aws("S3 PutBucketVersioning"):
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        return {}

    def _everyday_rules(self) -> list[dict[str, Any]]:
        config = self._config
        return [
            {
                "ID": "officex-housekeeping",
                "Status": "Enabled",
                "Filter": {"Prefix": ""},
                "NoncurrentVersionExpiration": {"NoncurrentDays": config.noncurrent_version_days},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": config.abort_multipart_days},
                "Expiration": {"ExpiredObjectDeleteMarker": True},
            }
        ]

    @staticmethod
    def _expire_everything_rules() -> list[dict[str, Any]]:
        return [
            {
                "ID": "officex-delete-everything",
                "Status": "Enabled",
                "Filter": {"Prefix": ""},
                "Expiration": {"Days": 1},
                "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            },
            {
                "ID": "officex-delete-markers",
                "Status": "Enabled",
                "Filter": {"Prefix": ""},
                "Expiration": {"ExpiredObjectDeleteMarker": True},
            },
        ]

    def _put_lifecycle(self, s3: S3Client, bucket: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        with _aws("S3 PutBucketLifecycleConfiguration"):
            s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
        return {"rules": [rule["ID"] for rule in rules]}

    def _tag_bucket(self, s3: S3Client, bucket: str, tags: dict[str, str]) -> dict[str, Any]:
        with _aws("S3 PutBucketTagging"):
            s3.put_bucket_tagging(
                Bucket=bucket,
                Tagging={"TagSet": [{"Key": key, "Value": value} for key, value in sorted(tags.items())]},
            )
        return {"tags": sorted(tags)}

    def _request_metrics(self, s3: S3Client, bucket: str) -> dict[str, Any]:
        with _aws("S3 PutBucketMetricsConfiguration"):
            s3.put_bucket_metrics_configuration(
                Bucket=bucket, Id=METRICS_ID, MetricsConfiguration={"Id": METRICS_ID}
            )
        return {"id": METRICS_ID}

    def _create_user(self, user: str, tags: dict[str, str]) -> dict[str, Any]:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        iam = self._iam()
        request: dict[str, Any] = {
            "UserName": user,
            "Path": self._config.iam_path,
            "Tags": [{"Key": key, "Value": value} for key, value in sorted(tags.items())],
        }
        if self._config.permissions_boundary_arn:
            request["PermissionsBoundary"] = self._config.permissions_boundary_arn
        with _aws("IAM CreateUser"):
            try:
                answer = iam.create_user(**request)
            except ClientError as error:
                if error_code(error) != "EntityAlreadyExists":
                    raise
                answer = iam.get_user(UserName=user)
        created = answer["User"]
        if created.get("Path") != self._config.iam_path:
            raise ProvisioningFailed(f"IAM user {user} exists outside {self._config.iam_path}; not ours")
        return {"user": user, "arn": created["Arn"]}

    def access_policy(self, bucket: str) -> dict[str, Any]:
        """The customer's permissions: this bucket and its objects, nothing else."""
        arn = self._bucket_arn(bucket)
        return {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Bucket",
                    "Effect": "Allow",
                    "Action": [
                        "s3:ListBucket",
                        "s3:ListBucketVersions",
                        "s3:ListBucketMultipartUploads",
                        "s3:GetBucketLocation",
                    ],
                    "Resource": arn,
                },
                {
                    "Sid": "Objects",
                    "Effect": "Allow",
                    "Action": [
                        "s3:GetObject",
                        "s3:GetObjectVersion",
                        "s3:GetObjectAttributes",
                        "s3:GetObjectTagging",
                        "s3:PutObject",
                        "s3:PutObjectTagging",
                        "s3:DeleteObject",
                        "s3:DeleteObjectVersion",
                        "s3:AbortMultipartUpload",
                        "s3:ListMultipartUploadParts",
                    ],
                    "Resource": f"{arn}/*",
                },
            ],
        }

    @staticmethod
    def deny_all_policy() -> dict[str, Any]:
        return {
            "Version": "2012-10-17",
            "Statement": [{"Sid": "Suspended", "Effect": "Deny", "Action": "*", "Resource": "*"}],
        }

    def bucket_policy(self, bucket: str, *, deny_user_arn: str | None) -> dict[str, Any]:
        arn = self._bucket_arn(bucket)
        statements: list[dict[str, Any]] = []
        if self._config.require_tls:
            statements.append(
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [arn, f"{arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            )
        if deny_user_arn is not None:
            statements.append(
                {
                    "Sid": "DenySuspendedCustomer",
                    "Effect": "Deny",
                    "Principal": {"AWS": deny_user_arn},
                    "Action": "s3:*",
                    "Resource": [arn, f"{arn}/*"],
                }
            )
        return {"Version": "2012-10-17", "Statement": statements}

    def _put_access_policy(self, user: str) -> dict[str, Any]:
        with _aws("IAM PutUserPolicy"):
            self._iam().put_user_policy(
                UserName=user,
                PolicyName=ACCESS_POLICY_NAME,
                PolicyDocument=json.dumps(self.access_policy(user)),
            )
        return {"policy": ACCESS_POLICY_NAME}

    def _put_bucket_policy(self, s3: S3Client, bucket: str, *, deny_user_arn: str | None) -> dict[str, Any]:
        document = self.bucket_policy(bucket, deny_user_arn=deny_user_arn)
        if not document["Statement"]:  # a policy needs a statement: no statement, no policy
            return self._delete_bucket_policy(s3, bucket)
        with _aws("S3 PutBucketPolicy"):
            s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(document))
        return {"statements": [statement["Sid"] for statement in document["Statement"]]}

    def _delete_bucket_policy(self, s3: S3Client, bucket: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with _aws("S3 DeleteBucketPolicy"):
            try:
                s3.delete_bucket_policy(Bucket=bucket)
            except ClientError as error:
                if not _is_not_found(error):
                    raise
        return {"statements": []}

    def _access_keys(self, user: str) -> list[str]:
        iam = self._iam()
        keys: list[str] = []
        with _aws("IAM ListAccessKeys"):
            for page in iam.get_paginator("list_access_keys").paginate(UserName=user):
                keys.extend(key["AccessKeyId"] for key in page["AccessKeyMetadata"])
        return keys

    def _issue_access_key(self, user: str) -> dict[str, str]:
        """Delete every key the user has (a crashed run's, never shown to anyone), then make one."""
        iam = self._iam()
        for key_id in self._access_keys(user):
            self._delete_access_key(user, key_id)
        with _aws("IAM CreateAccessKey"):
            key = iam.create_access_key(UserName=user)["AccessKey"]
        return {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}

    def _delete_access_key(self, user: str, key_id: str) -> None:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with _aws("IAM DeleteAccessKey"):
            try:
                self._iam().delete_access_key(UserName=user, AccessKeyId=key_id)
            except ClientError as error:
                if not _is_not_found(error):
                    raise

    # ------------------------------------------------------ suspend / resume
    def suspend(self, resource: ResourceRef, steps: StepLog) -> None:
        bucket, s3 = resource.name, self._s3(self._region(resource))
        _step(steps, "deny_policy", lambda: self._put_deny_policy(bucket))
        _step(steps, "keys_inactive", lambda: self._set_keys(bucket, "Inactive"))
        _step(steps, "bucket_deny", lambda: self._deny_in_bucket_policy(s3, bucket))

    def resume(self, resource: ResourceRef, steps: StepLog) -> None:
        bucket, s3 = resource.name, self._s3(self._region(resource))
        _step(steps, "bucket_allow", lambda: self._put_bucket_policy_if_bucket(s3, bucket, None))
        _step(steps, "keys_active", lambda: self._set_keys(bucket, "Active"))
        _step(steps, "allow_policy", lambda: self._remove_deny_policy(bucket))

    def _put_deny_policy(self, user: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with _aws("IAM PutUserPolicy"):
            try:
                self._iam().put_user_policy(
                    UserName=user,
                    PolicyName=SUSPENDED_POLICY_NAME,
                    PolicyDocument=json.dumps(self.deny_all_policy()),
                )
            except ClientError as error:
                if not _is_not_found(error):
                    raise
                return {"user": "absent"}
        return {"policy": SUSPENDED_POLICY_NAME}

    def _remove_deny_policy(self, user: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with _aws("IAM DeleteUserPolicy"):
            try:
                self._iam().delete_user_policy(UserName=user, PolicyName=SUSPENDED_POLICY_NAME)
            except ClientError as error:
                if not _is_not_found(error):
                    raise
        return {}

    def _existing_keys(self, user: str) -> list[str] | None:
        """The user's access key ids; ``None`` when the user is gone."""
        from botocore.exceptions import ClientError  # noqa: PLC0415

        try:
            return self._access_keys(user)
        except ProvisioningFailed as failure:
            if isinstance(failure.__cause__, ClientError) and _is_not_found(failure.__cause__):
                return None
            raise

    def _set_keys(self, user: str, status: str) -> dict[str, Any]:
        keys = self._existing_keys(user)
        if keys is None:
            return {"keys": []}
        for key_id in keys:
            with _aws("IAM UpdateAccessKey"):
                self._iam().update_access_key(UserName=user, AccessKeyId=key_id, Status=status)
        return {"keys": keys, "status": status}

    def _user_arn(self, user: str) -> str | None:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with _aws("IAM GetUser"):
            try:
                return str(self._iam().get_user(UserName=user)["User"]["Arn"])
            except ClientError as error:
                if _is_not_found(error):
                    return None
                raise

    def _deny_in_bucket_policy(self, s3: S3Client, bucket: str) -> dict[str, Any]:
        user_arn = self._user_arn(bucket)
        return self._put_bucket_policy_if_bucket(s3, bucket, user_arn)

    def _put_bucket_policy_if_bucket(
        self, s3: S3Client, bucket: str, deny_user_arn: str | None
    ) -> dict[str, Any]:
        try:
            return self._put_bucket_policy(s3, bucket, deny_user_arn=deny_user_arn)
        except ProvisioningFailed as failure:
            if failure.__cause__ is not None and _is_not_found(failure.__cause__):
                return {"bucket": "absent"}
            raise

    # --------------------------------------------------------------- delete
    def delete(self, resource: ResourceRef, steps: StepLog) -> None:
        bucket, s3 = resource.name, self._s3(self._region(resource))
        _step(steps, "keys_deleted", lambda: self._delete_all_keys(bucket))
        # Nobody can reach the bucket any more; its policy goes so that no statement of it can
        # ever stand between the emptying below and the objects.
        _step(steps, "bucket_policy_deleted", lambda: self._delete_bucket_policy(s3, bucket))
        _step(steps, "emptied", lambda: self._empty(s3, bucket, steps))
        _step(steps, "bucket_deleted", lambda: self._delete_bucket(s3, bucket))
        _step(steps, "user_policies_deleted", lambda: self._delete_user_policies(bucket))
        _step(steps, "user_deleted", lambda: self._delete_user(bucket))

    def _delete_all_keys(self, user: str) -> dict[str, Any]:
        keys = self._existing_keys(user)
        if keys is None:
            return {"keys": []}
        for key_id in keys:
            self._delete_access_key(user, key_id)
        return {"keys": keys}

    def _empty(self, s3: S3Client, bucket: str, steps: StepLog) -> dict[str, Any]:
        """Abort uploads, delete every version and delete marker; resumable across runs."""
        from botocore.exceptions import ClientError  # noqa: PLC0415

        aborted = deleted = 0
        try:
            aborted = self._abort_uploads(s3, bucket)
            for _ in range(self._config.delete_batches_per_run):
                with _aws("S3 ListObjectVersions"):
                    page = s3.list_object_versions(Bucket=bucket, MaxKeys=self._config.delete_batch_size)
                batch = [
                    {"Key": item["Key"], "VersionId": item["VersionId"]}
                    for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
                ]
                if not batch:
                    return {"uploads_aborted": aborted, "versions_deleted": deleted}
                with _aws("S3 DeleteObjects"):
                    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise ProvisioningFailed(
                        f"S3 DeleteObjects failed for {len(answer['Errors'])} versions: {first.get('Code')}"
                    )
                deleted += len(batch)
        except ProvisioningFailed as failure:
            if isinstance(failure.__cause__, ClientError) and error_code(failure.__cause__) == "NoSuchBucket":
                return {"bucket": "absent"}
            raise
        # Too large for one run: let S3 expire the rest meanwhile, and come back.
        _step(
            steps,
            "expire_everything",
            lambda: self._put_lifecycle(s3, bucket, self._expire_everything_rules()),
        )
        raise ProvisioningIncomplete(
            f"bucket {bucket} is not empty yet ({deleted} versions deleted this run); continuing later",
            retry_after=self._config.continue_after,
        )

    def _abort_uploads(self, s3: S3Client, bucket: str) -> int:
        aborted = 0
        while True:
            with _aws("S3 ListMultipartUploads"):
                uploads = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=1000).get("Uploads", [])
            if not uploads:
                return aborted
            for upload in uploads:
                self._abort_upload(s3, bucket, upload["Key"], upload["UploadId"])
                aborted += 1

    def _abort_upload(self, s3: S3Client, bucket: str, key: str, upload_id: str) -> None:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with _aws("S3 AbortMultipartUpload"):
            try:
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except ClientError as error:
                if not _is_not_found(error):
                    raise

    def _delete_bucket(self, s3: S3Client, bucket: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with _aws("S3 DeleteBucket"):
            try:
                s3.delete_bucket(Bucket=bucket)
            except ClientError as error:
                if error_code(error) == "BucketNotEmpty":
                    raise ProvisioningIncomplete(
                        f"bucket {bucket} received objects while it was emptied; emptying again",
                        retry_after=timedelta(minutes=1),
                    ) from None
                if not _is_not_found(error):
                    raise
        return {}

    def _delete_user_policies(self, user: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        iam = self._iam()
        names: list[str] = []
        with _aws("IAM ListUserPolicies"):
            try:
                for page in iam.get_paginator("list_user_policies").paginate(UserName=user):
                    names.extend(page["PolicyNames"])
            except ClientError as error:
                if not _is_not_found(error):
                    raise
        for name in names:
            with _aws("IAM DeleteUserPolicy"):
                try:
                    iam.delete_user_policy(UserName=user, PolicyName=name)
                except ClientError as error:
                    if not _is_not_found(error):
                        raise
        return {"policies": names}

    def _delete_user(self, user: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with _aws("IAM DeleteUser"):
            try:
                self._iam().delete_user(UserName=user)
            except ClientError as error:
                if error_code(error) == "DeleteConflict":
                    # Something was attached outside these steps (a key made by hand?): clear and retry.
                    self._delete_all_keys(user)
                    self._delete_user_policies(user)
                    raise ProvisioningIncomplete(
                        f"IAM user {user} still had attachments; removed them, deleting again",
                        retry_after=timedelta(seconds=30),
                    ) from None
                if not _is_not_found(error):
                    raise
        return {}


def _step(steps: StepLog, name: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``action`` unless ``name`` is recorded; record its outcome once it succeeded."""
    done = steps.outcome(name)
    if done is not None:
        return done
    outcome = action()
    steps.record(name, outcome)
    return outcome
