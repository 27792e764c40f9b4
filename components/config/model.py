"""The stack config of a silo: one typed model shared by the Pulumi program and the ``silo`` CLI.

Values reach the model from a ``Pulumi.<stack>.yaml`` file (``load_stack_file``), a mapping of
namespaced keys (``from_mapping``) or the running program's config (``components.config.program``). Pulumi
stores every value as a string ("30", "true") and structured values as JSON text, so the loaders
stringify scalars the way ``pulumi config set`` would and parse JSON for ``silo:images`` and
``silo:towns``. Every problem is reported as ``<config key>: <reason>``, e.g.
``silo:towns[0].rigs[1].url: ...``, all of them at once.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from components.domain import naming
from components.errors import UserError
from components.providers.cloudflare.settings import CONFIG_KEYS as CLOUDFLARE_CONFIG_KEYS
from components.providers.fly.settings import CONFIG_KEYS as FLY_CONFIG_KEYS
from components.providers.http import is_loopback_url

NAMESPACE = "silo"

# Fly.io region codes, from fly.io/docs/reference/regions. Fly has been consolidating regions; codes
# it retired keep working for existing apps and are kept here so existing silos stay valid.
FLY_REGIONS: tuple[str, ...] = (
    "ams", "arn", "atl", "bog", "bom", "bos", "cdg", "den", "dfw", "ewr", "eze", "fra", "gdl",
    "gig", "gru", "hkg", "iad", "jnb", "lax", "lhr", "mad", "mia", "nrt", "ord", "otp", "phx",
    "qro", "scl", "sea", "sfo", "sin", "sjc", "syd", "waw", "yul", "yyz",
)  # fmt: skip

# Config key (without the namespace) → model field. The only place the camelCase names live.
FIELD_BY_KEY: dict[str, str] = {
    "kind": "kind",
    "client": "client",
    "app": "app",
    "flyOrg": "fly_org",
    "region": "region",
    "state": "state",
    "rlsMode": "rls_mode",
    "autoStopMinutes": "auto_stop_minutes",
    "studio": "studio",
    "siteUrl": "site_url",
    "redirectUrls": "redirect_urls",
    "allowDataDeletion": "allow_data_deletion",
    "regionMigration": "region_migration",
    "networkMigration": "network_migration",
    "images": "images",
    "towns": "towns",
    "keyGeneration": "key_generation",
    "controlStack": "control_stack",
    "kiloApiUrl": "kilo_api_url",
    "pgPublic": "pg_public",
    "authSignup": "auth_signup",
    "readyTimeoutSeconds": "ready_timeout_seconds",
    "smtp": "smtp",
    "monthlyBudget": "monthly_budget",
    # Keys of a `town` stack only (one town of its own: how the provisioning API runs towns).
    "town": "town",
    # Keys of the `control` stack only.
    "backupBucket": "backup_bucket",
    "backupLocationHint": "backup_location_hint",
    "usersTable": "users_table",
}
# Secret silo keys: read where they are used (providers' configure(), the program's get_secret), never
# copied into the model, so a SiloConfig can be printed or logged safely.
SECRET_KEYS: tuple[str, ...] = ("registryDsn", "kiloJwt", "gitCredentials", "smtpPassword")
# git-credential-store lines for the towns' private rigs, delivered to each town as the Fly secret
# GIT_CREDENTIALS_SECRET; refused unless the stack marks it secret.
GIT_CREDENTIALS_KEY = "gitCredentials"
GIT_CREDENTIALS_SECRET = "GIT_CREDENTIALS"
KEY_BY_FIELD: dict[str, str] = {f: k for k, f in FIELD_BY_KEY.items()}
_STRUCTURED_KEYS = ("images", "towns", "smtp", "redirectUrls", "town")
_LIST_KEYS = ("towns", "redirectUrls")
# The namespaces of this project's own dynamic providers: every key the providers' configure() reads
# (their settings' CONFIG_KEYS), and nothing else. A typo such as `fly:apitoken` would otherwise be
# ignored and the run would quietly fall back to the environment, or to the local emulator.
PROVIDER_KEYS: dict[str, tuple[str, ...]] = {"fly": FLY_CONFIG_KEYS, "cloudflare": CLOUDFLARE_CONFIG_KEYS}
FLY_API_URL_KEY = "fly:apiUrl"
FLY_API_TOKEN_KEY = "fly:apiToken"
CLOUDFLARE_API_TOKEN_KEY = "cloudflare:apiToken"
# Every key whose value is a credential: refused unless it is secret (encrypted in the stack file, marked
# secret by the engine), so a token never sits in plain text in a stack file, the state or a log.
SECRET_CONFIG_KEYS: tuple[str, ...] = (
    *(f"{NAMESPACE}:{key}" for key in SECRET_KEYS),
    FLY_API_TOKEN_KEY,
    CLOUDFLARE_API_TOKEN_KEY,
)

_SLUG = re.compile(r"^[a-z](?:[a-z0-9]|-(?=[a-z0-9]))*$")
_ORG_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
# git's "<transport>::<address>" syntax (remote helpers: ext::, fd::, and any git-remote-<name>).
_REMOTE_HELPER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_SCP_LIKE_GIT = re.compile(r"^(?P<user>[A-Za-z0-9._-]+)@(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/\s][^\s]*)$")
_EMAIL = re.compile(r"^[^@\s]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.[A-Za-z]{2,}$")
_SLUG_RULE = "must be a slug of lowercase letters, digits and single dashes, starting with a letter"


class ConfigError(UserError):
    """Invalid stack config. ``errors`` holds ``(key, message)`` pairs; ``str()`` is one line each."""

    def __init__(self, errors: Iterable[tuple[str, str]]) -> None:
        self.errors: list[tuple[str, str]] = list(errors)
        super().__init__("\n".join(f"{key}: {message}" for key, message in self.errors))

    @property
    def lines(self) -> list[str]:
        return [f"{key}: {message}" for key, message in self.errors]


# ---------------------------------------------------------------------------------------------------
# Value rules (each raises ValueError with the text shown to the user after "<key>: ")


def _shown(value: Any) -> str:
    """How a rejected value is quoted back: JSON-ish, shortened, with URL passwords masked."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    # A token in "https://user:token@host" or "https://token@host" must not reach a terminal or a CI log.
    text = re.sub(r"(://)[^/@\s\"]+@", r"\1***@", text)
    text = text if len(text) <= 80 else text[:77] + "..."
    return json.dumps(text, ensure_ascii=False) if isinstance(value, str) else text


