"""EIP-681 payment requests: the URI a wallet opens (or a QR code carries) to pay a checkout.

``ethereum:<token>@<chain_id>/transfer?address=<recipient>&uint256=<amount_units>`` asks
the wallet to call the token's ``transfer(recipient, amount)`` on that chain. The chain id is
always present, so a wallet on another network cannot send the tokens there by mistake, and
the amount is a plain integer of base units: no decimals, no exponent to misread.
"""

from __future__ import annotations

import re

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_UINT256_LIMIT = 2**256


def _require_checksummed(role: str, address: str) -> None:
    # eth_utils (+ its keccak backend) costs ~0.3 s to import: only routes that build a URI pay it.
    from eth_utils.address import is_checksum_address  # noqa: PLC0415

    if not _ADDRESS.fullmatch(address) or not is_checksum_address(address):
        raise ValueError(f"the {role} address must be an EIP-55 checksummed address, got {address!r}")


def eip681_token_transfer_uri(chain_id: int, token_address: str, recipient: str, amount_units: int) -> str:
    """An EIP-681 ERC-20 ``transfer`` request for ``amount_units`` base units of the token."""
    if type(chain_id) is not int or chain_id <= 0:
        raise ValueError(f"chain id must be a positive integer, got {chain_id!r}")
    if type(amount_units) is not int or not 0 < amount_units < _UINT256_LIMIT:
        raise ValueError(f"amount must be a whole number of base units in (0, 2**256), got {amount_units!r}")
    _require_checksummed("token", token_address)
    _require_checksummed("recipient", recipient)
    return f"ethereum:{token_address}@{chain_id}/transfer?address={recipient}&uint256={amount_units}"
