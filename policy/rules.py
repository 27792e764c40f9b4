"""The silo guardrails: the rules of docs/guardrails.md, as CrossGuard policies (pulumi_policy).

Each rule is one named policy with one sentence saying why (``RULES``, also what `make preview`
lists). The providers and the config model already refuse most of these mistakes; the rules make
them visible in a preview and catch a program change that bypasses those checks.

What a policy sees (Pulumi docs, "Policy as Code" / pulumi_policy's ``ResourceValidationArgs``):
resource policies get each resource's *checked inputs* (after the provider's ``check``) and some of its
options when the engine registers it, at preview and at up; stack policies get every resource's
outputs once all are registered. Neither sees the old state, the planned step, deletions or
``retain_on_delete``. So:

- a data volume's replacement is visible because the volume provider's ``check`` adds
  ``immutable_changes`` (components/providers/fly/volumes.py) to its checked inputs;
- a deletion is not visible at all: it is refused by the providers (a volume with ``allow_delete``
  false, an app with ``keep_volumes`` that still holds volumes) and skipped by the engine
  (``retain_on_delete`` on data volumes and their apps). What the rule checks is that every registered
  data volume and app carries those switches, so the state the next delete is decided from has them.

Values a preview cannot know yet (a town's fly.toml before its registry row exists) are skipped at
preview and checked at `up`, when the engine registers the resource with known inputs.

What a rule needs beyond a resource comes from the resources themselves or from *policy config*, never
from the stack's config: the stack author writes ``Pulumi.<stack>.yaml``, the organisation the policy
config (``--policy-pack-config policy/config/<stack>.json`` here, the policy group's config once the pack
is published), so only the organisation can waive a mandatory rule (docs/guardrails.md "Waivers"):

- ``data-volumes-kept`` reads ``allowDataDeletion`` and ``pg-private-or-tls`` ``pgPublic`` from their
  policy config (``args.get_config()``, schema ``WAIVERS``); ``silo:allowDataDeletion`` /
  ``silo:pgPublic`` in the stack's config change what the program registers, which these rules then
  judge like any other resource;
- ``monthly-budget`` reads its ``monthlyBudget`` from its policy config;
- a silo's ``{client}-{app}`` comes from its apps' names (``devenv-{client}-{app}-{service}``) or from
  the DevEnvStack component that registers them (named ``devenv-{client}-{app}``, its ``parent`` option).

The stack's config is not readable through pulumi_policy's public API on this engine anyway: the engine
sends it in the analyzer's ``ConfigureStack`` call, which pulumi_policy 1.21 reduces to the stack's tags
(``args.stack_tags``), and ``pulumi.Config`` in a pack reads ``PULUMI_CONFIG``, which pulumi v3.274 sets
only for packs started through the legacy ``pulumi-analyzer-policy-<runtime>`` plugin
(pkg/resource/plugin/analyzer_plugin.go ``constructEnv``), not through a language host nor as an
executable. Policy config, by contrast, is public API, validated by the CLI against each policy's
``config_schema`` and carried over unchanged when the pack is published.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy import proxy as policy_proxy

from components.domain import costs, naming
from components.domain.catalog import DIGEST, Catalog, load_catalog
from components.providers.base import REPLACEMENT_KEY
from components.providers.fly import flytoml

PACK_NAME = "silo-guardrails"
FLY = "pulumi-python:dynamic/fly:"
APP, VOLUME, MACHINE, IP = (FLY + kind for kind in ("App", "Volume", "Machine", "IpAssignment"))
TOWN_COMPONENT = "silo:town:TownSandbox"
SILO_COMPONENT = "silo:devenv:DevEnvStack"
PUBLIC_IP_TYPES = ("v4", "v6", "shared_v4")  # everything but private_v6 (Flycast)
MANDATORY, ADVISORY = EnforcementLevel.MANDATORY, EnforcementLevel.ADVISORY


@dataclass(frozen=True)
class Rule:
    name: str
    level: EnforcementLevel
    why: str


# The docs/guardrails.md table is this list (tests/program/test_policy.py compares them).
RULES: tuple[Rule, ...] = (
    Rule(
        "data-volumes-kept",
        MANDATORY,
        "A data volume (pg, storage, town) is never deleted or replaced unless the stack's policy config allows "
        "data deletion (allowDataDeletion), because its data exists nowhere else.",
    ),
    Rule(
        "no-secrets-in-env",
        MANDATORY,
        "No machine env or [[files]] raw_value holds a secret-looking value, because both are plain text in the "
        "fly.toml, the machine config and previews; secrets go through Fly secrets.",
    ),
    Rule(
        "pg-private-or-tls",
        MANDATORY,
        "The pg app has no public IP unless the stack's policy config allows it (pgPublic), and then every port is "
        "behind Fly's pg_tls handler, so the database is never reachable in clear text.",
    ),
    Rule(
        "images-pinned",
        MANDATORY,
        "Every machine image is pinned by digest or by a tag other than latest, and never a tag the catalog "
        "disables, so a deploy runs the image that was reviewed.",
    ),
    Rule(
        "fly-names-valid",
        MANDATORY,
        "Fly app names are DNS labels of at most 63 characters and volume names at most 30 of [a-z0-9_], "
        "because Fly refuses anything else halfway through an up.",
    ),
    Rule(
        "towns-on-own-network",
        MANDATORY,
        "A town app sits on its own network (named after its sandbox id), never a silo's nor the org's default "
        "one, so a town's agents cannot reach another silo's services.",
    ),
    Rule(
        "silos-on-own-network",
        MANDATORY,
        "A silo's apps sit on the silo's own network (devenv-{client}-{app}), never the org's default one nor "
        "another's, so its private services are reachable from its own apps only.",
    ),
    Rule(
        "studio-meta-private",
        MANDATORY,
        "Studio and postgres-meta have no public IP, because they administer the database and are reached "
        "only through Kong, behind basic-auth.",
    ),
    Rule(
        "images-by-digest",
        ADVISORY,
        "Images should run by digest rather than by tag, because a registry can move a tag under us.",
    ),
    Rule(
        "monthly-budget",
        ADVISORY,
        "The silo's monthly cost estimate should stay within the monthlyBudget of the stack's policy config when "
        "it is set.",
    ),
    Rule(
        "autostop-on",
        ADVISORY,
        "A dev silo's machines should auto-stop when idle (silo:autoStopMinutes above 0), or they bill all month.",
    ),
)
RULE = {rule.name: rule for rule in RULES}


# -- policy config -------------------------------------------------------------------------------------
# Each rule's own config (pulumi_policy ``config_schema``): what `--policy-pack-config` may set besides the
# enforcement level, e.g. {"data-volumes-kept": {"allowDataDeletion": true}}. The CLI fills in the defaults
# and refuses a value of the wrong type before the pack runs (pkg/resource/analyzer/config.go).
WAIVERS: dict[str, tuple[str, str]] = {
    # rule -> (property, what it allows)
    "data-volumes-kept": ("allowDataDeletion", "the stack's data volumes may be deleted or replaced"),
    "pg-private-or-tls": ("pgPublic", "the stack's pg app may have public IPs (TLS-only)"),
}
CONFIG_SCHEMAS: dict[str, PolicyConfigSchema] = {
    **{
        rule: PolicyConfigSchema(properties={prop: {"type": "boolean", "default": False, "description": what}})
        for rule, (prop, what) in WAIVERS.items()
    },
    "monthly-budget": PolicyConfigSchema(
        properties={"monthlyBudget": {"type": "number", "minimum": 0, "description": "USD per month"}}
    ),
}


def waived(rule: str, args: ResourceValidationArgs) -> bool:
    """Whether the stack's policy config waives ``rule`` (its ``WAIVERS`` property is exactly true)."""
    prop, _ = WAIVERS[rule]
    return args.get_config().get(prop) is True


