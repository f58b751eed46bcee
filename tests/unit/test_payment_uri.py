"""EIP-681 payment URIs: exact text, plain-integer amounts, checksummed addresses only."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.payment_uri import eip681_token_transfer_uri

BASE = 8453
BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
RECIPIENT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_base_usdc_request_is_exact() -> None:
    uri = eip681_token_transfer_uri(BASE, BASE_USDC, RECIPIENT, 25_000_000)  # 25 USDC, 6 decimals

    assert uri == (
        "ethereum:0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913@8453/transfer"
        "?address=0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266&uint256=25000000"
    )


@pytest.mark.parametrize(
    ("amount_units", "text"),
    [
        (1, "1"),
        (10**30, "1" + "0" * 30),  # 10^12 of an 18-decimal token: a float would print 1e+30
        (2**256 - 1, str(2**256 - 1)),
    ],
)
def test_large_amounts_are_plain_integers(amount_units: int, text: str) -> None:
    uri = eip681_token_transfer_uri(1, BASE_USDC, RECIPIENT, amount_units)

    assert uri.endswith(f"&uint256={text}")


@given(st.integers(min_value=1, max_value=2**256 - 1))
def test_the_amount_parameter_reads_back_exactly(amount_units: int) -> None:
    uri = eip681_token_transfer_uri(BASE, BASE_USDC, RECIPIENT, amount_units)

    match = re.fullmatch(
        r"ethereum:0x[0-9a-fA-F]{40}@\d+/transfer\?address=0x[0-9a-fA-F]{40}&uint256=(\d+)", uri
    )
    assert match is not None
    assert int(match[1]) == amount_units


@pytest.mark.parametrize("amount_units", [0, -1, 2**256, 2.5e7, True, "25000000"])
def test_amounts_that_are_not_a_positive_uint256_are_refused(amount_units: object) -> None:
    with pytest.raises(ValueError, match="amount"):
        eip681_token_transfer_uri(BASE, BASE_USDC, RECIPIENT, amount_units)  # type: ignore[arg-type]


@pytest.mark.parametrize("chain_id", [0, -8453, "8453"])
def test_chain_ids_are_positive_integers(chain_id: object) -> None:
    with pytest.raises(ValueError, match="chain id"):
        eip681_token_transfer_uri(chain_id, BASE_USDC, RECIPIENT, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "address",
    [
        BASE_USDC.lower(),  # valid hex, but no checksum to catch a typo
        BASE_USDC.replace("fC", "fc"),  # wrong checksum casing
        BASE_USDC[:-1],
        BASE_USDC[2:],
        BASE_USDC + "00",
        " " + BASE_USDC,
        "base-usdc.eth",
    ],
)
def test_unchecksummed_or_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="token address"):
        eip681_token_transfer_uri(BASE, address, RECIPIENT, 1)
    with pytest.raises(ValueError, match="recipient address"):
        eip681_token_transfer_uri(BASE, BASE_USDC, address, 1)


def test_the_domain_module_stays_free_of_heavy_imports() -> None:
    probe = (
        "import sys\n"
        "import billing.domain.payment_uri as m\n"
        f"m.eip681_token_transfer_uri(1, {BASE_USDC!r}, {RECIPIENT!r}, 1)\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "heavy = {'web3', 'eth_account', 'boto3', 'botocore', 'psycopg'} & loaded\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=REPO_ROOT / "layers" / "shared")
