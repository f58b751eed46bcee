"""GET /appstore/suggest — app store suggestions (501 until its issue lands)."""

from billing.api.http import build_app, http_handler, not_built
from billing.api.openapi import problem_responses

app = build_app()


@app.get(
    "/appstore/suggest",
    responses=problem_responses(422, 501),
    operation_id="suggestLists",
)
def suggest_lists() -> None:
    not_built("app store suggestions")


lambda_handler = http_handler(app)
