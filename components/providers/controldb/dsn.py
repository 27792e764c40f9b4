"""The control database (registry, catalog, migrations): where its connection string comes from, and
errors that never show its password.

Its DSN is a stack secret read in a provider's ``configure()``, with the environment as the fallback,
never a plain resource input.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, unquote

import psycopg
from psycopg import conninfo
from pulumi.dynamic import ConfigureRequest, ResourceProvider

from components.errors import UserError

CONTROL_DSN_CONFIG_KEY = "silo:registryDsn"
CONTROL_DSN_ENV = "SILO_REGISTRY_DSN"
_DSN_SOURCES = f"{CONTROL_DSN_CONFIG_KEY} (secret) or {CONTROL_DSN_ENV}"


class ControlDbError(UserError, RuntimeError):
    """A control-database failure whose message has been through ``sanitized_db_error``."""


def dsn_problem(dsn: Any) -> str | None:
    """Why ``dsn`` is not a usable connection string, without ever quoting it; None when it parses."""
    if not isinstance(dsn, str) or not dsn.strip():
        return f"a PostgreSQL connection string is required ({_DSN_SOURCES})"
    try:
        conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        # The parser's message quotes the text around the problem, which can be the password.
        return (
            f"the connection string in {_DSN_SOURCES} is not valid "
            "(key=value pairs or a postgresql:// URL); it is not shown because it holds the password"
        )
    return None


def sanitized_db_error(exc: BaseException, dsn: str) -> str:
    """``exc``'s message with the DSN's password masked (psycopg errors can quote the connection string).

    An unparseable DSN gives no password to look for, so its error is replaced as a whole.
    """
    problem = dsn_problem(dsn)
    if problem:
        return problem
    password = conninfo.conninfo_to_dict(dsn).get("password")
    text = str(exc)
    if password:
        # Both spellings: the decoded value and the percent-encoded one of a postgresql:// URL.
        for form in {str(password), quote(str(password), safe=""), unquote(str(password))}:
            text = text.replace(form, "***")
    return text


class ControlDbProvider(ResourceProvider):
    """Base of the providers that write to the control database."""

    def __init__(self) -> None:
        self._dsn: str | None = None

    def configure(self, req: ConfigureRequest) -> None:
        self._dsn = req.config.get(CONTROL_DSN_CONFIG_KEY)

    def control_dsn(self, props: Mapping[str, Any] | None = None) -> str | None:
        """An explicit `dsn` input first (secret), then stack config, then the environment."""
        return (props or {}).get("dsn") or getattr(self, "_dsn", None) or os.environ.get(CONTROL_DSN_ENV)

    @staticmethod
    @contextlib.contextmanager
    def database_errors(dsn: str, what: str = f"control database ({CONTROL_DSN_CONFIG_KEY})") -> Iterator[None]:
        """Turn every psycopg error of the block into a ControlDbError with the password masked.

        ``from None``: the original exception would otherwise be printed as the cause in tracebacks,
        unmasked.
        """
        try:
            yield
        except psycopg.Error as exc:
            raise ControlDbError(f"{what}: {sanitized_db_error(exc, dsn)}") from None
