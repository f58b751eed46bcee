"""Customer and vendor API keys: 256-bit random, prefixed, stored only as SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum

KEY_BYTES = 32
#: Compared against when the purchase does not exist, so both paths do the same work.
_ABSENT_KEY_HASH = hashlib.sha256(b"no such purchase").digest()


class KeyRole(StrEnum):
    CUSTOMER = "ck"
    VENDOR = "vk"


def generate_api_key(role: KeyRole) -> str:
    return f"{role.value}_{secrets.token_urlsafe(KEY_BYTES)}"


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def api_key_matches(presented_key: str, stored_hash: bytes | None) -> bool:
    """Constant-time check; ``stored_hash=None`` (unknown purchase) costs the same and fails."""
    expected = stored_hash if stored_hash is not None else _ABSENT_KEY_HASH
    matched = hmac.compare_digest(hash_api_key(presented_key), expected)
    return matched and stored_hash is not None
