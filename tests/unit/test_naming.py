"""Fly names and Gastown sandbox ids: always valid, stable, and distinct for distinct inputs."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.domain import naming
from components.domain.naming import (
    app_name,
    is_dns_label,
    is_volume_name,
    sandbox_id,
    town_volume_name,
)

# Town names are 1-100 characters (the PR #294 router limit); user ids are arbitrary Unicode.
town_names = st.text(min_size=1, max_size=100)
user_ids = st.text(min_size=1, max_size=200)


def test_app_names_follow_the_devenv_pattern() -> None:
    assert app_name("acme", "erp", "kong") == "devenv-acme-erp-kong"
    assert [app_name("acme", "erp", s) for s in naming.SERVICES[:2]] == [
        "devenv-acme-erp-pg",
        "devenv-acme-erp-rest",
    ]
    with pytest.raises(ValueError, match="unknown service 'postgres'"):
        app_name("acme", "erp", "postgres")
    with pytest.raises(ValueError, match="70 characters"):
        app_name("acme", "a" * 50, "storage")


@pytest.mark.parametrize(
    ("label", "valid"),
    [
        ("a", True),
        ("devenv-acme-erp-kong", True),
        ("0abc", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("-abc", False),
        ("abc-", False),
        ("Abc", False),
        ("a_b", False),
        ("a.b", False),
        ("", False),
    ],
)
def test_is_dns_label(label: str, valid: bool) -> None:
    assert is_dns_label(label) is valid


def test_pr_294_inputs_that_overflowed_now_fit() -> None:
    # PR #294 base64url-encoded "gastown:{userId}:{townName}": this pair gave 180 characters.
    user, town = "user_01HZX3K4M5N6P7Q8R9S0T1V2W3", "t" * 100
    pr_294_id = base64.urlsafe_b64encode(f"gastown:{user}:{town}".encode()).decode().rstrip("=")
    assert len(pr_294_id) > 63
    sid = sandbox_id(user, town)
    assert is_dns_label(sid) and len(sid) == 63
    assert sid.startswith("gt-ttt") and sid == sandbox_id(user, town)


def test_sandbox_id_is_readable_and_hides_the_user() -> None:
    sid = sandbox_id("alice@example.com", "Café Town")
    assert sid.startswith("gt-cafe-town-")
    assert "alice" not in sid
    assert sandbox_id("bob@example.com", "Café Town") != sid
    # A name without any ASCII letter or digit still gets a valid id (digest only).
    assert is_dns_label(sandbox_id("u", "東京")) and sandbox_id("u", "東京").startswith("gt-")
    assert len(sandbox_id("u", "東京")) == len("gt-") + naming.SANDBOX_DIGEST_HEX


def test_separator_in_a_field_cannot_shift_into_the_other() -> None:
    assert sandbox_id("a:b", "c") != sandbox_id("a", "b:c")
    assert sandbox_id('a","b', "c") != sandbox_id("a", 'b","c')
    assert sandbox_id("a", "") != sandbox_id("", "a")


# Every id generated during the run, with the pair it came from: collisions are checked across all of
# the thousands of examples, not only within one.
_SEEN_IDS: dict[str, tuple[str, str]] = {}


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(user_ids, town_names), min_size=1, max_size=4))
def test_sandbox_id_properties(pairs: list[tuple[str, str]]) -> None:
    for user, town in pairs:
        sid = sandbox_id(user, town)
        assert is_dns_label(sid), sid
        assert len(sid) <= 63
        assert sandbox_id(user, town) == sid  # deterministic
        assert is_volume_name(town_volume_name(sid))
        assert _SEEN_IDS.setdefault(sid, (user, town)) == (user, town), "two inputs share a sandbox id"


def test_the_property_run_covered_thousands_of_distinct_inputs() -> None:
    if not _SEEN_IDS:
        test_sandbox_id_properties()
    assert len(_SEEN_IDS) >= 2000


@settings(max_examples=1000, deadline=None)
@given(user=user_ids, left=st.text(max_size=30), right=st.text(max_size=30), sep=st.sampled_from(':,"\\|\x00'))
def test_moving_a_separator_between_fields_changes_the_id(user: str, left: str, right: str, sep: str) -> None:
    # ("x:y", "z") vs ("x", "y:z"): the same concatenation split differently must not collide.
    assert sandbox_id(f"{user}{sep}{left}", right or "t") != sandbox_id(user, f"{left}{sep}{right or 't'}")


def test_no_collisions_across_thousands_of_similar_inputs() -> None:
    ids = {sandbox_id(f"user-{u}", f"town {t}" if t % 3 else f"Town-{t}") for u in range(60) for t in range(60)}
    assert len(ids) == 3600


def test_town_volume_name_rejects_non_sandbox_ids() -> None:
    assert town_volume_name("gt-alpha-" + "0" * 32).startswith("town_")
    with pytest.raises(ValueError, match="not a DNS label"):
        town_volume_name("Not A Label")
