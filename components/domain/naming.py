"""Physical names: Fly app names, Fly volume names and Gastown sandbox ids.

Every name that reaches Fly is built here so the rules live in one place:

- Fly app names are global across Fly.io, may hold only lowercase letters, digits and dashes (flyctl's
  ``validateAppName``), and become a DNS label in ``<app>.fly.dev`` / ``<app>.flycast``, so they must be
  at most 63 characters with no leading or trailing dash (RFC 1035 §2.3.1, §2.3.4; Fly documents no maximum).
- Fly volume names are lowercase ``[a-z0-9_]`` of at most 30 characters (Kilo-Org/cloud, KiloClaw's
  volume-name helper).
- Image tags follow Docker's tag grammar (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``, distribution/reference).

The config model, the image catalog, the Fly providers, the fly.toml checks and the policy pack all
import these rules from here, so a name one layer accepts is never refused by another.

Sandbox ids (``sandbox_id``) have the format ``gt-<slug>-<digest>``:

- ``<digest>`` is the first 32 hex characters (128 bits) of SHA-256 over the JSON array
  ``["gastown", user_id, town_name]``. JSON quotes and escapes each field, so no choice of user id or
  town name can shift a separator: ``("a:b", "c")`` and ``("a", "b:c")`` hash different documents.
- ``<slug>`` is a readable, lossy ASCII slug of the town name (at most 27 characters) so people can
  recognise their town's Fly app; it carries no identity, the digest does. The user id never appears
  in clear (it may be an email address, and the app name is public in ``<app>.fly.dev``).
- The longest result is 3 + 27 + 1 + 32 = 63 characters, whatever the input.

Why not the earlier designs (Kilo-Org/cloud): PR #294 (``src/lib/gastown/sandbox-id.ts``) base64url-encoded
``gastown:{userId}:{townName}``, which overflows 63 characters past ~47 input bytes (town names may be
100 characters), and a full SHA-256 hex digest (64 characters) does not fit either. A truncated
digest behind a short prefix is Kilo's own ``cloud-agent-next`` pattern.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

# The Supabase services of a silo, one Fly app each: the only place the list is written (the service
# specs, the config's silo:images keys, the catalog and the policy pack derive theirs from it). Order
# matters: upstreams come first (the order services are created and started in).
SERVICES: tuple[str, ...] = ("pg", "rest", "auth", "storage", "meta", "studio", "kong")
APP_PREFIX = "devenv"

DNS_LABEL_MAX = 63
VOLUME_NAME_MAX = 30
SANDBOX_PREFIX = "gt"
SANDBOX_DIGEST_HEX = 32
# "gt-" + slug + "-" + digest must fit in one DNS label.
SANDBOX_SLUG_MAX = DNS_LABEL_MAX - len(SANDBOX_PREFIX) - 2 - SANDBOX_DIGEST_HEX

DNS_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
VOLUME_NAME = re.compile(r"^[a-z0-9_]{1,30}$")
IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def is_dns_label(s: str) -> bool:
    """A lowercase RFC 1035-style label: letters, digits and dashes, 1-63 chars, no edge dashes."""
    return bool(DNS_LABEL.fullmatch(s))


def is_volume_name(s: str) -> bool:
    """Fly's volume-name rule: lowercase letters, digits and underscores, 1-30 characters."""
    return bool(VOLUME_NAME.fullmatch(s))


def is_image_tag(s: str) -> bool:
    """Docker's tag grammar; ``latest`` passes it, so callers that need a pinned tag refuse it too."""
    return bool(IMAGE_TAG.fullmatch(s))


def format_app_name(client: str, app: str, service: str) -> str:
    """The app-name format alone, unchecked: the config validates a silo's longest name with it."""
    return f"{APP_PREFIX}-{client}-{app}-{service}"


def longest_app_name(client: str, app: str) -> str:
    """The longest of a silo's app names: if it is a DNS label short enough, they all are."""
    return format_app_name(client, app, max(SERVICES, key=len))


