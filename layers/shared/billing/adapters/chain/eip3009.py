"""EIP-3009 ``transferWithAuthorization`` signatures (USDC): the token holder signs, anyone submits.

The sweeper moves deposits with these so that deposit addresses never need
gas. Pure signing, no RPC; eth_account loads only when this module does.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import encode_typed_data

#: The EIP-712 types, exactly as in EIP-3009 (field order and names are part of the typehash).
TRANSFER_WITH_AUTHORIZATION_TYPES = {
    "TransferWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ]
}


def sign_transfer_with_authorization(
    private_key: bytes,
    *,
    token_name: str,
    token_version: str,
    chain_id: int,
    token_address: str,
    from_address: str,
    to_address: str,
    value: int,
    valid_after: int,
    valid_before: int,
    nonce: bytes,
) -> tuple[int, bytes, bytes]:
    """``(v, r, s)`` of the authorization, with ``v`` in {27, 28} and 32-byte ``r`` and ``s``.

    ``token_name`` and ``token_version`` must be the token's EIP-712 domain
    (``name()`` and ``version()``: "USD Coin" and "2" for Circle's mainnet USDC).
    """
    if len(nonce) != 32:
        raise ValueError("an EIP-3009 nonce is 32 bytes")
    message = encode_typed_data(
        domain_data={
            "name": token_name,
            "version": token_version,
            "chainId": chain_id,
            "verifyingContract": token_address,
        },
        message_types=TRANSFER_WITH_AUTHORIZATION_TYPES,
        message_data={
            "from": from_address,
            "to": to_address,
            "value": value,
            "validAfter": valid_after,
            "validBefore": valid_before,
            "nonce": nonce,
        },
    )
    signed = Account.sign_message(message, private_key)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")
