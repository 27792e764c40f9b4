"""The locks a Pulumi DIY backend holds for a stack, read from the backend itself: file, PostgreSQL or S3 (R2).

Every DIY backend locks a stack the same way (pkg/backend/diy/lock.go, v3.274.1): before an update,
refresh, destroy or import the CLI lists `.pulumi/locks/<org>/<project>/<stack>/`, writes its own
`<uuid>.json` there (`{"pid", "username", "hostname", "timestamp"}`), lists again, and backs off when
another lock is there. The backend is only a blob store: the file backend keeps blobs as files, the S3
backend as objects, the PostgreSQL backend as rows of one table (`pulumi_state` unless the URL says
`table=`; the key, and the blob base64-encoded in `data->>'data'`: diy/postgres/bucket.go). So the same
lock document can be read from each, which is what `silo recover` needs to tell a dead run's lock from a
live one, and what `silo fleet status` shows.

Reading S3 needs credentials as the CLI finds them (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN, else the shared credentials file's profile); requests are signed here with AWS
Signature Version 4 (httpx has no signer, and boto3 is not a runtime dependency). A backend whose locks
cannot be read raises ``LocksUnreadable``: the caller decides (recover refuses unless forced).
"""

from __future__ import annotations

import base64
import configparser
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlparse, urlunparse

import httpx

from components.errors import UserError

LOCK_DIR = ".pulumi/locks/"
# `.pulumi/locks/<org>/<project>/<stack>/<id>.json`: the org is `organization` on a DIY backend.
_LOCK_KEY = re.compile(r"^\.pulumi/locks/[^/]+/[^/]+/(?P<stack>[^/]+)/[^/]+\.json$")


def key_prefix(url: str) -> str:
    """Where a non-file backend keeps its keys: under the URL's path (pkg/backend/diy/backend.go wraps the
    bucket in a `blob.PrefixedBucket` of it), so `s3://bucket/team-a` stores `team-a/.pulumi/...`, and
    `postgres://host/db` stores `db/.pulumi/...` (the database name is the URL's path too)."""
    path = unquote(urlparse(url).path).lstrip("/")
    return path if not path or path.endswith("/") else path + "/"


POSTGRES_SCHEMES = ("postgres", "postgresql")


class LocksUnreadable(UserError):
    """The backend's locks could not be read (no credentials, unreachable, an unknown backend)."""


@dataclass
class Lock:
    where: str  # the file, row key or object key of the lock
    pid: int
    hostname: str
    username: str
    timestamp: str = ""

    @property
    def holder(self) -> str:
        return f"{self.username}@{self.hostname} (pid {self.pid})"

    @property
    def alive(self) -> bool:
        """Whether the process that holds the lock still runs (known only on the host that took it)."""
        if self.hostname != socket.gethostname():
            return True  # another machine's: we cannot tell, so assume it runs
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def backend_url(env: Mapping[str, str]) -> str:
    """The backend a workspace's CLI uses: its own PULUMI_BACKEND_URL, else the process's."""
    return env.get("PULUMI_BACKEND_URL") or os.environ.get("PULUMI_BACKEND_URL", "")


def backend_kind(url: str) -> str:
    """`file`, `postgres`, `s3`, or the URL's scheme for anything else (Pulumi Cloud: `https`)."""
    scheme = urlparse(url).scheme
    return "postgres" if scheme in POSTGRES_SCHEMES else scheme


def stack_locks(url: str, stack: str) -> list[Lock]:
    """The locks the backend at `url` holds for `stack` (its name, or `org/project/name`)."""
    name = stack.split("/")[-1]
    kind = backend_kind(url)
    if kind == "file":
        docs = _file_locks(url)
    elif kind == "postgres":
        docs = _postgres_locks(url)
    elif kind == "s3":
        docs = _s3_locks(url)
    else:
        raise LocksUnreadable(f"cannot read the locks of a {kind or 'local'} backend ({redact(url)})")
    locks = []
    prefix = "" if kind == "file" else key_prefix(url)
    for key, raw in docs:
        match = _LOCK_KEY.match(key.removeprefix(prefix))
        if not match or match["stack"] != name:
            continue
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        locks.append(
            Lock(
                key,
                int(doc.get("pid") or 0),
                str(doc.get("hostname") or ""),
                str(doc.get("username") or ""),
                str(doc.get("timestamp") or ""),
            )
        )
    return locks


