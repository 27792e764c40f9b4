"""What every dynamic provider here needs to honour the engine's contract (pulumi-python.md §1-2).

- Numbers cross the gRPC boundary as doubles (3 → 3.0) and None-valued keys are dropped: compare
  canonical forms, or every preview shows a change.
- During preview, values computed by other resources arrive as ``Unknown``: an unknown new value may
  differ, so it counts as a change.
- ``diff`` must ignore ``__provider`` (the pickled provider changes with any code or SDK upgrade).
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, unquote

import psycopg
import pulumi
from psycopg import conninfo
from pulumi.dynamic import ConfigureRequest, DiffResult, ResourceProvider
from pulumi.output import Unknown

PROVIDER_KEY = "__provider"


def canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str | Unknown):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def has_unknown(value: Any) -> bool:
    if isinstance(value, Unknown):
        return True
    if isinstance(value, Mapping):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_unknown(v) for v in value)
    return False


def changed_keys(olds: Mapping[str, Any], news: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """Keys whose value differs (an unknown new value counts as a change: it may differ)."""
    return [k for k in keys if has_unknown(news.get(k)) or canonical(olds.get(k)) != canonical(news.get(k))]


def diff_result(
    olds: Mapping[str, Any],
    news: Mapping[str, Any],
    *,
    compare: Iterable[str],
    replace_on: Iterable[str],
    delete_before_replace: bool = True,
) -> DiffResult:
    """An explicit diff over `compare` (never `__provider`); `replace_on` keys that changed replace."""
    changes = changed_keys(olds, news, list(compare))
    replaces = [k for k in replace_on if k in changes]
    return DiffResult(
        changes=bool(changes), replaces=replaces, delete_before_replace=delete_before_replace if replaces else None
    )


def strip_provider(props: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if k != PROVIDER_KEY}


def pick(props: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: props[k] for k in keys if k in props}


# The control database (registry, catalog, migrations): its DSN is a stack secret read in configure(),
# with the environment as the fallback, never a plain resource input.
CONTROL_DSN_CONFIG_KEY = "silo:registryDsn"
CONTROL_DSN_ENV = "SILO_REGISTRY_DSN"
_DSN_SOURCES = f"{CONTROL_DSN_CONFIG_KEY} (secret) or {CONTROL_DSN_ENV}"


class ControlDbError(RuntimeError):
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


class DynamicResource(pulumi.dynamic.Resource):
    """The base of every dynamic resource here.

    pulumi 3.272's `serialize_provider` patches `pickle._Pickler._batch_setitems` with a sorting
    wrapper and never puts the original back, so each dynamic resource a process constructs adds one
    more wrapper layer around the last: after a few hundred resources (a silo with ~50 towns in one
    `up`) pickling a provider raises RecursionError. The SDK restores it itself from 3.274
    (sdk/python/lib/pulumi/dynamic/dynamic.py); PyPI here stops at 3.272, so restore it around each
    construction: every serialization then wraps the same original method once.
    """

    def __init__(
        self,
        provider: ResourceProvider,
        name: str,
        props: Mapping[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        saved = pickle._Pickler.__dict__["_batch_setitems"]
        try:
            super().__init__(provider, name, dict(props), opts)
        finally:
            pickle._Pickler._batch_setitems = saved
