"""Liveness: the function runs and its database answers."""

from __future__ import annotations

from collections.abc import Callable

from billing import __version__
from billing.domain.errors import DependencyUnavailable


def check_health(database_answers: Callable[[], bool]) -> dict[str, str]:
    if not database_answers():
        raise DependencyUnavailable("the database does not answer")
    return {"status": "ok", "database": "ok", "version": __version__}
