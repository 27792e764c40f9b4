"""The guardrails policy pack's process (policy/run-policy-pack): the Pulumi SDK's own pack runner,
`python -m pulumi.policy ENGINE_ADDRESS DIR`, unchanged, but leaving when its engine is gone
(engine/orphans.py)."""

from __future__ import annotations

import runpy

from engine.orphans import exit_with_engine


def main() -> None:
    exit_with_engine()
    runpy.run_module("pulumi.policy", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
