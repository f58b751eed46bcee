"""An in-process chain, KMS on moto and a migrated database, wired into the checkout service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from moto import mock_aws

from billing.adapters.aws.kms import KmsSecretBox
from billing.adapters.chain.evm_reader import EvmChainReader
from billing.adapters.chain.hd import SeedDepositKeys, XpubDepositAddresses
from billing.adapters.chain.readers import EnvChainReaders, in_process_chain
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.chains import chain_registry
from billing.services.checkout import CheckoutPolicy, CheckoutService
from local.chain import TEST_MNEMONIC
from local.chain.devchain import DevChain, dev_chain_registry_entry
from local.seed import import_default_catalog


@dataclass
class CheckoutKit:
    chain: DevChain
    service: CheckoutService
    keys: SeedDepositKeys
    payer: str
    box: KmsSecretBox

    def service_on(self, connection: psycopg.Connection[Any]) -> CheckoutService:
        """The same service on another connection (one per thread in concurrency tests)."""
        addresses = XpubDepositAddresses(self.keys.account_xpub())
        return CheckoutService(
            PostgresTransactions(lambda: connection),
            chains=EnvChainReaders({}),
            addresses=lambda: addresses,
            secrets=lambda: self.box,
            registry=chain_registry,
            policy=CheckoutPolicy(allow_dev_chains=True),
        )

    def usdc(self) -> str:
        assert self.chain.tokens is not None
        return self.chain.tokens.usdc

    def usdt(self) -> str:
        assert self.chain.tokens is not None
        return self.chain.tokens.usdt


@pytest.fixture
def checkout_kit(
    db: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CheckoutKit]:
    chain = DevChain()
    chain.deploy_tokens()
    extra = tmp_path / "chains.json"
    extra.write_text(json.dumps({"chains": [dev_chain_registry_entry(chain)]}))
    monkeypatch.setenv("EXTRA_CHAINS_FILE", str(extra))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    chain_registry.cache_clear()
    transactions = PostgresTransactions(lambda: db)
    import_default_catalog(db)
    keys = SeedDepositKeys(TEST_MNEMONIC)
    reader = EvmChainReader.from_web3(chain.chain_id, chain.web3)
    with mock_aws(), in_process_chain(chain.chain_id, reader):
        key_id = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
        box = KmsSecretBox(key_id)
        addresses = XpubDepositAddresses(keys.account_xpub())
        service = CheckoutService(
            transactions,
            chains=EnvChainReaders({}),
            addresses=lambda: addresses,
            secrets=lambda: box,
            registry=chain_registry,
            policy=CheckoutPolicy(allow_dev_chains=True),
        )
        payer = chain.accounts[1]
        chain.mint(chain.tokens.usdc if chain.tokens else "", payer, 1_000_000 * 10**6)
        chain.mint(chain.tokens.usdt if chain.tokens else "", payer, 1_000_000 * 10**6)
        yield CheckoutKit(chain, service, keys, payer, box)
    chain_registry.cache_clear()