def waiver_hint(rule: str, urn: str) -> str:
    """How the organisation waives ``rule`` for the stack of ``urn`` (urn:pulumi:STACK::PROJECT::...)."""
    prop, _ = WAIVERS[rule]
    stack = urn.split("::", 1)[0].rsplit(":", 1)[-1]
    return f'policy/config/{stack}.json {{"{rule}": {{"{prop}": true}}}}'


# -- reading properties ------------------------------------------------------------------------------
class _Unknown:
    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = _Unknown()
_SENTINELS = frozenset(
    getattr(policy_proxy, name) for name in dir(policy_proxy) if name.startswith("UNKNOWN_") and name.endswith("_VALUE")
)


def plain(value: Any) -> Any:
    """Properties as plain dicts and lists, with values a preview cannot know as ``UNKNOWN``.

    pulumi_policy hands policies a proxy that raises on any unknown value it is asked for, which
    turns the whole policy into one "can't run during preview" notice; the rules here check what is
    known and skip the rest. The proxies answer their raw target under ``"__target"``
    (pulumi_policy/proxy.py).
    """
    if isinstance(value, str):
        return UNKNOWN if value in _SENTINELS else value
    if isinstance(value, Mapping):
        with contextlib.suppress(KeyError):
            value = value["__target"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        with contextlib.suppress(TypeError):  # a plain list has no "__target"
            value = value["__target"]  # type: ignore[call-overload]
        return [plain(v) for v in value]
    return value


def known_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def with_urn(message: str, urn: str) -> str:
    # The CLI's policy summary names the resource by type and name only; the URN makes the line
    # unambiguous in a PR comment (two stacks, two components holding the same name).
    return f"{message}\nresource: {urn}"


def machine_config(props: Mapping[str, Any]) -> dict[str, Any] | None:
    """The machine's Fly config: the provider's ``config`` (computed by its ``check``), else derived from
    the rendered fly.toml the way the provider derives it; None while the fly.toml is unknown."""
    config = props.get("config")
    if isinstance(config, Mapping) and UNKNOWN not in _walk(config):
        return dict(config)
    text = props.get("fly_toml")
    if not isinstance(text, str):
        return None
    try:
        image = props.get("image") if isinstance(props.get("image"), str) else "unknown:preview"
        return flytoml.to_machine_config(flytoml.parse(text), image=image)
    except (ValueError, KeyError, TypeError):
        return None  # an invalid fly.toml fails the provider's own check


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


SERVICE_APP = re.compile(rf"{naming.APP_PREFIX}-[a-z0-9-]+-({'|'.join(naming.SERVICES)})")


def silo_of(parent: str | None) -> str | None:
    """The silo's network and app-name prefix (``devenv-{client}-{app}``, naming.silo_network) when
    ``parent`` is the DevEnvStack that names itself so (components/stacks/devenv.py), else None."""
    if not _component_type(parent).endswith(SILO_COMPONENT):
        return None
    return parent.rsplit("::", 1)[-1] if parent else None


def service_of(app_name: Any, parent: str | None = None) -> str | None:
    """Which Supabase service an app runs, from its name (``devenv-{client}-{app}-{service}``): under a
    DevEnvStack, its own silo's names only; elsewhere any silo's (the service is the last segment)."""
    if not isinstance(app_name, str):
        return None
    silo = silo_of(parent)
    if silo is not None:
        rest = app_name.removeprefix(f"{silo}-")
        return rest if app_name.startswith(f"{silo}-") and rest in naming.SERVICES else None
    match = SERVICE_APP.fullmatch(app_name)
    return match.group(1) if match else None


def machine_service(props: Mapping[str, Any], parent: str | None = None) -> str | None:
    metadata = props.get("metadata")
    tagged = metadata.get("silo_service") if isinstance(metadata, Mapping) else None
    return known_str(tagged) or service_of(props.get("app"), parent)


# -- data-volumes-kept ---------------------------------------------------------------------------------
def _data_volumes_kept(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if waived("data-volumes-kept", args):
        return
    props = plain(args.props)
    waiver = waiver_hint("data-volumes-kept", args.urn)
    if args.resource_type == VOLUME:
        what = f"data volume {props.get('name')} of app {props.get('app')}"
        if props.get("allow_delete") is True:
            report(
                with_urn(
                    f"{what} allows its deletion (allow_delete, silo:allowDataDeletion) but the stack's policy config "
                    f"does not: a destroy or replacement would delete its data; only a waiver in {waiver} allows it",
                    args.urn,
                )
            )
        changed = props.get(REPLACEMENT_KEY)
        if isinstance(changed, list) and changed:
            # A region move with silo:regionMigration is the documented migration: the data was restored
            # in the new region first and the old volume is kept (retained, out of state).
            migration = set(changed) == {"region"} and props.get("allow_region_change") is True
            if not migration:
                report(
                    with_urn(
                        f"this change replaces {what} (it changes {', '.join(map(str, changed))}): the new volume "
                        "starts empty; revert the change, or accept losing the data: silo:allowDataDeletion=true "
                        f"and a waiver in {waiver}",
                        args.urn,
                    )
                )
    elif args.resource_type == APP and props.get("keep_volumes") is False:
        report(
            with_urn(
                f"Fly app {props.get('name')} may be deleted with its volumes (keep_volumes is false, "
                "silo:allowDataDeletion) but the stack's policy config does not allow it: deleting a Fly app deletes "
                f"its volumes; only a waiver in {waiver} allows it",
                args.urn,
            )
        )


# -- no-secrets-in-env ---------------------------------------------------------------------------------
SECRET_VALUES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a JSON Web Token", re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("a URL with a password", re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]+:[^\s/@]+@")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("a Fly.io token", re.compile(r"\b(?:fm1[ar]|fm2)_[A-Za-z0-9+/=_-]{20,}")),
    ("a Stripe secret key", re.compile(r"\b[rs]k_live_[A-Za-z0-9]{16,}")),
    ("a Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
)
# Values a secret-named variable (the program's own rule, flytoml.SECRET_ENV_NAME) may hold without being
# a secret: switches, numbers, and paths to a secret mounted as a file.
HARMLESS_VALUE = re.compile(r"^(|true|false|yes|no|on|off|\d+|/\S*)$", re.IGNORECASE)


def secret_value_reason(value: str) -> str | None:
    """Why a value looks like a secret whatever it is called (never quoting it), or None."""
    for what, pattern in SECRET_VALUES:
        if pattern.search(value):
            return f"holds {what}"
    return None


def secret_reason(name: str, value: Any) -> str | None:
    """Why an env variable looks like a secret (never quoting the value), or None."""
    if not isinstance(value, str):
        return None
    found = secret_value_reason(value)
    if found:
        return found
    if flytoml.SECRET_ENV_NAME.search(name) and not HARMLESS_VALUE.match(value.strip()):
        return "is named like a secret and holds a value"
    return None


def machine_env(config: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    yield from (config.get("env") or {}).items()
    for process in config.get("processes") or []:
        if isinstance(process, Mapping):
            yield from (process.get("env") or {}).items()


def file_text(raw_value: str) -> str:
    """What a machine file holds: the machine config carries ``raw_value`` base64-encoded (flyctl's
    ``appconfig.File.toMachineFile``, components/providers/fly/flytoml.py ``_file``), while a fly.toml
    and a program that bypasses the conversion carry the text itself."""
    try:
        return base64.b64decode(raw_value, validate=True).decode("utf-8")
    except ValueError:  # not base64 (binascii.Error), or not text once decoded (UnicodeDecodeError)
        return raw_value


def machine_files(config: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(guest path, text) of the machine's ``[[files]]`` given inline (``raw_value``); files delivered
    from a Fly secret (``secret_name``) or read from disk (``local_path``) carry no text here."""
    for file in config.get("files") or []:
        if isinstance(file, Mapping) and isinstance(file.get("raw_value"), str):
            yield str(file.get("guest_path")), file_text(file["raw_value"])


def _no_secrets_in_env(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = plain(args.props)
    config = machine_config(props)
    if config is None:
        return
    where = f"machine {props.get('name')} of app {props.get('app')}"
    for name, value in machine_env(config):
        reason = secret_reason(str(name), value)
        if reason:
            report(
                with_urn(
                    f"{where}: env {name} {reason}; machine env is plain text in the machine config, so set it as "
                    "a Fly secret (FlySecrets) instead",
                    args.urn,
                )
            )
    for guest_path, text in machine_files(config):
        # Contents only: a file's path says little (scripts are named after what they handle).
        reason = secret_value_reason(text)
        if reason:
            report(
                with_urn(
                    f"{where}: [[files]] {guest_path} {reason}; a raw_value is plain text in the fly.toml and the "
                    "machine config, so deliver the file from a Fly secret (secret_name) instead",
                    args.urn,
                )
            )


# -- pg-private-or-tls and studio-meta-private ------------------------------------------------------------
def _public_ip(props: Mapping[str, Any]) -> bool:
    return props.get("type") in PUBLIC_IP_TYPES


def _pg_ip(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = plain(args.props)
    if waived("pg-private-or-tls", args):
        return  # a public pg, TLS only: _pg_machine
    if _public_ip(props) and service_of(props.get("app"), args.opts.parent) == "pg":
        report(
            with_urn(
                f"public {props.get('type')} IP on the pg app {props.get('app')} while the stack's policy config does "
                "not allow a public pg: the database must stay on the private network (silo:pgPublic alone is not "
                f"enough: the waiver is {waiver_hint('pg-private-or-tls', args.urn)})",
                args.urn,
            )
        )


def _pg_machine(args: ResourceValidationArgs, report: ReportViolation) -> None:
    # Only under the waiver: without it the pg app has no public IP (_pg_ip), and its private Flycast
    # service is plain TCP. With it, the machine alone does not say whether its app's IPs are public (a
    # resource policy sees one resource), so every port must be TLS: the program renders exactly that when
    # silo:pgPublic is true, and a stack that goes private again drops its waiver.
    props = plain(args.props)
    if not waived("pg-private-or-tls", args) or machine_service(props, args.opts.parent) != "pg":
        return
    config = machine_config(props)
    if config is None:
        return
    clear = [
        str(port.get("port"))
        for service in config.get("services") or []
        for port in service.get("ports") or []
        if list(port.get("handlers") or []) != ["pg_tls"]
    ]
    if clear:
        report(
            with_urn(
                f"the stack's policy config allows the pg app public IPs (pgPublic), but machine {props.get('name')} "
                f"serves port(s) {', '.join(clear)} without Fly's pg_tls handler alone: the database would be "
                "reachable without TLS (set silo:pgPublic=true, or remove the waiver)",
                args.urn,
            )
        )


def _studio_meta_ip(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = plain(args.props)
    service = service_of(props.get("app"), args.opts.parent)
    if _public_ip(props) and service in ("studio", "meta"):
        report(
            with_urn(
                f"public {props.get('type')} IP on the {service} app {props.get('app')}: it administers the "
                "database and must be reached only through Kong",
                args.urn,
            )
        )


# -- images ----------------------------------------------------------------------------------------------
_CATALOG: list[Catalog] = []
REGISTRY_PREFIXES = ("docker.io/", "index.docker.io/", "registry-1.docker.io/")


def catalog() -> Catalog:
    if not _CATALOG:
        _CATALOG.append(load_catalog())
    return _CATALOG[0]


def _repository(name: str) -> str:
    for prefix in REGISTRY_PREFIXES:
        name = name.removeprefix(prefix)
    return name.removeprefix("library/")


def image_problem(ref: str) -> str | None:
    """Why an image reference is not pinned, or names a disabled catalog entry; None when it is fine."""
    if "@" in ref:
        repository, digest = ref.split("@", 1)
        if not DIGEST.fullmatch(digest):
            return f"image {ref} has a malformed digest"
        entry = next((e for e in catalog().images if e.digest == digest), None)
        if entry is not None and entry.status == "disabled":
            return f"image {ref} is {entry.label}, which the catalog disables ({entry.notes or 'not deployable'})"
        return None
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {ref} has no tag, which Docker reads as latest"
    repository, tag = ref.rsplit(":", 1)
    if tag == "latest":
        return f"image {ref} uses the latest tag, which moves with every release"
    entry = next(
        (e for e in catalog().images if e.tag == tag and _repository(e.repository) == _repository(repository)), None
    )
    if entry is not None and entry.status == "disabled":
        return f"image {ref} is a tag the catalog disables ({entry.notes or 'not deployable'})"
    return None


def _images(props: Mapping[str, Any]) -> list[str]:
    config = props.get("config")
    refs = [props.get("image"), config.get("image") if isinstance(config, Mapping) else None]
    return list(dict.fromkeys(r for r in refs if isinstance(r, str)))


def _images_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = plain(args.props)
    for ref in _images(props):
        problem = image_problem(ref)
        if problem:
            report(with_urn(f"machine {props.get('name')} of app {props.get('app')}: {problem}", args.urn))


def _images_by_digest(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = plain(args.props)
    for ref in _images(props):
        if "@sha256:" not in ref:
            report(
                with_urn(
                    f"machine {props.get('name')} of app {props.get('app')} runs {ref} by tag; add its digest to "
                    "catalog/images.yaml (`python -m components.cli.digests resolve`)",
                    args.urn,
                )
            )


# -- fly-names-valid, towns-on-own-network and silos-on-own-network ----------------------------------------
def _names_valid(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = plain(args.props)
    name = props.get("name")
    if not isinstance(name, str):
        return
    if args.resource_type == APP and not naming.is_dns_label(name):
        report(
            with_urn(
                f"Fly app name {name!r} ({len(name)} characters) is not a DNS label of at most "
                f"{naming.DNS_LABEL_MAX} lowercase letters, digits and dashes",
                args.urn,
            )
        )
    if args.resource_type == VOLUME and not naming.is_volume_name(name):
        report(
            with_urn(
                f"Fly volume name {name!r} ({len(name)} characters) is not at most {naming.VOLUME_NAME_MAX} "
                "lowercase letters, digits and underscores",
                args.urn,
            )
        )


SANDBOX_ID = re.compile(rf"{naming.SANDBOX_PREFIX}-(?:[a-z0-9-]+-)?[0-9a-f]{{{naming.SANDBOX_DIGEST_HEX}}}")


def is_town_app(name: Any, parent: str | None) -> bool:
    return _component_type(parent).endswith(TOWN_COMPONENT) or (
        isinstance(name, str) and bool(SANDBOX_ID.fullmatch(name))
    )


def _component_type(parent: str | None) -> str:
    return parent.rsplit("::", 2)[-2] if parent and parent.count("::") >= 2 else ""


def _network_problem(network: Any, expected: str) -> str | None:
    """Why an app's ``network`` input is not ``expected``; None when it is, or while a preview cannot know it."""
    if network is UNKNOWN:
        return None
    if not isinstance(network, str) or not network:
        # FlyApp without a network: Fly puts the app on the org's default network, shared by every app of
        # the org that has none (components/providers/fly/apps.py DEFAULT_NETWORK).
        return "has no network, so Fly puts it on the organization's default network"
    if network != expected:
        return f"is on network {network!r}"
    return None


def _towns_on_own_network(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = plain(args.props)
    name = props.get("name")
    if not isinstance(name, str) or not is_town_app(name, args.opts.parent):
        return
    problem = _network_problem(props.get("network"), name)
    if problem:
        report(
            with_urn(
                f"town app {name} {problem}; a town sits on its own network, named after its sandbox id "
                f"({name!r}), never a silo's nor the organization's default one",
                args.urn,
            )
        )


def silo_network_of(app_name: Any, parent: str | None) -> str | None:
    """The network a silo app belongs on (``devenv-{client}-{app}``), or None when ``app_name`` is not an
    app of this stack's silo: named ``devenv-{client}-{app}-{service}``, or registered by a DevEnvStack."""
    if not isinstance(app_name, str) or is_town_app(app_name, parent):
        return None
    service = service_of(app_name, parent)
    if service is not None:
        return app_name.removesuffix(f"-{service}")  # naming.silo_network of the name's client and app
    return silo_of(parent)


def _silos_on_own_network(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = plain(args.props)
    name = props.get("name")
    expected = silo_network_of(name, args.opts.parent)
    if expected is None:
        return
    problem = _network_problem(props.get("network"), expected)
    if problem:
        report(
            with_urn(
                f"silo app {name} {problem}; every app of a silo sits on the silo's own network ({expected!r}), "
                "where its Flycast and .internal names resolve for its apps only",
                args.urn,
            )
        )


# -- advisories -----------------------------------------------------------------------------------------
def _autostop_on(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = plain(args.props)
    service = machine_service(props, args.opts.parent)
    if service is None or props.get("desired_state") != "started":
        return  # towns work unattended by design; a stopped machine bills nothing
    config = machine_config(props)
    if config is None:
        return
    services = config.get("services") or []
    if service == "pg" and _serves_pg_tls(services):
        # A public pg (silo:pgPublic: its ports behind pg_tls) is reached over 6PN, which cannot wake it
        # (components/config/model.py pg_host), so the program never auto-stops it.
        return
    if services and not any(s.get("autostop") in (True, "stop", "suspend") for s in services):
        report(
            with_urn(
                f"machine {props.get('name')} of app {props.get('app')} never auto-stops (silo:autoStopMinutes is "
                "0): an idle dev silo bills all month",
                args.urn,
            )
        )


def _serves_pg_tls(services: list[Any]) -> bool:
    return any(
        "pg_tls" in (port.get("handlers") or [])
        for service in services
        if isinstance(service, Mapping)
        for port in service.get("ports") or []
        if isinstance(port, Mapping)
    )


def _machine_guest(props: Mapping[str, Any]) -> dict[str, Any] | None:
    config = machine_config(props)
    return dict(config.get("guest") or {}) if config is not None else None


def _monthly_budget(args: StackValidationArgs, report: ReportViolation) -> None:
    budget = args.get_config().get("monthlyBudget")
    if not isinstance(budget, int | float) or isinstance(budget, bool):
        return
    guests: list[dict[str, Any]] = []
    volumes: list[int] = []
    unknown = 0
    for resource in args.resources:
        props = plain(resource.props)
        if resource.resource_type == MACHINE and props.get("desired_state") != "stopped":
            guest = _machine_guest(props)
            if guest is None:
                unknown += 1
            else:
                guests.append(guest)
        elif resource.resource_type == VOLUME and isinstance(props.get("size_gb"), int | float):
            volumes.append(int(props["size_gb"]))
    estimate = costs.estimate(guests, volumes)
    total = estimate["total_always_on"]
    if total > budget:
        active = estimate[f"total_{costs.SEED_ACTIVE_HOURS}h_active"]
        note = f"; {unknown} machine(s) not known until up are not counted" if unknown else ""
        report(
            f"the silo's monthly cost estimate is ${total:.2f} with every machine always on (${active:.2f} at "
            f"{costs.SEED_ACTIVE_HOURS} active hours), above the monthlyBudget ${budget:.2f} of the stack's policy "
            f"config{note} (prices in components/domain/costs.py)"
        )


def policies() -> list[ResourceValidationPolicy | StackValidationPolicy]:
    def resource(name: str, *validators: Any) -> ResourceValidationPolicy:
        rule = RULE[name]
        return ResourceValidationPolicy(
            name=rule.name,
            description=rule.why,
            enforcement_level=rule.level,
            validate=list(validators),
            config_schema=CONFIG_SCHEMAS.get(rule.name),
        )

    def on(resource_type: str, validate: Any) -> Any:
        def validator(args: ResourceValidationArgs, report: ReportViolation) -> None:
            if args.resource_type == resource_type:
                validate(args, report)

        return validator

    budget = RULE["monthly-budget"]
    found = [
        resource("data-volumes-kept", on(VOLUME, _data_volumes_kept), on(APP, _data_volumes_kept)),
        resource("no-secrets-in-env", on(MACHINE, _no_secrets_in_env)),
        resource("pg-private-or-tls", on(IP, _pg_ip), on(MACHINE, _pg_machine)),
        resource("images-pinned", on(MACHINE, _images_pinned)),
        resource("fly-names-valid", on(APP, _names_valid), on(VOLUME, _names_valid)),
        resource("towns-on-own-network", on(APP, _towns_on_own_network)),
        resource("silos-on-own-network", on(APP, _silos_on_own_network)),
        resource("studio-meta-private", on(IP, _studio_meta_ip)),
        resource("images-by-digest", on(MACHINE, _images_by_digest)),
        StackValidationPolicy(
            name=budget.name,
            description=budget.why,
            enforcement_level=budget.level,
            validate=_monthly_budget,
            config_schema=CONFIG_SCHEMAS[budget.name],
        ),
        resource("autostop-on", on(MACHINE, _autostop_on)),
    ]
    assert [p.name for p in found] == [r.name for r in RULES], "every rule has exactly one policy"
    return found
