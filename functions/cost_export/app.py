"""S3 ObjectCreated on a cost-export manifest; billing from it lands with the cost-export issue."""

from typing import Any

from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.api.observability import logger


@logger.inject_lambda_context(clear_state=True)
@event_source(data_class=S3Event)
def lambda_handler(event: S3Event, context: LambdaContext) -> dict[str, Any]:
    keys = [record.s3.get_object.key for record in event.records]
    logger.warning("cost export parsing is not built yet; delivery left unbilled", extra={"keys": keys})
    return {"status": "not_built", "manifests": keys}
