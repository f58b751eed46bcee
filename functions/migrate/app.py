"""Apply the bundled SQL migrations (invoked by the operator after each deploy)."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.adapters.postgres.connection import shared_connection
from billing.adapters.postgres.migrate import apply_migrations
from billing.api.observability import logger


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, list[str]]:
    applied = apply_migrations(shared_connection())
    logger.info("migrations applied", extra={"applied": applied})
    return {"applied": applied}
