"""Which RPC endpoints serve which chain: ``RPC_URLS_<SLUG>`` settings, or an in-process chain.

web3 is imported only when a reader is first needed, so routes without chain
access never pay for it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

from billing.domain.chains import Chain
from billing.domain.errors import DependencyUnavailable
from billing.services.ports import ChainReader

_IN_PROCESS: dict[int, ChainReader] = {}


@contextlib.contextmanager
def in_process_chain(chain_id: int, reader: ChainReader) -> Iterator[None]:
    """Serve ``chain_id`` from an in-process chain while the block runs (tests)."""
    _IN_PROCESS[chain_id] = reader
    try:
        yield
    finally:
        _IN_PROCESS.pop(chain_id, None)


def rpc_urls_setting(chain: Chain) -> str:
    return "RPC_URLS_" + chain.slug.upper().replace("-", "_")


class EnvChainReaders:
    """One reader per chain and endpoint list, built on first use and reused by the warm container."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self._environ = environ
        self._readers: dict[tuple[int, tuple[str, ...]], ChainReader] = {}

    def reader_for(self, chain: Chain) -> ChainReader:
        if chain.chain_id in _IN_PROCESS:
            return _IN_PROCESS[chain.chain_id]
        setting = self._environ.get(rpc_urls_setting(chain), "")
        urls = tuple(url.strip() for url in setting.split(",") if url.strip())
        if not urls:
            raise DependencyUnavailable(f"no RPC endpoint is configured for {chain.name}")
        if (chain.chain_id, urls) not in self._readers:
            from billing.adapters.chain.evm_reader import EvmChainReader  # noqa: PLC0415 - web3 is ~1 s to import

            reader = EvmChainReader.from_urls(chain.chain_id, urls, chain_name=chain.name)
            self._readers[(chain.chain_id, urls)] = reader
        return self._readers[(chain.chain_id, urls)]
