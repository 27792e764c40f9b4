"""The emulator's server: lifecycle, routing, auth, the call log, latency, rate limits, fault injection and
the state file. The API's sections are mixins (apps, regions, machines, volumes, secrets, IPs, control).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from emulators.fly.app_secrets import SecretsMixin
from emulators.fly.apps import AppsMixin
from emulators.fly.control import ControlMixin
from emulators.fly.ips import IpsMixin
from emulators.fly.machines import MachinesMixin
from emulators.fly.model import NONCE_HEADER, ROUTE_TABLE, ExecHandler, Fault, LatencyModel, empty_state
from emulators.fly.processes import ProcessesMixin
from emulators.fly.regions import RegionsMixin
from emulators.fly.util import ApiError, TokenBuckets, json_body, json_response, request_id, retry_after_header
from emulators.fly.volumes import VolumesMixin

log = logging.getLogger(__name__)

# POSTs that change nothing: a placement is a simulation (fly-go flaps_platform.go GetPlacements).
READ_ONLY_ROUTES = frozenset({"/v1/platform/placements"})
STATE_FILE_VERSION = 1


def _werkzeug_rule(template: str) -> str:
    return template.replace("{", "<").replace("}", ">")


class FlyEmulator(
    ControlMixin, AppsMixin, RegionsMixin, MachinesMixin, ProcessesMixin, VolumesMixin, SecretsMixin, IpsMixin
):
    """The emulator: one lock around one world; each section of the API is a mixin of its own module."""

    def __init__(
        self,
        latency: LatencyModel | None = None,
        rate_limits: bool = True,
        token: str | None = None,
        state_file: Path | None = None,
    ):
        self._initial_latency = copy.copy(latency or LatencyModel())
        self._initial_rate_limits = rate_limits
        self._latency = copy.copy(self._initial_latency)
        self._rate_limits = rate_limits
        self._token = token
        self._state_file = Path(state_file) if state_file is not None else None
        # One lock around the whole state; the condition lets `wait` sleep without holding it.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._state = empty_state()
        self._faults: list[Fault] = []
        # hold(): calls whose answer is kept back once they took effect (crash tests); see control.py.
        self._holds: list[dict] = []
        self._held: list[dict] = []
        self._release = threading.Event()
        self._calls: list[dict] = []
        self._exec_log: list[dict] = []
        self._exec_handler: ExecHandler | None = None
        self._forced_checks: dict[tuple[str, str], str] = {}
        self._buckets = TokenBuckets()
        self._stopping = False
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self._url_map = Map([Rule(_werkzeug_rule(t), methods=list(m), endpoint=t) for t, m, _ in ROUTE_TABLE])
        self._handlers = {t: getattr(self, f"_h_{name}") for t, _, name in ROUTE_TABLE}

    # -- server lifecycle --------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._server is not None:
            raise RuntimeError(f"the Fly emulator is already serving at {self.url}")
        self._load()
        self._stopping = False
        self._server = make_server(host, port, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://{host}:{self._server.server_port}"
        # A short poll interval keeps stop() quick (shutdown waits for the serve loop to notice).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fly-emulator", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()  # blocked `wait` calls answer at once instead of holding threads
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FlyEmulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- persistence --------------------------------------------------------------------------------
    def _load(self) -> None:
        path = self._state_file
        if path is None or not path.exists() or path.stat().st_size == 0:
            return
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the Fly emulator state file {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != STATE_FILE_VERSION:
            raise ValueError(f"{path} is not a Fly emulator state file (version {STATE_FILE_VERSION})")
        state = empty_state()
        state.update({k: data["state"][k] for k in state if k in data.get("state", {})})
        with self._cond:
            self._state = state

    def _save(self) -> None:
        """Write atomically (callers hold the lock), so a crash never leaves half a file."""
        path = self._state_file
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": STATE_FILE_VERSION, "state": self._state}, indent=1))
        os.replace(tmp, path)

    # -- WSGI entry -----------------------------------------------------------------------------------
    def _wsgi(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        rid = request_id()
        control = request.path.startswith("/__emulator/")
        response = self._control(request) if control else self._api(request)
        response.headers["fly-request-id"] = rid
        return response(environ, start_response)

    def _api(self, request: Request) -> Response:
        started = time.time()
        method = request.method.upper()
        route: str | None = None
        extra: dict[str, Any] = {}
        try:
            endpoint, args = self._url_map.bind_to_environ(request.environ).match()
            route = str(endpoint)
        except NotFound:
            response = json_response(404, {"error": "not found"})
        except MethodNotAllowed:
            response = json_response(405, {"error": f"method {method} not allowed"})
        if route is not None:
            if self._latency.call_s > 0:
                time.sleep(self._latency.call_s)  # never under the lock
            response = self._dispatch(request, method, route, args, extra)
        mutating = method not in ("GET", "HEAD") and route not in READ_ONLY_ROUTES
        with self._cond:
            call = {
                "method": method,
                "route": route,
                "path": request.path,
                "status": response.status_code,
                "mutating": mutating,
                "t": started,
            }
            call.update(extra)
            self._calls.append(call)
            if mutating:
                self._save()
            self._cond.notify_all()
        log.info("%s %s -> %s", method, request.full_path.rstrip("?"), response.status_code)
        return response

    def _dispatch(self, request: Request, method: str, route: str, args: dict, extra: dict) -> Response:
        auth = self._authenticate(request)
        if auth is not None:
            return auth
        fault = self._take_fault(method, route)
        if fault is not None and not fault.after_effect:
            return _fault_response(fault)
        limited = self._rate_limit(request, method, route, args)
        if limited is not None:
            return limited
        try:
            handler_method = "GET" if method == "HEAD" else method  # never let HEAD reach a mutation branch
            status, payload = self._handlers[route](request, handler_method, extra, **args)
            response = json_response(status, payload)
        except ApiError as exc:
            response = json_response(exc.http_status, exc.body())
        except Exception as exc:  # an emulator bug must still answer like a server, not hang the client
            log.exception("emulator error on %s %s", method, request.path)
            response = json_response(500, {"error": f"internal emulator error: {exc}", "status": "unknown"})
        if fault is not None:
            return _fault_response(fault)
        self._hold_if_asked(method, route, request.path)
        return response

    def _hold_if_asked(self, method: str, route: str, path: str) -> None:
        with self._cond:
            match = next((h for h in self._holds if h["method"] == method and h["route"] == route), None)
            if match is None:
                return
            if match["skip"] > 0:
                match["skip"] -= 1
                return
            self._holds.remove(match)
            self._release.clear()
            entry = {"method": method, "route": route, "path": path}
            self._held.append(entry)
            self._cond.notify_all()
        self._release.wait(timeout=600)  # never under the lock
        with self._cond:
            self._held.remove(entry)

    def _authenticate(self, request: Request) -> Response | None:
        header = request.headers.get("Authorization", "").strip()
        if not header:
            return json_response(401, {"error": "Authenticate: token validation error"})
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme not in ("Bearer", "FlyV1") or not token:
            return json_response(401, {"error": "malformed authorization header"})
        if self._token is not None and token != self._token:
            return json_response(401, {"error": "Authenticate: token validation error"})
        return None

    def _take_fault(self, method: str, route: str) -> Fault | None:
        with self._cond:
            for fault in self._faults:
                if fault.method != method or fault.route != route:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _rate_limit(self, request: Request, method: str, route: str, args: dict) -> Response | None:
        """Fly's documented limits (Fly docs machines/api/working-with-machines-api §Rate Limits; superfly/docs PRs
        #1630 and #1966): 1 req/s per action and per Machine (or app) id with bursts of 3, for every action, GETs
        by id included; Get Machine 5 req/s with bursts of 10; app deletions 100/min."""
        method = "GET" if method == "HEAD" else method
        action = f"{method} {route}"
        if method == "POST" and route.endswith("/lease") and request.headers.get(NONCE_HEADER):
            action += " (refresh)"  # fly-go counts acquiring and refreshing as two actions (flaps/actions.go)
        subject = str(args.get("machine_id") or args.get("volume_id") or args.get("app") or "")
        if not subject and route == "/v1/apps":
            # Creating an app is an action on the app it names; listing is one on the org.
            subject = str(request.args.get("org_slug") or "") if method == "GET" else _body_name(request)
        rate, burst = 1.0, 3
        if method == "GET" and route == "/v1/apps/{app}/machines/{machine_id}":
            rate, burst = 5.0, 10
        elif method == "DELETE" and route == "/v1/apps/{app}":
            rate, burst, subject = 100 / 60, 100, "*"
        with self._cond:
            if not self._rate_limits:
                return None
            wait_s = self._buckets.take((action, subject or "*"), rate, burst, time.monotonic())
        if wait_s is None:
            return None
        response = json_response(429, {"error": "rate limit exceeded", "status": "unknown"})
        response.headers["Retry-After"] = retry_after_header(wait_s)
        return response


def _body_name(request: Request) -> str:
    try:
        body = json_body(request)
    except ApiError:
        return ""
    return str(body.get("name") or body.get("app_name") or "")


def _fault_response(fault: Fault) -> Response:
    body = (
        fault.body
        if fault.body is not None
        else {"error": f"injected failure: HTTP {fault.status} from the Fly emulator", "status": "unknown"}
    )
    response = json_response(fault.status, body)
    if fault.status == 429:
        response.headers["Retry-After"] = "1"
    return response


class _QuietHandler(WSGIRequestHandler):
    """Requests are logged by the emulator itself (at INFO, without headers), not on stderr."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def serve(host: str, port: int, state_file: Path | None, token: str | None) -> None:
    """Blocking: run the emulator until SIGINT/SIGTERM (used by `silo emulator --port N`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fly-emulator %(message)s")
    emulator = FlyEmulator(token=token, state_file=state_file)
    try:
        url = emulator.start(host, port)
    except OSError as exc:
        raise SystemExit(f"error: the Fly emulator cannot listen on {host}:{port}: {exc}") from exc
    except ValueError as exc:  # an unreadable state file
        raise SystemExit(f"error: {exc}") from exc
    done = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        done.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    where = f", state in {state_file}" if state_file else ""
    print(f"Fly Machines API emulator at {url} (use fly:apiUrl / FLY_API_HOSTNAME={url}){where}", flush=True)
    try:
        while not done.wait(timeout=1.0):
            pass
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
