"""The running Pulumi program's config: the whole stack file validated (``from_pulumi_config``), and the plain
values of provider keys as the providers will resolve them (``program_values``)."""

from __future__ import annotations

from collections.abc import Iterable

from components.config.model import NAMESPACE, PROVIDER_KEYS, ControlConfig, SiloConfig, TownStackConfig, from_mapping


def from_pulumi_config() -> SiloConfig | ControlConfig | TownStackConfig:
    """The running Pulumi program's ``silo:``, ``fly:`` and ``cloudflare:`` config, validated.

    ``pulumi.Config("silo")`` can only look up keys it is asked for, which would let a typo such as
    ``silo:autostopMinutes`` pass silently. The runtime's config map (set by the language host through
    ``PULUMI_CONFIG``, or by the Automation API's inline-program server) lists every key, so unknown
    keys are reported.
    """
    from pulumi.runtime import config as runtime_config

    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    namespaces = (NAMESPACE, *PROVIDER_KEYS)
    wanted = sorted(k for k in keys if k.partition(":")[0] in namespaces)
    # The language host lists secret keys in PULUMI_CONFIG_SECRET_KEYS; set_all_config (tests) keeps its own.
    secret = set(runtime_config.get_config_secret_keys_env())
    secret |= {k for k in wanted if runtime_config.is_config_secret(k)}
    return from_mapping({k: runtime_config.get_config(k) for k in wanted}, secret_keys=secret)


def program_values(keys: Iterable[str]) -> dict[str, str]:
    """The running program's values of ``keys`` that are set (secrets decrypted: never print them), as a
    provider's ``configure()`` gets them from the stack config; the caller adds the environment fallback."""
    from pulumi.runtime import config as runtime_config

    values = {key: runtime_config.get_config(key) for key in keys}
    return {key: value for key, value in values.items() if isinstance(value, str) and value}
