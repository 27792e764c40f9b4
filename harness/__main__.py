"""CLI: `python -m harness {preview,up,destroy} --stack NAME [--project-dir DIR] [--state-dir DIR]
[--config-file FILE] [--secret K=V ...] [--json]`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, parse_secret_args
from .runner import OPERATIONS, execute

_SYMBOLS = {"create": "+", "update": "~", "replace": "+-", "delete": "-", "same": " ", "read": ">"}
_VERBS = {"preview": "Previewing update", "up": "Updating", "destroy": "Destroying"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness", description="Run a Pulumi program without the Pulumi CLI.")
    p.add_argument("operation", choices=OPERATIONS)
    p.add_argument("--stack", required=True)
    p.add_argument("--project-dir", type=Path, default=Path.cwd())
    p.add_argument("--state-dir", type=Path, default=None, help="default: <project>/.silo/state")
    p.add_argument("--config-file", type=Path, default=None, help="default: <project>/Pulumi.<stack>.yaml")
    p.add_argument("--secret", action="append", default=[], metavar="KEY=VALUE", help="secret config value")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    return p


def _human(operation: str, stack: str, result: dict[str, Any]) -> str:
    lines = [f"{_VERBS[operation]} ({stack}):"]
    for step in result["steps"]:
        if step["op"] != "same":
            lines.append(f"  {_SYMBOLS[step['op']]:<2} {step['op']:<8} {step['type']}  {step['name']}")
    # Printed live as they happened; summarised once more like the CLI's "Diagnostics:" section.
    diagnostics = [d for d in result["diagnostics"] if d["message"] != result["error"]]
    if diagnostics:
        lines.append("Diagnostics:")
        lines.extend(f"  {d['severity']}: {d['message']}" for d in diagnostics)
    if result["outputs"]:
        lines.append("Outputs:")
        lines.extend(f"    {k}: {json.dumps(v)}" for k, v in result["outputs"].items())
    summary = ", ".join(f"{n} {op}" for op, n in result["changes"].items()) or "no changes"
    lines.append(f"Resources: {summary}")
    if not result["ok"]:
        lines.append(f"error: {result['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        secrets = parse_secret_args(args.secret)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout
    if args.json:
        # Keep stdout for the JSON document only: the program's and the provider host's prints
        # (which inherit fd 1) go to stderr instead.
        sys.stdout.flush()
        out = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
    result = execute(args.operation, args.stack, args.project_dir, args.state_dir, args.config_file, secrets)
    if args.json:
        out.write(json.dumps(result) + "\n")
        out.flush()
    else:
        print(_human(args.operation, args.stack, result), file=out)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
