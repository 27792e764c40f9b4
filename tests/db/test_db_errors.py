"""Database errors of the control-database providers never carry the DSN's password.

psycopg quotes the connection string in some errors (a malformed DSN echoes the part it choked on),
and an error message travels into `pulumi up` output, CI logs and the engine's diagnostics. The
registry, catalog and schema providers all go through one sanitiser (components.providers.base).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pulumi.dynamic import Config as DynamicConfig
from pulumi.dynamic import ConfigureRequest

from components.providers.controldb import catalog as cat
from components.providers.controldb import schema
from components.providers.controldb.registry import TownRecordsProvider, TownRegistrationProvider
from tests.fixtures.postgres import PostgresServer

PASSWORD = "Sup3rSecretPw"
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
# Connection strings psycopg cannot parse; its message quotes the text around the problem.
MALFORMED = [
    f"host=127.0.0.1 user=silo password=Sup3r {PASSWORD[5:]} dbname=registry",
    f"postgresql://silo:{PASSWORD}@[::1:5432/registry",
    f"postgresql://silo:{PASSWORD}@127.0.0.1:notaport/registry",
]
TOWN = {"user_id": "u1", "town_name": "alpha", "sandbox_id": "gt-alpha", "region": "yul"}
RECORD = {"town_id": "1", "status": "running", "fly_machine_id": "m", "fly_volume_id": "v", "rigs": []}
RECORDS = {"silo_id": "acme-erp", "towns": {"gt-alpha": RECORD}}
IMAGES = [{"service": "pg", "repository": "supabase/postgres", "tag": "15.8.1.085", "digest": None,
           "status": "active", "default": True, "notes": None}]  # fmt: skip


def configured(provider: Any, dsn: str) -> Any:
    provider.configure(ConfigureRequest(DynamicConfig({"silo:registryDsn": dsn}, "silo-infra")))
    return provider


def operations(dsn: str) -> dict[str, Callable[[], Any]]:
    return {
        "registration create": lambda: configured(TownRegistrationProvider(), dsn).create(dict(TOWN)),
        "registration read": lambda: configured(TownRegistrationProvider(), dsn).read("1", dict(TOWN)),
        "registration delete": lambda: configured(TownRegistrationProvider(), dsn).delete("1", dict(TOWN)),
        "records create": lambda: configured(TownRecordsProvider(), dsn).create(RECORDS),
        "catalog create": lambda: configured(cat.CatalogSyncProvider(), dsn).create({"images": IMAGES}),
        "catalog read": lambda: configured(cat.CatalogSyncProvider(), dsn).read("image-catalog", {"tags": ["x"]}),
        "schema read": lambda: schema.PostgresSchemaProvider().read("schema:x", {"dsn": dsn, "folder": "."}),
    }


def failure_text(call: Callable[[], Any]) -> str:
    """Everything a user could see of the failure: the message and the traceback with its chain."""
    with pytest.raises(Exception) as caught:
        call()
    return "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize("dsn", MALFORMED)
def test_a_malformed_dsn_never_reaches_an_error_message(dsn: str) -> None:
    for name, call in operations(dsn).items():
        text = failure_text(call)
        assert PASSWORD not in text and PASSWORD[5:] not in text, name
        assert "silo:registryDsn" in text, name


@pytest.mark.db
def test_server_errors_are_reported_with_the_password_masked(postgres_server: PostgresServer) -> None:
    # A well-formed DSN to a database that does not exist: the server's answer stays readable.
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{postgres_server.port}/no_such_db?connect_timeout=10"
    for name, call in operations(dsn).items():
        text = failure_text(call)
        assert PASSWORD not in text, name
        assert 'database "no_such_db" does not exist' in text, name


def test_the_sanitiser_masks_the_password_wherever_psycopg_quotes_it() -> None:
    from components.providers.controldb.dsn import sanitized_db_error

    dsn = f"host=db user=silo password={PASSWORD} application_name=x"
    error = RuntimeError(f"connection to db failed (password={PASSWORD}, dsn was '{dsn}')")
    assert PASSWORD not in sanitized_db_error(error, dsn)
    url = "postgresql://silo:p%40ss%2Fword@db/registry"
    assert "p%40ss%2Fword" not in sanitized_db_error(RuntimeError(f"bad {url}"), url)
    assert "p@ss/word" not in sanitized_db_error(RuntimeError("password p@ss/word rejected"), url)
