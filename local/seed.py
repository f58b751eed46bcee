"""Demo data for the local runner: the catalog file and one funded purchase with fresh keys.

Idempotent. Keys are stored only as hashes, so re-seeding an existing demo
purchase rotates both keys: that is the only way to print keys that work.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import yaml

from billing.adapters.postgres.purchase_store import PostgresPurchaseStore
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.api_keys import KeyRole, generate_api_key, hash_api_key
from billing.domain.catalog import Catalog
from billing.domain.chains import chain_registry
from billing.domain.ledger import credit
from billing.domain.purchase import NewPurchase, Triggers
from billing.services.catalog import CatalogImporter
from billing.services.ledger import LedgerService
from local.events import DEMO_OFFER_ID, DEMO_PURCHASE_ID
from local.template import REPO_ROOT

DEMO_FILE = REPO_ROOT / ".local" / "demo.json"
NANO_PER_USD = 1_000_000_000
OPENING_CREDIT_NANO = 25 * NANO_PER_USD
DEMO_TRIGGERS = Triggers(
    low_nano=10 * NANO_PER_USD, critical_nano=5 * NANO_PER_USD, termination_nano=NANO_PER_USD
)
DEFAULT_CATALOG_PATH = REPO_ROOT / "catalog" / "catalog.yaml"


@dataclass(frozen=True)
class DemoSeed:
    offer_id: str
    purchase_id: str
    customer_key: str
    vendor_key: str


def import_default_catalog(connection: psycopg.Connection[Any]) -> None:
    """The vendor's catalog file (``catalog/catalog.yaml``), as ``vendorctl catalog import`` would."""
    document = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text())
    dev_chains = [chain for chain in chain_registry().chains if chain.dev]
    for offer in document["offers"]:  # the local runner's dev chain pays for everything
        offer["payment_options"] += [
            {"chain": chain.slug, "token": token} for chain in dev_chains for token in chain.tokens
        ]
    catalog = Catalog.model_validate(document)
    CatalogImporter(PostgresTransactions(lambda: connection)).import_catalog(
        catalog, prune=False, dry_run=False
    )


def seed_demo(connection: psycopg.Connection[Any]) -> DemoSeed:
    """Seed ``connection``'s (migrated) database; ``connection`` must be in autocommit mode."""
    purchase_id = UUID(DEMO_PURCHASE_ID)
    customer_key, vendor_key = generate_api_key(KeyRole.CUSTOMER), generate_api_key(KeyRole.VENDOR)
    customer_hash, vendor_hash = hash_api_key(customer_key), hash_api_key(vendor_key)
    import_default_catalog(connection)
    with connection.transaction():
        rotated = connection.execute(
            """UPDATE purchases SET customer_key_hash = %s, vendor_key_hash = %s, updated_at = now()
                WHERE id = %s""",
            (customer_hash, vendor_hash, purchase_id),
        ).rowcount
        if not rotated:
            PostgresPurchaseStore(connection).insert(
                NewPurchase(
                    id=purchase_id,
                    offer_id=DEMO_OFFER_ID,
                    triggers=DEMO_TRIGGERS,
                    customer_key_hash=customer_hash,
                    vendor_key_hash=vendor_hash,
                )
            )
    # Idempotent on its key: a re-seed replays it instead of crediting again.
    LedgerService(PostgresTransactions(lambda: connection)).apply(
        credit(purchase_id, OPENING_CREDIT_NANO, "demo-opening-credit")
    )
    return DemoSeed(DEMO_OFFER_ID, DEMO_PURCHASE_ID, customer_key, vendor_key)


def write_demo_file(seed: DemoSeed, base_url: str, path: Path = DEMO_FILE) -> None:
    """Keys for the developer (and scripts); readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump({"base_url": base_url, **asdict(seed)}, file, indent=2)
        file.write("\n")