def _split(value: str) -> SplitResult | None:
    try:
        return urlsplit(value)
    except ValueError:  # e.g. an unbalanced "[" in an IPv6 host
        return None


def _slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise ValueError(f"{_SLUG_RULE} (got {_shown(value)})")
    return value


def _bool_from_string(value: Any) -> Any:
    # Pulumi's get_bool accepts only true/false; "yes" or "1" in a stack file is most likely a mistake.
    if isinstance(value, str):
        if value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"must be true or false (got {_shown(value)})")
    return value


def _https_url(value: str) -> str:
    parts = _split(value)
    if parts is None or parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"must be an https:// URL with a host (got {_shown(value)})")
    if parts.username or parts.password:
        raise ValueError(f"must not contain credentials (got {_shown(value)})")
    return value


def _kilo_api_url(value: str) -> str:
    """Where towns report: https, or plain http only on loopback (a local `silo serve` beside the emulator)."""
    if is_loopback_url(value) and (_split(value) or urlsplit("")).scheme == "http":
        return value
    return _https_url(value)


# One https origin, lowercase, with an optional plain path: what GoTrue may redirect to (see _redirect_url).
_WEB_URL = re.compile(
    r"^https://[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
    r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
    r"(?:/[A-Za-z0-9._~%-]*)*$"
)
# gobwas/glob syntax: GoTrue compiles every allow-list entry as a glob (supabase/auth internal/conf,
# glob.Compile(uri, '.', '/')).
_GLOB_CHARACTERS = frozenset("*?[]{}!\\")


def _redirect_url(value: str) -> str:
    """``silo:siteUrl`` and each ``silo:redirectUrls`` entry: one exact https URL, an origin
    (``https://host[:port]``) with an optional plain path.

    The values reach GoTrue's ``GOTRUE_URI_ALLOW_LIST``, a comma-separated list of glob patterns that
    ``redirect_to`` is matched against (supabase/auth internal/utilities/request.go IsRedirectURLValid): a
    comma would add an entry, a wildcard (``https://**``, ``https://*.netlify.app``) would let GoTrue send
    sign-in tokens to a host someone else controls, and whitespace or a line break would end up inside a
    pattern. So none of them, no userinfo, no query and no fragment; the host in lowercase, as a browser
    writes it. Wildcards are refused outright, even in a path: on shared hosts (netlify.app, vercel.app)
    anyone can publish a site a host wildcard matches, and a path wildcard buys nothing, because every
    entry is also allowed with ``/**`` (``SiloConfig.uri_allow_list``) and GoTrue accepts any path on
    the site URL's own scheme, host and port.
    """
    if not isinstance(value, str) or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"must be one URL without spaces or line breaks (got {_shown(value)})")
    if "," in value:
        raise ValueError(
            f"must be one URL, not a list: list more redirect URLs in {NAMESPACE}:redirectUrls (got {_shown(value)})"
        )
    parts = _split(value)
    if parts is None or not value.startswith("https://") or not parts.hostname:
        raise ValueError(f"must be an https:// URL with a host (got {_shown(value)})")
    if "@" in parts.netloc:
        raise ValueError(f"must not contain credentials (got {_shown(value)})")
    if "?" in value or "#" in value:
        raise ValueError(f"must not have a query (?...) or a fragment (#...) (got {_shown(value)})")
    if _GLOB_CHARACTERS & set(value):
        raise ValueError(
            f"must be an exact URL: no wildcard or other glob character (* ? [ ] {{ }} ! \\), which GoTrue "
            f"would read as a pattern (got {_shown(value)})"
        )
    if not _WEB_URL.fullmatch(value):
        raise ValueError(
            "must be https:// and a lowercase host name, an optional port (1-65535) and an optional path of "
            f"letters, digits and . _ ~ % - / (got {_shown(value)})"
        )
    return value


