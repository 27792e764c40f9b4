"""What runs inside a started machine: exec, ps and signal (the Machines API's process endpoints).

The emulator runs no process: exec answers through a test's handler, ps lists the init and the
machine's command, and a signal is recorded as an event (SIGKILL ends the process, which the restart
policy then answers).
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from werkzeug.wrappers import Request

from emulators.fly.util import ApiError, json_body, require_int

# The exec timeout passing: the API answers an error whose text starts with `deadline_exceeded`; flyctl
# prints it as "failed to exec on VM …: deadline_exceeded: Post "http://unix/v1/exec": net/http: request
# canceled (Client.Timeout exceeded while awaiting headers)" (flyctl issue #4194). The status is the one
# the Machines API gives every deadline_exceeded (408 Request Timeout, as for `wait`: flyctl issue #1760).
EXEC_DEADLINE_MESSAGE = (
    'deadline_exceeded: Post "http://unix/v1/exec": net/http: request canceled '
    "(Client.Timeout exceeded while awaiting headers)"
)
# SignalRequest.signal in the Machines OpenAPI spec; fly-go's Kill sends the number 9 instead (flaps_machines.go).
SIGNAL_NAMES = (
    "SIGABRT", "SIGALRM", "SIGFPE", "SIGHUP", "SIGILL", "SIGINT", "SIGKILL", "SIGPIPE", "SIGQUIT",
    "SIGSEGV", "SIGTERM", "SIGTRAP", "SIGUSR1",
)  # fmt: skip
SIGNAL_NUMBERS = {"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGILL": 4, "SIGTRAP": 5, "SIGABRT": 6, "SIGFPE": 8,
                  "SIGKILL": 9, "SIGUSR1": 10, "SIGSEGV": 11, "SIGPIPE": 13, "SIGALRM": 14, "SIGTERM": 15}  # fmt: skip


class ProcessesMixin:
    """The exec, ps and signal routes of `FlyEmulator` (server.py)."""

    def _started_machine(self, app: str, machine_id: str, now: float) -> dict:
        m = self._machine(app, machine_id, now)
        if m["state"] != "started":
            raise ApiError(412, f"failed_precondition: machine {machine_id} is {m['state']}, not started", "unknown")
        return m

    def _h_machine_exec(self, request: Request, method: str, extra: dict, app: str, machine_id: str) -> tuple[int, Any]:
        body = json_body(request)
        if isinstance(body.get("command"), list) and body["command"]:
            cmd = body["command"]
            if not all(isinstance(part, str) for part in cmd):
                raise ApiError(400, "invalid command: a list of strings is required")
        elif isinstance(body.get("cmd"), str) and body["cmd"].strip():
            cmd = shlex.split(body["cmd"])
        else:
            raise ApiError(400, "invalid request: either command (list of strings) or cmd (string) is required")
        timeout = require_int(body, "timeout", lo=0) or 0
        with self._cond:
            self._started_machine(app, machine_id, time.time())
            handler = self._exec_handler
            self._exec_log.append({"app": app, "machine_id": machine_id, "cmd": list(cmd)})
        extra["cmd"] = list(cmd)
        result: dict = {"exit_code": 0, "exit_signal": 0, "stdout": "", "stderr": ""}
        began = time.monotonic()
        if handler is not None:  # called without the lock: handlers may take their time
            answer = handler(app, machine_id, list(cmd))
            if not isinstance(answer, dict):
                raise ApiError(500, f"exec handler returned {type(answer).__name__}, not a dict")
            result.update(answer)
        # A handler that outlives the request's timeout, or says it would (`deadline_exceeded`), gets the
        # answer Fly gives when the exec timeout passes.
        if result.get("deadline_exceeded") or (timeout and time.monotonic() - began > timeout):
            raise ApiError(408, EXEC_DEADLINE_MESSAGE, "unknown")
        # The API's flydv1.ExecResponse has exit_code, exit_signal, stdout and stderr (current Machines OpenAPI
        # spec); fly-go's MachineExecResponse tags its fields omitempty: a successful run answers without
        # exit_code (Go drops the 0), and a zero signal and empty output are left out too.
        answer = {
            "exit_code": int(result["exit_code"]),
            "exit_signal": int(result["exit_signal"]),
            "stdout": str(result["stdout"]),
            "stderr": str(result["stderr"]),
        }
        return 200, {k: v for k, v in answer.items() if v}

    def _h_machine_ps(self, request: Request, method: str, extra: dict, app: str, machine_id: str) -> tuple[int, Any]:
        """fly-go GetProcesses (MachinePsResponse: pid int32, the counters uint64): the init and the command."""
        with self._cond:
            now = time.time()
            m = self._started_machine(app, machine_id, now)
            cfg = m["config"]
            init = cfg.get("init") or {}
            command = init.get("exec") or [*(init.get("entrypoint") or []), *(init.get("cmd") or [])] or [cfg["image"]]
            ports = sorted({s["internal_port"] for s in cfg.get("services") or [] if s.get("internal_port")})
            ports += sorted({c["port"] for c in (cfg.get("checks") or {}).values() if c.get("port")} - set(ports))
            uptime_ms = max(0, int((now - m.get("started_at", now)) * 1000))
            idle = {"stime": 0, "rtime": uptime_ms, "cpu": 0, "rss": 0, "directory": "/"}
            return 200, [
                {"pid": 1, "command": "/.fly/init", "listen_sockets": [], **idle},
                {
                    "pid": 300,
                    "command": shlex.join(str(part) for part in command),
                    "listen_sockets": [{"proto": "tcp", "address": f"0.0.0.0:{p}"} for p in ports],
                    **idle,
                },
            ]

    def _h_machine_signal(
        self, request: Request, method: str, extra: dict, app: str, machine_id: str
    ) -> tuple[int, Any]:
        body = json_body(request)
        sig = body.get("signal")
        if isinstance(sig, int) and not isinstance(sig, bool) and 1 <= sig <= 31:
            name = next((n for n, number in SIGNAL_NUMBERS.items() if number == sig), f"signal {sig}")
        elif sig in SIGNAL_NAMES:
            name = str(sig)
        else:
            raise ApiError(400, f"invalid signal {sig!r}; expected one of {', '.join(SIGNAL_NAMES)} or its number")
        with self._cond:
            now = time.time()
            m = self._started_machine(app, machine_id, now)
            self._event(m, "signal", now, name)
            if name == "SIGKILL":
                # The process is gone; what follows is the restart policy's answer to an exit (OpenAPI
                # fly.MachineRestart: "no" leaves it stopped; on-failure, the default, and always restart it).
                if (m["config"].get("restart") or {}).get("policy") == "no":
                    self._transition(m, "stopping", "stopped", 0.0, now)
                else:
                    self._transition(m, "restarting", "started", self._latency.boot_s, now)
            return 200, {"ok": True}
