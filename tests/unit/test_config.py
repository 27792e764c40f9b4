"""SiloConfig: string coercion as Pulumi stores values, every rule, and errors that name the key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config.model import (
    FLY_REGIONS,
    ConfigError,
    SiloConfig,
    TownConfig,
    from_mapping,
    load_stack_file,
)
from components.config.program import from_pulumi_config
from components.domain.naming import is_dns_label, is_volume_name

REPO = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "silo:client": "acme",
    "silo:app": "erp",
    "silo:flyOrg": "acme-erp",
    "silo:siteUrl": "https://silo-acme-erp--prod.netlify.app",
    "silo:controlStack": "acme/silo/control",
}
TOWNS = [
    {
        "name": "Alpha Town",
        "user": "user_01",
        "rigs": [
            {"name": "web", "url": "https://github.com/acme/web.git"},
            {"name": "api", "url": "git@github.com:acme/api.git", "branch": "develop"},
        ],
    },
    {"name": "beta", "user": "user_02", "state": "stopped"},
]


def errors_of(config: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        from_mapping(config)
    return dict(caught.value.errors)


def test_defaults_and_string_coercion() -> None:
    cfg = from_mapping(BASE | {"silo:autoStopMinutes": "0", "silo:studio": "false", "silo:allowDataDeletion": "TRUE"})
    assert (cfg.kind, cfg.region, cfg.state, cfg.rls_mode) == ("silo", "yul", "running", "production")
    assert cfg.auto_stop_minutes == 0 and cfg.studio is False and cfg.allow_data_deletion is True
    assert cfg.region_migration is False and cfg.images == {} and cfg.towns == []
    # YAML scalars (unquoted numbers and booleans) mean the same as the strings Pulumi writes.
    assert from_mapping(BASE | {"silo:autoStopMinutes": 45, "silo:studio": True}).auto_stop_minutes == 45


def test_helpers_derive_every_name_from_client_and_app() -> None:
    cfg = from_mapping(BASE)
    assert cfg.silo_id == "acme-erp"
    assert cfg.services == ["pg", "rest", "auth", "storage", "meta", "studio", "kong"]
    assert cfg.app_name("storage") == "devenv-acme-erp-storage"
    assert cfg.kong_url == "https://devenv-acme-erp-kong.fly.dev"
    assert cfg.studio_url == cfg.kong_url  # Studio sits behind Kong's basic-auth
    assert cfg.flycast_host("rest") == "devenv-acme-erp-rest.flycast"
    assert cfg.flycast_url("auth", 9999) == "http://devenv-acme-erp-auth.flycast:9999"
    no_studio = from_mapping(BASE | {"silo:studio": "false"})
    assert "studio" not in no_studio.services and no_studio.services[-1] == "kong"


def test_direct_construction_uses_field_names_and_raises_config_error() -> None:
    cfg = SiloConfig(client="acme", app="erp", fly_org="acme", site_url="https://x.dev")
    assert cfg.app_name("pg") == "devenv-acme-erp-pg"
    with pytest.raises(ConfigError) as caught:
        SiloConfig(client="Acme", app="erp", fly_org="acme", site_url="https://x.dev")
    assert str(caught.value) == (
        "silo:client: must be a slug of lowercase letters, digits and single dashes, "
        'starting with a letter (got "Acme")'
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("silo:client", "Acme", 'starting with a letter (got "Acme")'),
        ("silo:client", "1acme", "starting with a letter"),
        ("silo:client", "ac--me", "single dashes"),
        ("silo:app", "erp-", "single dashes"),
        ("silo:app", "", 'got ""'),
        ("silo:flyOrg", "Acme Org", "Fly organization slug"),
        ("silo:region", "mtl", 'unknown Fly region "mtl"'),
        ("silo:region", "YUL", "did you mean"),
        ("silo:state", "paused", 'must be one of running or stopped (got "paused")'),
        ("silo:rlsMode", "strict", "must be one of production, permissive or disabled"),
        ("silo:kind", "village", "must be one of silo, control or town"),
        ("silo:autoStopMinutes", "-5", 'must be at least 0 (got "-5")'),
        ("silo:autoStopMinutes", "half an hour", "must be a whole number"),
        ("silo:studio", "yes", 'must be true or false (got "yes")'),
        ("silo:regionMigration", "1", "must be true or false"),
        ("silo:siteUrl", "http://silo.netlify.app", "must be an https:// URL with a host"),
        ("silo:siteUrl", "https://", "must be an https:// URL with a host"),
        ("silo:siteUrl", "https://user:pw@silo.dev", "must not contain credentials"),
        ("silo:keyGeneration", "-1", "must be at least 0"),
        ("fly:apiUrl", "api.machines.dev", "must be an http(s) URL"),
        ("fly:apiUrl", "http://[::1", "must be an http(s) URL"),
        ("silo:siteUrl", "https://[fe80::1", "must be an https:// URL with a host"),
        ("silo:controlStack", "control", "fully qualified stack name, <org>/<project>/<stack>"),
        ("silo:controlStack", "silo/control", "organization/silo/control on a file backend"),
    ],
)
def test_each_bad_value_is_reported_under_its_key(key: str, value: str, expected: str) -> None:
    errors = errors_of(BASE | {key: value})
    assert list(errors) == [key]
    assert expected in errors[key]


def test_app_names_longer_than_a_dns_label_report_their_length() -> None:
    app = "a" * 45
    errors = errors_of(BASE | {"silo:app": app})
    assert errors["silo:app"].startswith(f"Fly app name devenv-acme-{app}-storage would be 65 characters")
    # 63 characters exactly is fine; one more is not.
    fits = "b" * (63 - len("devenv-acme--storage"))
    assert from_mapping(BASE | {"silo:app": fits}).app_name("storage").__len__() == 63
    assert "would be 64 characters" in errors_of(BASE | {"silo:app": fits + "b"})["silo:app"]


def test_missing_required_keys_are_all_listed() -> None:
    errors = errors_of({"silo:region": "ams"})
    assert errors == {key: "required" for key in ("silo:client", "silo:app", "silo:flyOrg", "silo:siteUrl")}


def test_unknown_silo_keys_are_errors_with_a_suggestion() -> None:
    errors = errors_of(BASE | {"silo:autostopMinutes": "5", "silo:fly_org": "x", "silo:colour": "red"})
    assert errors["silo:autostopMinutes"] == "unknown key (did you mean silo:autoStopMinutes?)"
    assert errors["silo:fly_org"] == "unknown key (did you mean silo:flyOrg?)"
    assert errors["silo:colour"] == "unknown key"


def test_other_namespaces_are_ignored_and_unnamespaced_keys_rejected() -> None:
    cfg = from_mapping(BASE | {"fly:apiToken": {"secure": "v1:abc"}, "aws:region": "us-east-1"})
    assert cfg.silo_id == "acme-erp"
    assert errors_of(BASE | {"client": "acme"}) == {"client": "config keys must be namespaced, e.g. silo:client"}
    assert "must not be a secret" in errors_of(BASE | {"silo:siteUrl": {"secure": "v1:abc"}})["silo:siteUrl"]


def test_all_problems_are_reported_at_once_in_key_table_order() -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping(BASE | {"silo:typo": "1", "silo:state": "off", "silo:client": "X"})
    assert [key for key, _ in caught.value.errors] == ["silo:client", "silo:state", "silo:typo"]
    lines = str(caught.value).splitlines()
    assert lines[1] == 'silo:state: must be one of running or stopped (got "off")'
    assert "pydantic" not in str(caught.value) and "errors.pydantic.dev" not in str(caught.value)


def test_images_are_pinned_tags_of_known_services() -> None:
    cfg = from_mapping(BASE | {"silo:images": {"pg": "15.8.1.060", "kong": "2.8.1"}})
    assert cfg.images == {"pg": "15.8.1.060", "kong": "2.8.1"}
    as_json = from_mapping(BASE | {"silo:images": json.dumps({"rest": "v12.2.0"})})
    assert as_json.images == {"rest": "v12.2.0"}
    errors = errors_of(BASE | {"silo:images": {"pg": "latest", "postgrest": "v12", "kong": "kong:2.8.1", "auth": ""}})
    assert errors["silo:images.pg"].startswith('must be a pinned tag, not "latest"')
    assert errors["silo:images.postgrest"].startswith('unknown service "postgrest"')
    assert "not an image reference" in errors["silo:images.kong"]
    assert "silo:images.auth" in errors
    assert "must be a map" in errors_of(BASE | {"silo:images": '["pg"]'})["silo:images"]


def test_towns_from_yaml_objects_or_json_text() -> None:
    for value in (TOWNS, json.dumps(TOWNS)):
        cfg = from_mapping(BASE | {"silo:towns": value})
        alpha, beta = cfg.towns
        assert (alpha.state, beta.state) == ("running", "stopped")
        assert [r.branch for r in alpha.rigs] == ["main", "develop"]
        assert is_dns_label(alpha.sandbox_id) and alpha.sandbox_id.startswith("gt-alpha-town-")
        assert is_volume_name(alpha.volume_name)
        assert alpha.sandbox_id != beta.sandbox_id


@pytest.mark.parametrize(
    ("towns", "key", "expected"),
    [
        ([{"name": "", "user": "u"}], "silo:towns[0].name", "must not be empty"),
        ([{"name": "t" * 101, "user": "u"}], "silo:towns[0].name", "at most 100 characters (got 101)"),
        ([{"name": " t", "user": "u"}], "silo:towns[0].name", "must not start or end with spaces"),
        ([{"name": "t"}], "silo:towns[0].user", "required"),
        ([{"name": "t", "user": "  "}], "silo:towns[0].user", "must not be blank"),
        ([{"name": "t", "user": "u", "state": "gone"}], "silo:towns[0].state", "must be one of running"),
        ([{"name": "t", "user": "u", "rig": []}], "silo:towns[0].rig", "unknown key"),
        ([{"name": "t", "user": "u"}, {"name": "t", "user": "v"}], "silo:towns", 'duplicate town name "t"'),
        (
            [{"name": "t", "user": "u", "rigs": [{"name": "Web", "url": "https://h/r"}]}],
            "silo:towns[0].rigs[0].name",
            "must be a slug",
        ),
        (
            [
                {
                    "name": "t",
                    "user": "u",
                    "rigs": [{"name": "a", "url": "https://h/r"}, {"name": "b", "url": "x"}],
                }
            ],
            "silo:towns[0].rigs[1].url",
            "must be a git URL",
        ),
        (
            [{"name": "t", "user": "u", "rigs": [{"name": "a", "url": "http://github.com/a/b"}]}],
            "silo:towns[0].rigs[0].url",
            "must be a git URL",
        ),
        (
            [{"name": "t", "user": "u", "rigs": [{"name": "a", "url": "https://github.com"}]}],
            "silo:towns[0].rigs[0].url",
            "repository path",
        ),
        (
            [{"name": "t", "user": "u", "rigs": [{"name": "a", "url": "https://h/r", "branch": "a..b"}]}],
            "silo:towns[0].rigs[0].branch",
            "valid git branch name",
        ),
        (
            [{"name": "t", "user": "u", "rigs": [{"name": "a", "url": "https://h/r", "branch": "--force"}]}],
            "silo:towns[0].rigs[0].branch",
            "valid git branch name",
        ),
        (
            [
                {
                    "name": "t",
                    "user": "u",
                    "rigs": [{"name": "a", "url": "https://h/r"}, {"name": "a", "url": "https://h/s"}],
                }
            ],
            "silo:towns[0].rigs",
            'duplicate rig name "a" (rigs[0] and rigs[1])',
        ),
        ({"name": "t"}, "silo:towns", "must be a list"),
        ("[{", "silo:towns", "must be a list (YAML, or JSON text)"),
    ],
)
def test_bad_towns_name_the_nested_key(towns: Any, key: str, expected: str) -> None:
    errors = errors_of(BASE | {"silo:towns": towns})
    assert key in errors, errors
    assert expected in errors[key]


def test_git_url_forms() -> None:
    urls = [
        "https://github.com/acme/web.git",
        "ssh://git@github.com:22/acme/web.git",
        "git@github.com:acme/web.git",
        "file:///tmp/repos/web",
    ]
    rigs = [{"name": f"r{i}", "url": url} for i, url in enumerate(urls)]
    cfg = from_mapping(BASE | {"silo:towns": [{"name": "t", "user": "u", "rigs": rigs}]})
    assert [r.url for r in cfg.towns[0].rigs] == urls


def test_tokens_in_rig_urls_are_refused_and_never_echoed() -> None:
    url = "https://x-access-token:ghp_SECRET123@github.com/acme/web.git"
    with pytest.raises(ConfigError) as caught:
        from_mapping(BASE | {"silo:towns": [{"name": "t", "user": "u", "rigs": [{"name": "w", "url": url}]}]})
    assert "ghp_SECRET123" not in str(caught.value)
    assert "must not embed a password or token" in dict(caught.value.errors)["silo:towns[0].rigs[0].url"]
    # Echoed values are masked too, e.g. when the rigs are not even a list.
    errors = errors_of(BASE | {"silo:towns": [{"name": "t", "user": "u", "rigs": {"url": url}}]})
    assert errors["silo:towns[0].rigs"].startswith("must be a list") and "ghp_SECRET123" not in str(errors)


def test_town_config_standalone_validation() -> None:
    town = TownConfig(name="My Town", user="u1")
    assert town.rigs == [] and town.state == "running"
    assert town.sandbox_id == TownConfig(name="My Town", user="u1").sandbox_id
    assert town.sandbox_id != TownConfig(name="My Town", user="u2").sandbox_id


def test_regions_list_includes_the_documented_codes() -> None:
    for code in ("yul", "ams", "iad", "sea", "sfo", "jnb", "lhr", "syd", "gru", "nrt"):
        assert code in FLY_REGIONS
    assert from_mapping(BASE | {"silo:region": "ams"}).region == "ams"


def test_repo_stack_file_is_valid() -> None:
    cfg = load_stack_file(REPO / "Pulumi.dev.yaml")
    assert cfg.silo_id == "acme-erp" and cfg.region == "yul" and cfg.auto_stop_minutes == 30


def test_stack_file_with_structured_values(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.acme.yaml"
    document = {
        "config": {
            **BASE,
            "silo:autoStopMinutes": "15",
            "silo:towns": TOWNS,
            "silo:images": {"pg": "15.8.1.060"},
            "fly:apiToken": {"secure": "v1:AAAA"},
            "fly:apiUrl": "http://127.0.0.1:4280",
        }
    }
    path.write_text(yaml.safe_dump(document))
    cfg = load_stack_file(path)
    assert cfg.auto_stop_minutes == 15 and len(cfg.towns) == 2 and cfg.images == {"pg": "15.8.1.060"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("config: [\n", "not valid YAML at line"),
        ("- a\n- b\n", "must be a YAML map"),
        ("config: nope\n", "must be a map of namespaced keys"),
    ],
)
def test_unreadable_stack_files(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_stack_file(path)
    with pytest.raises(ConfigError, match="cannot read the stack file"):
        load_stack_file(tmp_path / "missing.yaml")


@pytest.fixture
def pulumi_config() -> Iterator[Any]:
    from pulumi.runtime import config as runtime_config

    yield runtime_config
    runtime_config.set_all_config({}, secret_keys=[])


def test_from_pulumi_config_reads_every_silo_key(pulumi_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the engine hands the program: strings, with structured values as JSON text.
    pulumi_config.set_all_config(
        {**BASE, "silo:studio": "false", "silo:towns": json.dumps(TOWNS), "fly:apiToken": "tok"},
        secret_keys=["fly:apiToken"],
    )
    cfg = from_pulumi_config()
    assert cfg.studio is False and [t.name for t in cfg.towns] == ["Alpha Town", "beta"]

    # Keys from the language host's PULUMI_CONFIG are seen too, so typos there are caught.
    pulumi_config.set_all_config({})
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(BASE | {"silo:autoStopMinute": "5"}))
    with pytest.raises(ConfigError) as caught:
        from_pulumi_config()
    assert caught.value.errors == [("silo:autoStopMinute", "unknown key (did you mean silo:autoStopMinutes?)")]


def test_towns_need_the_control_stack_and_secret_keys_stay_out_of_the_model() -> None:
    without = {k: v for k, v in BASE.items() if k != "silo:controlStack"}
    errors = errors_of(without | {"silo:towns": [{"name": "t", "user": "u"}]})
    assert "silo:controlStack" in errors["silo:towns"]
    cfg = from_mapping(
        BASE | {"silo:registryDsn": "postgres://u:pw@h/db", "silo:kiloJwt": "jwt"},
        secret_keys=["silo:registryDsn", "silo:kiloJwt"],
    )
    assert "pw@h" not in repr(cfg) and "jwt" not in repr(cfg)


# -- rig URLs and git credentials (issue 11) ------------------------------------------------------------
def rig_errors(url: str, branch: str = "main") -> dict[str, str]:
    town = {"name": "t", "user": "u", "rigs": [{"name": "w", "url": url, "branch": branch}]}
    return errors_of(BASE | {"silo:towns": [town]})


@pytest.mark.parametrize(
    "url",
    [
        "https://ghp_SECRET123@github.com/acme/web.git",  # a token as the user name
        "https://x-access-token:ghp_SECRET123@github.com/acme/web.git",
        "https://ghp_SECRET123:@github.com/acme/web.git",
        "ssh://git:ghp_SECRET123@github.com/acme/web.git",
        "file://ghp_SECRET123@localhost/srv/web",
    ],
)
def test_any_userinfo_carrying_a_credential_is_refused_naming_the_key(url: str) -> None:
    errors = rig_errors(url)
    assert list(errors) == ["silo:towns[0].rigs[0].url"]
    assert "must not embed a password or token" in errors["silo:towns[0].rigs[0].url"]
    assert "silo:gitCredentials" in errors["silo:towns[0].rigs[0].url"]
    assert "ghp_SECRET123" not in str(errors)


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% /tmp/pwned",
        "ext::sh",
        "fd::17",
        "fd::0,1/repo",
        "EXT::sh",
        "--upload-pack=touch /tmp/pwned",
        "-uevil@github.com:acme/web.git",
        "--upload-pack@github.com:acme/web.git",
        "ssh://-oProxyCommand=touch%20pwned/acme/web.git",
        "git@-oProxyCommand=x:acme/web.git",
        "git@github.com:-acme/web.git",
        "ssh://-git@github.com/acme/web.git",
    ],
)
def test_git_transports_and_option_looking_urls_are_refused(url: str) -> None:
    errors = rig_errors(url)
    assert list(errors) == ["silo:towns[0].rigs[0].url"], errors


@pytest.mark.parametrize("branch", ["-f", "--upload-pack=x", "-"])
def test_option_looking_branches_are_refused(branch: str) -> None:
    assert list(rig_errors("https://github.com/acme/web.git", branch)) == ["silo:towns[0].rigs[0].branch"]


def test_ssh_login_names_are_not_credentials() -> None:
    # SSH authenticates with keys; "git@" names the account, as every forge documents it.
    for url in ("ssh://git@github.com/acme/web.git", "git@github.com:acme/web.git", "https://[::1]:8443/acme/web"):
        town = {"name": "t", "user": "u", "rigs": [{"name": "w", "url": url}]}
        assert from_mapping(BASE | {"silo:towns": [town]}).towns[0].rigs[0].url == url


GIT_CREDENTIALS = "https://x-access-token:ghp_SECRET123@github.com\nhttps://oauth2:glpat-SECRET456@gitlab.example.com\n"


def test_git_credentials_must_be_a_secret() -> None:
    errors = errors_of(BASE | {"silo:gitCredentials": GIT_CREDENTIALS})
    assert list(errors) == ["silo:gitCredentials"]
    assert "must be a secret" in errors["silo:gitCredentials"] and "--secret" in errors["silo:gitCredentials"]
    assert "SECRET" not in str(errors)
    # Encrypted in the stack file: fine, and never copied into the model.
    cfg = from_mapping(BASE | {"silo:gitCredentials": {"secure": "v1:AAAA"}})
    assert "AAAA" not in repr(cfg)


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("https://github.com", 1),  # no credential
        ("https://ghp_SECRET123@github.com", 1),  # no user:token pair
        ("http://u:ghp_SECRET123@github.com", 1),  # cleartext transport
        ("https://u:ghp_SECRET123@github.com\nssh://u:ghp_SECRET123@host", 2),
        ("https://u:ghp_SECRET123@github.com/acme/web.git", 1),  # credential-store lines name a host only
        ("https://u:ghp_SECRET123@", 1),
        ("u:ghp_SECRET123", 1),
    ],
)
def test_git_credentials_are_credential_store_lines(pulumi_config: Any, value: str, line: int) -> None:
    pulumi_config.set_all_config({**BASE, "silo:gitCredentials": value}, secret_keys=["silo:gitCredentials"])
    with pytest.raises(ConfigError) as caught:
        from_pulumi_config()
    errors = dict(caught.value.errors)
    assert list(errors) == ["silo:gitCredentials"]
    assert errors["silo:gitCredentials"].startswith(f"line {line}: must be https://USER:TOKEN@HOST")
    assert "SECRET" not in str(caught.value)


def test_git_credentials_from_the_engine_are_checked_and_stay_out_of_the_model(pulumi_config: Any) -> None:
    pulumi_config.set_all_config({**BASE, "silo:gitCredentials": GIT_CREDENTIALS}, secret_keys=["silo:gitCredentials"])
    cfg = from_pulumi_config()
    assert "SECRET" not in repr(cfg)
    # The same value not marked secret (plain `pulumi config set`) is refused before anything is created.
    pulumi_config.set_all_config({**BASE, "silo:gitCredentials": GIT_CREDENTIALS}, secret_keys=[])
    with pytest.raises(ConfigError, match=r"silo:gitCredentials: must be a secret"):
        from_pulumi_config()


def test_smtp_is_optional_config_and_its_password_is_a_separate_secret() -> None:
    assert from_mapping(BASE).smtp is None
    smtp = {
        "host": "smtp.postmarkapp.com",
        "port": "2525",
        "user": "apikey",
        "adminEmail": "dev@acme.dev",
        "senderName": "Acme dev",
    }
    for value in (smtp, json.dumps(smtp)):
        cfg = from_mapping(BASE | {"silo:smtp": value, "silo:smtpPassword": {"secure": "v1:abc"}})
        assert cfg.smtp is not None
        assert (cfg.smtp.host, cfg.smtp.port, cfg.smtp.user) == ("smtp.postmarkapp.com", 2525, "apikey")
        assert (cfg.smtp.admin_email, cfg.smtp.sender_name) == ("dev@acme.dev", "Acme dev")
    assert from_mapping(BASE | {"silo:smtp": {"host": "mail.acme.dev", "adminEmail": "a@acme.dev"}}).smtp.port == 587
    errors = errors_of(BASE | {"silo:smtp": {"host": "", "port": 70000, "adminEmail": "nobody", "pass": "x"}})
    assert errors["silo:smtp.host"] == "must not be empty"
    assert errors["silo:smtp.port"].startswith("must be at most 65535")
    assert errors["silo:smtp.adminEmail"].startswith("must be an email address")
    # The password never goes in the map: it is the secret silo:smtpPassword.
    assert errors["silo:smtp.pass"].startswith("unknown key")


# -- secrets, redirect URLs, rig URLs and provider keys (issue 26 items 7, 8, 9, 11) -----------------------
SECRET_CONFIG_KEYS = ["silo:kiloJwt", "silo:registryDsn", "silo:smtpPassword", "fly:apiToken", "cloudflare:apiToken"]


def stack_file_errors(tmp_path: Path, config: dict[str, Any]) -> dict[str, str]:
    path = tmp_path / "Pulumi.acme.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    with pytest.raises(ConfigError) as caught:
        load_stack_file(path)
    return dict(caught.value.errors)


@pytest.mark.parametrize("key", SECRET_CONFIG_KEYS)
def test_secret_keys_written_in_plain_text_in_the_stack_file_are_refused(tmp_path: Path, key: str) -> None:
    errors = stack_file_errors(tmp_path, BASE | {key: "plain-SECRET-value"})
    assert errors == {
        key: f"must be a secret: set it with `pulumi config set --secret {key} ...` (the value is not shown)"
    }
    assert "plain-SECRET" not in str(errors)
    # Encrypted by `pulumi config set --secret`: fine.
    path = tmp_path / "Pulumi.acme.yaml"
    path.write_text(yaml.safe_dump({"config": BASE | {key: {"secure": "v1:AAAA"}}}))
    assert load_stack_file(path).silo_id == "acme-erp"


@pytest.mark.parametrize("key", SECRET_CONFIG_KEYS)
def test_secret_keys_from_the_engine_must_be_marked_secret(pulumi_config: Any, key: str) -> None:
    # What preview sees after a plain `pulumi config set KEY VALUE`: the value, not marked secret.
    pulumi_config.set_all_config({**BASE, key: "plain-SECRET-value"}, secret_keys=[])
    with pytest.raises(ConfigError) as caught:
        from_pulumi_config()
    assert [k for k, _ in caught.value.errors] == [key]
    assert f"pulumi config set --secret {key}" in str(caught.value) and "plain-SECRET" not in str(caught.value)
    pulumi_config.set_all_config({**BASE, key: "plain-SECRET-value"}, secret_keys=[key])
    assert "plain-SECRET" not in repr(from_pulumi_config())


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("fly:apitoken", "fly:apiToken"),
        ("fly:apiURL", "fly:apiUrl"),
        ("fly:token", "fly:apiToken"),
        ("cloudflare:acountId", "cloudflare:accountId"),
        ("cloudflare:apiurl", "cloudflare:apiUrl"),
        ("cloudflare:r2ParentAccessKey", "cloudflare:r2ParentAccessKeyId"),
    ],
)
def test_unknown_fly_and_cloudflare_keys_are_errors_with_a_suggestion(key: str, suggestion: str) -> None:
    errors = errors_of(BASE | {key: {"secure": "v1:AAAA"} if "oken" in key else "x"})
    assert errors == {key: f"unknown key (did you mean {suggestion}?)"}


def test_unknown_provider_keys_without_a_near_match_and_from_the_engine(pulumi_config: Any) -> None:
    assert errors_of(BASE | {"fly:colour": "red"}) == {"fly:colour": "unknown key"}
    assert errors_of(BASE | {"cloudflare:zone": "x"}) == {"cloudflare:zone": "unknown key"}
    # Other namespaces still belong to other programs.
    assert from_mapping(BASE | {"aws:region": "us-east-1"}).silo_id == "acme-erp"
    # A typo at preview fails before the run falls back to the emulator.
    pulumi_config.set_all_config({**BASE, "fly:apitoken": "tok"}, secret_keys=["fly:apitoken"])
    with pytest.raises(ConfigError) as caught:
        from_pulumi_config()
    assert caught.value.errors == [("fly:apitoken", "unknown key (did you mean fly:apiToken?)")]
    # The known keys pass, secrets marked secret.
    known = {
        "fly:apiUrl": "http://127.0.0.1:4280",
        "fly:apiToken": "tok",
        "cloudflare:apiToken": "cf",
        "cloudflare:accountId": "0" * 32,
        "cloudflare:apiUrl": "http://127.0.0.1:9",
        "cloudflare:r2ParentAccessKeyId": "key-id",
    }
    pulumi_config.set_all_config({**BASE, **known}, secret_keys=["fly:apiToken", "cloudflare:apiToken"])
    assert from_pulumi_config().silo_id == "acme-erp"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://a/,https://evil.example", "must be one URL, not a list"),
        ("https://silo.dev,https://evil.example", "must be one URL, not a list"),
        ("https://**", "wildcard"),
        ("https://*.netlify.app", "wildcard"),
        ("https://silo.dev/**", "wildcard"),
        ("https://silo.dev/{a,b}", "not a list"),
        ("https://silo.dev\nhttps://evil.example", "without spaces or line breaks"),
        ("https://silo.dev\n", "without spaces or line breaks"),
        ("https://silo.dev\t", "without spaces or line breaks"),
        (" https://silo.dev", "without spaces or line breaks"),
        ("https://silo.dev/?next=https://evil.example", "query"),
        ("https://silo.dev/#x", "fragment"),
        ("https://user@silo.dev", "must not contain credentials"),
        ("https://silo.dev@evil.example", "must not contain credentials"),
        ("HTTPS://silo.dev", "must be an https:// URL with a host"),
        ("https:/silo.dev", "must be an https:// URL with a host"),
        ("https://Silo.Dev", "lowercase host name"),
        ("https://silo_dev.example", "lowercase host name"),
        ("https://silo.dev:99999", "lowercase host name"),
        ("https://silo.dev/a b", "without spaces"),
        ("https://silo.dev/a\\b", "wildcard"),
    ],
)
def test_site_url_is_one_exact_https_origin(value: str, expected: str) -> None:
    errors = errors_of(BASE | {"silo:siteUrl": value})
    assert list(errors) == ["silo:siteUrl"], errors
    assert expected in errors["silo:siteUrl"], errors


@pytest.mark.parametrize(
    "value",
    [
        "https://silo-acme-erp--prod.netlify.app",
        "https://erp.acme.dev/",
        "https://erp.acme.dev:8443/app/",
        "https://localhost",
    ],
)
def test_site_url_accepts_an_origin_with_an_optional_plain_path(value: str) -> None:
    assert from_mapping(BASE | {"silo:siteUrl": value}).site_url == value


def test_redirect_urls_are_a_list_each_checked_like_the_site_url() -> None:
    urls = ["https://preview.acme.dev/auth/callback", "https://erp.acme.dev:8443"]
    for value in (urls, json.dumps(urls)):
        assert from_mapping(BASE | {"silo:redirectUrls": value}).redirect_urls == urls
    assert from_mapping(BASE).redirect_urls == []
    errors = errors_of(BASE | {"silo:redirectUrls": ["https://ok.dev", "https://**", "https://a.dev,https://b.dev"]})
    assert list(errors) == ["silo:redirectUrls[1]", "silo:redirectUrls[2]"]
    assert "wildcard" in errors["silo:redirectUrls[1]"] and "not a list" in errors["silo:redirectUrls[2]"]
    assert "must be a list" in errors_of(BASE | {"silo:redirectUrls": "https://a.dev"})["silo:redirectUrls"]
    duplicate = errors_of(BASE | {"silo:redirectUrls": ["https://a.dev", "https://a.dev"]})
    assert duplicate["silo:redirectUrls"].startswith('duplicate redirect URL "https://a.dev"')
    control = errors_of({"silo:kind": "control", "silo:redirectUrls": ["https://a.dev"]})
    assert control == {"silo:redirectUrls": "is not used by a control stack"}


def gotrue_allow_list(cfg: SiloConfig) -> list[str]:
    import tomllib

    from components.render.files import render_fly_toml

    return tomllib.loads(render_fly_toml(cfg, "auth"))["env"]["GOTRUE_URI_ALLOW_LIST"].split(",")


def test_gotrue_allow_list_is_the_site_and_the_redirect_urls_and_nothing_else() -> None:
    cfg = from_mapping(BASE | {"silo:siteUrl": "https://erp.acme.dev/"})
    assert gotrue_allow_list(cfg) == ["https://erp.acme.dev/", "https://erp.acme.dev/**"]
    urls = ["https://preview.acme.dev/auth/callback", "https://erp.acme.dev:8443"]
    cfg = from_mapping(BASE | {"silo:redirectUrls": urls})
    assert gotrue_allow_list(cfg) == [
        "https://silo-acme-erp--prod.netlify.app",
        "https://silo-acme-erp--prod.netlify.app/**",
        "https://preview.acme.dev/auth/callback",
        "https://preview.acme.dev/auth/callback/**",
        "https://erp.acme.dev:8443",
        "https://erp.acme.dev:8443/**",
    ]


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/acme/web.git?access_token=ghp_SECRET123",
        "https://github.com/acme/web.git#ghp_SECRET123",
        "https://github.com/acme/web.git?",
        "ssh://git@github.com/acme/web.git?x=1",
        "git@github.com:acme/web.git?access_token=ghp_SECRET123",
        "git@github.com:acme/web.git#main",
        "file:///srv/web?x=1",
    ],
)
def test_rig_urls_with_a_query_or_fragment_are_refused_and_never_echoed(url: str) -> None:
    errors = rig_errors(url)
    assert list(errors) == ["silo:towns[0].rigs[0].url"], errors
    assert "query" in errors["silo:towns[0].rigs[0].url"]
    assert "ghp_SECRET123" not in str(errors)