def redact(url: str) -> str:
    """The URL without its password (as the CLI shows a lock's URL)."""
    parts = urlparse(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:****@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunparse(parts._replace(netloc=netloc))


# -- file ------------------------------------------------------------------------------------------------
def _file_locks(url: str) -> list[tuple[str, bytes]]:
    root = Path(unquote(urlparse(url).path))
    out = []
    for path in (root / ".pulumi" / "locks").glob("*/*/*/*.json"):
        try:
            out.append((path.relative_to(root).as_posix(), path.read_bytes()))
        except OSError:
            continue
    return out


# -- PostgreSQL ------------------------------------------------------------------------------------------
def _postgres_locks(url: str) -> list[tuple[str, bytes]]:
    import psycopg
    from psycopg import sql

    parts = urlparse(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    table = (query.pop("table", None) or ["pulumi_state"])[0]
    dsn = urlunparse(parts._replace(query=urlencode(query, doseq=True)))
    # The table name as the backend takes it: the URL's `table` (which may name a schema) or pulumi_state.
    ident = sql.Identifier(*table.split("."))
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            rows = conn.execute(
                sql.SQL("SELECT key, data->>'data' FROM {} WHERE starts_with(key, %s)").format(ident),
                (key_prefix(url) + LOCK_DIR,),
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        return []  # nothing was ever stored: no lock either
    except psycopg.Error as exc:
        raise LocksUnreadable(f"cannot read the locks from {redact(url)}: {_first_line(exc)}") from None
    return [(key, base64.b64decode(data or "")) for key, data in rows]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- S3 (R2) ---------------------------------------------------------------------------------------------
@dataclass
class _S3:
    bucket: str
    endpoint: str  # scheme://host[:port]
    region: str
    path_style: bool
    access_key: str
    secret_key: str
    token: str = ""

    def url(self, key: str = "") -> str:
        path = "/" + quote(key, safe="/~")
        if self.path_style:
            return f"{self.endpoint}/{self.bucket}{path if key else '/'}"
        scheme, host = self.endpoint.split("://", 1)
        return f"{scheme}://{self.bucket}.{host}{path}"


def _s3_config(url: str) -> _S3:
    parts = urlparse(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    region = query.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    region = region or "us-east-1"
    endpoint = query.get("endpoint", "")
    if endpoint and "://" not in endpoint:
        endpoint = ("http://" if query.get("disableSSL") == "true" else "https://") + endpoint
    if not endpoint:
        endpoint = f"https://s3.{region}.amazonaws.com"
    style = query.get("use_path_style") or query.get("s3ForcePathStyle") or "false"
    access, secret, token = _s3_credentials(query.get("profile"))
    return _S3(parts.netloc, endpoint.rstrip("/"), region, style == "true", access, secret, token)


def _s3_credentials(profile: str | None) -> tuple[str, str, str]:
    """The credentials the CLI's AWS SDK would find first: the environment, then the shared file."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if key and secret and not profile:
        return key, secret, os.environ.get("AWS_SESSION_TOKEN", "")
    name = profile or os.environ.get("AWS_PROFILE") or "default"
    path = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials")
    shared = configparser.ConfigParser()
    shared.read(path)
    if shared.has_option(name, "aws_access_key_id") and shared.has_option(name, "aws_secret_access_key"):
        section = shared[name]
        return section["aws_access_key_id"], section["aws_secret_access_key"], section.get("aws_session_token", "")
    raise LocksUnreadable(
        f"cannot read the stack's locks from the S3 backend: no credentials (AWS_ACCESS_KEY_ID and "
        f"AWS_SECRET_ACCESS_KEY, or profile {name} in {path})"
    )


def _sign(s3: _S3, method: str, url: str, now: dt.datetime) -> dict[str, str]:
    """AWS Signature Version 4 headers for a body-less request (docs.aws.amazon.com, "Signature Version 4
    signing process": canonical request, string to sign, HMAC-derived signing key)."""
    parts = urlparse(url)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": parts.netloc, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    if s3.token:
        headers["x-amz-security-token"] = s3.token
    pairs = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, vs in parse_qs(parts.query, True).items() for v in vs
    )
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            "&".join(f"{k}={v}" for k, v in pairs),
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            signed,
            payload,
        ]
    )
    scope = f"{day}/{s3.region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = ("AWS4" + s3.secret_key).encode()
    for part in (day, s3.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={s3.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return headers


def _s3_get(client: httpx.Client, s3: _S3, url: str) -> bytes | None:
    """The object at `url`; None when it is gone (a lock removed between the listing and the read)."""
    response = client.get(url, headers=_sign(s3, "GET", url, dt.datetime.now(dt.UTC)))
    if response.status_code == 404 and "?" not in url:
        return None
    if response.status_code != 200:
        code = re.search(r"<Code>([^<]+)</Code>", response.text)
        raise LocksUnreadable(
            f"cannot read the stack's locks from s3://{s3.bucket}: HTTP {response.status_code}"
            + (f" {code[1]}" if code else "")
        )
    return response.content


def _s3_locks(url: str) -> list[tuple[str, bytes]]:
    s3 = _s3_config(url)
    base = key_prefix(url)
    ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
    out: list[tuple[str, bytes]] = []
    try:
        with httpx.Client(timeout=30) as client:
            token = ""
            while True:
                params = {
                    "list-type": "2",
                    "prefix": base + LOCK_DIR,
                    **({"continuation-token": token} if token else {}),
                }
                listing = ET.fromstring(_s3_get(client, s3, s3.url() + "?" + urlencode(params)) or b"")
                for key in (el.text or "" for el in listing.iter(f"{ns}Key")):
                    body = _s3_get(client, s3, s3.url(key)) if _LOCK_KEY.match(key.removeprefix(base)) else None
                    if body is not None:
                        out.append((key, body))
                token = listing.findtext(f"{ns}NextContinuationToken") or ""
                if listing.findtext(f"{ns}IsTruncated") != "true" or not token:
                    return out
    except httpx.HTTPError as exc:
        raise LocksUnreadable(f"cannot read the stack's locks from s3://{s3.bucket}: {exc}") from None
