"""The local runner, serving the real handlers over HTTP on a seeded test database."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from local.runner import LocalServer
from local.seed import DemoSeed, seed_demo
from local.template import DEFAULT_TEMPLATE_PATH
from tests.conftest import DATA_TABLES


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Local:
    server: LocalServer
    seed: DemoSeed
    log: io.StringIO

    def request(self, method: str, path: str, *, key: str | None = None, body: bytes | None = None) -> Answer:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.server.base_url + path, data=body, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Answer(response.status, dict(response.headers.items()), response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, dict(error.headers.items()), error.read())

    def real_key(self, placeholder: str | None) -> str | None:
        return {"ck_demo": self.seed.customer_key, "vk_demo": self.seed.vendor_key}.get(
            placeholder or "", placeholder
        )


@pytest.fixture(scope="module")
def local(database_url: str) -> Iterator[Local]:
    log = io.StringIO()
    with psycopg.connect(database_url, autocommit=True) as connection:
        try:
            with LocalServer(DEFAULT_TEMPLATE_PATH, database_url, log=log) as server:
                # Seeded once the server runs: its dev chain is then in the registry.
                yield Local(server, seed_demo(connection), log)
        finally:
            connection.execute(f"TRUNCATE {DATA_TABLES} RESTART IDENTITY CASCADE")