def _git_url(value: str) -> str:
    """https://, ssh://, scp-like git@host:path, or file:// (local repositories, for tests).

    The URL reaches `git clone` inside a town (rigs.json) and is stored in plain text in the fly.toml,
    the machine config, the state, the registry and the R2 manifest, so it must carry no credential;
    and git must read it as a URL, never as an option or a remote-helper command.
    """
    if not value or any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError(f"must be a git URL without spaces (got {_shown(value)})")
    if value.startswith("-"):
        raise ValueError(f"must not start with '-' (git would read it as an option) (got {_shown(value)})")
    if _REMOTE_HELPER.match(value):
        # "<transport>::<address>" runs git-remote-<transport>; ext:: runs any command, fd:: uses open fds.
        raise ValueError(f"must not use a git remote helper such as ext:: or fd:: (got {_shown(value)})")
    if "?" in value or "#" in value:
        # A query or fragment is where an access token goes (?access_token=...), and git needs neither; the
        # value is not echoed, as it may be one.
        raise ValueError(
            "must not have a query (?...) or a fragment (#...): a token there would be stored in plain text "
            f"(rigs.json, the registry, the R2 manifest); private repositories use {NAMESPACE}:{GIT_CREDENTIALS_KEY}"
        )
    parts = _split(value)
    if parts is None:
        raise ValueError(f"must be a git URL (got {_shown(value)})")
    if "@" in parts.netloc and (parts.scheme != "ssh" or parts.password is not None):
        # Only an SSH login name may precede the host: anything else is a token in clear text.
        raise ValueError(
            "must not embed a password or token: private repositories get their credential from the secret "
            f"{NAMESPACE}:{GIT_CREDENTIALS_KEY} (git-credential-store lines, delivered to the town as a Fly secret)"
        )
    if parts.scheme in ("https", "ssh"):
        if not parts.hostname or parts.path.strip("/") == "":
            raise ValueError(f"must name a host and a repository path (got {_shown(value)})")
        if parts.hostname.startswith("-") or (parts.username or "").startswith("-"):
            # ssh would take "-oProxyCommand=..." as an option (CVE-2017-1000117).
            raise ValueError(f"must not have a host or user starting with '-' (got {_shown(value)})")
        return value
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"must be file:///absolute/path (got {_shown(value)})")
        return value
    scp = _SCP_LIKE_GIT.fullmatch(value) if "://" not in value else None
    if scp is not None:
        if any(scp[group].startswith("-") for group in ("user", "host", "path")):
            raise ValueError(f"must not have a user, host or path starting with '-' (got {_shown(value)})")
        return value
    raise ValueError(
        f"must be a git URL: https://host/path, ssh://host/path, git@host:path or file:///path (got {_shown(value)})"
    )


_STACK_PART = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def _stack_reference(value: str) -> str:
    # Pulumi's fully qualified stack name: org/project/stack (tokens.ParseStackReference); a bare stack
    # name would be resolved in whatever organisation the backend defaults to.
    parts = value.split("/")
    if len(parts) != 3 or not all(_STACK_PART.match(p) for p in parts):
        raise ValueError(
            f"must be a fully qualified stack name, <org>/<project>/<stack> (got {_shown(value)}): "
            "organization/silo/control on a file backend, <your-org>/silo/control on Pulumi Cloud"
        )
    return value


