"""Supabase anon / service_role API keys: HS256 JWTs signed with the silo's JWT secret.

Same format as Supabase's ``docker/utils/generate-keys.sh`` (supabase/supabase repository): header
``{"alg":"HS256","typ":"JWT"}``, claims ``role``, ``iss: "supabase"``, ``iat`` and ``exp`` five years
later. The secret is used as a raw UTF-8 string (PostgREST's ``jwt-secret-is-base64`` is false).

The keys are a pure function of (secret, issued_at, years): the program passes a stored ``issued_at``
so ``pulumi preview`` shows no diff on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import jwt

MIN_SECRET_LENGTH = 32  # PostgREST refuses shorter HS256 secrets (PostgREST docs, Configuration > jwt-secret)
ISSUER = "supabase"


@dataclass(frozen=True)
class SupabaseKeys:
    anon_key: str
    # Bypasses RLS: keep it out of reprs (and therefore out of logs and tracebacks).
    service_role_key: str = field(repr=False)


def _check_secret(jwt_secret: str) -> None:
    if not isinstance(jwt_secret, str) or len(jwt_secret) < MIN_SECRET_LENGTH:
        length = len(jwt_secret) if isinstance(jwt_secret, str) else 0
        # Never echo the secret itself, only its length.
        raise ValueError(f"jwt_secret must be at least {MIN_SECRET_LENGTH} characters (got {length})")


def _add_years(issued_at: int, years: int) -> int:
    start = datetime.fromtimestamp(issued_at, UTC)
    try:
        end = start.replace(year=start.year + years)
    except ValueError:  # 29 February in a non-leap target year
        end = start.replace(year=start.year + years, day=28)
    return int(end.timestamp())


def supabase_keys(jwt_secret: str, issued_at: int, years: int = 5) -> SupabaseKeys:
    """The anon and service_role keys, valid from ``issued_at`` (Unix seconds) for ``years`` years."""
    _check_secret(jwt_secret)
    if isinstance(issued_at, bool) or not isinstance(issued_at, int) or issued_at < 0:
        raise ValueError(f"issued_at must be a non-negative Unix timestamp in seconds (got {issued_at!r})")
    if isinstance(years, bool) or not isinstance(years, int) or years < 1:
        raise ValueError(f"years must be a positive integer (got {years!r})")
    expires_at = _add_years(issued_at, years)

    def sign(role: str) -> str:
        claims = {"role": role, "iss": ISSUER, "iat": issued_at, "exp": expires_at}
        return jwt.encode(claims, jwt_secret, algorithm="HS256")

    return SupabaseKeys(anon_key=sign("anon"), service_role_key=sign("service_role"))
