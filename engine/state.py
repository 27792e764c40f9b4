"""A stack's checkpoint as `pulumi stack export --show-secrets` prints it, in plain Python.

Pulumi marks a secret value in an exported deployment with a signature key
(sdk/go/common/resource/sig.Secret = "1b47061264138c4ac30d75fd1eb44270") and its JSON-encoded
`plaintext` (with --show-secrets) or `ciphertext`. `load_deployment` unwraps the plaintext ones and
remembers which top-level properties were secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
STACK_TYPE = "pulumi:pulumi:Stack"


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def reveal(value: Any) -> Any:
    """The value with every secret envelope replaced by its plaintext (ciphertext ones stay as they are)."""
    if is_secret(value):
        return reveal(json.loads(value["plaintext"])) if "plaintext" in value else value
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


@dataclass
class ResourceState:
    urn: str
    type: str
    id: str = ""
    custom: bool = True
    parent: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    dependencies: list[str] = field(default_factory=list)
    protect: bool = False
    retain_on_delete: bool = False
    pending_delete: bool = False
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


@dataclass
class StackState:
    resources: dict[str, ResourceState] = field(default_factory=dict)  # live resources by URN
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    pending_deletions: list[ResourceState] = field(default_factory=list)
    pending_operations: list[dict[str, Any]] = field(default_factory=list)


def load_deployment(exported: dict[str, Any]) -> StackState:
    """`exported` is the JSON of `pulumi stack export --show-secrets`."""
    deployment = exported.get("deployment") or {}
    state = StackState(pending_operations=list(deployment.get("pending_operations") or []))
    for raw in deployment.get("resources") or []:
        outputs = raw.get("outputs") or {}
        res = ResourceState(
            urn=raw["urn"],
            type=raw["type"],
            id=raw.get("id") or "",
            custom=bool(raw.get("custom")),
            parent=raw.get("parent") or "",
            inputs=reveal(raw.get("inputs") or {}),
            outputs=reveal(outputs),
            secret_outputs={k for k, v in outputs.items() if is_secret(v)},
            dependencies=list(raw.get("dependencies") or []),
            protect=bool(raw.get("protect")),
            retain_on_delete=bool(raw.get("retainOnDelete")),
            pending_delete=bool(raw.get("delete")),
            raw=raw,
        )
        if res.pending_delete:
            state.pending_deletions.append(res)
            continue
        if res.type == STACK_TYPE:
            state.outputs = res.outputs
            state.secret_outputs = res.secret_outputs
        state.resources[res.urn] = res
    return state
