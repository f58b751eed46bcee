"""Fixtures shared by the integration tests."""

from tests.integration.checkout_support import checkout_kit

__all__ = ["checkout_kit"]
