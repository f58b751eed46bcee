"""Customer and vendor API keys: 256-bit random, prefixed, stored only as SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from enum import StrEnum

from billing.domain.errors import InvalidRequest

KEY_BYTES = 32
#: Compared against when the purchase does not exist, so both paths do the same work.
_ABSENT_KEY_HASH = hashlib.sha256(b"no such purchase").digest()


class KeyRole(StrEnum):
    CUSTOMER = "ck"
    VENDOR = "vk"


def generate_api_key(role: KeyRole) -> str:
    return f"{role.value}_{secrets.token_urlsafe(KEY_BYTES)}"


def generate_webhook_secret() -> str:
    """The per-purchase key that signs webhooks (docs/notifications.md)."""
    return f"whsec_{secrets.token_urlsafe(KEY_BYTES)}"


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def api_key_matches(presented_key: str, stored_hash: bytes | None) -> bool:
    """Constant-time check; ``stored_hash=None`` (unknown purchase) costs the same and fails."""
    expected = stored_hash if stored_hash is not None else _ABSENT_KEY_HASH
    matched = hmac.compare_digest(hash_api_key(presented_key), expected)
    return matched and stored_hash is not None


_SUPPLIED_KEY = re.compile(r"^(ck|vk)_[A-Za-z0-9_-]{43,128}$")


def accept_supplied_key(key: str, role: KeyRole) -> str:
    """A key the customer brings must look like ours: the right prefix and ≥ 256 bits of base64url."""
    match = _SUPPLIED_KEY.fullmatch(key)
    if match is None or match.group(1) != role.value:
        raise InvalidRequest(
            f"a supplied {role.name.lower()} key must be '{role.value}_' followed by at least 43 base64url "
            "characters (256 random bits); omit it to have one generated"
        )
    if len(set(key[3:])) < 16:
        raise InvalidRequest(f"the supplied {role.name.lower()} key is not random enough")
    return key
