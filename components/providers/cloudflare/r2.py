"""Cloudflare R2 for the town backups: the bucket, its lifecycle rules and per-town credentials.

Why dynamic providers and not ``pulumi_cloudflare``: provider plugin binaries cannot be fetched on
the build machines, and the bridged ``R2Bucket`` replaces a bucket when its location hint drifts, a
replacement that then fails with "bucket already exists (10004)" (pulumi-cloudflare#465,
terraform-provider-cloudflare#6458). Here the location hint is honoured on first creation only and never
diffs.

Credentials (Pulumi docs, Dynamic providers): ``configure()`` keeps the ``cloudflare:*`` stack config values
and each method falls back to the environment (settings.py), so a rotated token works for ``pulumi
destroy`` too. The API client (client.py, on Cloudflare's own library) is built inside each method
and nothing runs at import time (the classes are pickled by reference and imported by the provider
host; the contract is ``components.providers.base.ApiProvider``). The ``R2Bucket`` component that
wires these resources together is a stack's (components/stacks/control.py).

Per-town credentials: R2 account API tokens can be narrowed to a bucket but not to a key prefix
(Cloudflare docs, developers.cloudflare.com/r2/api/tokens), while temporary access credentials take ``prefixes``
(Cloudflare's API reference, R2 > Temporary Credentials). Each town therefore gets
temporary credentials limited to ``gastown/{town_id}/``, derived from a parent R2 access key
(the id of an account API token with R2 object read/write). Temp credentials expire (``ttl_seconds``,
at most 604800 s: "maximum 604800" in Cloudflare's API reference, R2 > Temporary Credentials): the
provider's ``diff`` reports a change once the stored expiry is within ``refresh_margin_seconds`` of
now, so any ``pulumi up`` in that window mints fresh ones and the town's machine gets them through
its secrets. A town left alone for longer than the TTL loses R2 access until the next ``pulumi up``
(its sync daemon then reports failed syncs): run ``pulumi up`` at least every ``ttl - margin``
(default 5 days). That gap is the price of prefix isolation; a scoped account token would not
expire but would open the whole bucket to every town.

One set of temp credentials cannot be revoked on its own, but they are all signed with the parent
token (R2 docs, "Temporary credentials": short-lived credentials derived from an existing R2 API
token): revoking or rolling the parent token kills every town's credentials at once. Rotate in this
order, so no town is ever left without working credentials:
1. create the new parent token (R2 object read/write on the bucket) next to the old one;
2. point ``cloudflare:r2ParentAccessKeyId`` (and ``cloudflare:apiToken`` if it changes) at it;
3. ``pulumi up``: ``diff`` sees the new parent and re-mints every town's credentials, which reach
   the machines as Fly secrets;
4. check that each town's next sync succeeded (``last_r2_sync_at`` in the registry), then revoke the
   old token. Revoking first would stop every town's backups until step 3 had run.

The temp-credentials call takes no jurisdiction (Cloudflare's SDKs send no ``cf-r2-jurisdiction``
header for it), so towns are only given credentials for default-jurisdiction buckets.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
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
    ApiProvider,
    DynamicResource,
    canonical,
    changed_keys,
    has_unknown,
    pick,
    strip_provider,
)
from components.providers.cloudflare.client import CloudflareClient
from components.providers.cloudflare.errors import CloudflareError, CloudflareNotFound
from components.providers.cloudflare.settings import (
    CONFIG_KEYS,
    PARENT_ACCESS_KEY_CONFIG,
    PARENT_ACCESS_KEY_ENV,
    CloudflareSettings,
    require_parent_access_key,
    resolve_cloudflare_settings,
    s3_endpoint,
)

log = logging.getLogger(__name__)

BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")
TOWN_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,126}[A-Za-z0-9])?$")
JURISDICTIONS = ("default", "eu", "fedramp")
LOCATION_HINTS = ("apac", "eeur", "enam", "weur", "wnam", "oc")
TEMP_PERMISSIONS = ("admin-read-write", "admin-read-only", "object-read-write", "object-read-only")
DAY_S = 86400
TOWN_PREFIX_ROOT = "gastown/"
# Defaults for the per-town credentials: a week, refreshed by any `pulumi up` in the last 2 days.
DEFAULT_TTL_S = 7 * DAY_S
DEFAULT_REFRESH_MARGIN_S = 2 * DAY_S
DEFAULT_SNAPSHOT_MAX_AGE_DAYS = 90
MAX_TEMP_CREDENTIAL_TTL_S = 604800  # R2 API reference, Temporary Credentials: ttlSeconds "maximum 604800"
# "Already exists": 10004 ("...already exists, and you own it", pulumi-cloudflare#465) and 10073
# BucketConflict (R2 docs, "Error codes"). Recognised by code: the status that comes with it varies.
CODES_BUCKET_EXISTS = frozenset({10004, 10073})
CODE_BUCKET_NOT_EMPTY = 10008  # R2 docs, "Error codes": BucketNotEmpty, 409
# Rule ids of the backup bucket's lifecycle (stable ids keep the diff quiet).
ABORT_MULTIPART_RULE_ID = "abort-incomplete-multipart-uploads"
SNAPSHOT_BACKSTOP_RULE_ID = "gastown-snapshot-age-backstop"
# What a lifecycle delete puts back: R2's rule for new buckets (r2/buckets/object-lifecycles). R2 reads it
# back with `conditions: {}`, but the request schema requires a prefix ("an empty prefix can be provided
# to scope rule to all objects/uploads": cloudflare-python, types/r2/buckets/lifecycle_update_params.py).
R2_DEFAULT_LIFECYCLE: list[dict[str, Any]] = [
    {
        "id": "Default Multipart Abort Rule",
        "enabled": True,
        "conditions": {"prefix": ""},
        "abortMultipartUploadsTransition": {"condition": {"type": "Age", "maxAge": 7 * DAY_S}},
    }
]


# -- town prefixes --------------------------------------------------------------------------------
def town_prefix(town_id: str) -> str:
    """The one key prefix a town may touch (seed 002's layout ``gastown/{town_id}/...``)."""
    if not isinstance(town_id, str) or not TOWN_ID.match(town_id) or ".." in town_id:
        raise ValueError(f"town_id must be one path segment of letters, digits, '.', '_' or '-' (got {town_id!r})")
    return f"{TOWN_PREFIX_ROOT}{town_id}/"


# -- checks shared by the providers --------------------------------------------------------------
def _bucket_name_failure(prop: str, name: Any) -> CheckFailure | None:
    if isinstance(name, Unknown):
        return None
    if not isinstance(name, str) or not 3 <= len(name) <= 63 or not BUCKET_NAME.match(name):
        return CheckFailure(
            prop,
            "R2 bucket names are 3-63 characters of lowercase letters, digits and hyphens, starting "
            f"and ending with a letter or digit (got {name!r})",
        )
    return None


def _jurisdiction_failure(value: Any) -> CheckFailure | None:
    if isinstance(value, Unknown) or value in JURISDICTIONS:
        return None
    return CheckFailure("jurisdiction", f"must be one of {', '.join(JURISDICTIONS)} (got {value!r})")


class _CloudflareProvider(ApiProvider):
    """The Cloudflare providers: the ``cloudflare:*`` keys of ``CONFIG_KEYS`` from the stack, else the environment."""

    STACK_CONFIG_KEYS = CONFIG_KEYS

    def settings(self) -> CloudflareSettings:
        return resolve_cloudflare_settings(self.stack_config())

    def client(self) -> CloudflareClient:
        return CloudflareClient(self.settings())


# -- R2 bucket ----------------------------------------------------------------------------------
BUCKET_INPUTS = ("name", "location_hint", "jurisdiction", "allow_delete")


class R2BucketProvider(_CloudflareProvider):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = {**news, "jurisdiction": news.get("jurisdiction") or "default"}
        inputs.setdefault("allow_delete", False)
        failures = [
            f
            for f in (_bucket_name_failure("name", news.get("name")), _jurisdiction_failure(inputs["jurisdiction"]))
            if f
        ]
        hint = news.get("location_hint")
        if isinstance(hint, str):
            # The API takes lowercase enums (Cloudflare's API reference, R2 > Create Bucket, locationHint);
            # uppercase values drift in pulumi-cloudflare v6.
            inputs["location_hint"] = hint.lower()
            if hint.lower() not in LOCATION_HINTS:
                failures.append(
                    CheckFailure("location_hint", f"must be one of {', '.join(LOCATION_HINTS)} (got {hint!r})")
                )
        elif hint is not None and not isinstance(hint, Unknown):
            failures.append(CheckFailure("location_hint", f"must be a string (got {hint!r})"))
        if (
            isinstance(hint, str)
            and inputs["jurisdiction"] not in ("default",)
            and not isinstance(inputs["jurisdiction"], Unknown)
        ):
            # A jurisdiction fixes where the data lives; a hint only places default-jurisdiction buckets.
            failures.append(
                CheckFailure(
                    "location_hint",
                    f"a location hint and a jurisdiction ({inputs['jurisdiction']}) are exclusive; drop one",
                )
            )
        if not isinstance(inputs["allow_delete"], bool | Unknown):
            failures.append(CheckFailure("allow_delete", f"must be a boolean (got {inputs['allow_delete']!r})"))
        return CheckResult(inputs, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # location_hint is deliberately absent: R2 honours it only when a name is first created,
        # so a changed hint can neither be applied nor justify replacing a backup bucket.
        defaults = {"jurisdiction": "default", "allow_delete": False}
        olds = {**defaults, **{k: v for k, v in olds.items() if v is not None}}
        news = {**defaults, **{k: v for k, v in news.items() if v is not None}}
        changes = changed_keys(olds, news, ("name", "jurisdiction", "allow_delete"))
        replaces = [k for k in ("name", "jurisdiction") if k in changes]
        # Explicit names: the new bucket cannot coexist with the old one, so delete first
        # (and the delete refuses unless allow_delete: nothing is lost by accident).
        return DiffResult(changes=bool(changes), replaces=replaces, delete_before_replace=bool(replaces) or None)

    def _outs(self, props: Mapping[str, Any], bucket: Mapping[str, Any], account_id: str) -> dict[str, Any]:
        jurisdiction = props.get("jurisdiction") or "default"
        return {
            **strip_provider(props),
            "jurisdiction": jurisdiction,
            "account_id": account_id,
            "location": str(bucket.get("location") or "").lower(),
            "creation_date": bucket.get("creation_date") or "",
            "s3_endpoint": s3_endpoint(account_id, jurisdiction),
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        name = props["name"]
        jurisdiction = props.get("jurisdiction") or "default"
        with self.client() as cf:
            try:
                bucket = cf.create_bucket(name, location_hint=props.get("location_hint"), jurisdiction=jurisdiction)
            except CloudflareError as exc:
                if not CODES_BUCKET_EXISTS.intersection(exc.codes):
                    raise
                # Our own earlier attempt (lost response, crash before state was written) or a bucket
                # created by hand: if this account owns it, adopt it rather than fail forever.
                bucket = cf.get_bucket(name, jurisdiction)
                if bucket is None:
                    raise CloudflareError(
                        f"R2 bucket {name!r} already exists but is not visible in account "
                        f"{cf.settings.account_id} (jurisdiction {jurisdiction}); pick another name"
                    ) from exc
                log.info("adopting existing R2 bucket %s", name)
            outs = self._outs(props, bucket, cf.settings.account_id)
            hint = props.get("location_hint")
            if hint and outs["location"] and outs["location"] != hint:
                # R2 places a name once: a bucket created again keeps its first location.
                log.warning(
                    "R2 bucket %s is in %s, not %s: a location hint only applies the first time",
                    name,
                    outs["location"],
                    hint,
                )
            return CreateResult(name, outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Only allow_delete (a local safety switch) changes in place; keep the computed outputs.
        return UpdateResult({**strip_provider(olds), **news})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        jurisdiction = props.get("jurisdiction") or "default"
        with self.client() as cf:
            bucket = cf.get_bucket(id_, jurisdiction)
            if bucket is None:
                return ReadResult("", {})
            outs = self._outs({**props, "name": id_}, bucket, cf.settings.account_id)
        return ReadResult(id_, outs, inputs=pick(outs, BUCKET_INPUTS))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        if props.get("allow_delete") is not True:
            raise CloudflareError(
                f"refusing to delete R2 bucket {id_!r}: it holds the town backups and allow_delete is "
                "false. Set allow_delete=True and run `pulumi up` first if you really mean to delete it"
            )
        with self.client() as cf:
            try:
                cf.delete_bucket(id_, props.get("jurisdiction") or "default")
            except CloudflareError as exc:
                if CODE_BUCKET_NOT_EMPTY not in exc.codes:
                    raise
                # This also stops a replace (rename or jurisdiction change): its delete comes first.
                raise CloudflareError(
                    f"R2 bucket {id_!r} still holds objects (town backups), so R2 refuses to delete it "
                    f"(code {CODE_BUCKET_NOT_EMPTY}, BucketNotEmpty). This provider never empties a backup "
                    'bucket: copy what you need, empty it yourself (dashboard "Empty bucket", or a '
                    "lifecycle rule), then run the delete or replace again",
                    status=exc.status,
                    codes=exc.codes,
                    method=exc.method,
                    path=exc.path,
                    request_id=exc.request_id,
                ) from exc


class R2BucketResource(DynamicResource, module="cloudflare", name="R2Bucket"):
    name: pulumi.Output[str]
    jurisdiction: pulumi.Output[str]
    account_id: pulumi.Output[str]
    location: pulumi.Output[str]
    s3_endpoint: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        name: pulumi.Input[str],
        location_hint: str | None = None,
        jurisdiction: str = "default",
        allow_delete: bool = False,
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            "name": name,
            "location_hint": location_hint,
            "jurisdiction": jurisdiction,
            "allow_delete": allow_delete,
            "account_id": None,
            "location": None,
            "creation_date": None,
            "s3_endpoint": None,
        }
        super().__init__(R2BucketProvider(), resource_name, props, opts)


# -- lifecycle rules ----------------------------------------------------------------------------
def backup_lifecycle_rules(
    *,
    abort_multipart_days: int = 1,
    snapshot_prefix: str = TOWN_PREFIX_ROOT,
    snapshot_max_age_days: int | None = None,
) -> list[dict[str, Any]]:
    """The backup bucket's rule set, in the API's shape: incomplete multipart uploads are aborted after
    ``abort_multipart_days``, and no rule ever deletes a town's objects.

    R2 lifecycle conditions are a key prefix and an age or date only (no "keep the newest N", no
    "unless it is the latest"). Every object of a town lives under its own ``gastown/{town_id}/`` (its
    credentials reach nothing else), so a rule on a prefix that holds only superseded snapshots would
    need one rule per town; an age rule on ``snapshot_prefix`` deletes a town stopped for that long
    down to its last snapshot and ``latest.json``, its only copy besides the volume. So there is none:
    the town's sync keeps its 3 newest complete snapshots (with a manifest) and deletes older ones,
    incomplete snapshots and abandoned staging areas itself; what a crash leaves mid-upload is either
    in ``staging/`` (removed by the next sync) or an incomplete multipart upload (aborted here). A
    stopped town therefore keeps exactly its last snapshots; a town destroyed for good keeps its prefix
    until an operator removes it.

    ``snapshot_prefix`` and ``snapshot_max_age_days`` no longer shape the rules (the control stack
    still passes the old 90-day default): they are checked, so a bad value still fails loudly.
    """
    for key, days in (("abort_multipart_days", abort_multipart_days), ("snapshot_max_age_days", snapshot_max_age_days)):
        if days is None and key == "snapshot_max_age_days":
            continue
        if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
            raise ValueError(f"{key} must be a positive number of days (got {days!r})")
    if not snapshot_prefix or not snapshot_prefix.endswith("/"):
        raise ValueError(f"snapshot_prefix must be a non-empty prefix ending in '/' (got {snapshot_prefix!r})")
    return [
        {
            # PUT replaces R2's default 7-day abort rule, so the abort rule is stated explicitly.
            "id": ABORT_MULTIPART_RULE_ID,
            "enabled": True,
            "conditions": {"prefix": ""},
            "abortMultipartUploadsTransition": {"condition": {"type": "Age", "maxAge": abort_multipart_days * DAY_S}},
        },
    ]


def normalise_rules(rules: Any) -> list[dict[str, Any]]:
    """Ints for floats, no None keys, ordered by id, and a whole-bucket rule's conditions as
    ``{"prefix": ""}`` (R2 returns ``{}`` for it): what two equal rule sets compare as."""
    out = []
    for rule in rules or []:
        rule = canonical(rule)
        if isinstance(rule, dict):
            conditions = rule.get("conditions")
            if conditions is None or (isinstance(conditions, dict) and conditions.get("prefix") is None):
                rule = {**rule, "conditions": {**(conditions or {}), "prefix": ""}}
        out.append(rule)
    return sorted(out, key=lambda r: str(r.get("id", "")) if isinstance(r, dict) else "")


def _rule_errors(rules: Any) -> list[str]:
    """What Cloudflare's lifecycle schema refuses, named by field (cloudflare-python,
    types/r2/buckets/lifecycle_update_params.py). Its required ``conditions.prefix`` may be left out here:
    ``normalise_rules`` writes ``""`` (the whole bucket) in its place."""
    if not isinstance(rules, list):
        return [f"rules must be a list of lifecycle rules (got {type(rules).__name__})"]
    errors: list[str] = []
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        where = f"rules[{index}]"
        if not isinstance(rule, Mapping):
            errors.append(f"{where} must be an object")
            continue
        rule_id = rule.get("id")
        if not isinstance(rule_id, str) or not rule_id:
            errors.append(f"{where}.id is required")
        elif rule_id in seen:
            errors.append(f"{where}.id {rule_id!r} is used twice")
        else:
            seen.add(rule_id)
        if not isinstance(rule.get("enabled"), bool):
            errors.append(f"{where}.enabled must be true or false")
        conditions = rule.get("conditions")
        if conditions is not None and (
            not isinstance(conditions, Mapping) or not isinstance(conditions.get("prefix", ""), str)
        ):
            errors.append(f"{where}.conditions.prefix must be a string ('' or absent for the whole bucket)")
        transitions = [
            t for t in ("deleteObjectsTransition", "abortMultipartUploadsTransition") if rule.get(t) is not None
        ]
        storage = rule.get("storageClassTransitions")
        if not transitions and not storage:
            errors.append(f"{where} needs a deleteObjectsTransition or abortMultipartUploadsTransition")
        for name in transitions:
            transition = rule[name]
            condition = transition.get("condition") if isinstance(transition, Mapping) else None
            # An abort transition takes an age only: cloudflare-python types its condition as
            # `type: Literal["Age"]` (RuleAbortMultipartUploadsTransitionCondition); deletes take Age or Date.
            types = ("Age",) if name == "abortMultipartUploadsTransition" else ("Age", "Date")
            errors.extend(_condition_errors(f"{where}.{name}.condition", condition, types))
        if storage is not None and not isinstance(storage, list):
            errors.append(f"{where}.storageClassTransitions must be a list")
        for n, transition in enumerate(storage if isinstance(storage, list) else []):
            at = f"{where}.storageClassTransitions[{n}]"
            if not isinstance(transition, Mapping) or transition.get("storageClass") != "InfrequentAccess":
                errors.append(f"{at}.storageClass must be InfrequentAccess")
                continue
            errors.extend(_condition_errors(f"{at}.condition", transition.get("condition"), ("Age", "Date")))
    return errors


def _condition_errors(where: str, condition: Any, types: tuple[str, ...]) -> list[str]:
    if not isinstance(condition, Mapping) or condition.get("type") not in types:
        return [f"{where}.type must be {' or '.join(types)}"]
    if condition["type"] == "Age":
        age = condition.get("maxAge")
        if isinstance(age, bool) or not isinstance(age, int | float) or age <= 0 or age != int(age):
            return [f"{where}.maxAge must be a positive whole number of seconds"]
    elif not isinstance(condition.get("date"), str) or not condition["date"]:
        return [f"{where}.date must be an ISO 8601 date"]
    return []


class R2LifecycleProvider(_CloudflareProvider):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = {**news, "jurisdiction": news.get("jurisdiction") or "default"}
        failures = [
            f
            for f in (_bucket_name_failure("bucket", news.get("bucket")), _jurisdiction_failure(inputs["jurisdiction"]))
            if f
        ]
        rules = news.get("rules")
        if not has_unknown(rules):
            errors = _rule_errors(rules)
            if errors:
                failures.append(CheckFailure("rules", "; ".join(errors)))
            else:
                inputs["rules"] = normalise_rules(rules)
        return CheckResult(inputs, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        olds = {**olds, "jurisdiction": olds.get("jurisdiction") or "default"}
        news = {**news, "jurisdiction": news.get("jurisdiction") or "default"}
        changes = changed_keys(olds, news, ("bucket", "jurisdiction"))
        new_rules = news.get("rules")
        if has_unknown(new_rules) or normalise_rules(olds.get("rules")) != normalise_rules(new_rules):
            changes.append("rules")
        replaces = [k for k in ("bucket", "jurisdiction") if k in changes]
        return DiffResult(changes=bool(changes), replaces=replaces)

    def _apply(self, props: Mapping[str, Any]) -> dict[str, Any]:
        rules = normalise_rules(props.get("rules"))
        with self.client() as cf:
            cf.put_lifecycle(props["bucket"], rules, props.get("jurisdiction") or "default")
        return {**strip_provider(props), "rules": rules}

    def create(self, props: dict[str, Any]) -> CreateResult:
        # PUT is idempotent: a retry after a lost response writes the same rules again.
        return CreateResult(props["bucket"], self._apply(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._apply(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.client() as cf:
            rules = cf.get_lifecycle(id_, props.get("jurisdiction") or "default")
        if rules is None:
            return ReadResult("", {})
        outs = {**props, "rules": normalise_rules(rules)}
        return ReadResult(id_, outs, inputs=pick(outs, ("bucket", "jurisdiction", "rules")))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        # Hand the bucket back in R2's initial state rather than with no rules at all.
        with self.client() as cf:
            try:
                cf.put_lifecycle(id_, R2_DEFAULT_LIFECYCLE, props.get("jurisdiction") or "default")
            except CloudflareNotFound:
                return  # the bucket (and its rules) are gone


class R2BucketLifecycle(DynamicResource, module="cloudflare", name="R2BucketLifecycle"):
    bucket: pulumi.Output[str]
    rules: pulumi.Output[list[dict[str, Any]]]

    def __init__(
        self,
        resource_name: str,
        *,
        bucket: pulumi.Input[str],
        rules: list[dict[str, Any]],
        jurisdiction: str = "default",
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(
            R2LifecycleProvider(),
            resource_name,
            {"bucket": bucket, "jurisdiction": jurisdiction, "rules": rules},
            opts,
        )


# -- per-town temporary credentials -------------------------------------------------------------
CREDENTIAL_SECRETS = ("access_key_id", "secret_access_key", "session_token")
CREDENTIAL_INPUTS = ("town_id", "bucket", "jurisdiction", "permission", "ttl_seconds", "refresh_margin_seconds")


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class R2TownCredentialsProvider(_CloudflareProvider):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = {
            **news,
            "jurisdiction": news.get("jurisdiction") or "default",
            "permission": news.get("permission") or "object-read-write",
            "ttl_seconds": news.get("ttl_seconds", DEFAULT_TTL_S),
            "refresh_margin_seconds": news.get("refresh_margin_seconds", DEFAULT_REFRESH_MARGIN_S),
        }
        failures = [
            f
            for f in (_bucket_name_failure("bucket", news.get("bucket")), _jurisdiction_failure(inputs["jurisdiction"]))
            if f
        ]
        town_id = news.get("town_id")
        if not isinstance(town_id, Unknown):
            try:
                town_prefix(town_id)
            except ValueError as exc:
                failures.append(CheckFailure("town_id", str(exc)))
        if inputs["permission"] not in TEMP_PERMISSIONS:
            failures.append(CheckFailure("permission", f"must be one of {', '.join(TEMP_PERMISSIONS)}"))
        if inputs["jurisdiction"] != "default" and not isinstance(inputs["jurisdiction"], Unknown):
            failures.append(
                CheckFailure(
                    "jurisdiction",
                    "temporary R2 credentials can only be minted for default-jurisdiction buckets: the "
                    "temp-credentials call takes no jurisdiction, so towns need a backup bucket without one",
                )
            )
        for key in ("ttl_seconds", "refresh_margin_seconds"):
            value = canonical(inputs[key])
            if isinstance(value, Unknown):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                failures.append(CheckFailure(key, f"must be a positive whole number of seconds (got {inputs[key]!r})"))
            elif key == "ttl_seconds" and value > MAX_TEMP_CREDENTIAL_TTL_S:
                failures.append(
                    CheckFailure(
                        key,
                        f"R2 issues temporary credentials for at most {MAX_TEMP_CREDENTIAL_TTL_S} s "
                        f"(a week; got {value})",
                    )
                )
            else:
                inputs[key] = value
        ttl, margin = inputs["ttl_seconds"], inputs["refresh_margin_seconds"]
        if isinstance(ttl, int) and isinstance(margin, int) and margin >= ttl and not failures:
            failures.append(
                CheckFailure(
                    "refresh_margin_seconds", f"must be shorter than ttl_seconds ({ttl}), or every run re-mints"
                )
            )
        return CheckResult(inputs, failures)

    def _needs_refresh(self, olds: Mapping[str, Any], news: Mapping[str, Any]) -> bool:
        expires = _parse_time(olds.get("expires_at"))
        margin = canonical(news.get("refresh_margin_seconds", DEFAULT_REFRESH_MARGIN_S))
        if expires is None or not isinstance(margin, int):
            return True
        return expires - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=margin)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        news = {
            "jurisdiction": "default",
            "permission": "object-read-write",
            "ttl_seconds": DEFAULT_TTL_S,
            "refresh_margin_seconds": DEFAULT_REFRESH_MARGIN_S,
            **news,
        }
        changes = changed_keys(olds, news, CREDENTIAL_INPUTS)
        replaces = [k for k in ("town_id", "bucket", "jurisdiction") if k in changes]
        if self._needs_refresh(olds, news):
            changes.append("expires_at")  # re-mint before the town loses access
        parent = self._config_parent()
        if parent and parent != olds.get("parent_access_key_id"):
            changes.append("parent_access_key_id")
        return DiffResult(changes=bool(changes), replaces=replaces)

    def _config_parent(self) -> str | None:
        return self.stack_config().get(PARENT_ACCESS_KEY_CONFIG) or os.environ.get(PARENT_ACCESS_KEY_ENV)

    def _mint(self, props: Mapping[str, Any]) -> dict[str, Any]:
        jurisdiction = props.get("jurisdiction") or "default"
        prefix = town_prefix(props["town_id"])
        ttl = int(canonical(props.get("ttl_seconds", DEFAULT_TTL_S)))
        settings = self.settings()
        require_parent_access_key(settings)
        issued = dt.datetime.now(dt.UTC)
        with CloudflareClient(settings) as cf:
            creds = cf.temp_credentials(
                props["bucket"],
                parent_access_key_id=settings.parent_access_key_id,
                permission=props.get("permission") or "object-read-write",
                ttl_seconds=ttl,
                prefixes=[prefix],
            )
        return {
            **strip_provider(props),
            "jurisdiction": jurisdiction,
            "prefix": prefix,
            "endpoint": s3_endpoint(settings.account_id, jurisdiction),
            "parent_access_key_id": settings.parent_access_key_id,
            "expires_at": (issued + dt.timedelta(seconds=ttl)).isoformat(timespec="seconds"),
            "access_key_id": creds.access_key_id,
            "secret_access_key": creds.secret_access_key,
            "session_token": creds.session_token,
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._mint(props)
        return CreateResult(f"{outs['bucket']}/{outs['prefix']}", outs)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._mint(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        # Temporary credentials cannot be listed or fetched: state is the only record.
        return ReadResult(id_, props, inputs=pick(props, CREDENTIAL_INPUTS))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # They cannot be revoked either; they lapse at expires_at. Nothing to call.
        return None


class R2TownCredentials(DynamicResource, module="cloudflare", name="R2TownCredentials"):
    town_id: pulumi.Output[str]
    bucket: pulumi.Output[str]
    prefix: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    expires_at: pulumi.Output[str]
    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]
    session_token: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        town_id: pulumi.Input[str],
        bucket: pulumi.Input[str],
        jurisdiction: str = "default",
        ttl_seconds: int = DEFAULT_TTL_S,
        refresh_margin_seconds: int = DEFAULT_REFRESH_MARGIN_S,
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            "town_id": town_id,
            "bucket": bucket,
            "jurisdiction": jurisdiction,
            "permission": "object-read-write",
            "ttl_seconds": ttl_seconds,
            "refresh_margin_seconds": refresh_margin_seconds,
            "prefix": None,
            "endpoint": None,
            "parent_access_key_id": None,
            "expires_at": None,
            "access_key_id": None,
            "secret_access_key": None,
            "session_token": None,
        }
        # New output keys are stored in plaintext unless named here (Pulumi docs, additionalSecretOutputs).
        secret_opts = pulumi.ResourceOptions(additional_secret_outputs=list(CREDENTIAL_SECRETS))
        super().__init__(
            R2TownCredentialsProvider(), resource_name, props, pulumi.ResourceOptions.merge(secret_opts, opts)
        )
