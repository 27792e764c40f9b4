"""Reading the Fly Machines API's answers for people: an exec's failure, a machine's last events, an IP's
kind. Pure functions over the answers' JSON (fly-go's models), used by the client, the providers and
`silo status`."""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from typing import Any


def exec_failure(result: Mapping[str, Any]) -> str | None:
    """Why an exec answer is a failure ("exit 3", "killed by signal 9 (SIGKILL)"), or None when it is not:
    a command killed by a signal has failed whatever its exit code says."""
    code, sig = int(result.get("exit_code") or 0), int(result.get("exit_signal") or 0)
    if sig:
        return f"killed by signal {sig}{f' ({_signal_name(sig)})' if _signal_name(sig) else ''}"
    return f"exit {code}" if code else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return ""


def describe_events(events: list[Mapping[str, Any]], limit: int = 5) -> str:
    """The newest `limit` machine events, newest first (fly-go MachineEvent: type, status, source, timestamp
    in ms, and for an exit request.exit_event or request.MonitorEvent.exit_event), one clause each."""
    newest = sorted((e for e in events if isinstance(e, Mapping)), key=lambda e: -int(e.get("timestamp") or 0))
    clauses = [_describe_event(e) for e in newest[:limit]]
    return "; ".join(clauses) if clauses else "none reported"


def _describe_event(event: Mapping[str, Any]) -> str:
    at = int(event.get("timestamp") or 0)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at / 1000)) if at else "?"
    text = f"{when} {event.get('type', '?')} ({event.get('status', '?')})"
    request = event.get("request") if isinstance(event.get("request"), Mapping) else {}
    monitor = request.get("MonitorEvent") if isinstance(request.get("MonitorEvent"), Mapping) else {}
    exit_event = monitor.get("exit_event") or request.get("exit_event")
    if isinstance(exit_event, Mapping):
        details = [f"exit code {exit_event.get('exit_code', '?')}"]
        if exit_event.get("signal"):
            details.append(f"signal {exit_event['signal']}")
        if exit_event.get("oom_killed"):
            details.append("out of memory")
        text += ": " + ", ".join(details)
    return text


def ip_kind(ip: Mapping[str, Any]) -> str:
    """The assignment type of a listed IP (the list answer has no `type`; infer it as fly-go does)."""
    if ip.get("type"):
        return str(ip["type"])
    address = str(ip.get("ip", ""))
    if address.startswith("fdaa:"):
        return "private_v6"
    if ":" in address:
        return "v6"
    return "shared_v4" if ip.get("shared") else "v4"
