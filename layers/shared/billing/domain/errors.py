"""Typed errors raised by domain and service code.

They carry no HTTP knowledge: ``billing.api.problems`` maps each class to a
status code in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class BillingError(Exception):
    """Base of every error a client may cause; ``detail`` is safe to show."""

    title = "Request failed"

    def __init__(self, detail: str, *, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = dict(extra or {})


class InvalidAmount(BillingError):
    title = "Invalid amount"


class InvalidRequest(BillingError):
    title = "Invalid request"


class NotFound(BillingError):
    title = "Not found"


class Unauthorized(BillingError):
    title = "Unauthorized"


#: The one answer to a malformed purchase id, an unknown purchase and a wrong key alike.
SAME_FOR_EVERY_AUTH_FAILURE = "invalid purchase id or API key"


class InsufficientFunds(BillingError):
    title = "Insufficient funds"


class IdempotencyConflict(BillingError):
    """The idempotency key was already used for a different request."""

    title = "Idempotency key reused"


class StateConflict(BillingError):
    """The resource is not in a state that allows the operation."""

    title = "Conflict"


class PayloadTooLarge(BillingError):
    title = "Payload too large"


class NotImplementedYet(BillingError):
    """A route that exists in the contract but is not built yet."""

    title = "Not implemented"


class DependencyUnavailable(Exception):
    """A database, chain or cloud dependency failed; nothing was written."""

    title = "Service unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class CiphertextMismatch(ValueError):
    """A stored ciphertext does not decrypt under its key and context: it was moved or damaged.

    No client can cause this, so it is a 500, and retrying will not help.
    """
