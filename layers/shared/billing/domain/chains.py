"""The chain registry: which (chain, token) pairs exist, their pinned contracts and decimals.

Data, not code: ``billing/data/chains.json``. Decimals come from here, never
from the token symbol or from the chain itself (DESIGN §2).
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from billing.domain.errors import InvalidRequest

_ADDRESS = r"^0x[0-9a-fA-F]{40}$"


class TokenContract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str = Field(pattern=_ADDRESS)
    decimals: int = Field(ge=0, le=36)


class Chain(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    name: str
    chain_id: int = Field(gt=0)
    testnet: bool
    confirmations: int = Field(ge=1, le=1_000)
    tokens: dict[str, TokenContract]
    #: An in-process or local development chain: refused unless the operator allows dev chains.
    dev: bool = False


class ChainRegistry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    chains: list[Chain]

    @model_validator(mode="after")
    def _unique(self) -> ChainRegistry:
        slugs = [chain.slug for chain in self.chains]
        ids = [chain.chain_id for chain in self.chains]
        if len(set(slugs)) != len(slugs) or len(set(ids)) != len(ids):
            raise ValueError("chain slugs and chain ids must be unique")
        return self

    def chain(self, slug: str) -> Chain:
        for chain in self.chains:
            if chain.slug == slug:
                return chain
        known = ", ".join(chain.slug for chain in self.chains)
        raise InvalidRequest(f"unknown chain {slug!r}; known chains: {known}")

    def token(self, slug: str, symbol: str) -> TokenContract:
        chain = self.chain(slug)
        if symbol not in chain.tokens:
            raise InvalidRequest(
                f"token {symbol!r} is not accepted on {slug}; tokens: {', '.join(chain.tokens)}"
            )
        return chain.tokens[symbol]


@cache
def chain_registry() -> ChainRegistry:
    """The pinned registry, plus dev chains from ``EXTRA_CHAINS_FILE`` (local runner and tests only)."""
    document = json.loads((resources.files("billing") / "data" / "chains.json").read_text())
    chains = list(document["chains"])
    extra_file = os.environ.get("EXTRA_CHAINS_FILE")
    if extra_file:
        extra = json.loads(Path(extra_file).read_text())["chains"]
        if not all(chain.get("dev") is True for chain in extra):
            raise ValueError(f'{extra_file}: only chains marked "dev": true may be added at run time')
        chains.extend(extra)
    return ChainRegistry.model_validate({"chains": chains})
