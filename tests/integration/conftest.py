"""Fixtures shared by the integration tests."""

from collections.abc import Iterator

import pytest

from local.chain.devchain import DevChain
from tests.integration.checkout_support import checkout_kit
from tests.integration.cost_export_support import s3

__all__ = ["chain", "checkout_kit", "module_chain", "s3"]


@pytest.fixture(scope="module")
def module_chain() -> DevChain:
    """One dev chain per test module (deploying contracts takes about a second)."""
    chain = DevChain()
    chain.deploy_tokens()
    return chain


@pytest.fixture
def chain(module_chain: DevChain) -> Iterator[DevChain]:
    """The module's chain, back to its freshly deployed state after each test."""
    snapshot = module_chain.snapshot()
    yield module_chain
    module_chain.revert(snapshot)