def git_credentials_problem(value: Any) -> str | None:
    """Why a `silo:gitCredentials` value is not git-credential-store lines; None when it is.

    Each non-blank line is ``https://USER:TOKEN@HOST`` (``git credential-store``'s file format, the
    user and token percent-encoded), which the town installs as its credential store. Only https:
    a token must not travel in clear. The message never quotes the value, not even in part.
    """
    if not isinstance(value, str) or not value.strip():
        return "must be git-credential-store lines (https://USER:TOKEN@HOST, one per line)"
    for number, line in enumerate(value.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = _split(line)
        well_formed = (
            parts is not None
            and not any(c.isspace() for c in line)
            and parts.scheme == "https"
            and bool(parts.hostname)
            and bool(parts.username)
            and bool(parts.password)
            and parts.path in ("", "/")
            and not parts.query
            and not parts.fragment
        )
        if not well_formed:
            return (
                f"line {number}: must be https://USER:TOKEN@HOST (one git-credential-store line per host, "
                "no repository path); the value is not shown"
            )
    return None


def _branch(value: str) -> str:
    # A subset of `git check-ref-format --branch`, plus no leading dash (it would read as an option).
    bad = (
        not value
        or value.startswith(("-", "/", "."))
        or value.endswith(("/", ".", ".lock"))
        or ".." in value
        or "//" in value
        or "@{" in value
        or any(c.isspace() or ord(c) < 32 or c in "~^:?*[\\" for c in value)
    )
    if bad:
        raise ValueError(f"must be a valid git branch name (got {_shown(value)})")
    return value


def _town_name(value: str) -> str:
    if value != value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"must not start or end with spaces or contain control characters (got {_shown(value)})")
    return value


def _image_tag(value: str) -> str:
    if value == "latest":
        raise ValueError('must be a pinned tag, not "latest" (images are pinned so previews are stable)')
    if not naming.is_image_tag(value):
        raise ValueError(f"must be an image tag such as 15.1.1.78, not an image reference (got {_shown(value)})")
    return value


def _region(value: str) -> str:
    if value not in FLY_REGIONS:
        near = [value.lower()] if value.lower() in FLY_REGIONS else difflib.get_close_matches(value, FLY_REGIONS, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ValueError(f"unknown Fly region {_shown(value)}{hint} (known: {', '.join(FLY_REGIONS)})")
    return value


def _org(value: str) -> str:
    if not _ORG_SLUG.fullmatch(value):
        raise ValueError(f"must be a Fly organization slug such as personal or acme (got {_shown(value)})")
    return value


Slug = Annotated[str, AfterValidator(_slug)]
StrictBool = Annotated[bool, BeforeValidator(_bool_from_string)]
# Literal of a tuple is the Literal of its items: the service list stays written once, in naming.
ServiceName = Literal[naming.SERVICES]  # type: ignore[valid-type]
ImageTag = Annotated[str, AfterValidator(_image_tag)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RigConfig(_Model):
    """A git repository a town works on (a Gastown "rig")."""

    name: Slug
    url: Annotated[str, AfterValidator(_git_url)]
    branch: Annotated[str, AfterValidator(_branch)] = "main"


class TownConfig(_Model):
    """A Gastown town sandbox: its own Fly app named by ``sandbox_id``."""

    name: Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_town_name)]
    user: Annotated[str, Field(min_length=1)]
    state: Literal["running", "stopped"] = "running"
    rigs: list[RigConfig] = Field(default_factory=list)

    @field_validator("user")
    @classmethod
    def _user_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("rigs")
    @classmethod
    def _unique_rigs(cls, rigs: list[RigConfig]) -> list[RigConfig]:
        _reject_duplicates([r.name for r in rigs], "rig name", "rigs")
        return rigs

    @property
    def sandbox_id(self) -> str:
        """The town's Fly app name (see ``components.domain.naming.sandbox_id``)."""
        return naming.sandbox_id(self.user, self.name)

    @property
    def volume_name(self) -> str:
        return naming.town_volume_name(self.sandbox_id)

    @property
    def network(self) -> str:
        """The town's own Fly private network: it reaches no silo and no other town privately."""
        return naming.town_network(self.sandbox_id)


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError(f"must be an email address such as dev@acme.dev (got {_shown(value)})")
    return value


