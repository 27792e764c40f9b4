"""What every dynamic provider here needs to honour the engine's contract (Pulumi docs, Dynamic providers).

- Numbers cross the gRPC boundary as doubles (3 → 3.0) and None-valued keys are dropped: compare
  canonical forms, or every preview shows a change.
- During preview, values computed by other resources arrive as ``Unknown``: an unknown new value may
  differ, so it counts as a change.
- ``diff`` must ignore ``__provider`` (the pickled provider changes with any code or SDK upgrade).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import ConfigureRequest, DiffResult, ResourceProvider
from pulumi.output import Unknown

# Added to a volume's checked inputs when they change an immutable input of the deployed volume, i.e.
# when the engine will replace it. A policy pack sees a resource's checked inputs but neither its old
# state nor the step the engine plans (Pulumi docs, "Policy as Code": resource validation policies get
# the resource's inputs), so this is how the silo guardrails (policy/) see a data volume's replacement
# at preview. It is never part of the outputs, and `diff` does not compare it.
# (Here rather than in fly/volumes.py: the policy pack reads it without importing the Fly client.)
REPLACEMENT_KEY = "immutable_changes"

PROVIDER_KEY = "__provider"


def canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str | Unknown):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def has_unknown(value: Any) -> bool:
    if isinstance(value, Unknown):
        return True
    if isinstance(value, Mapping):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_unknown(v) for v in value)
    return False


def changed_keys(olds: Mapping[str, Any], news: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """Keys whose value differs (an unknown new value counts as a change: it may differ)."""
    return [k for k in keys if has_unknown(news.get(k)) or canonical(olds.get(k)) != canonical(news.get(k))]


def diff_result(
    olds: Mapping[str, Any],
    news: Mapping[str, Any],
    *,
    compare: Iterable[str],
    replace_on: Iterable[str],
    delete_before_replace: bool = True,
) -> DiffResult:
    """An explicit diff over `compare` (never `__provider`); `replace_on` keys that changed replace."""
    changes = changed_keys(olds, news, list(compare))
    replaces = [k for k in replace_on if k in changes]
    return DiffResult(
        changes=bool(changes), replaces=replaces, delete_before_replace=delete_before_replace if replaces else None
    )


# The stack that declares a resource says how a user sets its inputs (`config_keys`: input name -> the
# setting to name, e.g. "allow_delete" -> "silo:allowDataDeletion=true"), so provider messages point at
# the user's own configuration without this layer knowing any product's keys.
CONFIG_KEYS = "config_keys"


def setting(props: Mapping[str, Any], key: str, default: str) -> str:
    """How the user sets input `key` of this resource, as its stack described it; `default` otherwise."""
    return str((props.get(CONFIG_KEYS) or {}).get(key) or default)


def strip_provider(props: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if k != PROVIDER_KEY}


def pick(props: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: props[k] for k in keys if k in props}


class DynamicResource(pulumi.dynamic.Resource):
    """The base of every dynamic resource here.

    pulumi 3.272's `serialize_provider` patches `pickle._Pickler._batch_setitems` with a sorting
    wrapper and never puts the original back, so each dynamic resource a process constructs adds one
    more wrapper layer around the last: after a few hundred resources (a silo with ~50 towns in one
    `up`) pickling a provider raises RecursionError. The SDK restores it itself from 3.274
    (sdk/python/lib/pulumi/dynamic/dynamic.py); PyPI here stops at 3.272, so restore it around each
    construction: every serialization then wraps the same original method once.
    """

    def __init__(
        self,
        provider: ResourceProvider,
        name: str,
        props: Mapping[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        saved = pickle._Pickler.__dict__["_batch_setitems"]
        try:
            super().__init__(provider, name, dict(props), opts)
        finally:
            pickle._Pickler._batch_setitems = saved


class ApiProvider(ResourceProvider):
    """A dynamic provider that talks to one HTTP API (Fly Machines, Cloudflare).

    It holds only plain data: the instance is pickled into every resource's state and unpickled by the
    provider host, so a client or a resolved token must never live on it. ``configure()`` keeps the
    stack config values named in ``STACK_CONFIG_KEYS`` (the engine sends a dynamic provider the whole
    stack config: pulumi/pulumi pkg/resource/deploy/target.go); ``settings()`` and
    ``client()`` are built from them on each call, falling back to the environment, so a token
    rotated since the resource was created still works for ``refresh`` and ``destroy``.
    """

    STACK_CONFIG_KEYS: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._config: dict[str, str | None] = {}

    def configure(self, req: ConfigureRequest) -> None:
        self._config = {key: req.config.get(key) for key in self.STACK_CONFIG_KEYS}

    def stack_config(self) -> dict[str, str | None]:
        """The values configure() kept; empty before it ran (or in an instance pickled without them)."""
        return getattr(self, "_config", {}) or {}

    def settings(self) -> Any:
        """The API's settings (URL, token) for this call."""
        raise NotImplementedError

    def client(self) -> Any:
        """A client for this call, built from settings(); the caller closes it (a context manager)."""
        raise NotImplementedError
