"""Providers the harness emulates in-process because no plugin binaries exist here.

`pulumi_random` resources (RandomPassword/String/Id/Uuid), `pulumi_postgresql` Role and Grant (run with
psycopg against the database of the explicit provider resource they name), and `pulumi:providers:*`. They expose
the same Check/Diff/Create/Update/Delete surface as `ProviderHost`, so the deployment treats every
custom resource the same way. Property names are the wire (camelCase) names the `pulumi_random` SDK sends.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from pulumi.output import Unknown
from pulumi.runtime.proto import provider_pb2

from .provider_host import DiffResult

LOWER = "abcdefghijklmnopqrstuvwxyz"
UPPER = LOWER.upper()
NUMERIC = "0123456789"
# terraform-provider-random's default special set.
DEFAULT_SPECIAL = "!@#$%&*()-_=+[]{}<>:?"

DIFF_NONE = provider_pb2.DiffResponse.DIFF_NONE
DIFF_SOME = provider_pb2.DiffResponse.DIFF_SOME


def _same(olds: Mapping[str, Any], news: Mapping[str, Any]) -> bool:
    return dict(olds) == dict(news)


class _RandomBase:
    """Every random input forces a replacement (ForceNew in the upstream provider)."""

    input_keys: tuple[str, ...] = ("keepers",)

    def check(self, urn: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> tuple[dict, list[tuple[str, str]]]:
        return {k: v for k, v in news.items() if k in self.input_keys}, []

    def diff(
        self, urn: str, id_: str, olds: Mapping[str, Any], news: Mapping[str, Any], old_inputs: Mapping[str, Any]
    ) -> DiffResult:
        old = {k: v for k, v in old_inputs.items() if k in self.input_keys}
        changed = sorted(k for k in set(old) | set(news) if old.get(k) != news.get(k))
        if not changed:
            return DiffResult(DIFF_NONE)
        return DiffResult(DIFF_SOME, replaces=changed)

    def update(
        self, urn: str, id_: str, olds: Mapping[str, Any], news: Mapping[str, Any], old_inputs: Mapping[str, Any]
    ) -> dict:
        return {**olds, **news}

    def delete(self, urn: str, id_: str, props: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
        return None

    def create(self, urn: str, props: Mapping[str, Any]) -> tuple[str, dict]:
        raise NotImplementedError


def _flag(props: Mapping[str, Any], key: str, default: bool = True) -> bool:
    value = props.get(key, default)
    return bool(value) if not isinstance(value, Unknown) else default


def _count(props: Mapping[str, Any], key: str) -> int:
    value = props.get(key, 0)
    return int(value) if isinstance(value, (int, float)) else 0


class RandomStringProvider(_RandomBase):
    input_keys = (
        "keepers", "length", "special", "upper", "lower", "numeric", "number",
        "minLower", "minUpper", "minNumeric", "minSpecial", "overrideSpecial",
    )  # fmt: skip

    def check(self, urn: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> tuple[dict, list[tuple[str, str]]]:
        inputs, failures = super().check(urn, olds, news)
        length = inputs.get("length")
        if isinstance(length, Unknown):
            return inputs, failures
        if not isinstance(length, (int, float)) or int(length) < 1:
            failures.append(("length", "length is required and must be at least 1"))
            return inputs, failures
        for key in ("special", "upper", "lower", "numeric"):
            inputs.setdefault(key, True)
        # `number` is the deprecated spelling of `numeric`; an explicit false on either disables digits.
        if inputs.get("number") is False:
            inputs["numeric"] = False
        for key in ("minLower", "minUpper", "minNumeric", "minSpecial"):
            value = inputs.setdefault(key, 0)
            if isinstance(value, (int, float)) and value < 0:
                failures.append((key, f"{key} must not be negative"))
        mins = sum(_count(inputs, k) for k in ("minLower", "minUpper", "minNumeric", "minSpecial"))
        if mins > int(length):
            failures.append(("length", f"length {int(length)} is shorter than the sum of the min_* counts ({mins})"))
        if not self._sets(inputs):
            failures.append(("length", "special, upper, lower and numeric are all false: no characters to use"))
        return inputs, failures

    @staticmethod
    def _sets(props: Mapping[str, Any]) -> list[tuple[str, str]]:
        special = props.get("overrideSpecial")
        special_chars = special if isinstance(special, str) else DEFAULT_SPECIAL
        pairs = [
            ("lower", LOWER, "minLower"),
            ("upper", UPPER, "minUpper"),
            ("numeric", NUMERIC, "minNumeric"),
            ("special", special_chars, "minSpecial"),
        ]
        return [(chars, min_key) for flag, chars, min_key in pairs if _flag(props, flag) and chars]

    def generate(self, props: Mapping[str, Any]) -> str:
        length = int(props["length"])
        sets = self._sets(props)
        chars: list[str] = []
        for charset, min_key in sets:
            chars.extend(secrets.choice(charset) for _ in range(_count(props, min_key)))
        pool = "".join(charset for charset, _ in sets)
        chars.extend(secrets.choice(pool) for _ in range(length - len(chars)))
        # Shuffle so the guaranteed minimums are not always at the front.
        for i in range(len(chars) - 1, 0, -1):
            j = secrets.randbelow(i + 1)
            chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars)

    def create(self, urn: str, props: Mapping[str, Any]) -> tuple[str, dict]:
        result = self.generate(props)
        return result, {**props, "result": result}


class RandomPasswordProvider(RandomStringProvider):
    # bcryptHash is not produced: the bcrypt library is not a dependency of this project.
    secret_outputs = ("result",)

    def create(self, urn: str, props: Mapping[str, Any]) -> tuple[str, dict]:
        return "none", {**props, "result": self.generate(props)}


class RandomIdProvider(_RandomBase):
    input_keys = ("keepers", "byteLength", "prefix")

    def check(self, urn: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> tuple[dict, list[tuple[str, str]]]:
        inputs, failures = super().check(urn, olds, news)
        n = inputs.get("byteLength")
        if not isinstance(n, Unknown) and (not isinstance(n, (int, float)) or int(n) < 1):
            failures.append(("byteLength", "byteLength is required and must be at least 1"))
        return inputs, failures

    def create(self, urn: str, props: Mapping[str, Any]) -> tuple[str, dict]:
        raw = secrets.token_bytes(int(props["byteLength"]))
        prefix = props.get("prefix", "") or ""
        b64_url = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        outs = {
            **props,
            "b64Url": prefix + b64_url,
            "b64Std": prefix + base64.b64encode(raw).decode(),
            "hex": prefix + raw.hex(),
            "dec": prefix + str(int.from_bytes(raw, "big")),
        }
        return prefix + b64_url, outs


class RandomUuidProvider(_RandomBase):
    def create(self, urn: str, props: Mapping[str, Any]) -> tuple[str, dict]:
        result = str(uuid.uuid4())
        return result, {**props, "result": result}


class ProviderResourceProvider:
    """`pulumi:providers:*` resources: recorded with an id; their config is never sent anywhere."""

    def check(self, urn: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> tuple[dict, list[tuple[str, str]]]:
        return dict(news), []

    def diff(
        self, urn: str, id_: str, olds: Mapping[str, Any], news: Mapping[str, Any], old_inputs: Mapping[str, Any]
    ) -> DiffResult:
        return DiffResult(DIFF_NONE if _same(old_inputs, news) else DIFF_SOME)

    def create(self, urn: str, props: Mapping[str, Any]) -> tuple[str, dict]:
        return str(uuid.uuid4()), dict(props)

    def update(
        self, urn: str, id_: str, olds: Mapping[str, Any], news: Mapping[str, Any], old_inputs: Mapping[str, Any]
    ) -> dict:
        return dict(news)

    def delete(self, urn: str, id_: str, props: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
        return None


BUILTIN_TYPES: dict[str, Any] = {
    "random:index/randomPassword:RandomPassword": RandomPasswordProvider(),
    "random:index/randomString:RandomString": RandomStringProvider(),
    "random:index/randomId:RandomId": RandomIdProvider(),
    "random:index/randomUuid:RandomUuid": RandomUuidProvider(),
}

# Outputs the upstream schema marks secret, whatever the program's options say.
BUILTIN_SECRET_OUTPUTS: dict[str, tuple[str, ...]] = {
    "random:index/randomPassword:RandomPassword": ("result", "bcryptHash"),
}


def builtin_provider(type_: str) -> Any | None:
    if type_.startswith("pulumi:providers:"):
        return ProviderResourceProvider()
    return BUILTIN_TYPES.get(type_)


# -- pulumi_postgresql Role and Grant, emulated with psycopg against the provider's database ---------
def _postgres_conninfo(provider_inputs: Mapping[str, Any]) -> str:
    """The explicit `pulumi:providers:postgresql` resource's connection settings (provider config is
    serialised as strings on the wire: port arrives as JSON text)."""
    import json

    from psycopg.conninfo import make_conninfo

    port = provider_inputs.get("port")
    return make_conninfo(
        host=provider_inputs.get("host") or "localhost",
        port=str(json.loads(port) if isinstance(port, str) and port.startswith('"') else port or 5432),
        user=provider_inputs.get("username") or "postgres",
        password=provider_inputs.get("password") or "",
        dbname=provider_inputs.get("database") or "postgres",
        sslmode=provider_inputs.get("sslmode") or "prefer",
    )


class _PostgresBase:
    input_keys: tuple[str, ...] = ()
    replace_keys: tuple[str, ...] = ()

    def __init__(self, provider_inputs: Mapping[str, Any]):
        self.conninfo = _postgres_conninfo(provider_inputs)

    def _execute(self, *statements: Any) -> None:
        import psycopg

        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def check(self, urn: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> tuple[dict, list[tuple[str, str]]]:
        return {k: v for k, v in news.items() if k in self.input_keys}, []

    def diff(
        self, urn: str, id_: str, olds: Mapping[str, Any], news: Mapping[str, Any], old_inputs: Mapping[str, Any]
    ) -> DiffResult:
        changed = sorted(
            k for k in set(old_inputs) | set(news) if k in self.input_keys and old_inputs.get(k) != news.get(k)
        )
        if not changed:
            return DiffResult(DIFF_NONE)
        return DiffResult(DIFF_SOME, replaces=[k for k in changed if k in self.replace_keys])


class PostgresRoleProvider(_PostgresBase):
    input_keys = ("name", "login", "password", "connectionLimit")
    replace_keys = ("name",)

    def _options(self, props: Mapping[str, Any]) -> Any:
        from psycopg import sql

        login = sql.SQL("LOGIN" if props.get("login") else "NOLOGIN")
        if props.get("password"):
            return sql.SQL("{} PASSWORD {}").format(login, sql.Literal(props["password"]))
        return login

    def create(self, urn: str, props: Mapping[str, Any]) -> tuple[str, dict]:
        from psycopg import sql

        self._execute(sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(props["name"]), self._options(props)))
        return str(props["name"]), dict(props)

    def update(
        self, urn: str, id_: str, olds: Mapping[str, Any], news: Mapping[str, Any], old_inputs: Mapping[str, Any]
    ) -> dict:
        from psycopg import sql

        self._execute(sql.SQL("ALTER ROLE {} {}").format(sql.Identifier(news["name"]), self._options(news)))
        return dict(news)

    def delete(self, urn: str, id_: str, props: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
        from psycopg import sql

        role = sql.Identifier(props["name"])
        self._execute(sql.SQL("DROP OWNED BY {}").format(role), sql.SQL("DROP ROLE IF EXISTS {}").format(role))


class PostgresGrantProvider(_PostgresBase):
    input_keys = ("database", "role", "schema", "objectType", "privileges", "objects")
    replace_keys = input_keys  # the upstream provider replaces grants on any change

    def _statement(self, props: Mapping[str, Any], verb: str) -> Any:
        from psycopg import sql

        if props.get("objectType") not in ("table", "sequence"):
            raise ValueError(f"the harness emulates table and sequence grants only (got {props.get('objectType')!r})")
        schema = sql.Identifier(props.get("schema") or "public")
        objects = props.get("objects") or []
        kind = sql.SQL("TABLE" if props["objectType"] == "table" else "SEQUENCE")
        target = (
            sql.SQL("{} ").format(kind)
            + sql.SQL(", ").join(sql.Identifier(props.get("schema") or "public", o) for o in objects)
            if objects
            else sql.SQL("ALL {}S IN SCHEMA {}").format(kind, schema)
        )
        privileges = sql.SQL(", ").join(sql.SQL(p) for p in props.get("privileges") or [] if p.isalpha())
        direction = sql.SQL("TO" if verb == "GRANT" else "FROM")
        return sql.SQL("{} {} ON {} {} {}").format(
            sql.SQL(verb), privileges, target, direction, sql.Identifier(props["role"])
        )

    def create(self, urn: str, props: Mapping[str, Any]) -> tuple[str, dict]:
        self._execute(self._statement(props, "GRANT"))
        return f"{props['role']}_{props.get('database')}_{props.get('schema')}_{props['objectType']}", dict(props)

    def update(
        self, urn: str, id_: str, olds: Mapping[str, Any], news: Mapping[str, Any], old_inputs: Mapping[str, Any]
    ) -> dict:
        return dict(news)

    def delete(self, urn: str, id_: str, props: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
        self._execute(self._statement(props, "REVOKE"))


POSTGRES_TYPES: dict[str, Any] = {
    "postgresql:index/role:Role": PostgresRoleProvider,
    "postgresql:index/grant:Grant": PostgresGrantProvider,
}
BUILTIN_SECRET_OUTPUTS["postgresql:index/role:Role"] = ("password",)
