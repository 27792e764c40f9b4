"""TownSandbox: one Gastown town on Fly (its own app, a persistent volume, one machine) beside a silo.

Order, each step its own resource so state records how far a run got and a re-run adopts what exists:
registry row (`provisioning`, its id is the town id) → Fly app → private IP → R2 credentials scoped to
`gastown/{town_id}/` → secrets → volume → machine (scripts and rig config delivered as files); then,
for all the silo's towns at once, the boot gate and the registry rows (`running`/`stopped`, the Fly ids
and rigs: `town_sandboxes`). Destroy runs in reverse: the town is stopped and flushed to R2 once through
`exec` (`startup.sh --stop`; the SIGTERM that follows finds it done), the machine, the volume only when
data deletion is allowed, then the row is soft-deleted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pulumi

from components.config.model import (
    GIT_CREDENTIALS_KEY,
    GIT_CREDENTIALS_SECRET,
    TOWN_APP_CONFIG_KEYS,
    VOLUME_CONFIG_KEYS,
    SiloConfig,
    TownConfig,
)
from components.domain.catalog import ResolvedImage
from components.providers.cloudflare.r2 import R2TownCredentials
from components.providers.controldb.registry import TownRecords, TownRegistration
from components.providers.fly.resources import (
    FlyApp,
    FlyIpAssignment,
    FlyMachine,
    FlyMachinesReady,
    FlySecrets,
    FlyVolume,
)
from components.providers.generated import GeneratedSecret
from components.render.files import render_file
from components.render.town_scripts import TownScriptContext, render_town_scripts

DATA_PATH = "/home/gt/data"  # where the sandbox image keeps its state (its Dockerfile's VOLUME)
TOWN_ROOT = f"{DATA_PATH}/gt"
WORK_DIR = f"{DATA_PATH}/.r2-work"  # snapshot scratch space: on the volume, outside the town
RIGS_FILE = "/etc/gastown/rigs.json"
BIN_DIR = "/usr/local/bin"  # where the town's scripts are installed (fly.toml [[files]])
INTERNAL_PORT = 8080
STATUS_PORT = 8081  # town-status.js: the machine check, answering from the boot phase
VOLUME_SIZE_GB = 50
# fly.toml's maximum. At a stop, startup.sh runs `gt down` and the final snapshot inside this budget
# (SHUTDOWN_TIMEOUT_SECONDS) and says in its log when the snapshot did not fit.
KILL_TIMEOUT_S = 300
# The destroy's pre-stop exec: stop the town and publish its one final snapshot (startup.sh --stop),
# through bash because files delivered through the Machines API carry no mode.
FLUSH_COMMAND = ["bash", f"{BIN_DIR}/startup.sh", "--stop"]


class ControlPlaneRef:
    """What a silo stack reads from the control stack (backup bucket and its S3 endpoint)."""

    def __init__(self, stack_name: str):
        self.ref = pulumi.StackReference(stack_name)
        self.bucket: pulumi.Output[str] = self.ref.require_output("backup_bucket")
        self.s3_endpoint: pulumi.Output[str] = self.ref.require_output("backup_s3_endpoint")


def town_script_context() -> TownScriptContext:
    """How the scripts are laid out in the town machine; the pre-stop FLUSH_COMMAND runs one of them."""
    return TownScriptContext(
        bin_dir=BIN_DIR,
        town_root=TOWN_ROOT,
        work_dir=WORK_DIR,
        rigs_file=RIGS_FILE,
        status_port=STATUS_PORT,
        shutdown_timeout_seconds=KILL_TIMEOUT_S,
    )


def town_fly_toml(cfg: SiloConfig, town: TownConfig, image: str, *, town_id: str, bucket: str, endpoint: str) -> str:
    scripts = render_town_scripts(town_script_context())
    rigs = [{"name": r.name, "url": r.url, "branch": r.branch} for r in town.rigs]
    files = {**scripts, RIGS_FILE: json.dumps({"rigs": rigs}, indent=2) + "\n"}
    env = {
        "GT_TOWN_ROOT": TOWN_ROOT,
        "KILO_API_URL": cfg.kilo_api_url,
        "TOWN_ID": town_id,
        "SANDBOX_ID": town.sandbox_id,
        "R2_ENDPOINT": endpoint,
        "R2_BUCKET": bucket,
        "GT_RIGS_FILE": RIGS_FILE,
        "TOWN_NAME": town.name,
        "SHUTDOWN_TIMEOUT_SECONDS": str(KILL_TIMEOUT_S),
    }
    return render_file(
        "town/fly.toml.j2",
        app=town.sandbox_id,
        town_name=town.name,
        region=cfg.region,
        image=image,
        env=env,
        files=files,
        bin_dir=BIN_DIR,
        internal_port=INTERNAL_PORT,
        status_port=STATUS_PORT,
        volume_name=town.volume_name,
        data_path=DATA_PATH,
        vm_size="shared-cpu-4x",
        memory="8gb",
        kill_timeout=KILL_TIMEOUT_S,
    )


class TownSandbox(pulumi.ComponentResource):
    def __init__(
        self,
        cfg: SiloConfig,
        town: TownConfig,
        image: ResolvedImage,
        control: ControlPlaneRef,
        opts: pulumi.ResourceOptions | None = None,
    ):
        sid = town.sandbox_id
        super().__init__("silo:town:TownSandbox", sid, None, opts)
        self.town = town
        keeps_data = not cfg.allow_data_deletion

        def child(*depends_on: pulumi.Resource, retain: bool = False) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, depends_on=list(depends_on), retain_on_delete=retain)

        self.registration = TownRegistration(
            f"{sid}-registration",
            user_id=town.user,
            town_name=town.name,
            sandbox_id=sid,
            region=cfg.region,
            opts=child(),
        )
        town_id = self.registration.town_id
        # A data-holding app is retained on destroy: deleting a Fly app deletes its volumes.
        # The town runs hostile agent code: its own network, shared with no silo and no other town, so its
        # private (6PN, Flycast) reach ends at itself; it talks to the world only through public addresses.
        self.app = FlyApp(
            sid,
            name=sid,
            org=cfg.fly_org,
            keep_volumes=keeps_data,
            network=town.network,
            allow_network_change=cfg.network_migration,
            config_keys=TOWN_APP_CONFIG_KEYS,
            opts=child(self.registration, retain=keeps_data),
        )
        self.ip = FlyIpAssignment(f"{sid}-ip-private-v6", app=self.app.name, type="private_v6", opts=child(self.app))
        self.internal_api_key = GeneratedSecret(f"{sid}-internal-api-key", length=48, opts=child()).result
        self.r2 = R2TownCredentials(
            f"{sid}-r2-credentials", town_id=town_id, bucket=control.bucket, opts=child(self.registration)
        )
        kilo_jwt = pulumi.Config("silo").get_secret("kiloJwt")
        # Private rigs: the town's credential store, only ever a Fly secret (never the URL, see config).
        git_credentials = pulumi.Config("silo").get_secret(GIT_CREDENTIALS_KEY)
        values = pulumi.Output.all(
            self.r2.access_key_id,
            self.r2.secret_access_key,
            self.r2.session_token,
            self.internal_api_key,
            kilo_jwt,
            git_credentials,
        ).apply(_secret_values)
        self.secrets = FlySecrets(f"{sid}-secrets", app=self.app.name, values=values, opts=child(self.app))
        self.volume = FlyVolume(
            f"{sid}-volume",
            app=self.app.name,
            name=town.volume_name,
            region=cfg.region,
            size_gb=VOLUME_SIZE_GB,
            allow_delete=cfg.allow_data_deletion,
            allow_region_change=cfg.region_migration,
            config_keys=VOLUME_CONFIG_KEYS,
            opts=child(self.app, retain=keeps_data),
        )
        fly_toml = pulumi.Output.all(town_id, control.bucket, control.s3_endpoint).apply(
            lambda v: town_fly_toml(cfg, town, image.ref, town_id=v[0], bucket=v[1], endpoint=v[2])
        )
        self.machine = FlyMachine(
            f"{sid}-machine",
            app=self.app.name,
            name="town",
            region=cfg.region,
            fly_toml=fly_toml,
            image=image.ref,
            desired_state="started" if town.state == "running" else "stopped",
            volume_id=self.volume.volume_id,
            min_secrets_version=self.secrets.version,
            metadata={"silo_id": cfg.silo_id, "gastown_sandbox_id": sid, "silo_image_tag": image.tag},
            pre_stop_exec=FLUSH_COMMAND,
            opts=child(self.ip, self.secrets, self.volume),
        )
        self.town_id = town_id
        self.outputs: dict[str, Any] = {}

    def registry_row(self) -> dict[str, Any]:
        """The town's row once its machine is found ready: the Fly ids, `running`/`stopped`, the rigs."""
        town = self.town
        return {
            "town_id": self.town_id,
            "status": town.state,
            "fly_machine_id": self.machine.machine_id,
            "fly_volume_id": self.volume.volume_id,
            "rigs": [{"name": r.name, "url": r.url, "branch": r.branch} for r in town.rigs],
        }

    def finish(self, ready: FlyMachinesReady) -> None:
        town = self.town
        self.outputs = {
            "sandbox_id": town.sandbox_id,
            "town_id": self.town_id,
            "app": self.app.name,
            "internal_url": f"http://{town.sandbox_id}.flycast:{INTERNAL_PORT}",
            "machine_id": self.machine.machine_id,
            "state": pulumi.Output.all(ready.states, self.machine.machine_id).apply(
                lambda v: (v[0] or {}).get(v[1], "unknown")
            ),
            "volume_id": self.volume.volume_id,
            "rigs": [r.name for r in town.rigs],
        }
        self.register_outputs({"sandbox_id": town.sandbox_id})


