"""The one Jinja environment that renders every file under ``templates/``: fly.toml (TOML), kong.yml
(YAML), SQL and the town's shell scripts.

``StrictUndefined`` (a missing value is an error, never an empty string), ``keep_trailing_newline``, no
autoescape (none of the outputs is HTML): values are escaped for their format by filters instead —
``toml`` (TOML 1.0 values), ``yaml`` (a JSON string, which YAML reads as a double-quoted scalar) and
``sh`` (shell-quoted). Comments are ``{## ... ##}``: bash's ``${#array[@]}`` would open one with Jinja's
default ``{#``.
"""

from __future__ import annotations

import functools
import json
import math
import shlex
from collections.abc import Sequence
from typing import Any

import jinja2

from components.paths import TEMPLATES_DIR

# TOML 1.0 basic strings: `"` and `\` escaped, and every control character (U+0000-U+001F, U+007F) as
# an escape. JSON's string syntax escapes the same set except DEL, with escapes TOML also accepts
# (\n, \t, \uXXXX, ...), and json.dumps does it in C: a town's fly.toml carries its scripts (tens of KB),
# so a character-by-character loop here took most of a 100-town preview (bench/run.py).
_DEL = "\x7f"
# What a TOML 1.0 multi-line literal string cannot hold: its closing delimiter, and control characters
# other than tab and newline (a lone CR is one; toml.io/en/v1.0.0#string).
_LITERAL_DELIMITER = "'''"
_NOT_IN_MULTILINE_LITERAL = frozenset(chr(c) for c in range(0x20) if chr(c) not in "\t\n") | {_DEL}


def _toml_string(value: str) -> str:
    if "\n" in value and _LITERAL_DELIMITER not in value and _NOT_IN_MULTILINE_LITERAL.isdisjoint(value):
        # Multi-line text (the scripts a town's fly.toml carries) as a multi-line literal string, verbatim.
        # Parsers find its end with one search, where a basic string is read character by character:
        # tomllib took 15 ms per town fly.toml that way, and the engine runs each machine's Check
        # (which parses it) one after another, so it was 1.5 s of a 100-town preview (bench/run.py).
        # The newline after the opening delimiter is dropped by the parser, so a leading one survives;
        # one or two quotes may end the value right before the closing delimiter.
        return _LITERAL_DELIMITER + "\n" + value + _LITERAL_DELIMITER
    return json.dumps(value, ensure_ascii=False).replace(_DEL, "\\u007F")


def _defined(value: Any) -> None:
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError naming the missing variable


def toml_value(value: Any) -> str:
    """A Python value as a TOML 1.0 value (strings, bools, ints, finite floats and lists of those)."""
    _defined(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as a TOML value")


def yaml_string(value: Any) -> str:
    """A YAML double-quoted scalar: printable ASCII as is, everything else escaped (\\uXXXX or
    \\UXXXXXXXX, never a surrogate pair, which YAML parsers do not recombine)."""
    _defined(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a string for YAML, got {type(value).__name__}")
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def shell_quoted(value: Any) -> str:
    _defined(value)
    return shlex.quote(str(value))


@functools.cache
def environment() -> jinja2.Environment:
    """The shared Environment (built on first use: no work at import time)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        comment_start_string="{##",
        comment_end_string="##}",
    )
    env.filters["sh"] = shell_quoted
    env.filters["toml"] = toml_value
    env.filters["yaml"] = yaml_string
    return env
