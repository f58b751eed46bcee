"""GET /appstore/list/{list_id} — app store lists (501 until its issue lands)."""

from billing.api.http import build_app, http_handler, not_built
from billing.api.openapi import problem_responses

app = build_app()


@app.get(
    "/appstore/list/<list_id>",
    responses=problem_responses(404, 501),
    operation_id="getAppstoreList",
)
def get_appstore_list(list_id: str) -> None:
    not_built("app store lists")


lambda_handler = http_handler(app)
