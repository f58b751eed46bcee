"""One OpenAPI 3.1 document from every HTTP function's Powertools resolver.

``python -m local.openapi_export`` writes it to ``billing/api/openapi.json`` (the
file ``GET /openapi.json`` serves); ``--check`` exits 1 with a diff when the
committed file is not what the code generates (CI's drift gate).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

import billing
from billing.api.openapi import OPENAPI_DOCUMENT_PATH
from local.handlers import load_module
from local.template import DEFAULT_TEMPLATE_PATH, load_template

TITLE = "OfficeX vendor billing"
SECURITY_SCHEME = "bearerAuth"
_MAX_DIFF_LINES = 60


class OpenApiMergeError(ValueError):
    """Two functions describe the same thing differently."""


def _function_documents(template_path: Path) -> dict[str, dict[str, Any]]:
    """Each HTTP function's own OpenAPI document, by logical id."""
    documents = {}
    for function in load_template(template_path).functions:
        if not function.routes:
            continue
        app = getattr(load_module(function), "app", None)
        if not isinstance(app, APIGatewayHttpResolver):
            raise OpenApiMergeError(
                f"{function.logical_id}: its module has no APIGatewayHttpResolver named app"
            )
        schema = app.get_openapi_schema(
            title=TITLE,
            version=billing.__version__,
            security_schemes={
                SECURITY_SCHEME: HTTPBearer(description="Customer (ck_…) or vendor (vk_…) key")
            },
        )
        documents[function.logical_id] = schema.model_dump(by_alias=True, exclude_none=True, mode="json")
    return documents


def merge_documents(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Union of paths and components; anything defined twice must be defined identically."""
    merged: dict[str, Any] = {"paths": {}, "components": {}}
    owners: dict[tuple[str, ...], str] = {}

    def put(location: tuple[str, ...], value: Any, owner: str) -> None:
        *parents, name = location
        target = merged
        for parent in parents:
            target = target.setdefault(parent, {})
        if name in target and target[name] != value:
            where = "/".join(location)
            raise OpenApiMergeError(f"{where} differs between {owners[location]} and {owner}")
        target[name] = value
        owners.setdefault(location, owner)

    operation_ids: dict[str, str] = {}
    for owner, document in sorted(documents.items()):
        for key, value in document.items():
            if key not in ("paths", "components"):
                put((key,), value, owner)
        for path, item in document.get("paths", {}).items():
            for method, operation in item.items():
                location = ("paths", path, method)
                if location in owners:
                    raise OpenApiMergeError(
                        f"{method.upper()} {path} is declared by {owners[location]} and {owner}"
                    )
                put(location, operation, owner)
                operation_id = operation.get("operationId")
                if operation_id in operation_ids:
                    raise OpenApiMergeError(
                        f"operationId {operation_id} is used by {operation_ids[operation_id]} and {owner}"
                    )
                if operation_id:
                    operation_ids[operation_id] = owner
        for section, entries in document.get("components", {}).items():
            for name, value in entries.items():
                put(("components", section, name), value, owner)
    return merged


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build_document(template_path: Path = DEFAULT_TEMPLATE_PATH) -> str:
    return render(merge_documents(_function_documents(template_path)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.openapi_export", description="Export the OpenAPI document."
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed document is stale")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE_PATH)
    arguments = parser.parse_args(argv)
    path = OPENAPI_DOCUMENT_PATH
    generated = build_document(arguments.template)
    current = path.read_text() if path.exists() else ""
    if arguments.check:
        if current == generated:
            return 0
        diff = list(
            difflib.unified_diff(current.splitlines(True), generated.splitlines(True), str(path), "generated")
        )
        sys.stdout.writelines(diff[:_MAX_DIFF_LINES])
        if len(diff) > _MAX_DIFF_LINES:
            print(f"... {len(diff) - _MAX_DIFF_LINES} more diff lines")
        print(f"{path} is stale: run python -m local.openapi_export", file=sys.stderr)
        return 1
    path.write_text(generated)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
