"""``vendorctl``: the vendor's catalog as YAML or JSON files, validated by the API's own models.

    vendorctl catalog validate FILE
    vendorctl catalog import FILE [--prune] [--dry-run]
    vendorctl catalog export [FILE] [--format yaml|json]
    vendorctl offers list
    vendorctl cost-export replay|deliveries …   (see vendorctl/cost_export.py)
    vendorctl estimates unsettled …              (see vendorctl/estimates.py)

The database is ``--database-url`` or ``DATABASE_URL``. Exit codes: 0 done,
1 the database refused, 2 the file or the command is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import psycopg
import yaml
from pydantic import ValidationError

from billing.adapters.postgres.transactions import PostgresTransactions
from billing.domain.catalog import Catalog, CatalogChanges
from billing.domain.money import format_usd
from billing.services.catalog import CatalogImporter
from vendorctl.cost_export import (
    EXIT_DATABASE,
    EXIT_INVALID,
    EXIT_OK,
    add_cost_export_parser,
    run_cost_export,
)
from vendorctl.estimates import add_estimates_parser, run_estimates


class CatalogFileError(Exception):
    """The catalog file cannot be read or does not validate; the message names where."""


def _location(parts: Sequence[int | str]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(file)"


def describe_validation_error(error: ValidationError) -> str:
    lines = []
    for issue in error.errors():
        message = issue["msg"].removeprefix("Value error, ")
        lines.append(f"  {_location(issue['loc'])}: {message}")
    return "\n".join(lines)


def read_catalog_file(path: Path) -> Catalog:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogFileError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        document: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise CatalogFileError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from exc
    try:
        return Catalog.model_validate(document if document is not None else {})
    except ValidationError as exc:
        raise CatalogFileError(f"{path}: invalid catalog\n{describe_validation_error(exc)}") from exc


def render_catalog(catalog: Catalog, file_format: str) -> str:
    document = catalog.model_dump(mode="json")
    if file_format == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def _summary(changes: CatalogChanges) -> str:
    if changes.nothing:
        return "no changes"
    return "\n".join(
        f"  {label}: {', '.join(values)}" for label, values in changes.model_dump().items() if values
    )


def _importer(database_url: str) -> tuple[psycopg.Connection[Any], CatalogImporter]:
    connection = psycopg.connect(database_url, autocommit=True)
    return connection, CatalogImporter(PostgresTransactions(lambda: connection))


def _run(arguments: argparse.Namespace, out: TextIO) -> int:
    if arguments.area == "catalog" and arguments.action == "validate":
        catalog = read_catalog_file(arguments.file)
        print(f"{arguments.file}: valid ({len(catalog.offers)} offers, {len(catalog.lists)} lists)", file=out)
        return EXIT_OK
    if not arguments.database_url:
        raise CatalogFileError("set DATABASE_URL or give --database-url")
    if arguments.area == "catalog" and arguments.action == "import":
        catalog = read_catalog_file(arguments.file)
        connection, importer = _importer(arguments.database_url)
        with connection:
            changes = importer.import_catalog(catalog, prune=arguments.prune, dry_run=arguments.dry_run)
        verb = "would change" if arguments.dry_run else "changed"
        print(f"{arguments.file}: {verb}:\n{_summary(changes)}", file=out)
        return EXIT_OK
    connection, importer = _importer(arguments.database_url)
    with connection:
        catalog = importer.export()
    if arguments.area == "catalog":
        text = render_catalog(catalog, arguments.format)
        if arguments.file:
            arguments.file.write_text(text, encoding="utf-8")
            print(f"wrote {arguments.file}", file=out)
        else:
            out.write(text)
        return EXIT_OK
    for offer in catalog.offers:
        state = "active" if offer.active else "inactive"
        minimum = format_usd(offer.min_deposit)
        print(f"{offer.id:<24} {offer.kind.value:<16} {minimum:>18}  {state:<8} {offer.title}", file=out)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="vendorctl", description="Operate the OfficeX vendor billing server.")
    root.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    areas = root.add_subparsers(dest="area", required=True)
    catalog = areas.add_parser("catalog", help="catalog files: validate, import, export")
    actions = catalog.add_subparsers(dest="action", required=True)
    validate = actions.add_parser("validate", help="check a file without touching the database")
    validate.add_argument("file", type=Path)
    importing = actions.add_parser("import", help="create or update offers and lists from a file")
    importing.add_argument("file", type=Path)
    importing.add_argument(
        "--prune", action="store_true", help="deactivate offers and remove lists not in the file"
    )
    importing.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    exporting = actions.add_parser("export", help="write the catalog as a file (stdout without FILE)")
    exporting.add_argument("file", type=Path, nargs="?")
    exporting.add_argument("--format", choices=("yaml", "json"), default=None)
    offers = areas.add_parser("offers", help="offers at a glance")
    offers.add_subparsers(dest="action", required=True).add_parser("list", help="one line per offer")
    add_cost_export_parser(areas)
    add_estimates_parser(areas)
    return root


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    arguments = parser().parse_args(argv)
    if arguments.area == "catalog" and arguments.action == "export" and arguments.format is None:
        arguments.format = "json" if arguments.file and arguments.file.suffix == ".json" else "yaml"
    try:
        if arguments.area == "cost-export":
            return run_cost_export(arguments, out, err)
        if arguments.area == "estimates":
            return run_estimates(arguments, out)
        return _run(arguments, out)
    except CatalogFileError as exc:
        print(f"vendorctl: {exc}", file=err)
        return EXIT_INVALID
    except psycopg.Error as exc:
        print(f"vendorctl: the database refused: {exc}", file=err)
        return EXIT_DATABASE
