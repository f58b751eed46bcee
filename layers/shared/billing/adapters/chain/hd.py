"""HD deposit addresses (BIP-32/BIP-44, Ethereum path m/44'/60'/0'/0/index).

API functions derive addresses from the account **xpub** alone, so they can hand
out a fresh address per checkout without ever holding a private key. Only the
sweeper, which must sign, builds ``SeedDepositKeys`` from the HD seed.
"""

from __future__ import annotations

from functools import lru_cache

from bip_utils import (  # type: ignore[import-untyped]
    Base58ChecksumError,
    Bip32KeyError,
    Bip32Secp256k1,
    Bip39SeedGenerator,
    Bip44,
    Bip44Changes,
    Bip44Coins,
    EthAddrEncoder,
    MnemonicChecksumError,
)

#: BIP-32 indices from here on are hardened; public derivation cannot produce them.
HARDENED = 2**31
ACCOUNT_DEPTH = 3  # m/44'/60'/0'
ACCOUNT_INDEX = HARDENED  # 0' (hardened 0), the account of m/44'/60'/0'
EXTERNAL_CHAIN = 0  # BIP-44 "change" level: 0 = receiving addresses
CACHED_ADDRESSES = 4_096
SEED_BYTES_RANGE = range(16, 65)  # BIP-32: a seed has 128 to 512 bits


def _checked_index(index: int) -> int:
    if not 0 <= index < HARDENED:
        raise ValueError(f"address index must be in [0, 2**31), got {index}")
    return index


class XpubDepositAddresses:
    """``DepositAddresses`` from an account-level xpub: public derivation only."""

    def __init__(self, xpub: str) -> None:
        try:
            account = Bip32Secp256k1.FromExtendedKey(xpub.strip())
        except (ValueError, Base58ChecksumError, Bip32KeyError):
            # ``from None``: a mistyped xprv must not reach logs through the chained exception.
            raise ValueError("DEPOSIT_XPUB is not a valid BIP-32 extended public key (xpub…)") from None
        if not account.IsPublicOnly():
            raise ValueError(
                "DEPOSIT_XPUB holds a private key (xprv); configure the account xpub instead "
                "and rotate that key: it must never be where the API runs"
            )
        if account.Depth().ToInt() != ACCOUNT_DEPTH or account.Index().ToInt() != ACCOUNT_INDEX:
            raise ValueError("DEPOSIT_XPUB must be the account-level xpub of m/44'/60'/0'")
        self._external_chain = account.ChildKey(EXTERNAL_CHAIN)
        self._cached_address_at = lru_cache(maxsize=CACHED_ADDRESSES)(self._derive_address)

    def address_at(self, index: int) -> str:
        """EIP-55 checksummed address of m/44'/60'/0'/0/index."""
        return self._cached_address_at(_checked_index(index))

    def _derive_address(self, index: int) -> str:
        public_key = self._external_chain.ChildKey(index).PublicKey().KeyObject()
        return str(EthAddrEncoder.EncodeKey(public_key))


class SeedDepositKeys:
    """Deposit private keys from the HD seed — for the sweeper only, never imported by API functions."""

    def __init__(self, mnemonic_or_seed: str | bytes) -> None:
        if isinstance(mnemonic_or_seed, str):
            try:
                seed = Bip39SeedGenerator(" ".join(mnemonic_or_seed.split())).Generate()
            except (ValueError, MnemonicChecksumError):  # the words stay out of the message and traceback
                raise ValueError("the HD seed secret is not a valid BIP-39 mnemonic") from None
        else:
            if len(mnemonic_or_seed) not in SEED_BYTES_RANGE:
                raise ValueError("an HD seed has 16 to 64 bytes")
            seed = mnemonic_or_seed
        self._account = Bip44.FromSeed(seed, Bip44Coins.ETHEREUM).Purpose().Coin().Account(0)
        self._external_chain = self._account.Change(Bip44Changes.CHAIN_EXT)

    def __repr__(self) -> str:
        return "SeedDepositKeys(m/44'/60'/0', <private>)"

    def account_xpub(self) -> str:
        """The xpub to configure as the API's ``DEPOSIT_XPUB``."""
        return str(self._account.PublicKey().ToExtended())

    def private_key_at(self, index: int) -> bytes:
        """The 32-byte secp256k1 private key of m/44'/60'/0'/0/index."""
        return bytes(self._external_chain.AddressIndex(_checked_index(index)).PrivateKey().Raw().ToBytes())

    def address_at(self, index: int) -> str:
        """The address ``private_key_at(index)`` controls (equal to the xpub-derived one)."""
        return str(self._external_chain.AddressIndex(_checked_index(index)).PublicKey().ToAddress())
