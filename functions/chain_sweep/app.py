"""Scheduled chain sweep: move one chain's deposits to the offramp. Not reachable from the internet.

The only function that reads the HD seed and the treasury key (Secrets Manager,
cached a few minutes so a rotation is picked up without a cold start). Neither
is ever logged: the event holds only a chain slug, and errors name no secret.
"""

import os
from collections.abc import Mapping
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from billing.adapters.chain.readers import EnvChainReaders
from billing.adapters.postgres.sweep_store import PostgresSweepTransactions
from billing.adapters.postgres.transactions import PostgresTransactions
from billing.api.jobs import scheduled_job
from billing.api.observability import logger
from billing.domain.chains import chain_registry
from billing.domain.errors import DependencyUnavailable
from billing.services.sweeper import ChainSenders, Sweeper

_ARN = r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$"

readers = EnvChainReaders()


class ChainSweepInput(BaseModel):
    """The schedule's input: which chain to sweep."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chain: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")


class ChainSweepSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hd_seed_secret_arn: str = Field(pattern=_ARN)
    treasury_key_secret_arn: str = Field(pattern=_ARN)
    offramp_address: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "ChainSweepSettings":
        try:
            return cls(
                hd_seed_secret_arn=environ.get("HD_SEED_SECRET_ARN", ""),
                treasury_key_secret_arn=environ.get("TREASURY_KEY_SECRET_ARN", ""),
                offramp_address=environ.get("OFFRAMP_ADDRESS", ""),
            )
        except ValidationError as error:
            names = ", ".join(str(item["loc"][0]).upper() for item in error.errors())
            raise DependencyUnavailable(f"the chain sweeper is not configured ({names})") from None


@cache
def _senders() -> ChainSenders:
    from billing.adapters.chain.evm_sender import EnvChainSenders  # noqa: PLC0415 - web3 is ~1 s to import

    return EnvChainSenders()


def _secret_field(secret_arn: str, name: str) -> Any:
    from billing.adapters.aws.secrets import read_json_secret  # noqa: PLC0415 - boto3 loads only when used

    try:
        return read_json_secret(secret_arn)[name]
    except KeyError:
        raise DependencyUnavailable(f"a sweeper secret has no {name!r} field") from None
    except Exception as error:  # Secrets Manager / transform failures: the message names no secret value
        raise DependencyUnavailable(f"a sweeper secret could not be read ({type(error).__name__})") from None


def build_sweeper(environ: Mapping[str, str]) -> Sweeper:
    """The sweeper with keys read now (Powertools caches the secrets for a few minutes)."""
    from billing.adapters.chain.evm_sender import private_key_from_hex  # noqa: PLC0415 - web3
    from billing.adapters.chain.hd import SeedDepositKeys  # noqa: PLC0415 - bip_utils, sweeper only

    settings = ChainSweepSettings.from_environ(environ)
    keys = SeedDepositKeys(str(_secret_field(settings.hd_seed_secret_arn, "mnemonic")))
    treasury_key = private_key_from_hex(_secret_field(settings.treasury_key_secret_arn, "private_key"))
    return Sweeper(
        PostgresSweepTransactions(PostgresTransactions()),
        readers=readers,
        senders=_senders(),
        keys=keys,
        treasury_key=treasury_key,
        offramp_address=settings.offramp_address,
        registry=chain_registry,
    )


@scheduled_job("chain sweep", unavailable_metric="chain_sweep_unavailable")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    """Not configured, or the RPC / database / Secrets Manager down: nothing was sent."""
    sweep = ChainSweepInput.model_validate(event)
    logger.append_keys(chain=sweep.chain)  # on every line of this run
    return build_sweeper(os.environ).sweep_chain(sweep.chain).as_metrics()
