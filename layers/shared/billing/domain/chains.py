"""The chain registry: which (chain, token) pairs exist, their pinned contracts and decimals.

Data, not code: ``billing/data/chains.json``. Decimals come from here, never
from the token symbol or from the chain itself (DESIGN §2).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field

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


class ChainRegistry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    chains: list[Chain]

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
    text = (resources.files("billing") / "data" / "chains.json").read_text()
    document = json.loads(text)
    document.pop("_comment", None)
    return ChainRegistry.model_validate(document)