class SmtpConfig(_Model):
    """GoTrue's mail server (supabase/supabase:docker/docker-compose.yml, GOTRUE_SMTP_*). The password is
    the secret ``silo:smtpPassword``, never part of this map. Without SMTP, GoTrue confirms sign-ups
    itself and sends no mail at all (README)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    user: str | None = None
    admin_email: Annotated[str, Field(alias="adminEmail"), AfterValidator(_email)]
    sender_name: Annotated[str, Field(alias="senderName", min_length=1)] = "Supabase"


def _reject_duplicates(names: list[str], what: str, field: str) -> None:
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first:
            raise ValueError(f"duplicate {what} {_shown(name)} ({field}[{first[name]}] and {field}[{index}])")
        first[name] = index


class SiloConfig(_Model):
    """One silo's stack config. Field names are the snake_case of the ``silo:`` keys.

    Constructing it directly raises ``ConfigError`` (not pydantic's ``ValidationError``).
    """

    kind: Literal["silo", "control", "town"] = "silo"
    client: Slug
    app: Slug
    fly_org: Annotated[str, AfterValidator(_org)]
    region: Annotated[str, AfterValidator(_region)] = "yul"
    state: Literal["running", "stopped"] = "running"
    rls_mode: Literal["production", "permissive", "disabled"] = "production"
    auto_stop_minutes: Annotated[int, Field(ge=0)] = 30
    studio: StrictBool = True
    site_url: Annotated[str, AfterValidator(_redirect_url)]
    # More URLs GoTrue may redirect to after sign-in (besides the site URL's origin), each as strict.
    redirect_urls: list[Annotated[str, AfterValidator(_redirect_url)]] = Field(default_factory=list)
    allow_data_deletion: StrictBool = False
    region_migration: StrictBool = False
    # Fly cannot move an app to another private network: moving an existing silo onto its own network
    # replaces every app (see the README), so it needs this explicit override, like a region change.
    network_migration: StrictBool = False
    # Public Postgres, only through Fly's pg_tls handler (TLS required); off = private network only.
    pg_public: StrictBool = False
    # GoTrue's open sign-up: with mail auto-confirm, anyone on the internet could mint an `authenticated`
    # JWT (every table, in permissive RLS mode). Closed by default; users are invited or created by admins.
    auth_signup: StrictBool = False
    # How long `up` waits for a machine to start and pass its health checks (image pulls included).
    ready_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 600
    # Per-service tag overrides; services not listed use the catalog's pinned default.
    images: dict[ServiceName, ImageTag] = Field(default_factory=dict)
    # The `control` stack (registry database, backup bucket) that towns report to, as a stack
    # reference names it: "<org>/silo/control" on Pulumi Cloud, "organization/silo/control" on a file
    # backend (the only organisation it has).
    control_stack: Annotated[str, AfterValidator(_stack_reference)] | None = None
    kilo_api_url: Annotated[str, AfterValidator(_kilo_api_url)] = "https://api.kilo.ai"
    towns: list[TownConfig] = Field(default_factory=list)
    # Bumping it regenerates the JWT secret, and with it the anon/service_role keys (key rotation).
    key_generation: Annotated[int, Field(ge=0)] = 0
    # GoTrue's SMTP server (optional); its password is the secret silo:smtpPassword.
    smtp: SmtpConfig | None = None
    # Accepted so existing stack files stay valid, but no longer read: the guardrails take the budget from the
    # stack's policy config (docs/guardrails.md "Waivers"); the program says so (components/stacks/devenv.py).
    monthly_budget: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_errors_from_validation(exc)) from None

    @field_validator("app")
    @classmethod
    def _app_names_fit(cls, app: str, info: ValidationInfo) -> str:
        client = info.data.get("client")
        if client is None:  # already reported under silo:client
            return app
        longest = naming.longest_app_name(client, app)
        if len(longest) > naming.DNS_LABEL_MAX:
            raise ValueError(
                f"Fly app name {longest} would be {len(longest)} characters; the limit is "
                f"{naming.DNS_LABEL_MAX} (shorten silo:client or silo:app)"
            )
        return app

    @field_validator("redirect_urls")
    @classmethod
    def _unique_redirect_urls(cls, urls: list[str]) -> list[str]:
        _reject_duplicates(urls, "redirect URL", "redirectUrls")
        return urls

    @field_validator("towns")
    @classmethod
    def _unique_towns(cls, towns: list[TownConfig], info: ValidationInfo) -> list[TownConfig]:
        _reject_duplicates([t.name for t in towns], "town name", "towns")
        if towns and not info.data.get("control_stack"):
            raise ValueError(
                "towns need silo:controlStack, the control stack that holds the registry database and the backup bucket"
            )
        return towns

    # -- derived names ------------------------------------------------------------------------------

    @property
    def pg_host(self) -> str:
        """Where the other services reach Postgres.

        Private silos go through Flycast (the proxy wakes a stopped pg). With `silo:pgPublic` every
        port of the app is public and TLS-only, so the services use 6PN (`.internal`) directly and pg
        never auto-stops (`.internal` only resolves started machines).
        """
        return f"{self.app_name('pg')}.internal" if self.pg_public else self.flycast_host("pg")

    @property
    def silo_id(self) -> str:
        return f"{self.client}-{self.app}"

    @property
    def owner_parts(self) -> tuple[str, ...]:
        """What tells this silo apart in its stack's ownership mark (components/stacks/ownership.py)."""
        return (self.client, self.app)

    @property
    def uri_allow_list(self) -> list[str]:
        """GoTrue's ``GOTRUE_URI_ALLOW_LIST``: the site URL and each of ``silo:redirectUrls``, each also
        with ``/**`` (every path below it). Each URL is one exact https origin and plain path (see
        ``_redirect_url``), so ``/**`` never widens a match beyond that origin: the literal prefix ends
        with the path's ``/``, which no other host name can follow."""
        return [entry for url in (self.site_url, *self.redirect_urls) for entry in (url, f"{url.rstrip('/')}/**")]

    @property
    def network(self) -> str:
        """The silo's own Fly private network: its Flycast and .internal names resolve only inside it."""
        return naming.silo_network(self.client, self.app)

    @property
    def services(self) -> list[str]:
        """Enabled services in dependency order (Studio only when ``silo:studio`` is true)."""
        return [s for s in naming.SERVICES if s != "studio" or self.studio]

    def app_name(self, service: str) -> str:
        return naming.app_name(self.client, self.app, service)

    @property
    def kong_url(self) -> str:
        """The silo's public Supabase URL (the only public entry point)."""
        return f"https://{self.app_name('kong')}.fly.dev"

    @property
    def studio_url(self) -> str:
        """Where people open Studio: the Kong URL.

        The Studio app has no public IP; Kong proxies its dashboard route to it behind basic-auth,
        so Studio is reachable only through Kong.
        """
        return self.kong_url

    def flycast_host(self, service: str) -> str:
        """Private hostname of a service, reached through Fly Proxy (so autostart works)."""
        return f"{self.app_name(service)}.flycast"

    def flycast_url(self, service: str, port: int) -> str:
        return f"http://{self.flycast_host(service)}:{port}"


# ---------------------------------------------------------------------------------------------------
# Errors


def _config_key(loc: tuple[int | str, ...]) -> str:
    key = f"{NAMESPACE}:"
    for index, part in enumerate(loc):
        if isinstance(part, int):
            key += f"[{part}]"
        elif index == 0:
            key += KEY_BY_FIELD.get(part, part)
        elif part == "[key]":
            continue
        else:
            key += f".{part}"
    return key


def _message(error: Any) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "")
        if error["loc"][-1:] == ("[key]",):
            return f"unknown service {_shown(value)} (expected one of {', '.join(naming.SERVICES)})"
        return f"must be one of {expected} (got {_shown(value)})"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false (got {_shown(value)})"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number (got {_shown(value)})"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return f"must be a number (got {_shown(value)})"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')} (got {_shown(value)})"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')} (got {_shown(value)})"
    if kind == "greater_than":
        return f"must be more than {ctx.get('gt'):g} (got {_shown(value)})"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters (got {len(value)})"
    if kind == "string_type":
        return f"must be a string (got {_shown(value)})"
    if kind in ("list_type",):
        return f"must be a list (got {_shown(value)})"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a map of keys to values (got {_shown(value)})"
    return f"{error['msg'][:1].lower()}{error['msg'][1:]} (got {_shown(value)})"


