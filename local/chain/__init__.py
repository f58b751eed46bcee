"""The in-process dev chain (``local.chain.devchain``) and the one the local runner is serving.

This module stays cheap to import: web3 and eth-tester load with ``devchain``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from local.chain.devchain import DevChain

#: Hardhat's well-known public test mnemonic: the local runner's and tests' deposit keys.
#: TEST-ONLY: anyone can derive its keys, so it must never hold real funds or be configured in AWS.
TEST_MNEMONIC = "test test test test test test test test test test test junk"

_current: DevChain | None = None


def current_devchain() -> DevChain:
    """The dev chain of the running local server, for handlers running in-process."""
    if _current is None:
        raise RuntimeError("no dev chain is running: start it with local.runner (or serving_devchain)")
    return _current


@contextlib.contextmanager
def serving_devchain(devchain: DevChain) -> Iterator[DevChain]:
    """Make ``devchain`` the current one for the duration of the block."""
    global _current  # noqa: PLW0603 - one dev chain per process, like one Lambda container's RPC
    previous, _current = _current, devchain
    try:
        yield devchain
    finally:
        _current = previous