def town_sandboxes(
    cfg: SiloConfig, image: ResolvedImage, control: ControlPlaneRef, after: Sequence[pulumi.Resource] = ()
) -> list[TownSandbox]:
    """Every town of the silo, then one gate that waits for all their machines at once and one registry
    write for all their rows (bench/run.py: a gate or a record per town is a step, and a provider slot
    or a registry connection, per town)."""
    sandboxes = [TownSandbox(cfg, town, image, control) for town in cfg.towns]
    if not sandboxes:
        return []
    machines = [s.machine for s in sandboxes]
    ready = FlyMachinesReady(
        f"{cfg.silo_id}-towns-ready",
        machines=machines,
        timeout_s=cfg.ready_timeout_seconds,
        opts=pulumi.ResourceOptions(depends_on=[*machines, *after]),
    )
    TownRecords(
        f"{cfg.silo_id}-town-records",
        silo_id=cfg.silo_id,
        towns={s.town.sandbox_id: s.registry_row() for s in sandboxes},
        opts=pulumi.ResourceOptions(depends_on=[ready, *(s.registration for s in sandboxes)]),
    )
    for sandbox in sandboxes:
        sandbox.finish(ready)
    return sandboxes


def _secret_values(values: list[Any]) -> dict[str, str]:
    access_key_id, secret_access_key, session_token, internal_api_key, kilo_jwt, git_credentials = values
    out = {
        "R2_ACCESS_KEY_ID": access_key_id,
        "R2_SECRET_ACCESS_KEY": secret_access_key,
        "R2_SESSION_TOKEN": session_token,
        "INTERNAL_API_KEY": internal_api_key,
        "KILO_JWT": kilo_jwt,
        GIT_CREDENTIALS_SECRET: git_credentials,
    }
    return {k: v for k, v in out.items() if v}
