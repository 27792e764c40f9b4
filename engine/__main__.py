"""`python -m engine up|preview|destroy|refresh [STACK]`: the real `pulumi <op>` of one stack of this
project (the README's `make up`, `make preview`, `make destroy`, `make refresh`).

State lives in a file backend under `.silo/` and its secrets are encrypted with a passphrase generated
into `.silo/passphrase` on first use, unless PULUMI_BACKEND_URL / PULUMI_CONFIG_PASSPHRASE(_FILE) say
otherwise. The CLI's own output is printed as it comes. `up` and `preview` run the silo guardrails
(policy/, engine/guardrails.py): the pack is named first (its rules listed with --verbose), and a
mandatory violation fails the run with a last line per violation naming the rule and the resource's URN.
`destroy` ends by naming what it retained (engine/retained.py).
"""

from __future__ import annotations

import argparse
import sys

from pulumi.automation import CommandError, EngineEvent

from engine.guardrails import describe, policy_args
from engine.hints import state_hint
from engine.retained import summary as retained_summary
from engine.runner import violation_line
from engine.workspace import PARALLEL, REPO_ROOT, EngineMissing, select_stack, workspace

STATE_DIR = REPO_ROOT / ".silo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("op", choices=["up", "preview", "destroy", "refresh"])
    parser.add_argument("stack", nargs="?", default="dev")
    parser.add_argument("--verbose", action="store_true", help="list the guardrails' rules before an up or preview")
    args = parser.parse_args(argv)

    first_use = not (STATE_DIR / "passphrase").exists()
    try:
        stack = select_stack(workspace(REPO_ROOT, STATE_DIR), args.stack)
    except EngineMissing as exc:
        print(f"engine: {exc}", file=sys.stderr)
        return 1
    if first_use and "PULUMI_CONFIG_PASSPHRASE_FILE" in stack.workspace.env_vars:
        print(
            f"state: {stack.workspace.env_vars['PULUMI_BACKEND_URL']}; its secrets are encrypted with the "
            f"passphrase generated in {STATE_DIR / 'passphrase'} (keep it: without it the secrets are lost)"
        )
    errors: list[str] = []

    def on_error(line: str) -> None:
        errors.append(line)
        print(line, file=sys.stderr)

    out = {"on_output": print, "on_error": on_error, "parallel": PARALLEL}
    violations: list[str] = []

    def on_event(event: EngineEvent) -> None:
        policy = event.policy_event
        if policy is not None and policy.enforcement_level == "mandatory":
            violations.append(
                violation_line(policy.policy_name, "mandatory", policy.resource_urn or "", policy.message)
            )

    guarded = {**out, **policy_args(args.stack), "on_event": on_event}
    try:
        if args.op in ("up", "preview"):
            rules = describe(args.stack)
            # The rules, one per line, only when asked: the CLI's "Policies:" block names any that fired.
            # Waivers and budget (the "config" lines) always: they change what the rules let through.
            brief = [f"{rules[0].rstrip(':')} (`make {args.op} VERBOSE=1` lists them)"]
            brief += [line for line in rules[1:] if line.lstrip().startswith("config ")]
            print("\n".join(rules if args.verbose else brief))
        if args.op == "up":
            stack.up(**guarded)
        elif args.op == "preview":
            stack.preview(diff=True, **guarded)
        elif args.op == "destroy":
            before = stack.export_stack().deployment or {}
            stack.destroy(**out)
            kept = retained_summary(before.get("resources") or [])
            if kept:
                print(kept)
        else:
            stack.refresh(**out)
    except CommandError as error:
        # The CLI has already printed why; a policy violation also gets one line naming rule and URN, and
        # a state error (passphrase, lock) one line saying what to do.
        for line in dict.fromkeys(violations):
            print(line, file=sys.stderr)
        hint = state_hint("\n".join(errors) + str(error), args.stack)
        if hint:
            print(hint, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
