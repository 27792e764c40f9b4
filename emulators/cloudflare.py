"""Cloudflare R2 control-plane emulator: real HTTP on 127.0.0.1, the API under ``/client/v4``.

Covers what ``components/providers/cloudflare/client.py`` calls through Cloudflare's own Python library
(cloudflare-python: its paths, ``cf-r2-jurisdiction`` header and camelCase bodies; tests drive the
emulator with it), and the real API's bucket listing and account API tokens beside it (Cloudflare's API
reference, R2 and Account API Tokens): buckets (create, list, get, delete; names 3-63 chars
``^[a-z0-9][a-z0-9-]*[a-z0-9]$``; one namespace per account and jurisdiction), bucket lifecycle rules
(PUT replaces the whole set; new buckets start with R2's default abort-multipart rule), temporary access
credentials (bucket + prefixes/objects are recorded so tests can see the scope that was asked for) and
account API tokens (the ``value`` is returned only on create). Every answer uses Cloudflare's envelope
``{"success", "errors": [{"code", "message"}], "messages", "result"}``.

Where R2 differs from a naive model, the emulator does what R2 does:
- a bucket that holds objects cannot be deleted (409, code 10008 BucketNotEmpty; R2 docs "Error
  codes" and "Delete buckets": empty it first). The emulator keeps no object data, only the keys
  tests place with ``put_object`` (an S3 server such as moto holds real data elsewhere);
- "already exists" is code 10004 ("...already exists, and you own it", pulumi-cloudflare#465);
  the HTTP status that comes with it is not documented, so ``bucket_exists_status`` sets it;
- a location hint only applies inside the default jurisdiction (the two are exclusive), and a name
  that is deleted and created again keeps the location it was first given;
- a whole-bucket lifecycle rule comes back with ``conditions: {}`` rather than ``{"prefix": ""}``, but a
  PUT must name the prefix (``""`` for the whole bucket), and an abort-multipart transition takes an
  ``Age`` condition only: the request schema, as cloudflare-python's generated
  ``types/r2/buckets/lifecycle_update_params.py`` has it, refuses the rest (400);
- temporary credentials live at most 604800 s (API reference, R2 > Temporary Credentials) and the
  call takes no ``cf-r2-jurisdiction`` header (Cloudflare's SDKs send none): the bucket is looked up
  in the default jurisdiction.

Test controls: ``calls()``, ``fail(method, route, nth, status, after_effect)`` (``after_effect``
applies the change and then answers with the error: the ambiguous failure idempotent creates must
survive), ``put_object``/``delete_object``, ``snapshot()``, ``reset()``; the same under
``/__emulator/*`` for out-of-process users. Every answer carries a ``cf-ray`` request id, as Cloudflare's
do; ``calls()`` records it.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

API_PREFIX = "/client/v4"
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")
LOCATION_HINTS = ("apac", "eeur", "enam", "weur", "wnam", "oc")
STORAGE_CLASSES = ("Standard", "InfrequentAccess")
# The values cloudflare-python sends in cf-r2-jurisdiction (its `cf_r2_jurisdiction` Literal).
JURISDICTIONS = ("default", "eu", "us", "fedramp", "fedramp-high")
TEMP_PERMISSIONS = ("admin-read-write", "admin-read-only", "object-read-write", "object-read-only")
MAX_LIFECYCLE_RULES = 1000
MAX_TEMP_CREDENTIAL_TTL_S = 604800
# R2 gives every new bucket this rule (7 days, in seconds): r2/buckets/object-lifecycles. It
# applies to the whole bucket, which R2 writes as empty conditions.
DEFAULT_LIFECYCLE_RULE: dict[str, Any] = {
    "id": "Default Multipart Abort Rule",
    "enabled": True,
    "conditions": {},
    "abortMultipartUploadsTransition": {"condition": {"type": "Age", "maxAge": 604800}},
}
# Permission groups as seen in public code (the real API lists them: GET /accounts/{id}/tokens/permission_groups).
PERMISSION_GROUPS: list[dict[str, Any]] = [
    {
        "id": "6a018a9f2fc74eb6b293b0c548f38b39",
        "name": "Workers R2 Storage Bucket Item Read",
        "scopes": ["com.cloudflare.edge.r2.bucket"],
    },
    {
        "id": "2efd5506f9c8494dacb1fa10a3e7d5b6",
        "name": "Workers R2 Storage Bucket Item Write",
        "scopes": ["com.cloudflare.edge.r2.bucket"],
    },
    {
        "id": "bf7481a1826f439697cb59a20b22293e",
        "name": "Workers R2 Storage Write",
        "scopes": ["com.cloudflare.api.account"],
    },
]

# The headers Cloudflare authenticates with: an API token, or a global key with its account's email, or
# a user service key (cloudflare-python, Cloudflare.auth_headers).
CREDENTIAL_HEADERS = ("Authorization", "X-Auth-Email", "X-Auth-Key", "X-Auth-User-Service-Key")

# Cloudflare error codes used by the R2 and token APIs.
CODE_AUTH_MISSING = 10000
CODE_AUTH_INVALID = 9109
CODE_BAD_REQUEST = 10001
CODE_ALREADY_EXISTS = 10004
CODE_INVALID_NAME = 10005
CODE_NO_SUCH_BUCKET = 10006
CODE_BUCKET_NOT_EMPTY = 10008
CODE_NOT_FOUND = 7003
CODE_INTERNAL = 10002


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _envelope(result: Any = None, *, errors: list[dict[str, Any]] | None = None, **extra: Any) -> dict:
    return {"success": not errors, "errors": errors or [], "messages": [], "result": result, **extra}


def _route_template(rule: str) -> str:
    """``/accounts/<account_id>/...`` → ``/client/v4/accounts/{account_id}/...`` (what fail() takes)."""
    return API_PREFIX + re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


class CloudflareEmulator:
    def __init__(self, token: str | None = None, state_file: Path | None = None, bucket_exists_status: int = 409):
        # token=None accepts any bearer token (but still requires one, like the real API).
        self.token = token
        self.bucket_exists_status = bucket_exists_status
        self.state_file = Path(state_file) if state_file else None
        self._lock = threading.RLock()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self._calls: list[dict[str, Any]] = []
        self._failures: list[dict[str, Any]] = []
        self._state: dict[str, Any] = {}
        self.reset()
        if self.state_file and self.state_file.exists():
            self._state = json.loads(self.state_file.read_text())
            # State files written before objects and first placements were modelled.
            self._state.setdefault("first_locations", {})
            for bucket in self._state["buckets"].values():
                bucket.setdefault("objects", [])
        self._map, self._handlers = self._routes()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server = make_server(host, port, self.wsgi_app, threaded=True)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    # -- test controls ----------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            # first_locations: where each bucket name was first placed; R2 keeps it across re-creation.
            self._state = {"buckets": {}, "tokens": {}, "temp_credentials": [], "first_locations": {}}
            self._calls = []
            self._failures = []

    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._calls)

    def clear_calls(self) -> None:
        with self._lock:
            self._calls = []

    def fail(self, method: str, route: str, nth: int = 1, status: int = 500, after_effect: bool = False) -> None:
        """Answer the nth matching request from now on with ``status``.

        ``route`` is the templated path, e.g. ``/client/v4/accounts/{account_id}/r2/buckets``.
        With ``after_effect`` the request is applied first (the response is then lost).
        """
        if nth < 1:
            raise ValueError("nth counts from 1")
        with self._lock:
            self._failures.append(
                {
                    "method": method.upper(),
                    "route": route,
                    "remaining": nth,
                    "status": status,
                    "after_effect": after_effect,
                }
            )

    def put_object(
        self, bucket: str, key: str, *, account_id: str | None = None, jurisdiction: str = "default"
    ) -> None:
        """Record that ``bucket`` holds an object ``key`` (only its name: the emulator keeps no data)."""
        with self._lock:
            found = self._bucket_by_name(bucket, account_id, jurisdiction)
            if key not in found["objects"]:
                found["objects"].append(key)
                found["objects"].sort()
            self._save()

    def delete_object(
        self, bucket: str, key: str, *, account_id: str | None = None, jurisdiction: str = "default"
    ) -> None:
        with self._lock:
            found = self._bucket_by_name(bucket, account_id, jurisdiction)
            if key in found["objects"]:
                found["objects"].remove(key)
            self._save()

    def _bucket_by_name(self, bucket: str, account_id: str | None, jurisdiction: str) -> dict[str, Any]:
        matches = [
            b
            for b in self._state["buckets"].values()
            if b["name"] == bucket
            and b["jurisdiction"] == jurisdiction
            and (account_id is None or b["account_id"] == account_id)
        ]
        if len(matches) != 1:
            raise KeyError(f"no single bucket {bucket!r} in jurisdiction {jurisdiction} (found {len(matches)})")
        return matches[0]

    def snapshot(self) -> dict[str, Any]:
        """Buckets (with their lifecycle rules), tokens (without values) and issued temp credentials."""
        with self._lock:
            state = copy.deepcopy(self._state)
        for token in state["tokens"].values():
            token.pop("value", None)
        for cred in state["temp_credentials"]:
            cred.pop("secretAccessKey", None)
            cred.pop("sessionToken", None)
        return state

    def _save(self) -> None:
        if self.state_file:
            tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
            tmp.write_text(json.dumps(self._state, indent=2, sort_keys=True))
            tmp.replace(self.state_file)

    # -- HTTP plumbing ----------------------------------------------------------------------------
    def _routes(self) -> tuple[Map, dict[str, tuple[Callable[..., Any], str]]]:
        table: list[tuple[str, str, Callable[..., Any]]] = [
            ("/accounts/<account_id>/r2/buckets", "GET", self._list_buckets),
            ("/accounts/<account_id>/r2/buckets", "POST", self._create_bucket),
            ("/accounts/<account_id>/r2/buckets/<bucket>", "GET", self._get_bucket),
            ("/accounts/<account_id>/r2/buckets/<bucket>", "DELETE", self._delete_bucket),
            ("/accounts/<account_id>/r2/buckets/<bucket>/lifecycle", "GET", self._get_lifecycle),
            ("/accounts/<account_id>/r2/buckets/<bucket>/lifecycle", "PUT", self._put_lifecycle),
            ("/accounts/<account_id>/r2/temp-access-credentials", "POST", self._temp_credentials),
            ("/accounts/<account_id>/tokens", "POST", self._create_token),
            ("/accounts/<account_id>/tokens/permission_groups", "GET", self._permission_groups),
            ("/accounts/<account_id>/tokens/<token_id>", "GET", self._get_token),
            ("/accounts/<account_id>/tokens/<token_id>", "DELETE", self._delete_token),
        ]
        rules = []
        handlers: dict[str, tuple[Callable[..., Any], str]] = {}
        for path, method, fn in table:
            endpoint = f"{method} {path}"
            rules.append(Rule(API_PREFIX + path, methods=[method], endpoint=endpoint))
            handlers[endpoint] = (fn, _route_template(path))
        return Map(rules, strict_slashes=False), handlers

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        if request.path.startswith("/__emulator/"):
            return self._control(request)(environ, start_response)
        return self._dispatch(request)(environ, start_response)

    def _json(self, status: int, body: dict[str, Any]) -> Response:
        return Response(json.dumps(body), status=status, mimetype="application/json")

    def _error(self, status: int, code: int, message: str) -> Response:
        return self._json(status, _envelope(None, errors=[{"code": code, "message": message}]))

    def _record(self, request: Request, route: str, response: Response) -> None:
        # A Cloudflare ray id: 16 hex digits and the colo that answered.
        ray = f"{secrets.token_hex(8)}-EMU"
        response.headers["cf-ray"] = ray
        with self._lock:
            self._calls.append(
                {
                    "method": request.method,
                    "route": route,
                    "path": request.path,
                    "status": response.status_code,
                    "mutating": request.method in ("POST", "PUT", "PATCH", "DELETE"),
                    "cf_ray": ray,
                    # Which kinds of credential came with the call (names only): a client must send its
                    # token and nothing else, not a global key picked up from its environment.
                    "credentials": sorted(h for h in CREDENTIAL_HEADERS if h in request.headers),
                }
            )

    def _take_failure(self, method: str, route: str) -> dict[str, Any] | None:
        with self._lock:
            for failure in self._failures:
                if failure["method"] == method and failure["route"] == route:
                    failure["remaining"] -= 1
                    if failure["remaining"] == 0:
                        self._failures.remove(failure)
                        return failure
                    return None
        return None

    def _authenticate(self, request: Request) -> Response | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            return self._error(401, CODE_AUTH_MISSING, "Authentication error")
        presented = header[7:].strip()
        if self.token is None or secrets.compare_digest(presented, self.token):
            return None
        with self._lock:
            # Account tokens minted through this emulator authenticate too, while they exist.
            if any(t.get("value") == presented for t in self._state["tokens"].values()):
                return None
        return self._error(403, CODE_AUTH_INVALID, "Invalid access token")

    def _dispatch(self, request: Request) -> Response:
        adapter = self._map.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match()
        except MethodNotAllowed:
            return self._error(405, CODE_BAD_REQUEST, f"method {request.method} not allowed here")
        except NotFound:
            return self._error(404, CODE_NOT_FOUND, f"No route for the URI: {request.path}")
        except HTTPException as exc:
            return self._error(exc.code or 400, CODE_BAD_REQUEST, str(exc))
        fn, route = self._handlers[endpoint]
        denied = self._authenticate(request)
        if denied is not None:
            self._record(request, route, denied)
            return denied
        failure = self._take_failure(request.method, route)
        if failure and not failure["after_effect"]:
            injected = self._error(failure["status"], CODE_INTERNAL, "injected failure")
            self._record(request, route, injected)
            return injected
        try:
            with self._lock:
                status, result, extra = fn(request, **args)
                if request.method != "GET":
                    self._save()
            response = self._json(status, _envelope(result, **extra))
        except ApiError as err:
            response = self._error(err.status, err.code, err.message)
        except Exception as exc:  # an emulator bug: still answer in the envelope, with the reason
            response = self._error(500, CODE_INTERNAL, f"emulator error: {exc!r}")
        if failure:  # after_effect: the change happened, the caller only sees the error
            response = self._error(failure["status"], CODE_INTERNAL, "injected failure after effect")
        self._record(request, route, response)
        return response

    def _control(self, request: Request) -> Response:
        action = request.path.removeprefix("/__emulator/")
        if action == "snapshot" and request.method == "GET":
            return self._json(200, self.snapshot())
        if action == "calls" and request.method == "GET":
            return self._json(200, {"calls": self.calls()})
        if action == "reset" and request.method == "POST":
            self.reset()
            return self._json(200, {"ok": True})
        if action == "objects" and request.method in ("POST", "DELETE"):
            body = request.get_json(silent=True) or {}
            place = self.put_object if request.method == "POST" else self.delete_object
            try:
                place(
                    body["bucket"],
                    body["key"],
                    account_id=body.get("account_id"),
                    jurisdiction=body.get("jurisdiction", "default"),
                )
            except KeyError as exc:
                return self._json(400, {"error": f"objects needs an existing bucket and a key: {exc}"})
            return self._json(200, {"ok": True})
        if action == "fail" and request.method == "POST":
            body = request.get_json(silent=True) or {}
            try:
                self.fail(
                    body["method"],
                    body["route"],
                    nth=int(body.get("nth", 1)),
                    status=int(body.get("status", 500)),
                    after_effect=bool(body.get("after_effect", False)),
                )
            except (KeyError, ValueError) as exc:
                return self._json(400, {"error": f"fail needs method and route: {exc}"})
            return self._json(200, {"ok": True})
        return self._json(404, {"error": f"unknown emulator control {action!r}"})

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ApiError(400, CODE_BAD_REQUEST, "request body must be a JSON object")
        return body

    @staticmethod
    def _jurisdiction(request: Request) -> str:
        value = request.headers.get("cf-r2-jurisdiction", "default").lower()
        if value not in JURISDICTIONS:
            raise ApiError(400, CODE_BAD_REQUEST, f"cf-r2-jurisdiction must be one of {JURISDICTIONS}")
        return value

    def _bucket_key(self, account_id: str, jurisdiction: str, name: str) -> str:
        return f"{account_id}/{jurisdiction}/{name}"

    def _find_bucket(self, request: Request, account_id: str, name: str) -> dict[str, Any]:
        key = self._bucket_key(account_id, self._jurisdiction(request), name)
        bucket = self._state["buckets"].get(key)
        if bucket is None:
            raise ApiError(404, CODE_NO_SUCH_BUCKET, "The specified bucket does not exist.")
        return bucket

    @staticmethod
    def _public(bucket: dict[str, Any]) -> dict[str, Any]:
        return {k: bucket[k] for k in ("name", "creation_date", "location", "jurisdiction", "storage_class")}

    # -- buckets ----------------------------------------------------------------------------------
    def _create_bucket(self, request: Request, account_id: str) -> tuple[int, Any, dict]:
        body = self._body(request)
        jurisdiction = self._jurisdiction(request)
        name = body.get("name")
        if not isinstance(name, str) or not 3 <= len(name) <= 63 or not BUCKET_NAME.match(name):
            raise ApiError(
                400,
                CODE_INVALID_NAME,
                "The bucket name is not valid: 3-63 characters, lowercase letters, digits and "
                f"hyphens, starting and ending with a letter or digit (got {name!r})",
            )
        hint = body.get("locationHint")
        if hint is not None and (not isinstance(hint, str) or hint.lower() not in LOCATION_HINTS):
            raise ApiError(400, CODE_BAD_REQUEST, f"locationHint must be one of {LOCATION_HINTS}")
        if hint is not None and jurisdiction != "default":
            raise ApiError(
                400, CODE_BAD_REQUEST, "a location hint cannot be combined with a jurisdiction (cf-r2-jurisdiction)"
            )
        storage_class = body.get("storageClass", "Standard")
        if storage_class not in STORAGE_CLASSES:
            raise ApiError(400, CODE_BAD_REQUEST, f"storageClass must be one of {STORAGE_CLASSES}")
        key = self._bucket_key(account_id, jurisdiction, name)
        if key in self._state["buckets"]:
            raise ApiError(
                self.bucket_exists_status,
                CODE_ALREADY_EXISTS,
                "The bucket you tried to create already exists, and you own it.",
            )
        # Best effort placement, decided once per name: the API answers with the region in upper case.
        location = self._state["first_locations"].setdefault(key, (hint or "enam").upper())
        bucket = {
            "name": name,
            "account_id": account_id,
            "creation_date": _now(),
            "location": location,
            "jurisdiction": jurisdiction,
            "storage_class": storage_class,
            "lifecycle": {"rules": [copy.deepcopy(DEFAULT_LIFECYCLE_RULE)]},
            "objects": [],
        }
        self._state["buckets"][key] = bucket
        return 200, self._public(bucket), {}

    def _list_buckets(self, request: Request, account_id: str) -> tuple[int, Any, dict]:
        jurisdiction = self._jurisdiction(request)
        try:
            per_page = int(request.args.get("per_page", "20"))
        except ValueError:
            raise ApiError(400, CODE_BAD_REQUEST, "per_page must be an integer") from None
        if not 1 <= per_page <= 1000:
            raise ApiError(400, CODE_BAD_REQUEST, "per_page must be between 1 and 1000")
        after = request.args.get("cursor") or request.args.get("start_after") or ""
        contains = request.args.get("name_contains", "")
        names = sorted(
            b["name"]
            for b in self._state["buckets"].values()
            if b["account_id"] == account_id and b["jurisdiction"] == jurisdiction
        )
        names = [n for n in names if n > after and contains in n]
        page = names[:per_page]
        buckets = [self._public(self._state["buckets"][self._bucket_key(account_id, jurisdiction, n)]) for n in page]
        cursor = page[-1] if len(names) > per_page else ""
        return 200, {"buckets": buckets}, {"result_info": {"cursor": cursor, "per_page": per_page}}

    def _get_bucket(self, request: Request, account_id: str, bucket: str) -> tuple[int, Any, dict]:
        return 200, self._public(self._find_bucket(request, account_id, bucket)), {}

    def _delete_bucket(self, request: Request, account_id: str, bucket: str) -> tuple[int, Any, dict]:
        found = self._find_bucket(request, account_id, bucket)
        if found.get("objects"):
            raise ApiError(409, CODE_BUCKET_NOT_EMPTY, "The bucket you tried to delete is not empty.")
        del self._state["buckets"][self._bucket_key(account_id, found["jurisdiction"], bucket)]
        return 200, {}, {}

    # -- lifecycle --------------------------------------------------------------------------------
    def _get_lifecycle(self, request: Request, account_id: str, bucket: str) -> tuple[int, Any, dict]:
        return 200, copy.deepcopy(self._find_bucket(request, account_id, bucket)["lifecycle"]), {}

    def _put_lifecycle(self, request: Request, account_id: str, bucket: str) -> tuple[int, Any, dict]:
        found = self._find_bucket(request, account_id, bucket)
        rules = self._body(request).get("rules")
        if not isinstance(rules, list):
            raise ApiError(400, CODE_BAD_REQUEST, "rules must be a list")
        if len(rules) > MAX_LIFECYCLE_RULES:
            raise ApiError(400, CODE_BAD_REQUEST, f"at most {MAX_LIFECYCLE_RULES} lifecycle rules")
        ids = set()
        for index, rule in enumerate(rules):
            _validate_rule(index, rule)
            if rule["id"] in ids:
                raise ApiError(400, CODE_BAD_REQUEST, f"rules[{index}].id {rule['id']!r} is not unique")
            ids.add(rule["id"])
        stored = copy.deepcopy(rules)
        for rule in stored:
            if not rule["conditions"].get("prefix"):
                rule["conditions"] = {}  # whole bucket: R2 gives the rule back without a prefix
        found["lifecycle"] = {"rules": stored}
        return 200, {}, {}

    # -- temporary credentials --------------------------------------------------------------------
    def _temp_credentials(self, request: Request, account_id: str) -> tuple[int, Any, dict]:
        body = self._body(request)
        bucket = body.get("bucket")
        if not isinstance(bucket, str) or not bucket:
            raise ApiError(400, CODE_BAD_REQUEST, "bucket is required")
        if self._state["buckets"].get(self._bucket_key(account_id, "default", bucket)) is None:
            raise ApiError(404, CODE_NO_SUCH_BUCKET, "The specified bucket does not exist.")
        parent = body.get("parentAccessKeyId")
        if not isinstance(parent, str) or not parent:
            raise ApiError(400, CODE_BAD_REQUEST, "parentAccessKeyId is required")
        permission = body.get("permission")
        if permission not in TEMP_PERMISSIONS:
            raise ApiError(400, CODE_BAD_REQUEST, f"permission must be one of {TEMP_PERMISSIONS}")
        ttl = body.get("ttlSeconds")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TEMP_CREDENTIAL_TTL_S:
            raise ApiError(
                400, CODE_BAD_REQUEST, f"ttlSeconds must be a whole number from 1 to {MAX_TEMP_CREDENTIAL_TTL_S}"
            )
        scope: dict[str, list[str]] = {}
        for field in ("prefixes", "objects"):
            value = body.get(field)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ApiError(400, CODE_BAD_REQUEST, f"{field} must be a list of non-empty strings")
            scope[field] = list(value)
        credentials = {
            "accessKeyId": secrets.token_hex(16),
            "secretAccessKey": secrets.token_hex(32),
            "sessionToken": secrets.token_urlsafe(48),
        }
        issued = dt.datetime.now(dt.UTC)
        self._state["temp_credentials"].append(
            {
                **credentials,
                "account_id": account_id,
                "bucket": bucket,
                "jurisdiction": "default",
                "parentAccessKeyId": parent,
                "permission": permission,
                "ttlSeconds": ttl,
                "prefixes": scope.get("prefixes", []),
                "objects": scope.get("objects", []),
                "issued_on": issued.isoformat(),
                "expires_on": (issued + dt.timedelta(seconds=ttl)).isoformat(),
            }
        )
        return 200, credentials, {}

    # -- account tokens ---------------------------------------------------------------------------
    def _create_token(self, request: Request, account_id: str) -> tuple[int, Any, dict]:
        body = self._body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, CODE_BAD_REQUEST, "name is required")
        policies = body.get("policies")
        if not isinstance(policies, list) or not policies:
            raise ApiError(400, CODE_BAD_REQUEST, "policies must be a non-empty list")
        known = {g["id"] for g in PERMISSION_GROUPS}
        for index, policy in enumerate(policies):
            if not isinstance(policy, dict) or policy.get("effect") not in ("allow", "deny"):
                raise ApiError(400, CODE_BAD_REQUEST, f"policies[{index}].effect must be allow or deny")
            groups = policy.get("permission_groups")
            if not isinstance(groups, list) or not groups:
                raise ApiError(400, CODE_BAD_REQUEST, f"policies[{index}].permission_groups is required")
            for group in groups:
                if not isinstance(group, dict) or group.get("id") not in known:
                    raise ApiError(400, CODE_BAD_REQUEST, f"policies[{index}]: unknown permission group {group!r}")
            if not isinstance(policy.get("resources"), dict) or not policy["resources"]:
                raise ApiError(400, CODE_BAD_REQUEST, f"policies[{index}].resources is required")
        now = _now()
        token = {
            "id": secrets.token_hex(16),
            "name": name,
            "status": "active",
            "issued_on": now,
            "modified_on": now,
            "policies": policies,
            "account_id": account_id,
            "value": secrets.token_urlsafe(30),
        }
        for optional in ("expires_on", "not_before", "condition"):
            if optional in body:
                token[optional] = body[optional]
        self._state["tokens"][token["id"]] = token
        return 200, {k: v for k, v in token.items() if k != "account_id"}, {}

    def _find_token(self, account_id: str, token_id: str) -> dict[str, Any]:
        token = self._state["tokens"].get(token_id)
        if token is None or token["account_id"] != account_id:
            raise ApiError(404, CODE_NOT_FOUND, "Token not found")
        return token

    def _get_token(self, _request: Request, account_id: str, token_id: str) -> tuple[int, Any, dict]:
        token = self._find_token(account_id, token_id)
        return 200, {k: v for k, v in token.items() if k not in ("value", "account_id")}, {}

    def _delete_token(self, _request: Request, account_id: str, token_id: str) -> tuple[int, Any, dict]:
        self._find_token(account_id, token_id)
        del self._state["tokens"][token_id]
        return 200, {"id": token_id}, {}

    def _permission_groups(self, _request: Request, account_id: str) -> tuple[int, Any, dict]:
        return 200, copy.deepcopy(PERMISSION_GROUPS), {}


def _validate_rule(index: int, rule: Any) -> None:
    where = f"rules[{index}]"
    if not isinstance(rule, dict):
        raise ApiError(400, CODE_BAD_REQUEST, f"{where} must be an object")
    if not isinstance(rule.get("id"), str) or not rule["id"]:
        raise ApiError(400, CODE_BAD_REQUEST, f"{where}.id is required")
    if not isinstance(rule.get("enabled"), bool):
        raise ApiError(400, CODE_BAD_REQUEST, f"{where}.enabled must be a boolean")
    conditions = rule.get("conditions")
    # `conditions.prefix` is Required[str] in the request schema (cloudflare-python,
    # lifecycle_update_params.RuleConditions): "an empty prefix can be provided to scope rule to all
    # objects/uploads". Only the answer leaves it out for a whole-bucket rule.
    if not isinstance(conditions, dict) or not isinstance(conditions.get("prefix"), str):
        raise ApiError(400, CODE_BAD_REQUEST, f"{where}.conditions.prefix is required ('' for the whole bucket)")
    transitions = [
        t
        for t in ("deleteObjectsTransition", "abortMultipartUploadsTransition", "storageClassTransitions")
        if rule.get(t) is not None
    ]
    if not transitions:
        raise ApiError(400, CODE_BAD_REQUEST, f"{where} needs at least one transition")
    if rule.get("deleteObjectsTransition") is not None:
        _validate_condition(f"{where}.deleteObjectsTransition.condition", _condition(rule["deleteObjectsTransition"]))
    if rule.get("abortMultipartUploadsTransition") is not None:
        # Age only: RuleAbortMultipartUploadsTransitionCondition is `type: Literal["Age"]` with a required
        # maxAge (cloudflare-python, lifecycle_update_params), where deletes and storage-class moves take
        # an Age or a Date condition.
        where_abort = f"{where}.abortMultipartUploadsTransition.condition"
        _validate_condition(where_abort, _condition(rule["abortMultipartUploadsTransition"]), types=("Age",))
    storage = rule.get("storageClassTransitions") or []
    if not isinstance(storage, list):
        raise ApiError(400, CODE_BAD_REQUEST, f"{where}.storageClassTransitions must be a list")
    for n, transition in enumerate(storage):
        _validate_condition(f"{where}.storageClassTransitions[{n}].condition", _condition(transition))
        if transition.get("storageClass") != "InfrequentAccess":
            raise ApiError(400, CODE_BAD_REQUEST, f"{where}.storageClassTransitions[{n}].storageClass")


def _condition(transition: Any) -> Any:
    return transition.get("condition") if isinstance(transition, dict) else None


def _validate_condition(where: str, condition: Any, types: tuple[str, ...] = ("Age", "Date")) -> None:
    if not isinstance(condition, dict):
        raise ApiError(400, CODE_BAD_REQUEST, f"{where} is required")
    if condition.get("type") not in types:
        raise ApiError(400, CODE_BAD_REQUEST, f"{where}.type must be {' or '.join(types)}")
    if condition["type"] == "Age":
        age = condition.get("maxAge")
        if isinstance(age, bool) or not isinstance(age, int) or age <= 0:
            raise ApiError(400, CODE_BAD_REQUEST, f"{where}.maxAge must be a positive integer (seconds)")
    elif not isinstance(condition.get("date"), str):
        raise ApiError(400, CODE_BAD_REQUEST, f"{where}.date must be an ISO date string")


def serve(host: str, port: int, state_file: Path | None = None, token: str | None = None) -> None:
    """Run the emulator in the foreground (``state_file`` keeps buckets and tokens across restarts)."""
    emulator = CloudflareEmulator(token=token, state_file=state_file)
    server = make_server(host, port, emulator.wsgi_app, threaded=True)
    emulator.url = f"http://{host}:{server.server_port}"
    print(f"Cloudflare API emulator listening on {emulator.api_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
