"""Image catalog: file validation, resolve rules, DB sync (incl. racing syncs), pins, registry digests."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from components.cli import digests
from components.domain.catalog import Catalog, CatalogError, ImageEntry, load_catalog
from components.providers.controldb import catalog as cat
from components.providers.controldb import schema
from components.providers.controldb.catalog import CatalogConflict

ROOT = Path(__file__).resolve().parents[2]
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
PINNED_TAGS = {
    "pg": ("supabase/postgres", "15.8.1.085"),
    "rest": ("postgrest/postgrest", "v14.5"),
    "auth": ("supabase/gotrue", "v2.186.0"),
    "storage": ("supabase/storage-api", "v1.44.2"),
    "meta": ("supabase/postgres-meta", "v0.95.2"),
    "studio": ("supabase/studio", "2026.02.16-sha-26c615c"),
    "kong": ("kong", "2.8.1"),
}


def make(*entries: dict) -> Catalog:
    return Catalog.model_validate({"images": list(entries)})


def entry(tag: str, digest: str | None = None, status: str = "active", service: str = "town", **extra: object) -> dict:
    return {"service": service, "repository": "example/town", "tag": tag, "digest": digest, "status": status, **extra}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "images.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# -- the repo's catalog -------------------------------------------------------------------------------
def test_repo_catalog_defaults_are_the_pinned_tags() -> None:
    catalog = load_catalog(ROOT / "catalog" / "images.yaml")
    for service, (repository, tag) in PINNED_TAGS.items():
        image = catalog.resolve(service)
        assert (image.repository, image.tag, image.status) == (repository, tag, "active")
        expected_ref = f"{repository}@{image.digest}" if image.digest else f"{repository}:{tag}"
        assert image.ref == expected_ref
    assert catalog.resolve("town").status == "active"
    statuses = {e.status for e in catalog.images}
    assert statuses == {"active", "deprecated", "disabled"}  # examples of each lifecycle stage


def test_repo_catalog_digests_have_sources() -> None:
    catalog = load_catalog(ROOT / "catalog" / "images.yaml")
    for image in catalog.images:
        assert image.source, f"{image.label}: every entry says where its digest came from (or why none)"


# -- loading ------------------------------------------------------------------------------------------
def test_malformed_digest_names_the_entry(tmp_path: Path) -> None:
    path = write(tmp_path, {"images": [entry("v1", D1), entry("v2", "sha256:ABC")]})
    with pytest.raises(CatalogError, match=r"images\.1\.digest \(town example/town:v2\): must be \"sha256:\""):
        load_catalog(path)


def test_duplicate_digest_across_tags_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, {"images": [entry("v1", D1), entry("v2", D1)]})
    with pytest.raises(
        CatalogError,
        match=r"digest sha256:1+ appears twice: entries town example/town:v1 and "
        r"town example/town:v2",
    ):
        load_catalog(path)


def test_duplicate_tag_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, {"images": [entry("v1", D1), entry("v1", D2)]})
    with pytest.raises(CatalogError, match="duplicate tag 'v1'"):
        load_catalog(path)


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"status": "retired"}, "images.0.status"),
        ({"service": "redis"}, "images.0.service"),
        ({"tag": "latest"}, "images.0.tag"),
        ({"colour": "blue"}, "images.0.colour"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, bad: dict, where: str) -> None:
    path = write(tmp_path, {"images": [{**entry("v1"), **bad}]})
    with pytest.raises(CatalogError, match=re.escape(where)):
        load_catalog(path)


def test_default_must_be_single_and_active() -> None:
    with pytest.raises(ValueError, match="two default tags"):
        make(entry("v1", default=True), entry("v2", default=True))
    with pytest.raises(ValueError, match="a default tag must be active"):
        make(entry("v1", status="deprecated", default=True))


def test_unreadable_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the image catalog"):
        load_catalog(tmp_path / "missing.yaml")


# -- resolve ------------------------------------------------------------------------------------------
def test_resolve_rules() -> None:
    catalog = make(
        entry("v3", D3, default=True),
        entry("v2", D2, status="deprecated"),
        entry("v1", D1, status="disabled"),
        entry("v0"),
    )
    current = catalog.resolve("town")
    assert (current.tag, current.ref, current.warnings) == ("v3", f"example/town@{D3}", ())

    old = catalog.resolve("town", "v2")
    assert old.ref == f"example/town@{D2}"
    assert any("deprecated" in w for w in old.warnings)

    with pytest.raises(CatalogError, match=r"silo:images\.town: tag 'v1' is disabled"):
        catalog.resolve("town", "v1")
    with pytest.raises(
        CatalogError,
        match=r"silo:images\.town: tag 'v9' is not in the image catalog "
        r"\(deployable tags: v3, v2, v0\)",
    ):
        catalog.resolve("town", "v9")

    by_tag = catalog.resolve("town", "v0")
    assert by_tag.ref == "example/town:v0"
    assert any("no digest" in w for w in by_tag.warnings)


def test_a_tag_of_another_service_is_unknown() -> None:
    catalog = make(entry("v1", D1, service="pg"))
    with pytest.raises(CatalogError, match="not in the image catalog"):
        catalog.resolve("rest", "v1")


# -- sync into the database ----------------------------------------------------------------------------
@pytest.fixture
def db(pg_database: str) -> str:
    schema.apply(pg_database, ROOT / "migrations")
    return pg_database


def versions(dsn: str) -> dict[str, tuple]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT image_tag, image_digest, status FROM kiloclaw_available_versions").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.mark.db
def test_sync_inserts_then_updates_then_is_a_no_op(db: str) -> None:
    first = make(entry("v1", D1), entry("v2"))
    assert sorted(cat.sync_catalog(db, first).inserted) == ["v1", "v2"]

    second = make(entry("v1", D1, status="deprecated"), entry("v2", D2), entry("v3", D3))
    result = cat.sync_catalog(db, second)
    assert (sorted(result.updated), result.inserted) == (["v1", "v2"], ["v3"])
    assert versions(db) == {"v1": (D1, "deprecated"), "v2": (D2, "active"), "v3": (D3, "active")}

    again = cat.sync_catalog(db, second)
    assert (again.inserted, again.updated, sorted(again.unchanged)) == ([], [], ["v1", "v2", "v3"])


@pytest.mark.db
def test_sync_of_the_repo_catalog(db: str) -> None:
    catalog = load_catalog(ROOT / "catalog" / "images.yaml")
    result = cat.sync_catalog(db, catalog)
    assert len(result.inserted) == len(catalog.images)
    assert versions(db)["15.8.1.085"] == (catalog.resolve("pg").digest, "active")


@pytest.mark.db
def test_digest_owned_by_another_tag_aborts_and_writes_nothing(db: str) -> None:
    cat.sync_catalog(db, make(entry("v1", D1)))
    before = versions(db)
    clash = make(entry("v0", D2), entry("v2", D1))  # v0 is fine, v2 steals v1's digest
    with pytest.raises(
        CatalogConflict,
        match=rf"digest {D1} of tag v2 \(town\) already belongs to tag v1 "
        r"\(town\) in the database.*nothing was written",
    ):
        cat.sync_catalog(db, clash)
    assert versions(db) == before  # v0 was not inserted either


@pytest.mark.db
def test_a_published_tag_keeps_its_digest(db: str) -> None:
    cat.sync_catalog(db, make(entry("v1", D1)))
    with pytest.raises(
        CatalogConflict,
        match=rf"tag v1 \(town\) is recorded with digest {D1} but the catalog "
        rf"says {D2}",
    ):
        cat.sync_catalog(db, make(entry("v1", D2)))


@pytest.mark.db
def test_racing_syncs_never_surface_a_raw_unique_violation(db: str) -> None:
    # Same digest under different tags in two catalogs: exactly one sync may win, the other must
    # fail with CatalogConflict (never psycopg's UniqueViolation), in every round.
    for round_ in range(6):
        digest = f"sha256:{round_:064x}"
        catalogs = [make(entry(f"r{round_}-a", digest)), make(entry(f"r{round_}-b", digest))]
        barrier = threading.Barrier(2)
        outcomes: list[object] = [None, None]

        def run(
            i: int,
            catalogs: list[Catalog] = catalogs,
            barrier: threading.Barrier = barrier,
            outcomes: list[object] = outcomes,
        ) -> None:
            barrier.wait()
            try:
                outcomes[i] = cat.sync_catalog(db, catalogs[i])
            except Exception as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        kinds = sorted(type(o).__name__ for o in outcomes)
        assert kinds == ["CatalogConflict", "SyncResult"], outcomes
        winners = [t for t, (d, _) in versions(db).items() if d == digest]
        assert len(winners) == 1


@pytest.mark.db
def test_identical_concurrent_syncs_both_succeed(db: str) -> None:
    catalog = make(*(entry(f"v{i}", f"sha256:{i:064x}") for i in range(20)))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            cat.sync_catalog(db, catalog)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(versions(db)) == 20


# -- registry digests (fake registry on 127.0.0.1) ----------------------------------------------------
class FakeRegistry:
    """Docker Hub's flow: 401 + Bearer challenge, anonymous token, HEAD manifest → digest header."""

    def __init__(self, digests: dict[str, str]):
        self.digests = digests
        self.token_requests: list[dict[str, str]] = []
        self.url = ""

    def __call__(self, environ, start_response):  # WSGI
        request = Request(environ)
        if request.path == "/token":
            self.token_requests.append(dict(request.args))
            return Response('{"token": "t0k3n"}', content_type="application/json")(environ, start_response)
        match = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", request.path)
        if not match:
            return Response(status=404)(environ, start_response)
        if request.headers.get("Authorization") != "Bearer t0k3n":
            challenge = f'Bearer realm="{self.url}/token",service="fake.registry",scope="repository:{match[1]}:pull"'
            return Response(status=401, headers={"WWW-Authenticate": challenge})(environ, start_response)
        digest = self.digests.get(f"{match[1]}:{match[2]}")
        if digest is None:
            return Response(status=404)(environ, start_response)
        assert "application/vnd.oci.image.index.v1+json" in request.headers.get("Accept", "")
        return Response(headers={"Docker-Content-Digest": digest})(environ, start_response)


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry({"library/kong:2.8.1": D1, "supabase/postgres:15.8.1.085": D2, "broken/image:v1": "md5:nope"})
    server = make_server("127.0.0.1", 0, fake, threaded=True)
    fake.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    thread.join()


