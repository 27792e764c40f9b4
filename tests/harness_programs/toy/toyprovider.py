"""Toy dynamic provider for the harness tests. Importable module (pickled by reference), no import-time
side effects. Every call is appended to the JSON-lines file named by env TOY_RECORD (written from the
provider host process, so records carry that process's pid). Env TOY_FAIL="create:b,update:c" makes
those calls raise."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    ConfigureRequest,
    CreateResult,
    DiffResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)
from pulumi.output import Unknown

_LOCK = threading.Lock()
_COMPARED = ("size", "zone", "upstream", "token", "dbr", "tags")


def _record(method: str, name: str, start: float, **extra: Any) -> None:
    path = os.environ.get("TOY_RECORD")
    if not path:
        return
    line = json.dumps({"method": method, "name": name, "pid": os.getpid(), "start": start, "end": time.time(), **extra})
    with _LOCK, open(path, "a") as fh:
        fh.write(line + "\n")


def _maybe_fail(method: str, name: str) -> None:
    wanted = {tuple(item.split(":", 1)) for item in os.environ.get("TOY_FAIL", "").split(",") if ":" in item}
    if (method, name) in wanted:
        raise RuntimeError(f"toy {method} failed for {name}")


def _norm(value: Any) -> Any:
    # Numbers cross the gRPC Struct as doubles: 2 comes back as 2.0.
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class ToyProvider(ResourceProvider):
    def configure(self, req: ConfigureRequest) -> None:
        start = time.time()
        cfg = req.config
        _record(
            "configure",
            "",
            start,
            greeting=cfg.get("toy:greeting"),
            greeting_unqualified=cfg.get("greeting"),
            tags=cfg.get("toy:tags"),
            token_present=bool(cfg.get("toy:token")),
            token_length=len(cfg.get("toy:token") or ""),
        )

    def check(self, _olds: dict, news: dict) -> CheckResult:
        start = time.time()
        failures = []
        size = news.get("size")
        if not isinstance(size, Unknown) and (size is None or _norm(size) < 1):
            failures.append(CheckFailure("size", f"size must be at least 1, got {size}"))
        _record("check", news.get("name", ""), start)
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict, news: dict) -> DiffResult:
        start = time.time()
        changed = [k for k in _COMPARED if _norm(olds.get(k)) != _norm(news.get(k))]
        replaces = [k for k in changed if k == "zone"]
        _record("diff", news.get("name", ""), start, changed=changed)
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=bool(news.get("dbr")))

    def create(self, props: dict) -> CreateResult:
        start = time.time()
        name = props["name"]
        time.sleep(float(props.get("delay") or 0))
        _maybe_fail("create", name)
        serial = f"{name}-{uuid.uuid4().hex[:8]}"
        _record("create", name, start, zone=props.get("zone"))
        return CreateResult(serial, {**props, "serial": serial})

    def update(self, _id: str, olds: dict, news: dict) -> UpdateResult:
        start = time.time()
        time.sleep(float(news.get("delay") or 0))
        _maybe_fail("update", news["name"])
        _record("update", news["name"], start, size=news.get("size"))
        return UpdateResult({**news, "serial": olds["serial"]})

    def delete(self, id_: str, props: dict) -> None:
        start = time.time()
        _maybe_fail("delete", props["name"])
        _record("delete", props["name"], start, id=id_, zone=props.get("zone"))


class PlainProvider(ResourceProvider):
    """No `diff`: the host answers DIFF_UNKNOWN and the engine compares old and new inputs itself."""

    def create(self, props: dict) -> CreateResult:
        start = time.time()
        _record("create", props["name"], start)
        return CreateResult(f"plain-{props['name']}", dict(props))

    def update(self, _id: str, olds: dict, news: dict) -> UpdateResult:
        start = time.time()
        _record("update", news["name"], start, size=news.get("size"))
        return UpdateResult(dict(news))

    def delete(self, id_: str, props: dict) -> None:
        start = time.time()
        _record("delete", props["name"], start, id=id_)


class Plain(Resource, module="toy", name="Plain"):
    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(PlainProvider(), name, {"name": name, **props}, opts)


class Thing(Resource, module="toy", name="Thing"):
    serial: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(ToyProvider(), name, {"name": name, "serial": None, **props}, opts)