def _errors_from_validation(exc: ValidationError) -> list[tuple[str, str]]:
    return [(_config_key(tuple(e["loc"])), _message(e)) for e in exc.errors(include_url=False)]


class ControlConfig(_Model):
    """The shared `control` stack: registry database schema, image catalog sync, backup bucket.

    Its database DSN is the secret `silo:registryDsn` (read by the providers, never by this model).
    """

    kind: Literal["control"]
    # R2 bucket names: 3-63 lowercase letters, digits and dashes (the R2 provider checks it again).
    backup_bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")] = "silo-gastown-backups"
    backup_location_hint: Literal["apac", "eeur", "enam", "weur", "wnam", "oc"] | None = None
    allow_data_deletion: StrictBool = False
    # The users table the registry's user_id columns reference ("schema.table"), when it is in this database.
    users_table: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")] | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_errors_from_validation(exc)) from None


class TownStackConfig(_Model):
    """A `town` stack: one town of its own, outside any silo (how the provisioning API runs each town:
    service/, docs/architecture.md "Provisioning API"). It has what TownSandbox needs of a silo's config
    (the Fly org and region, the control stack, where heartbeats go, the data and migration switches)
    and no Supabase services."""

    kind: Literal["town"]
    fly_org: Annotated[str, AfterValidator(_org)]
    region: Annotated[str, AfterValidator(_region)] = "yul"
    town: TownConfig
    control_stack: Annotated[str, AfterValidator(_stack_reference)]
    kilo_api_url: Annotated[str, AfterValidator(_kilo_api_url)] = "https://api.kilo.ai"
    allow_data_deletion: StrictBool = False
    region_migration: StrictBool = False
    network_migration: StrictBool = False
    ready_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 600
    images: dict[ServiceName, ImageTag] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_errors_from_validation(exc)) from None

    @property
    def towns(self) -> list[TownConfig]:
        return [self.town]

    @property
    def services(self) -> list[str]:
        return []  # no Supabase services: only the town

    @property
    def silo_id(self) -> str:
        """The name its resources and machine metadata carry where a silo's carry the silo's id."""
        return f"town-{self.town.sandbox_id}"

    @property
    def owner_parts(self) -> tuple[str, ...]:
        return ("town", self.town.sandbox_id)


