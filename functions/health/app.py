"""GET /health — the function runs and Postgres answers."""

from billing.adapters.postgres.connection import database_answers
from billing.api.http import build_app, http_handler
from billing.api.models import HealthResponse
from billing.api.openapi import problem_responses
from billing.services.health import check_health

app = build_app()


@app.get(
    "/health",
    responses=problem_responses(503),
    operation_id="getHealth",
)
def get_health() -> HealthResponse:
    return HealthResponse.model_validate(check_health(database_answers))


lambda_handler = http_handler(app)
