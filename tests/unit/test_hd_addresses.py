"""Deposit addresses: the API's xpub derivation and the sweeper's seed derivation agree, on known vectors."""

from __future__ import annotations

import pytest
from bip_utils import Bip32Secp256k1, Bip39SeedGenerator, Bip44, Bip44Coins
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.adapters.chain.hd import HARDENED, SeedDepositKeys, XpubDepositAddresses
from local.chain import TEST_MNEMONIC

#: Hardhat/Anvil's default mnemonic and its first two accounts (m/44'/60'/0'/0/0 and /1).
MNEMONIC = TEST_MNEMONIC
HARDHAT_ACCOUNTS = [
    (
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    ),
    (
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    ),
]
ACCOUNT_XPUB = (
    "xpub6Ce9NcJvTk36xtLSrJLZqE7wtgA5deCeYs7rSQtreh4cj6ByPtrg9sD7V2FNFLPnf8"
    "heNP3FGkeV9qwfzvZNSd54JoNXVsXFYSYwHsnJxqP"
)

SEED_KEYS = SeedDepositKeys(MNEMONIC)
XPUB_ADDRESSES = XpubDepositAddresses(ACCOUNT_XPUB)


def test_the_seed_prints_the_account_xpub_the_api_is_configured_with() -> None:
    assert SEED_KEYS.account_xpub() == ACCOUNT_XPUB


@pytest.mark.parametrize(("index", "account"), enumerate(HARDHAT_ACCOUNTS))
def test_known_vectors_on_the_xpub_path(index: int, account: tuple[str, str]) -> None:
    assert XPUB_ADDRESSES.address_at(index) == account[0]


@pytest.mark.parametrize(("index", "account"), enumerate(HARDHAT_ACCOUNTS))
def test_known_vectors_on_the_seed_path(index: int, account: tuple[str, str]) -> None:
    assert SEED_KEYS.address_at(index) == account[0]
    assert SEED_KEYS.private_key_at(index).hex() == account[1]


def test_a_raw_seed_gives_the_same_keys_as_its_mnemonic() -> None:
    from_seed = SeedDepositKeys(bytes(Bip39SeedGenerator(MNEMONIC).Generate()))
    assert from_seed.account_xpub() == ACCOUNT_XPUB
    assert from_seed.private_key_at(1).hex() == HARDHAT_ACCOUNTS[1][1]


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=HARDENED - 1))
def test_xpub_and_seed_derivations_agree(index: int) -> None:
    assert XPUB_ADDRESSES.address_at(index) == SEED_KEYS.address_at(index)


def test_addresses_are_cached_per_instance() -> None:
    addresses = XpubDepositAddresses(ACCOUNT_XPUB)
    assert addresses.address_at(7) == addresses.address_at(7) == SEED_KEYS.address_at(7)
    assert addresses._cached_address_at.cache_info().hits == 1


def test_an_xprv_is_refused_without_echoing_it() -> None:
    coin = Bip44.FromSeed(Bip39SeedGenerator(MNEMONIC).Generate(), Bip44Coins.ETHEREUM).Purpose().Coin()
    xprv = coin.Account(0).PrivateKey().ToExtended()
    with pytest.raises(ValueError, match="private key") as refused:
        XpubDepositAddresses(xprv)
    assert xprv not in str(refused.value)
    assert refused.value.__cause__ is None


@pytest.mark.parametrize(
    "path",
    ["m", "m/44'/60'", "m/44'/60'/0'/0", "m/44'/60'/1'"],
)
def test_only_the_account_level_xpub_is_accepted(path: str) -> None:
    master = Bip32Secp256k1.FromSeed(Bip39SeedGenerator(MNEMONIC).Generate())
    xpub = master.DerivePath(path).PublicKey().ToExtended()
    with pytest.raises(ValueError, match="account-level xpub"):
        XpubDepositAddresses(xpub)


@pytest.mark.parametrize("text", ["", "xpub", "not a key", ACCOUNT_XPUB[:-1] + "x", "0x" + "ab" * 32])
def test_malformed_xpubs_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a valid BIP-32 extended public key"):
        XpubDepositAddresses(text)


@pytest.mark.parametrize("index", [-1, HARDENED, HARDENED + 5, 2**64])
def test_indices_outside_public_derivation_are_refused(index: int) -> None:
    with pytest.raises(ValueError, match="address index"):
        XPUB_ADDRESSES.address_at(index)
    with pytest.raises(ValueError, match="address index"):
        SEED_KEYS.private_key_at(index)
    with pytest.raises(ValueError, match="address index"):
        SEED_KEYS.address_at(index)


def test_bad_seeds_are_refused_without_echoing_them() -> None:
    wrong_checksum = "test " * 11 + "test"
    with pytest.raises(ValueError, match="not a valid BIP-39 mnemonic") as refused:
        SeedDepositKeys(wrong_checksum)
    assert "test" not in str(refused.value)
    with pytest.raises(ValueError, match="16 to 64 bytes"):
        SeedDepositKeys(b"\x01" * 15)


def test_repr_reveals_no_key_material() -> None:
    shown = f"{SEED_KEYS!r} {SEED_KEYS!s} {[SEED_KEYS]}"
    assert "junk" not in shown
    assert "test" not in shown
    assert "xprv" not in shown
    assert ACCOUNT_XPUB not in shown
    for _, private_key in HARDHAT_ACCOUNTS:
        assert private_key not in shown
