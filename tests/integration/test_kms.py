"""KMS secret box on moto: round trip, context binding, and a clean 503 when KMS is unreachable."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from billing.adapters.aws.kms import KmsSecretBox
from billing.domain.errors import CiphertextMismatch, DependencyUnavailable

ORG_KEY = "officex-org-key-5f2b7c1e9a4d"
CONTEXT = {"purpose": "officex-org-key", "purchase_id": "3f6c0a52-0d7e-4c1a-9a51-6a1f0c7e2b11"}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def box(aws_env: None) -> Iterator[KmsSecretBox]:
    with mock_aws():
        key = boto3.client("kms", region_name="us-east-1").create_key(Description="org keys")
        yield KmsSecretBox(key["KeyMetadata"]["Arn"])


def test_round_trip(box: KmsSecretBox) -> None:
    ciphertext = box.encrypt(ORG_KEY, CONTEXT)

    assert box.decrypt(ciphertext, dict(CONTEXT)) == ORG_KEY


def test_ciphertext_neither_equals_nor_contains_the_plaintext(box: KmsSecretBox) -> None:
    ciphertext = box.encrypt(ORG_KEY, CONTEXT)

    assert ciphertext != ORG_KEY.encode()
    assert ORG_KEY.encode() not in ciphertext
    assert base64.b64encode(ORG_KEY.encode()) not in ciphertext


@pytest.mark.parametrize(
    "other_context",
    [
        {**CONTEXT, "purchase_id": "00000000-0000-0000-0000-000000000000"},  # moved to another purchase
        {**CONTEXT, "purpose": "finalize-replay"},
        {"purpose": "officex-org-key"},
    ],
)
def test_a_ciphertext_does_not_decrypt_under_another_context(
    box: KmsSecretBox, other_context: dict[str, str]
) -> None:
    ciphertext = box.encrypt(ORG_KEY, CONTEXT)

    with pytest.raises(CiphertextMismatch, match="encryption context"):
        box.decrypt(ciphertext, other_context)


def test_damaged_ciphertext_is_a_mismatch_not_an_outage(box: KmsSecretBox) -> None:
    ciphertext = bytearray(box.encrypt(ORG_KEY, CONTEXT))
    ciphertext[-1] ^= 0x01

    with pytest.raises(CiphertextMismatch):
        box.decrypt(bytes(ciphertext), CONTEXT)


def test_plaintexts_stay_out_of_logs_even_at_debug_level(
    box: KmsSecretBox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    box.decrypt(box.encrypt(ORG_KEY, CONTEXT), CONTEXT)

    assert "Encrypt" in caplog.text  # botocore did log the calls, just not their bodies
    assert ORG_KEY not in caplog.text
    assert base64.b64encode(ORG_KEY.encode()).decode() not in caplog.text


def test_encrypt_refuses_what_kms_would_refuse(box: KmsSecretBox) -> None:
    with pytest.raises(ValueError, match="1 to 4096 bytes"):
        box.encrypt("", CONTEXT)
    with pytest.raises(ValueError, match="1 to 4096 bytes"):
        box.encrypt("x" * 4_097, CONTEXT)
    with pytest.raises(ValueError, match="encryption context is required"):
        box.encrypt(ORG_KEY, {})


def test_an_unknown_key_is_an_outage_not_a_mismatch(aws_env: None) -> None:
    with mock_aws():
        missing = KmsSecretBox("arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000")

        with pytest.raises(DependencyUnavailable, match="KMS is unavailable"):
            missing.encrypt(ORG_KEY, CONTEXT)


def test_an_unreachable_endpoint_fails_fast_with_dependency_unavailable(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", "http://127.0.0.1:9")  # discard port: connection refused
    unreachable = KmsSecretBox("alias/officex-org-keys")

    started = time.monotonic()
    with pytest.raises(DependencyUnavailable, match="KMS is unavailable; nothing was written"):
        unreachable.encrypt(ORG_KEY, CONTEXT)

    assert time.monotonic() - started < 5
