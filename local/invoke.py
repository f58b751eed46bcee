"""Invoke one function in-process with an event file and print its JSON result.

``python -m local.invoke <folder> <event.json>`` (``make invoke FN=health
EVENT=events/health_get.json``). Postgres is ``DATABASE_URL`` when set, else a
throwaway cluster, migrated, for the duration of the call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from moto import mock_aws

from billing.adapters.postgres.migrate import apply_migrations
from local.handlers import LocalLambdaContext, load_handler
from local.postgres import scratch_database, throwaway_cluster
from local.runner import handler_environment, handler_process_environment
from local.template import DEFAULT_TEMPLATE_PATH, load_template


@contextlib.contextmanager
def _database_url() -> Iterator[str]:
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    with throwaway_cluster() as admin_url, scratch_database(admin_url, prefix="billing_invoke") as url:
        with psycopg.connect(url, autocommit=True) as connection:
            apply_migrations(connection)
        yield url


def invoke(folder: str, event: Any, template_path: Path = DEFAULT_TEMPLATE_PATH) -> Any:
    function = load_template(template_path).function_by_folder(folder)
    with _database_url() as database_url:
        environment = handler_environment(
            [function],
            database_url=database_url,
            public_base_url="http://127.0.0.1:3000",
            environ=os.environ,
        )
        with handler_process_environment(environment), mock_aws():
            return load_handler(function)(event, LocalLambdaContext.for_function(function))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.invoke", description="Invoke one function locally."
    )
    parser.add_argument("folder", help="functions/<folder>, e.g. health")
    parser.add_argument("event", type=Path, help="event JSON file, e.g. events/health_get.json")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE_PATH)
    arguments = parser.parse_args(argv)
    event = json.loads(arguments.event.read_text())
    # Handler logs go to stderr so that stdout is only the result (pipe it to jq).
    with contextlib.redirect_stdout(sys.stderr):
        result = invoke(arguments.folder, event, arguments.template)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