def test_resolve_digest_follows_the_token_challenge(registry: FakeRegistry) -> None:
    assert digests.resolve_digest("supabase/postgres", "15.8.1.085", registry=registry.url) == D2
    assert registry.token_requests == [{"service": "fake.registry", "scope": "repository:supabase/postgres:pull"}]


def test_resolve_digest_official_images_live_under_library(registry: FakeRegistry) -> None:
    assert digests.resolve_digest("kong", "2.8.1", registry=registry.url) == D1


def test_resolve_digest_errors(registry: FakeRegistry) -> None:
    with pytest.raises(CatalogError, match=re.escape("kong:9.9.9: no such tag")):
        digests.resolve_digest("kong", "9.9.9", registry=registry.url)
    with pytest.raises(CatalogError, match="no usable Docker-Content-Digest"):
        digests.resolve_digest("broken/image", "v1", registry=registry.url)


def test_resolve_cli(registry: FakeRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    assert digests.main(["resolve", "kong", "2.8.1", "--registry", registry.url]) == 0
    assert capsys.readouterr().out.strip() == D1
    assert digests.main(["resolve", "kong", "0.0.1", "--registry", registry.url]) == 1
    assert "no such tag" in capsys.readouterr().err


def test_entry_model_is_strict() -> None:
    with pytest.raises(ValueError, match="must be a pinned image tag"):
        ImageEntry(service="pg", repository="supabase/postgres", tag="has space")


# -- CatalogSync provider (control stack) ---------------------------------------------------------------
@pytest.mark.db
def test_catalog_sync_provider(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    provider = cat.CatalogSyncProvider()
    first = {"dsn": db, "images": [e.model_dump() for e in make(entry("v1", D1), entry("v2")).images]}
    assert provider.check({}, first).failures == []
    created = provider.create(first)
    assert created.outs["tags"] == ["v1", "v2"]
    assert provider.diff(created.id, created.outs, first).changes is False

    # Engine payloads drop None values: the provider must read them back the same.
    second = {
        "dsn": db,
        "images": [
            {k: v for k, v in e.model_dump().items() if v is not None}
            for e in make(entry("v1", D1, status="deprecated"), entry("v3", D3)).images
        ],
    }
    assert provider.diff(created.id, created.outs, second).changes is True
    updated = provider.update(created.id, created.outs, second)
    assert (updated.outs["updated"], updated.outs["inserted"]) == (["v1"], ["v3"])
    assert versions(db)["v1"] == (D1, "deprecated")

    clash = {"dsn": db, "images": [entry("v4", D1)]}
    with pytest.raises(CatalogConflict, match="already belongs to tag v1"):
        provider.update(created.id, updated.outs, clash)

    provider.delete(created.id, updated.outs)
    assert "rows are kept" in capsys.readouterr().out
    assert set(versions(db)) == {"v1", "v2", "v3"}


def test_catalog_sync_check_names_the_bad_entry() -> None:
    failures = cat.CatalogSyncProvider().check({}, {"images": [entry("v1", "sha256:nope")]}).failures
    assert [f.property for f in failures] == ["images"]
    assert "0.digest" in failures[0].reason
