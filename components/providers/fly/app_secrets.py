"""FlySecrets: the app secrets this stack manages (the API's secrets family); values only in encrypted state.

See components/providers/fly/provider.py for the contract every provider here keeps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)
from pulumi.output import Unknown

from components.providers.base import (
    DynamicResource,
    canonical,
    diff_result,
)
from components.providers.fly.errors import FlyError
from components.providers.fly.provider import FlyProviderBase
from components.providers.generated import generate_value, length_problem

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class FlySecretsProvider(FlyProviderBase):
    """The app's secrets that this stack manages. Values live only in (encrypted) state; the API never
    returns them, so drift is detected by comparing digests on refresh.

    ``generate`` names secrets whose value is made here at first (random, ``length`` characters, as
    GeneratedSecret makes them) and kept in the ``generated`` output from then on. A town's internal API
    key was a GeneratedSecret resource of its own: one resource per town more in every preview and up
    (bench/run.py). A value already set under that name (by such a resource, before) is kept.
    """

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        generate = news.get("generate") or {}
        if isinstance(generate, Mapping):
            for key, length in generate.items():
                failures += _secret_name_failures("generate", key)
                problem = length_problem(length)
                if problem:
                    failures.append(CheckFailure("generate", f"secret {key}: length {problem}"))
        else:
            failures.append(CheckFailure("generate", "must be a map of secret name to length"))
            generate = {}
        values = news.get("values")
        if isinstance(values, Mapping):
            for key, value in values.items():
                failures += _secret_name_failures("values", key)
                if not isinstance(value, str | Unknown):
                    failures.append(CheckFailure("values", f"secret {key} must be a string"))
                if key in generate:
                    failures.append(CheckFailure("values", f"secret {key} is both given and generated"))
        elif not isinstance(values, Unknown):
            failures.append(CheckFailure("values", "must be a map of secret name to value"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        result = diff_result(olds, news, compare=("app", "values"), replace_on=("app",), delete_before_replace=False)
        if not result.changes and _generated(olds, news) != (olds.get("generated") or {}):
            # A name to generate is new or its length changed, or its value changed outside (refresh forgot it).
            return DiffResult(changes=True, replaces=[], delete_before_replace=False)
        return result

    def create(self, props: dict[str, Any]) -> CreateResult:
        app = props["app"]
        generated = _generated({}, props)
        values = {**props["values"], **generated}
        with self.client() as fly:
            version = fly.set_secrets(app, values)
            # Read back at the version just written: a lagging replica would give the previous digests, and
            # the next refresh would take the secrets for changed outside Pulumi and set them (and restart
            # the machines) again.
            digests = fly.list_secrets(app, min_version=version)
        names = sorted(values)
        return CreateResult(
            app,
            {
                **props,
                "generated": generated,
                "names": names,
                "version": version,
                "digests": {k: digests.get(k, "") for k in names},
            },
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        app = news["app"]
        old_values: Mapping[str, str] = {**(olds.get("values") or {}), **(olds.get("generated") or {})}
        generated = _generated(olds, news)
        new_values: Mapping[str, str] = {**news["values"], **generated}
        changes: dict[str, str | None] = {k: v for k, v in new_values.items() if old_values.get(k) != v}
        changes.update({k: None for k in old_values if k not in new_values})
        with self.client() as fly:
            version = fly.set_secrets(app, changes) if changes else int(canonical(olds.get("version")) or 0)
            digests = fly.list_secrets(app, min_version=version)
        names = sorted(new_values)
        return UpdateResult(
            {
                **news,
                "generated": generated,
                "names": names,
                "version": version,
                "digests": {k: digests.get(k, "") for k in names},
            }
        )

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.client() as fly:
            if fly.get_app(props["app"]) is None:
                return ReadResult("", {})
            try:
                live = fly.list_secrets(props["app"], min_version=canonical(props.get("version")))
            except FlyError as exc:
                if exc.status != 412:
                    raise
                live = fly.list_secrets(props["app"])  # the recorded version is ahead: the app was recreated
        recorded: Mapping[str, str] = props.get("digests") or {}

        def unchanged(given: Mapping[str, str] | None) -> dict[str, str]:
            return {k: v for k, v in (given or {}).items() if live.get(k) and live.get(k) == recorded.get(k)}

        # A secret changed or removed outside Pulumi: forget its value so the next up sets it again (a
        # generated one is then generated anew: its old value is gone from the state too).
        values, generated = unchanged(props.get("values")), unchanged(props.get("generated"))
        outs = {
            **props,
            "values": values,
            "generated": generated,
            "digests": {k: live.get(k, "") for k in (*values, *generated)},
        }
        inputs = {"app": props["app"], "values": values}
        if props.get("generate"):
            inputs["generate"] = props["generate"]
        return ReadResult(id_, outs, inputs=inputs)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.client() as fly:
            if fly.get_app(props["app"]) is None:
                return
            names = props.get("names") or list((props.get("values") or {}).keys())
            if names:
                try:
                    fly.set_secrets(props["app"], dict.fromkeys(names))
                except FlyError as exc:
                    if exc.status != 404:
                        raise


def _secret_name_failures(prop: str, key: str) -> list[CheckFailure]:
    if ENV_NAME.match(key) and not key.upper().startswith("FLY_"):
        return []
    return [CheckFailure(prop, f"secret name {key!r} is not a valid environment variable name (or starts with FLY_)")]


def _generated(olds: Mapping[str, Any], news: Mapping[str, Any]) -> dict[str, str]:
    """The values of the secrets ``news`` generates: kept from ``olds`` (its ``generated``, or a value it
    set under that name) when their length still matches, else made now."""
    kept = {**(olds.get("values") or {}), **(olds.get("generated") or {})}
    out = {}
    for key, length in sorted((news.get("generate") or {}).items()):
        old = kept.get(key)
        out[key] = old if isinstance(old, str) and len(old) == int(length) else generate_value(length)
    return out


class FlySecrets(DynamicResource, module="fly", name="Secrets"):
    version: pulumi.Output[int]
    digests: pulumi.Output[dict]
    generated: pulumi.Output[dict]

    def __init__(
        self,
        resource_name: str,
        *,
        app: pulumi.Input[str],
        values: pulumi.Input[Mapping[str, str]],
        generate: Mapping[str, int] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            "app": app,
            "values": pulumi.Output.secret(values),
            "generate": dict(generate or {}),
            "generated": None,
            "version": None,
            "digests": None,
            "names": None,
        }
        secret = pulumi.ResourceOptions(additional_secret_outputs=["generated"])
        super().__init__(FlySecretsProvider(), resource_name, props, pulumi.ResourceOptions.merge(opts, secret))
