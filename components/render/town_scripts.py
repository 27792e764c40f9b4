"""Renders the Gas Town sandbox scripts: R2 disaster-recovery sync/restore, the entrypoint and its
health endpoint.

``render_town_scripts(ctx)`` returns guest path → script text, ready for a Fly machine's ``files``
(each with mode ``TOWN_SCRIPT_MODE``). The scripts read their secrets (R2 credentials, KILO_JWT,
GIT_CREDENTIALS) from the environment at run time, so nothing secret is ever rendered into them.
Templates live in ``templates/town/``; ``common.sh.j2`` is inlined into each shell script so every
file stands alone.
"""

from __future__ import annotations

import functools
import posixpath
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.render.environment import environment

TOWN_SCRIPT_MODE = 0o755

# template name → script file name under ``bin_dir``
_SCRIPTS = {
    "r2-sync.sh.j2": "r2-sync.sh",
    "r2-restore.sh.j2": "r2-restore.sh",
    "startup.sh.j2": "startup.sh",
    "town-status.js.j2": "town-status.js",
}
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")


class TownScriptContext(BaseModel):
    """Defaults baked into the scripts; each can still be overridden by its environment variable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bin_dir: str = "/usr/local/bin"  # TOWN_BIN_DIR: where the scripts are installed; startup.sh calls them there
    town_root: str = "/data/gt"  # GT_TOWN_ROOT: the town on the Fly volume mounted at /data
    # R2_WORK_DIR: snapshot scratch space; on the volume beside the town (the root filesystem's /tmp is
    # small, and a restore is moved into place with a rename). Defaults to <town_root>/../.r2-work.
    work_dir: str | None = None
    rigs_file: str = "/etc/gastown/rigs.json"  # GT_RIGS_FILE: the rigs startup.sh adds with `gt rig add`
    sync_interval_seconds: int = Field(default=300, ge=1)  # SYNC_INTERVAL_SECONDS: 5 min RPO (issue #284)
    keep_snapshots: int = Field(default=3, ge=1)  # R2_KEEP_SNAPSHOTS
    lock_file: str = "/tmp/r2-sync.lock"  # R2_SYNC_LOCK
    lock_timeout_seconds: int = Field(default=900, ge=1)  # R2_SYNC_LOCK_TIMEOUT
    key_prefix: str = "gastown"  # objects live under <key_prefix>/<TOWN_ID>/
    # TOWN_STATUS_FILE / TOWN_STATUS_PORT: the boot phase town-status.js serves as the health check.
    status_file: str = "/tmp/gastown/status.json"
    status_port: int = Field(default=8081, ge=1, le=65535)
    # TOWN_STOPPED_MARKER: the town was stopped and flushed for shutdown (root filesystem: a reboot clears it).
    stopped_marker: str = "/tmp/gastown/stopped"
    # SHUTDOWN_TIMEOUT_SECONDS: gt down + the final snapshot must fit in the machine's kill_timeout.
    shutdown_timeout_seconds: int = Field(default=300, ge=30)

    @field_validator("bin_dir", "town_root", "lock_file", "work_dir", "rigs_file", "status_file", "stopped_marker")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _SAFE_PATH.match(value) or ".." in value.split("/"):
            raise ValueError("must be an absolute path of letters, digits and . _ - /")
        return posixpath.normpath(value)

    @model_validator(mode="after")
    def _work_dir_beside_the_town(self) -> TownScriptContext:
        if self.work_dir is None:
            object.__setattr__(self, "work_dir", posixpath.join(posixpath.dirname(self.town_root), ".r2-work"))
        if (self.work_dir + "/").startswith(self.town_root + "/"):
            raise ValueError("work_dir must not be inside town_root (a snapshot would contain itself)")
        return self

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*(/[a-z0-9][a-z0-9_-]*)*", value):
            raise ValueError("must be a relative object-key prefix such as 'gastown'")
        return value


# Every town of a silo gets the same scripts: rendered once per program run, not once per town (with
# 100 towns, compiling and rendering them per town was the largest share of a no-op preview's CPU).
@functools.lru_cache(maxsize=8)
def render_town_scripts(ctx: TownScriptContext) -> dict[str, str]:
    """Guest path → text for ``r2-sync.sh``, ``r2-restore.sh``, ``startup.sh`` and ``town-status.js``
    (shared between callers: copy before changing)."""
    env = environment()
    values = ctx.model_dump()
    return {
        posixpath.join(ctx.bin_dir, name): env.get_template(f"town/{template}").render(**values)
        for template, name in _SCRIPTS.items()
    }