_TOWN_FIELDS = frozenset(TownStackConfig.model_fields)
_CONTROL_FIELDS = frozenset(ControlConfig.model_fields)
# What each kind of stack does not use (reported as "is not used by a ... stack").
_NOT_USED: dict[str, frozenset[str]] = {
    "silo": (_CONTROL_FIELDS | _TOWN_FIELDS) - frozenset(SiloConfig.model_fields),
    "control": frozenset(FIELD_BY_KEY.values()) - _CONTROL_FIELDS,
    "town": frozenset(FIELD_BY_KEY.values()) - _TOWN_FIELDS,
}


# ---------------------------------------------------------------------------------------------------
# Loaders


def _as_config_string(value: Any) -> Any:
    """What Pulumi would hand the program for a scalar: its string form (None stays None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _suggest(key: str) -> str:
    snake = key.replace("-", "_")
    if snake in KEY_BY_FIELD:
        return f" (did you mean {NAMESPACE}:{KEY_BY_FIELD[snake]}?)"
    near = difflib.get_close_matches(key, FIELD_BY_KEY, n=1, cutoff=0.6)
    if not near:
        lowered = {k.lower(): k for k in FIELD_BY_KEY}
        near = [lowered[key.lower()]] if key.lower() in lowered else []
    return f" (did you mean {NAMESPACE}:{near[0]}?)" if near else ""


def _suggest_provider_key(namespace: str, key: str) -> str:
    known = [k.partition(":")[2] for k in PROVIDER_KEYS[namespace]]
    lowered = {k.lower(): k for k in known}
    near = [lowered[key.lower()]] if key.lower() in lowered else difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not near:  # e.g. fly:token for fly:apiToken: a known key that ends with what was typed
        near = [k for k in known if k.lower().endswith(key.lower())][:1]
    return f" (did you mean {namespace}:{near[0]}?)" if near else ""


def from_mapping(
    config: Mapping[str, Any], secret_keys: Iterable[str] = ()
) -> SiloConfig | ControlConfig | TownStackConfig:
    """A ``SiloConfig`` from namespaced keys (``silo:client``, ``fly:apiUrl``, ...).

    ``silo:`` keys make the model. ``fly:`` and ``cloudflare:`` keys are the providers' (``PROVIDER_KEYS``):
    an unknown one is an error, ``fly:apiUrl`` must be an http(s) URL. Keys of other namespaces are
    ignored. The credentials (``SECRET_CONFIG_KEYS``) must be secret: ``secret_keys`` are the keys whose
    (decrypted) values the engine marks secret; in a stack file a secret is an encrypted
    ``{secure: ...}`` map instead.
    """
    secret = set(secret_keys)
    errors: list[tuple[str, str]] = []
    data: dict[str, Any] = {}
    for full_key, raw in config.items():
        namespace, sep, key = str(full_key).partition(":")
        if not sep:
            errors.append((str(full_key), f"config keys must be namespaced, e.g. {NAMESPACE}:{full_key}"))
            continue
        if namespace in PROVIDER_KEYS and full_key not in PROVIDER_KEYS[namespace]:
            errors.append((full_key, f"unknown key{_suggest_provider_key(namespace, key)}"))
            continue
        if full_key in SECRET_CONFIG_KEYS:
            errors.extend(_check_secret(full_key, raw, full_key in secret))
            continue
        if full_key == FLY_API_URL_KEY:
            errors.extend(_check_api_url(raw))
            continue
        if namespace != NAMESPACE:
            continue
        if key not in FIELD_BY_KEY:
            errors.append((full_key, f"unknown key{_suggest(key)}"))
            continue
        if isinstance(raw, Mapping) and "secure" in raw:
            errors.append((full_key, "must not be a secret: silo config holds no secrets"))
            continue
        if key in _STRUCTURED_KEYS:
            value, problem = _structured(raw, list if key in _LIST_KEYS else dict)
            if problem:
                errors.append((full_key, problem))
                continue
            if key == "smtp" and not value:
                value = None  # an empty map means no SMTP server
        else:
            value = _as_config_string(raw)
            if value is None:
                value = ""
        data[FIELD_BY_KEY[key]] = value
    reported = {k for k, _ in errors}
    kind = data.get("kind") if data.get("kind") in _NOT_USED else "silo"
    for field in sorted((_NOT_USED[kind] - {"kind"}) & data.keys()):
        errors.append((f"{NAMESPACE}:{KEY_BY_FIELD[field]}", f"is not used by a {kind} stack"))
        reported.add(f"{NAMESPACE}:{KEY_BY_FIELD[field]}")
        del data[field]
    model = {"control": ControlConfig, "town": TownStackConfig}.get(kind, SiloConfig)
    try:
        # The models' __init__ turn pydantic's ValidationError into ConfigError.
        cfg = model(**data)
    except ConfigError as exc:
        # A key rejected above is absent from data; don't also call it "required".
        errors.extend((key, msg) for key, msg in exc.errors if key not in reported)
        raise ConfigError(_ordered(errors)) from None
    if errors:
        raise ConfigError(_ordered(errors))
    return cfg


def _ordered(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Errors in the order of the key table, so output is stable whatever the file order."""
    order = {f"{NAMESPACE}:{k}": i for i, k in enumerate(FIELD_BY_KEY)}

    def rank(item: tuple[str, str]) -> tuple[int, str]:
        base = re.split(r"[.\[]", item[0], maxsplit=1)[0]
        return (order.get(base, len(order)), item[0])

    return sorted(dict.fromkeys(errors), key=rank)


