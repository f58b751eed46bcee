"""Find a Postgres to use, or start a throwaway cluster (initdb + pg_ctl), Docker-free.

Order: ``DATABASE_URL`` as given; else a server on 127.0.0.1:5432 (trust auth,
user postgres); else a cluster in a temporary folder, run as the ``postgres``
user when we are root (initdb refuses root), stopped and removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise FileNotFoundError(f"{name} not found: install PostgreSQL (e.g. apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _as_postgres_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """A fresh cluster on a free port; yields its admin URL; removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="billing-pg-"))
    data_dir, socket_dir = workdir / "data", workdir / "sock"
    prefix = _as_postgres_user()
    pg_ctl = _tool("pg_ctl")
    try:
        socket_dir.mkdir()
        if prefix:
            account = pwd.getpwnam("postgres")
            for path in (workdir, socket_dir):
                os.chown(path, account.pw_uid, account.pw_gid)
        port = _free_port()
        initdb = [_tool("initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        subprocess.run([*prefix, *initdb], check=True, capture_output=True)
        options = (
            f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        start = [pg_ctl, "-D", str(data_dir), "-o", options, "-l", str(workdir / "log"), "-w", "start"]
        subprocess.run([*prefix, *start], check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data_dir / "postmaster.pid").exists():
            stop = [pg_ctl, "-D", str(data_dir), "-m", "fast", "-w", "stop"]
            subprocess.run([*prefix, *stop], check=False, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def admin_database_url() -> Iterator[str]:
    """An admin URL of a running server: configured, local, or a throwaway one."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
    elif _answers(DEFAULT_LOCAL_URL):
        yield DEFAULT_LOCAL_URL
    else:
        with throwaway_cluster() as url:
            yield url


@contextlib.contextmanager
def scratch_database(admin_url: str, prefix: str = "billing") -> Iterator[str]:
    """A new empty database on the server of ``admin_url``, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = conninfo_to_dict(admin_url)
    parts["dbname"] = name
    try:
        yield make_conninfo(**{key: str(value) for key, value in parts.items() if value is not None})
    finally:
        deadline = time.monotonic() + 10
        with psycopg.connect(admin_url, autocommit=True) as admin:
            while True:
                try:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    break
                except psycopg.errors.ObjectInUse:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
