"""SQL that puts every table in schema ``public`` into one of the silo:rlsMode modes.

The SQL is rendered from ``templates/pg/rls.sql.j2`` and run on the pg machine (FlyExec + psql) after
each deploy; see the template for what each mode means (supabase-self-hosting.md §5).
"""

from __future__ import annotations

from typing import Literal, get_args

import jinja2

from components.paths import TEMPLATES_DIR

RlsMode = Literal["production", "permissive", "disabled"]
RLS_MODES: tuple[str, ...] = get_args(RlsMode)
# Policies we own start with this; anything else on a table belongs to the app and is left alone.
POLICY_PREFIX = "silo_permissive_"
# Transaction advisory lock shared by every run of the RLS SQL on one database.
LOCK_KEY = 0x51_10_4C_53  # "silo rls"


def rls_sql(mode: str) -> str:
    """The idempotent SQL (one DO block) for ``mode``; an unknown mode is an error naming the key."""
    if mode not in RLS_MODES:
        raise ValueError(f"silo:rlsMode: must be one of {', '.join(RLS_MODES)} (got {mode!r})")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template("pg/rls.sql.j2").render(mode=mode, prefix=POLICY_PREFIX, lock_key=LOCK_KEY)
