"""Step generation and execution: what the Pulumi engine does between the program and the providers.

Registrations arrive concurrently (one SDK executor thread each) and run their provider calls in
parallel; state mutations and checkpoints are serialised under one lock, like the engine's snapshot
manager. After the first failed step no new step starts (the engine cancels the deployment), but
in-flight steps finish and are recorded.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulumi.output import Unknown
from pulumi.runtime.proto import provider_pb2

from .builtins import BUILTIN_SECRET_OUTPUTS, POSTGRES_TYPES, builtin_provider
from .provider_host import PROVIDER_KEY, ProviderError, ProviderHost
from .state import ResourceState, StackState, StateStore

STACK_TYPE = "pulumi:pulumi:Stack"
STACK_REFERENCE_TYPE = "pulumi:pulumi:StackReference"
DYNAMIC_PREFIX = "pulumi-python:dynamic"
DIFF_UNKNOWN = provider_pb2.DiffResponse.DIFF_UNKNOWN
DIFF_NONE = provider_pb2.DiffResponse.DIFF_NONE
OPS = ("create", "update", "replace", "delete", "same", "read")
DELETE_WORKERS = 16


class DeploymentError(Exception):
    """A step failed; the message is what the user sees (names the resource and the reason)."""


class DeploymentCancelled(DeploymentError):
    """Raised for registrations that arrive after an earlier step failed."""


def make_urn(stack: str, project: str, parent: str, type_: str, name: str) -> str:
    """URN as the engine builds it: the parent's qualified type chain, except the root stack's."""
    if parent:
        parent_type = parent.split("::")[2]
        if parent_type != STACK_TYPE:
            type_ = f"{parent_type}${type_}"
    return f"urn:pulumi:{stack}::{project}::{type_}::{name}"


@dataclass
class Registration:
    urn: str
    type: str
    name: str
    custom: bool
    parent: str
    inputs: dict[str, Any]
    secret_inputs: set[str]
    dependencies: list[str] = field(default_factory=list)
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    protect: bool = False
    retain_on_delete: bool = False
    delete_before_replace: bool = False
    additional_secret_outputs: list[str] = field(default_factory=list)
    ignore_changes: list[str] = field(default_factory=list)
    replace_on_changes: list[str] = field(default_factory=list)
    provider: str = ""
    alias_urns: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """What RegisterResource answers: id ("" = unknown in preview), outputs and which are secret."""

    id: str
    outputs: dict[str, Any]
    secret_outputs: set[str]


def _without_provider(props: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if k != PROVIDER_KEY}


def _changed_keys(olds: Mapping[str, Any], news: Mapping[str, Any]) -> set[str]:
    return {k for k in set(olds) | set(news) if k != PROVIDER_KEY and olds.get(k) != news.get(k)}


def _contains_unknown(value: Any) -> bool:
    if isinstance(value, Unknown):
        return True
    if isinstance(value, Mapping):
        return any(_contains_unknown(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_unknown(v) for v in value)
    return False


class Deployment:
    def __init__(
        self,
        *,
        operation: str,
        project: str,
        stack: str,
        project_dir: Path,
        store: StateStore,
        config: Mapping[str, str],
        state_dir: Path,
    ) -> None:
        self.operation = operation
        self.preview = operation == "preview"
        self.project = project
        self.stack = stack
        self.project_dir = Path(project_dir)
        self.state_dir = Path(state_dir)
        self.store = store
        self.config = dict(config)
        self.state: StackState = store.load()
        self.state.project = project
        self._prior_pending = list(self.state.pending_deletions)
        self.lock = threading.RLock()
        self.registered: set[str] = set()
        self.steps: list[dict[str, str]] = []
        self.diagnostics: list[dict[str, str]] = []
        self.errors: list[str] = []
        self.failed = threading.Event()
        self.stack_outputs: dict[str, Any] | None = None
        self.stack_secret_outputs: set[str] = set()
        self._host: ProviderHost | None = None
        # Dependents deleted ahead of a delete-before-replace; their later creation is their replacement.
        self._delete_replaced: set[str] = set()

    # -- bookkeeping -------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        if not self.preview:
            self.store.save(self.state)

    def _record(self, urn: str, type_: str, op: str) -> None:
        with self.lock:
            self.steps.append({"urn": urn, "type": type_, "name": urn.rsplit("::", 1)[-1], "op": op})

    def diagnose(self, severity: str, message: str, urn: str = "") -> None:
        with self.lock:
            self.diagnostics.append({"severity": severity, "message": message, "urn": urn})

    def fail(self, message: str, urn: str = "") -> DeploymentError:
        with self.lock:
            self.errors.append(message)
            self.failed.set()
        self.diagnose("error", message, urn)
        return DeploymentError(message)

    def _provider(self, type_: str, provider_ref: str = "") -> Any:
        if type_ in POSTGRES_TYPES:
            # Connection settings come from the explicit postgresql provider resource it names.
            provider_urn = provider_ref.rsplit("::", 1)[0]
            with self.lock:
                provider_res = self.state.resources.get(provider_urn)
            if provider_res is None:
                raise DeploymentError(f"{type_} needs an explicit postgresql provider (got {provider_ref!r})")
            return POSTGRES_TYPES[type_](provider_res.inputs)
        if type_.startswith(DYNAMIC_PREFIX):
            with self.lock:
                if self._host is None:
                    self._host = ProviderHost(self.project_dir, self.project, self.config)
                return self._host
        builtin = builtin_provider(type_)
        if builtin is None:
            raise DeploymentError(
                f"no provider for resource type {type_!r}: the harness runs dynamic providers and "
                "emulates random:*, postgresql Role/Grant and pulumi:providers:* only"
            )
        return builtin

    def close(self) -> None:
        if self._host is not None:
            self._host.close()

    # -- registration ------------------------------------------------------------------------

    def register(self, reg: Registration) -> Outcome:
        with self.lock:
            if self.failed.is_set():
                raise DeploymentCancelled(
                    f"{reg.type} {reg.name!r} was not processed: the deployment stopped after an earlier error"
                )
            if reg.urn in self.registered:
                raise self.fail(f"duplicate resource URN {reg.urn!r}: logical names must be unique", reg.urn)
            self.registered.add(reg.urn)
            old = self.state.resources.get(reg.urn)
            old_urn = reg.urn
            if old is None:
                for alias in reg.alias_urns:
                    if alias in self.state.resources:
                        old, old_urn = self.state.resources[alias], alias
                        self.registered.add(alias)
                        break
        if not reg.custom:
            return self._register_component(reg, old, old_urn)
        try:
            return self._register_custom(reg, old, old_urn)
        except DeploymentCancelled:
            raise
        except ProviderError as err:
            raise self.fail(f"{reg.type} {reg.name!r}: {err.method} failed: {err.message}", reg.urn) from None
        except DeploymentError as err:
            raise self.fail(str(err), reg.urn) from None
        except Exception as err:
            raise self.fail(f"{reg.type} {reg.name!r}: {type(err).__name__}: {err}", reg.urn) from err

    def _new_state(
        self, reg: Registration, id_: str, inputs: dict, outputs: dict, secret_in: set[str]
    ) -> ResourceState:
        secret_out = {k for k in outputs if k in secret_in or k in reg.additional_secret_outputs}
        secret_out |= {k for k in BUILTIN_SECRET_OUTPUTS.get(reg.type, ()) if k in outputs}
        if PROVIDER_KEY in outputs:
            secret_out.add(PROVIDER_KEY)
        return ResourceState(
            urn=reg.urn,
            type=reg.type,
            id=id_,
            custom=reg.custom,
            parent=reg.parent,
            provider=reg.provider,
            inputs=inputs,
            outputs=outputs,
            secret_inputs={k for k in inputs if k in secret_in},
            secret_outputs=secret_out,
            dependencies=list(reg.dependencies),
            property_dependencies={k: list(v) for k, v in reg.property_dependencies.items()},
            protect=reg.protect,
            retain_on_delete=reg.retain_on_delete,
            additional_secret_outputs=list(reg.additional_secret_outputs),
            delete_before_replace=reg.delete_before_replace,
        )

    def _commit(self, new: ResourceState, old_urn: str, op: str, pending: ResourceState | None = None) -> Outcome:
        with self.lock:
            if not self.preview:
                if old_urn != new.urn:
                    self.state.resources.pop(old_urn, None)
                self.state.resources[new.urn] = new
                if pending is not None:
                    self.state.pending_deletions.append(pending)
                self._checkpoint()
            self.steps.append({"urn": new.urn, "type": new.type, "name": new.name, "op": op})
        return Outcome(new.id, new.outputs, new.secret_outputs)

    def _register_component(self, reg: Registration, old: ResourceState | None, old_urn: str) -> Outcome:
        unchanged = old is not None and old.inputs == reg.inputs and old.parent == reg.parent
        op = "create" if old is None else "same" if unchanged else "update"
        new = self._new_state(reg, "", reg.inputs, {}, reg.secret_inputs)
        if old is not None:  # component outputs arrive later through RegisterResourceOutputs
            new.outputs, new.secret_outputs = old.outputs, old.secret_outputs
        self._commit(new, old_urn, op)
        return Outcome("", {}, set())

    def _register_custom(self, reg: Registration, old: ResourceState | None, old_urn: str) -> Outcome:
        provider = self._provider(reg.type, reg.provider)
        news = dict(reg.inputs)
        secret_in = set(reg.secret_inputs) | ({PROVIDER_KEY} if PROVIDER_KEY in news else set())
        old_inputs = old.inputs if old is not None else {}
        if old is not None:
            # ignoreChanges: the engine patches news with the old values before Check.
            for key in reg.ignore_changes:
                if key in old_inputs:
                    news[key] = old_inputs[key]
                    if key in old.secret_inputs:
                        secret_in.add(key)
                else:
                    news.pop(key, None)

        checked, failures = provider.check(reg.urn, old_inputs, news)
        if failures:
            detail = "; ".join(f"{prop or '<resource>'}: {reason}" for prop, reason in failures)
            raise DeploymentError(f"{reg.type} {reg.name!r}: check failed: {detail}")

        if old is None:
            return self._create(reg, provider, checked, secret_in, old_urn)

        diff = provider.diff(reg.urn, old.id, old.outputs, checked, old.inputs)
        changed = _changed_keys(old.inputs, checked)
        replace = bool(diff.replaces)
        if not replace and reg.replace_on_changes and changed:
            replace = "*" in reg.replace_on_changes or bool(changed & set(reg.replace_on_changes))
        if replace:
            return self._replace(reg, provider, old, old_urn, checked, secret_in, diff.delete_before_replace)
        if diff.changes == DIFF_NONE or (diff.changes == DIFF_UNKNOWN and not changed):
            new = self._new_state(reg, old.id, checked, old.outputs, secret_in)
            new.secret_outputs |= old.secret_outputs
            return self._commit(new, old_urn, "same")
        if self.preview:
            return self._commit(self._new_state(reg, old.id, checked, checked, secret_in), old_urn, "update")
        self._check_cancelled(reg)
        outputs = provider.update(reg.urn, old.id, old.outputs, checked, old.inputs)
        return self._commit(self._new_state(reg, old.id, checked, outputs, secret_in), old_urn, "update")

    def _check_cancelled(self, reg: Registration) -> None:
        if self.failed.is_set():
            raise DeploymentCancelled(
                f"{reg.type} {reg.name!r} was not changed: the deployment stopped after an earlier error"
            )

    def _create(self, reg: Registration, provider: Any, checked: dict, secret_in: set[str], old_urn: str) -> Outcome:
        if self.preview:
            # Providers without supportsPreview: the previewed outputs are the inputs.
            return self._commit(self._new_state(reg, "", checked, checked, secret_in), old_urn, "create")
        self._check_cancelled(reg)
        id_, outputs = provider.create(reg.urn, checked)
        op = "replace" if reg.urn in self._delete_replaced else "create"
        return self._commit(self._new_state(reg, id_, checked, outputs, secret_in), old_urn, op)

    def _replace(
        self,
        reg: Registration,
        provider: Any,
        old: ResourceState,
        old_urn: str,
        checked: dict,
        secret_in: set[str],
        diff_dbr: bool,
    ) -> Outcome:
        if reg.protect:
            raise DeploymentError(
                f"{reg.type} {reg.name!r} must be replaced but is protected: remove `protect` from its "
                "resource options and run up again"
            )
        if self.preview:
            return self._commit(self._new_state(reg, "", checked, checked, secret_in), old_urn, "replace")
        self._check_cancelled(reg)
        if diff_dbr or reg.delete_before_replace:
            self._delete_dependent_replacements(old)
            if not old.retain_on_delete:
                self._provider(old.type, old.provider).delete(old.urn, old.id, old.outputs, old.inputs)
            with self.lock:
                self.state.resources.pop(old_urn, None)
                self._checkpoint()
            id_, outputs = provider.create(reg.urn, checked)
            return self._commit(self._new_state(reg, id_, checked, outputs, secret_in), old_urn, "replace")
        # Create-before-delete: the old object is deleted at the end of the run.
        id_, outputs = provider.create(reg.urn, checked)
        new = self._new_state(reg, id_, checked, outputs, secret_in)
        return self._commit(new, old_urn, "replace", pending=old)

    def _dependent_replacements(self, root: ResourceState) -> list[ResourceState]:
        """What the engine deletes before a delete-before-replace of `root`: every resource in state whose
        inputs come from a resource being replaced and whose provider says that makes it a replacement
        too (asked with those inputs unknown), transitively."""
        replaced, found = {root.urn}, []
        with self.lock:
            candidates = [
                r for r in self.state.resources.values() if r.custom and r.urn not in self.registered
            ]
        progress = True
        while progress:
            progress = False
            for res in candidates:
                if res.urn in replaced:
                    continue
                keys = {k for k, urns in res.property_dependencies.items() if replaced.intersection(urns)}
                if not keys:
                    continue
                news = {k: (Unknown() if k in keys else v) for k, v in res.inputs.items()}
                diff = self._provider(res.type, res.provider).diff(res.urn, res.id, res.outputs, news, res.inputs)
                if diff.replaces:
                    replaced.add(res.urn)
                    found.append(res)
                    progress = True
        return found

    def _delete_dependent_replacements(self, root: ResourceState) -> None:
        dependents = self._dependent_replacements(root)
        if not dependents:
            return
        self._delete_in_order(dependents, pending=False, record=lambda _res: None)
        if self.failed.is_set():
            raise DeploymentCancelled(f"{root.type} {root.name!r} was not replaced: deleting its dependents failed")
        with self.lock:
            self._delete_replaced.update(r.urn for r in dependents)

    def read_stack_reference(self, urn: str, name: str) -> tuple[dict[str, Any], set[str]]:
        """Outputs of another stack in the same state dir (`org/project/stack`, `project/stack` or `stack`)."""
        stack = name.rsplit("/", 1)[-1]
        store = StateStore(self.state_dir, stack)
        if not store.exists():
            raise self.fail(f"StackReference {name!r}: no state for stack {stack!r} in {self.state_dir}", urn)
        other = store.load()
        self._record(urn, STACK_REFERENCE_TYPE, "read")
        return dict(other.outputs), set(other.secret_outputs)

    def register_outputs(self, urn: str, outputs: dict[str, Any], secret: set[str]) -> None:
        with self.lock:
            if urn.split("::")[2] == STACK_TYPE:
                self.stack_outputs, self.stack_secret_outputs = outputs, secret
            res = self.state.resources.get(urn)
            if res is not None and not self.preview:
                res.outputs, res.secret_outputs = outputs, secret
                self._checkpoint()

    # -- deletes ------------------------------------------------------------------------------

    def _delete_one(self, res: ResourceState, pending: bool) -> None:
        if res.protect and not pending:
            raise DeploymentError(
                f"{res.type} {res.name!r} is protected and cannot be deleted: set protect=False and run up first"
            )
        if not self.preview and res.custom and not res.retain_on_delete and res.type != STACK_REFERENCE_TYPE:
            try:
                self._provider(res.type, res.provider).delete(res.urn, res.id, res.outputs, res.inputs)
            except ProviderError as err:
                raise DeploymentError(f"{res.type} {res.name!r}: Delete failed: {err.message}") from None
        with self.lock:
            if not self.preview:
                if pending:
                    self.state.pending_deletions = [p for p in self.state.pending_deletions if p is not res]
                elif self.state.resources.get(res.urn) is res:
                    del self.state.resources[res.urn]
                self._checkpoint()

    def _delete_in_order(
        self, resources: list[ResourceState], pending: bool, record: Callable[[ResourceState], None]
    ) -> None:
        """Delete dependents before their dependencies (and children before parents); independent
        deletes run concurrently."""
        keys = {id(r): r for r in resources}
        by_urn: dict[str, list[int]] = {}
        for r in resources:
            by_urn.setdefault(r.urn, []).append(id(r))
        blockers: dict[int, set[int]] = {k: set() for k in keys}
        for k, r in keys.items():
            for dep in [*r.dependencies, r.parent]:
                for target in by_urn.get(dep, []):
                    if target != k:
                        blockers[target].add(k)  # r depends on target: delete r first
        done: set[int] = set()
        running: dict[Future[None], int] = {}
        with ThreadPoolExecutor(max_workers=DELETE_WORKERS) as pool:
            while len(done) < len(keys):
                if not self.failed.is_set():
                    for k in [
                        k for k in keys if k not in done and k not in running.values() and not blockers[k] - done
                    ]:
                        running[pool.submit(self._delete_one, keys[k], pending)] = k
                if not running:
                    if self.failed.is_set():
                        return
                    raise DeploymentError("dependency cycle among resources to delete")
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    k = running.pop(fut)
                    err = fut.exception()
                    if err is not None:
                        if not isinstance(err, DeploymentCancelled):
                            message = str(err) if isinstance(err, DeploymentError) else f"{keys[k].name!r}: {err}"
                            self.fail(message, keys[k].urn)
                        continue
                    done.add(k)
                    record(keys[k])

    def _record_delete(self, res: ResourceState) -> None:
        self._record(res.urn, res.type, "delete")

    def finish_update(self) -> None:
        """After a successful program run: delete what the program no longer declares, then the old
        halves of replacements (including ones left by earlier failed runs)."""
        if self.failed.is_set():
            return
        gone = [r for urn, r in self.state.resources.items() if urn not in self.registered]
        self._delete_in_order(gone, pending=False, record=self._record_delete)
        if self.failed.is_set():
            return
        prior = {id(p) for p in self._prior_pending}
        self._delete_in_order(
            list(self.state.pending_deletions),
            pending=True,
            record=lambda r: self._record_delete(r) if id(r) in prior else None,
        )
        if self.stack_outputs is not None and not self.preview:
            with self.lock:
                self.state.outputs = {k: v for k, v in self.stack_outputs.items() if not _contains_unknown(v)}
                self.state.secret_outputs = set(self.stack_secret_outputs) & set(self.state.outputs)
                self._checkpoint()

    def destroy(self) -> None:
        self._delete_in_order(list(self.state.resources.values()), pending=False, record=self._record_delete)
        if self.failed.is_set():
            return
        self._delete_in_order(list(self.state.pending_deletions), pending=True, record=self._record_delete)
        if not self.failed.is_set():
            with self.lock:
                self.state.outputs, self.state.secret_outputs = {}, set()
                self._checkpoint()

    # -- result -------------------------------------------------------------------------------

    def outputs_for_display(self) -> dict[str, Any]:
        if self.operation == "destroy":
            return {}
        if self.stack_outputs is None:
            source, secret = self.state.outputs, self.state.secret_outputs
        else:
            source, secret = self.stack_outputs, self.stack_secret_outputs
        return {k: "[secret]" if k in secret else _displayable(source[k]) for k in sorted(source)}

    def result(self, error: str | None = None) -> dict[str, Any]:
        if error is None and self.errors:
            error = self.errors[0]
        changes = Counter(s["op"] for s in self.steps)
        return {
            "ok": error is None,
            "error": error,
            "steps": list(self.steps),
            "changes": {op: changes[op] for op in OPS if changes[op]},
            "outputs": self.outputs_for_display(),
            "diagnostics": list(self.diagnostics),
        }


def _displayable(value: Any) -> Any:
    if isinstance(value, Unknown):
        return "[unknown]"
    if isinstance(value, Mapping):
        return {k: _displayable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_displayable(v) for v in value]
    return value
