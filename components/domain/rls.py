"""The silo:rlsMode modes and the names the RLS SQL owns (components/render/files.py ``rls_sql`` renders
it from ``templates/pg/rls.sql.j2``)."""

from __future__ import annotations

from typing import Literal, get_args

RlsMode = Literal["production", "permissive", "disabled"]
RLS_MODES: tuple[str, ...] = get_args(RlsMode)
# Policies we own start with this; anything else on a table belongs to the app and is left alone.
POLICY_PREFIX = "silo_permissive_"
# Transaction advisory lock shared by every run of the RLS SQL on one database.
LOCK_KEY = 0x51_10_4C_53  # "silo rls"
