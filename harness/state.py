"""Harness state file: `<state-dir>/<stack>.json`, the harness's equivalent of a Pulumi checkpoint.

Values are kept per top-level property. The SDK pushes nested secretness up to the top-level key
(`rpc.deserialize_property`), so marking whole top-level keys secret loses nothing. Secret values are
written as `{"secure": "<Fernet token>"}`; the key is derived from `PULUMI_CONFIG_PASSPHRASE`
(default "harness") and a random salt kept in the file, so plaintext secrets never reach disk.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pulumi.output import Unknown

STATE_VERSION = 1
DEFAULT_PASSPHRASE = "harness"
_KDF_ITERATIONS = 200_000


class StateError(Exception):
    """The state file is unreadable, or its secrets cannot be decrypted."""


def passphrase_from_env() -> str:
    return os.environ.get("PULUMI_CONFIG_PASSPHRASE") or DEFAULT_PASSPHRASE


def state_path(state_dir: Path, stack: str) -> Path:
    return Path(state_dir) / f"{stack}.json"


@dataclass
class ResourceState:
    """One resource as recorded after a completed step. `inputs`/`outputs` hold plain values;
    `secret_inputs`/`secret_outputs` name the top-level keys that are secret."""

    urn: str
    type: str
    id: str = ""
    custom: bool = True
    parent: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_inputs: set[str] = field(default_factory=set)
    secret_outputs: set[str] = field(default_factory=set)
    dependencies: list[str] = field(default_factory=list)
    # input key -> URNs its value came from (the engine's propertyDependencies)
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    protect: bool = False
    retain_on_delete: bool = False
    additional_secret_outputs: list[str] = field(default_factory=list)
    delete_before_replace: bool = False
    provider: str = ""

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


@dataclass
class StackState:
    stack: str
    project: str = ""
    resources: dict[str, ResourceState] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    # Old halves of create-before-delete replacements still to be deleted (retried on the next up).
    pending_deletions: list[ResourceState] = field(default_factory=list)


class _Cipher:
    def __init__(self, passphrase: str, salt: bytes) -> None:
        kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=_KDF_ITERATIONS)
        self._fernet = Fernet(base64.urlsafe_b64encode(kdf.derive(passphrase.encode())))

    def encrypt(self, value: Any) -> dict[str, str]:
        return {"secure": self._fernet.encrypt(json.dumps(value).encode()).decode()}

    def decrypt(self, blob: dict[str, str], where: str) -> Any:
        try:
            return json.loads(self._fernet.decrypt(blob["secure"].encode()))
        except InvalidToken:
            raise StateError(
                f"cannot decrypt secret {where}: wrong PULUMI_CONFIG_PASSPHRASE for this state file"
            ) from None


def _json_default(value: Any) -> Any:
    # An unknown can only reach state if a value never resolved; store it as absent rather than crash.
    if isinstance(value, Unknown):
        return None
    raise TypeError(f"cannot store {type(value).__name__} in state")


def _is_secure(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"secure"} and isinstance(value["secure"], str)


def _encode_props(cipher: _Cipher, props: dict[str, Any], secret: set[str]) -> dict[str, Any]:
    return {k: cipher.encrypt(v) if k in secret else v for k, v in props.items()}


def _decode_props(cipher: _Cipher, props: dict[str, Any], where: str) -> tuple[dict[str, Any], set[str]]:
    plain: dict[str, Any] = {}
    secret: set[str] = set()
    for k, v in props.items():
        if _is_secure(v):
            plain[k] = cipher.decrypt(v, f"{where}.{k}")
            secret.add(k)
        else:
            plain[k] = v
    return plain, secret


def _encode_resource(cipher: _Cipher, res: ResourceState) -> dict[str, Any]:
    return {
        "type": res.type,
        "id": res.id,
        "custom": res.custom,
        "parent": res.parent,
        "provider": res.provider,
        "inputs": _encode_props(cipher, res.inputs, res.secret_inputs),
        "outputs": _encode_props(cipher, res.outputs, res.secret_outputs),
        "dependencies": list(res.dependencies),
        "property_dependencies": {k: list(v) for k, v in res.property_dependencies.items()},
        "protect": res.protect,
        "retain_on_delete": res.retain_on_delete,
        "additional_secret_outputs": list(res.additional_secret_outputs),
        "delete_before_replace": res.delete_before_replace,
    }


def _decode_resource(cipher: _Cipher, urn: str, raw: dict[str, Any]) -> ResourceState:
    inputs, secret_inputs = _decode_props(cipher, raw.get("inputs", {}), f"{urn} input")
    outputs, secret_outputs = _decode_props(cipher, raw.get("outputs", {}), f"{urn} output")
    return ResourceState(
        urn=urn,
        type=raw["type"],
        id=raw.get("id", ""),
        custom=raw.get("custom", True),
        parent=raw.get("parent", ""),
        provider=raw.get("provider", ""),
        inputs=inputs,
        outputs=outputs,
        secret_inputs=secret_inputs,
        secret_outputs=secret_outputs,
        dependencies=list(raw.get("dependencies", [])),
        property_dependencies={k: list(v) for k, v in raw.get("property_dependencies", {}).items()},
        protect=raw.get("protect", False),
        retain_on_delete=raw.get("retain_on_delete", False),
        additional_secret_outputs=list(raw.get("additional_secret_outputs", [])),
        delete_before_replace=raw.get("delete_before_replace", False),
    )


class StateStore:
    """Reads and atomically rewrites one stack's state file; `save` is safe to call from many threads."""

    def __init__(self, state_dir: Path, stack: str, passphrase: str | None = None) -> None:
        self.path = state_path(state_dir, stack)
        self.stack = stack
        self._passphrase = passphrase if passphrase is not None else passphrase_from_env()
        self._lock = threading.Lock()
        self._salt: bytes = os.urandom(16)
        self._cipher: _Cipher | None = None

    def _get_cipher(self) -> _Cipher:
        if self._cipher is None:
            self._cipher = _Cipher(self._passphrase, self._salt)
        return self._cipher

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> StackState:
        if not self.path.exists():
            return StackState(stack=self.stack)
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StateError(f"state file {self.path} is unreadable: {exc}") from exc
        if raw.get("version") != STATE_VERSION:
            raise StateError(f"state file {self.path}: unsupported version {raw.get('version')!r}")
        self._salt = base64.b64decode(raw["salt"])
        self._cipher = None
        cipher = self._get_cipher()
        outputs, secret_outputs = _decode_props(cipher, raw.get("outputs", {}), "stack output")
        return StackState(
            stack=raw.get("stack", self.stack),
            project=raw.get("project", ""),
            resources={urn: _decode_resource(cipher, urn, r) for urn, r in raw.get("resources", {}).items()},
            outputs=outputs,
            secret_outputs=secret_outputs,
            pending_deletions=[_decode_resource(cipher, p["urn"], p) for p in raw.get("pending_deletions", [])],
        )

    def save(self, state: StackState) -> None:
        with self._lock:
            cipher = self._get_cipher()
            doc = {
                "version": STATE_VERSION,
                "stack": state.stack,
                "project": state.project,
                "salt": base64.b64encode(self._salt).decode(),
                "resources": {urn: _encode_resource(cipher, r) for urn, r in list(state.resources.items())},
                "outputs": _encode_props(cipher, state.outputs, state.secret_outputs),
                "pending_deletions": [
                    {"urn": p.urn, **_encode_resource(cipher, p)} for p in list(state.pending_deletions)
                ],
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(doc, fh, indent=2, default=_json_default)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


def load(state_dir: Path, stack: str, passphrase: str | None = None) -> StackState:
    """Decrypted state of `stack` (empty if the stack has never been deployed)."""
    return StateStore(Path(state_dir), stack, passphrase).load()