def _structured(raw: Any, kind: type) -> tuple[Any, str | None]:
    """YAML objects pass through; strings are parsed as JSON (how Pulumi hands structured config)."""
    what = "a list" if kind is list else "a map"
    if raw is None or raw == "":
        return kind(), None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            return None, f"must be {what} (YAML, or JSON text): {exc.msg} at {where}"
    if not isinstance(raw, kind):
        return None, f"must be {what} (got {_shown(raw)})"
    return raw, None


def _check_secret(key: str, raw: Any, marked_secret: bool) -> list[tuple[str, str]]:
    """A credential key: encrypted in the stack file, or marked secret by the engine; never quoted back."""
    if isinstance(raw, Mapping) and "secure" in raw:
        return []  # encrypted in the stack file; its value is checked when the program runs
    if not marked_secret:
        return [(key, f"must be a secret: set it with `pulumi config set --secret {key} ...` (the value is not shown)")]
    if key == f"{NAMESPACE}:{GIT_CREDENTIALS_KEY}":
        problem = git_credentials_problem(raw)
        return [(key, problem)] if problem else []
    return []


def _check_api_url(raw: Any) -> list[tuple[str, str]]:
    if raw is None or raw == "":
        return []
    parts = _split(raw) if isinstance(raw, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return [(FLY_API_URL_KEY, f"must be an http(s) URL with a host (got {_shown(raw)})")]
    return []


def read_stack_file(path: Path) -> dict[str, Any]:
    """The raw ``config:`` map of a ``Pulumi.<stack>.yaml`` (values as YAML parsed them)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read the stack file: {exc.strerror or exc}")]) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError([(str(path), f"not valid YAML{where}: {problem}")]) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([(str(path), "must be a YAML map with a config: section")])
    config = document.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError([(f"{path}: config", "must be a map of namespaced keys to values")])
    return {str(k): v for k, v in config.items()}


def load_stack_file(path: Path) -> SiloConfig | ControlConfig | TownStackConfig:
    """Validate the ``config:`` map of a ``Pulumi.<stack>.yaml`` file."""
    return from_mapping(read_stack_file(path))


# How a user sets the inputs of the Fly resources the stacks declare (`config_keys`): the provider layer
# knows no `silo:` key, so its errors name these instead of its own input names.
APP_CONFIG_KEYS: dict[str, str] = {
    "name": "silo:client / silo:app",
    "org": "silo:flyOrg",
    "allow_network_change": "silo:networkMigration=true",
    "keep_volumes": "silo:allowDataDeletion=true",
}
TOWN_APP_CONFIG_KEYS: dict[str, str] = {**APP_CONFIG_KEYS, "name": "the town's user and name in silo:towns"}
VOLUME_CONFIG_KEYS: dict[str, str] = {
    "allow_delete": "silo:allowDataDeletion=true",
    "allow_region_change": "silo:regionMigration=true",
}
EXEC_CONFIG_KEYS: dict[str, str] = {"machine_id": "silo:state running"}
