"""Supabase API keys: the format generate-keys.sh produces, stable across runs, verifiable."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import jwt
import pytest

from components.domain.keys import SupabaseKeys, supabase_keys

SECRET = "a-forty-character-secret-for-the-tests-x"  # 40 chars, like `openssl rand -base64 30`
NOW = int(time.time())


def _segment(token: str, index: int) -> dict:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_keys_carry_the_supabase_claims() -> None:
    keys = supabase_keys(SECRET, issued_at=NOW)
    for token, role in ((keys.anon_key, "anon"), (keys.service_role_key, "service_role")):
        assert _segment(token, 0) == {"alg": "HS256", "typ": "JWT"}
        # Verified as PostgREST and GoTrue do: HS256 over the raw secret (PyJWT, not our code).
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], issuer="supabase")
        assert claims["role"] == role and claims["iss"] == "supabase" and claims["iat"] == NOW
        expires = datetime.fromtimestamp(claims["exp"], UTC)
        issued = datetime.fromtimestamp(NOW, UTC)
        assert (expires.year - issued.year, expires.month, expires.day) == (5, issued.month, issued.day)


def test_signature_is_hmac_sha256_over_the_raw_secret() -> None:
    # What PostgREST checks with jwt-secret-is-base64=false: HMAC over header.payload, secret as UTF-8.
    token = supabase_keys(SECRET, issued_at=NOW).anon_key
    header_payload, signature = token.rsplit(".", 1)
    expected = hmac.new(SECRET.encode(), header_payload.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(expected).decode().rstrip("=") == signature


def test_same_inputs_give_the_same_keys() -> None:
    first = supabase_keys(SECRET, issued_at=1767225600, years=10)
    assert supabase_keys(SECRET, issued_at=1767225600, years=10) == first
    assert supabase_keys(SECRET, issued_at=1767225601, years=10) != first
    assert supabase_keys(SECRET + "y", issued_at=1767225600, years=10) != first
    assert first.anon_key != first.service_role_key


def test_service_role_key_stays_out_of_reprs() -> None:
    keys = supabase_keys(SECRET, issued_at=NOW)
    assert keys.service_role_key not in repr(keys)
    assert isinstance(keys, SupabaseKeys)


def test_leap_day_issue_date_expires_on_28_february() -> None:
    leap_day = int(datetime(2028, 2, 29, 12, tzinfo=UTC).timestamp())
    claims = _segment(supabase_keys(SECRET, issued_at=leap_day, years=5).anon_key, 1)
    assert datetime.fromtimestamp(claims["exp"], UTC) == datetime(2033, 2, 28, 12, tzinfo=UTC)


def test_short_secrets_are_rejected_without_echoing_them() -> None:
    with pytest.raises(ValueError, match=r"at least 32 characters \(got 31\)") as caught:
        supabase_keys("s" * 31, issued_at=NOW)
    assert "s" * 31 not in str(caught.value)


@pytest.mark.parametrize(
    ("issued_at", "years"),
    [(-1, 5), (NOW, 0), (True, 5), (NOW, -3)],
    ids=["negative-iat", "zero-years", "bool-iat", "negative-years"],  # stable ids: xdist workers must agree
)
def test_bad_lifetimes_are_rejected(issued_at: int, years: int) -> None:
    with pytest.raises(ValueError, match=r"issued_at|years"):
        supabase_keys(SECRET, issued_at=issued_at, years=years)
