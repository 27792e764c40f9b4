"""A local Fly Machines API emulator: real HTTP on 127.0.0.1, faithful to the documented behaviour.

Reference: Fly docs (Machines API, Networking), fly-go, flyctl and the Machines OpenAPI spec ("OpenAPI" below,
docs.machines.dev/spec/openapi3.json) as of 2024, plus the newer REST secrets and ip_assignments endpoints.
The base URL has no ``/v1``; every API path is under ``/v1`` as flyctl builds them. What it models, because
the providers depend on it:

- Fly's error body ``{"error": ..., "status": ...}`` and a ``fly-request-id`` header on every answer.
- Globally unique app names (422 ``name_taken``), 403 for an app owned by another org.
- Machine states derived from timestamps (no timer threads): ``starting`` → ``started`` after
  ``boot_s``, ``stopping`` → ``stopped`` after ``stop_s``, ``destroying`` → ``destroyed`` after
  ``destroy_s``. ``wait`` blocks on a condition variable (the state lock is released meanwhile).
- The persistent ``failed`` state ("could not start successfully", Fly docs machine-states), set by
  ``fail_machine``: an ``exit`` event carries the exit code (fly-go ``MachineEvent.Request.ExitEvent``);
  start, restart and stop take a failed machine out of it, an update relaunches it (flyctl deploy's
  ``shouldSkipLaunch`` never skips a failed one), ``wait?state=failed`` answers, and a ``started`` wait
  runs into its 408 as for any state the machine does not reach (flyctl issue #1760).
- Inside a started machine (processes.py): ``exec`` through a test's handler, ``ps``, ``signal``.
- Leases (409 without the nonce), whole-config updates with new versions, immutable name/region/mount,
  volume attach rules, secrets as digests only (values are never stored), IP assignments.
- Private networks: an app lives on one 6PN network of its org (``network`` of app creation, else
  ``default``); its machines' 6PN addresses and its Flycast addresses carry that network's id, and
  ``reach(from_app, target)`` says whether a machine of one app could connect to a name or address of
  another (``.flycast`` / ``.internal`` only within a network, public addresses from anywhere).
- Platform: ``GET /platform/regions`` and ``POST /platform/placements`` (fly-go flaps_platform.go), with
  the regions an org may place machines in (every region unless ``set_org_regions`` narrows them).
- Test control: fault injection by templated route, call log, latency, rate limits (429 +
  Retry-After), all also reachable over HTTP under ``/__emulator/*`` (JSON, no auth).

Strict by default, wherever the real API behaves so (each is documented again where it is modelled):

- A freshly started machine reports an empty ``checks`` list at first (flyctl
  internal/machine/leasable_machine.go ``WaitForHealthchecksToPass``: "Machine.Checks (runtime status) is
  empty for freshly-launched machines").
- A successful exec answers without ``exit_code`` (fly-go machine_types.go ``MachineExecResponse``:
  ``exit_code,omitempty``, so Go drops the 0), nor empty ``stdout``/``stderr``; a command killed by a
  signal answers ``exit_signal`` (the API's ``flydv1.ExecResponse``), and one that outlives the request's
  ``timeout`` a 408 ``deadline_exceeded: ...`` (flyctl issue #4194).
- A new app answers 404, then 401, before it is visible (fly-go flaps/flaps_apps.go ``WaitForApp``
  retries exactly those two for up to a minute).
- A deleted volume passes through ``scheduling_destroy``/``waiting_for_detach``/``pending_destroy``
  before it disappears (fly-go flaps/flaps_volumes.go ``destroyedVolumeStates``).
- App deletion answers 202 and completes later; it wants stopped machines or ``force=true`` (Fly docs
  machines/api/apps-resource "Delete an app"; OpenAPI ``Apps_delete`` 202 Accepted).
- Secrets are versioned: reads without ``min_version`` come from a replica behind the last write (OpenAPI
  ``Secrets_list`` ``min_version``: "Minimum secrets version to return. Returned when setting a new secret").
- Leases expire; a mutation carrying the nonce of an expired lease is refused (flyctl PR #4313: a stale
  nonce gave "lease not found").
- Rate limits: 1 req/s with bursts of 3 per action and per object, Get Machine 5 req/s with bursts of 10,
  app deletions 100/min (Fly docs machines/api/working-with-machines-api §Rate Limits; superfly/docs PRs
  #1630, #1966), answered with 429 and Retry-After.
- An update of a running machine replaces it a moment later: until then the old version still runs, so
  only a ``wait`` for the new ``version`` tells when the new one is up (OpenAPI ``Machines_wait`` version).
- An IP assignment without ``network`` (fly-go sends ``""``) is on the org's default network, whatever
  network the app is on: a Flycast address for the app's own custom network must name it (flyctl
  internal/command/deploy/deploy_first.go; ``fly ips allocate-v6 --private --network``).
- Requests are read the way fly-go writes them: ``""`` and ``null`` for unset fields (``AssignIPRequest``,
  ``CreateVolumeRequest``, where a volume without ``size_gb`` is a 400); ids fit its Go types
  (``internal_numeric_id`` int32); an app create answers the app (``CreateApp`` decodes an ``App``); a
  ``stopped`` wait needs no ``version``.
- Growing a volume under a running machine answers ``needs_restart``: the filesystem grows at the next
  (re)start (OpenAPI ``ExtendVolumeResponse``; flyctl internal/command/volumes/extend.go).

The timing of these is in ``LatencyModel`` (set a field to 0 to switch one off where a test needs it);
``FlyEmulator(rate_limits=False)`` turns the rate limits off.

Control endpoints (no auth, JSON): ``POST /__emulator/reset``, ``POST /__emulator/latency``
(LatencyModel fields), ``POST /__emulator/rate_limits`` ``{"enabled"}``, ``POST /__emulator/fail``
(the ``fail()`` arguments), ``GET``/``DELETE /__emulator/calls``, ``GET /__emulator/snapshot``,
``GET /__emulator/exec_log``, ``POST /__emulator/foreign_apps`` ``{"name", "org"}``,
``POST /__emulator/org_regions`` ``{"org", "regions": [...] | null}``,
``POST /__emulator/check_status`` ``{"app", "machine_id", "status"}``,
``POST /__emulator/fail_machine`` ``{"app", "machine_id", "exit_code"?, "every_start"?}``,
``POST /__emulator/heal_machine`` ``{"app", "machine_id"}``,
``POST /__emulator/reach`` ``{"from", "to"}`` (the ``reach()`` answer; 404 for an unknown app), and
``POST /__emulator/exec_result`` ``{"result": {"exit_code", "exit_signal", "stdout", "stderr",
"deadline_exceeded"} | null}`` (a canned answer, since a Python exec handler cannot travel over HTTP).

Simplifications: a ``version`` given to ``wait`` is matched only for ``started`` (the version that
runs); ``show_secrets`` is ignored because secret values are never stored; a ``created``
(skip_launch) machine does not satisfy ``wait?state=stopped``; no process runs, so ``ps`` lists the
init and the configured command, and a signal other than SIGKILL is only recorded as an event.

With ``state_file`` the world is loaded at ``start()`` and saved after every mutating call, so the
CLI's emulator (``silo emulator``) survives restarts between ``pulumi up`` runs.

Layout: ``server`` (lifecycle, routing, auth, call log, latency, rate limits, faults, state file),
``control`` (test control, in Python and under ``/__emulator/*``), ``apps``, ``regions`` (``/platform``),
``machines``, ``processes`` (exec, ps, signal), ``volumes``, ``app_secrets``, ``ips`` (IP assignments and
private networks), ``model`` (the timing model, route table and shared constants) and ``util`` (ids,
timestamps, errors, rate buckets).
"""

from emulators.fly.model import ROUTES, LatencyModel
from emulators.fly.server import FlyEmulator, serve

__all__ = ["ROUTES", "FlyEmulator", "LatencyModel", "serve"]