def app_name(client: str, app: str, service: str) -> str:
    """``devenv-{client}-{app}-{service}``, the Fly app of one Supabase service of a silo."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}: expected one of {', '.join(SERVICES)}")
    name = format_app_name(client, app, service)
    if not is_dns_label(name):
        raise ValueError(
            f"Fly app name {name!r} ({len(name)} characters) is not a DNS label of at most "
            f"{DNS_LABEL_MAX} lowercase letters, digits and dashes"
        )
    return name


def silo_network(client: str, app: str) -> str:
    """``devenv-{client}-{app}``: the Fly private network (custom 6PN) of all of one silo's apps.

    Fly network names are unique within an org and have letters, digits and dashes, starting with a
    letter (fly.io/docs/networking/custom-private-networks); a silo's app names without the service.
    """
    return f"{APP_PREFIX}-{client}-{app}"


def town_network(sandbox_id: str) -> str:
    """A town's own Fly private network, named after its app (``gt-...``, never a silo's ``devenv-``)."""
    if not is_dns_label(sandbox_id):
        raise ValueError(f"sandbox id {sandbox_id!r} is not a DNS label")
    return sandbox_id


def _digest(*fields: str) -> str:
    # JSON encoding is the unambiguous separator between fields (see the module docstring).
    document = json.dumps(list(fields), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


def _ascii_slug(text: str, allowed: str, joiner: str) -> str:
    """Fold to ASCII, lowercase, and collapse every run of other characters into ``joiner``."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(rf"[^{allowed}]+", joiner, folded).strip(joiner)


def sandbox_id(user_id: str, town_name: str) -> str:
    """Deterministic Fly app name of a Gastown town: ``gt-<slug>-<32 hex>``, at most 63 characters.

    Same (user_id, town_name) always gives the same id; different pairs give different ids unless
    SHA-256 collides in its first 128 bits.
    """
    digest = _digest("gastown", user_id, town_name)[:SANDBOX_DIGEST_HEX]
    slug = _ascii_slug(town_name, "a-z0-9", "-")[:SANDBOX_SLUG_MAX].strip("-")
    return f"{SANDBOX_PREFIX}-{slug}-{digest}" if slug else f"{SANDBOX_PREFIX}-{digest}"


def town_volume_name(sandbox_id: str) -> str:
    """``town_<24 hex>``: the data volume of a town's machine (29 characters, Fly's rules)."""
    if not is_dns_label(sandbox_id):
        raise ValueError(f"sandbox id {sandbox_id!r} is not a DNS label")
    return f"town_{_digest('town-volume', sandbox_id)[:24]}"


# -- ownership ---------------------------------------------------------------------------------------
# Fly app names are global and built from slugs that may hold dashes, so two different silos can name
# the same app (`devenv-a-b-c-pg` is client a-b + app c, and client a + app b-c), and two silos that
# declare the same user + town share a sandbox id. Fly apps carry no labels, so a stack marks each app it
# creates with a secret whose *name* identifies the stack: the Machines API lists secret names (never
# values), and names need no knowledge of Fly's undisclosed digest algorithm to compare.
OWNER_SECRET_PREFIX = "SILO_OWNER_"
OWNER_DIGEST_HEX = 24


def stack_owner(project: str, stack: str, *identity: str) -> str:
    """``<project>/<stack>/<identity...>``: the owner of what one stack creates.

    The stack tells two stacks of one silo apart (a copied stack file must not take over the apps); the
    silo's slugs (``client``, ``app``; a town stack's ``town``, sandbox id), separated by ``/`` (which no
    slug holds), tell apart two silos whose names collide even when both live in a stack of the same name
    on different backends. The organisation is left out, so moving the state to a team backend keeps the
    owner.
    """
    return "/".join((project, stack, *identity))


def owner_secret(owner: str) -> str:
    """``SILO_OWNER_<24 hex>``: the name of the secret that marks a Fly app as ``owner``'s."""
    return OWNER_SECRET_PREFIX + _digest("silo-owner", owner)[:OWNER_DIGEST_HEX].upper()


def is_owner_secret(name: str) -> bool:
    return name.startswith(OWNER_SECRET_PREFIX)
