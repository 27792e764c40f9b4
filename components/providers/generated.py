"""GeneratedSecret: a random password or key made once, kept (encrypted) in state, stable across runs.

It does what pulumi-random's RandomPassword did for this program — a value generated at create,
replaced only when its `length` or `keepers` change (a stack bumps a keeper to rotate) —
with no remote object behind it. The project carries it instead of pulumi-random because that bridged
provider cannot be built from the module proxy here (docs/engine.md), and a Terraform provider
process in every run is a lot for a handful of strings.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from typing import Any

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider

from components.providers.base import DynamicResource, diff_result

# Letters and digits only: the values end up in connection URLs and env files unquoted (Supabase's
# self-hosting docs ask for the same).
ALPHABET = string.ascii_letters + string.digits
MIN_LENGTH, MAX_LENGTH = 16, 256
IDENTITY = ("length", "keepers")


def generate_value(length: int | float) -> str:
    """A random value of `length` characters from ALPHABET (the system's CSPRNG)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(int(length)))


def length_problem(length: Any) -> str | None:
    """Why `length` is not a valid generated value length, or None."""
    if not isinstance(length, int | float) or isinstance(length, bool) or not MIN_LENGTH <= length <= MAX_LENGTH:
        return f"must be a number from {MIN_LENGTH} to {MAX_LENGTH}"
    return None


class GeneratedSecretProvider(ResourceProvider):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        problem = length_problem(news.get("length"))
        if problem:
            failures.append(CheckFailure("length", problem))
        keepers = news.get("keepers") or {}
        if not isinstance(keepers, Mapping) or not all(isinstance(v, str) for v in keepers.values()):
            failures.append(CheckFailure("keepers", "must be a map of strings"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # A new value is the whole point of a change here; nothing remote, so create-before-delete.
        return diff_result(olds, news, compare=IDENTITY, replace_on=IDENTITY, delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(f"generated-{secrets.token_hex(8)}", {**props, "result": generate_value(props["length"])})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, props)  # nothing outside the state to compare with

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


class GeneratedSecret(DynamicResource, module="silo", name="GeneratedSecret"):
    result: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        length: int,
        keepers: Mapping[str, str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        secret = pulumi.ResourceOptions(additional_secret_outputs=["result"])
        super().__init__(
            GeneratedSecretProvider(),
            resource_name,
            {"length": length, "keepers": dict(keepers or {}), "result": None},
            pulumi.ResourceOptions.merge(opts, secret),
        )
