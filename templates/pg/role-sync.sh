#!/bin/bash
# Re-applies the role passwords from POSTGRES_PASSWORD on every boot of the pg machine: the init SQL runs
# only on an empty PGDATA, so a rotated password (silo:keyGeneration) or a retained volume adopted by a new
# stack would otherwise lock the services out (supabase/postgres PR #1604 does the same upstream).
# Started in the background by the pg app's command (components/services.py _pg_command) while the image's
# entrypoint brings the server up; it talks to the server over the trusted local socket. Its output is the
# machine's log, so a failure says why instead of disappearing. The password never appears in it.
tries="${SILO_ROLE_SYNC_TRIES:-120}"
delay="${SILO_ROLE_SYNC_DELAY_S:-2}"
socket="${POSTGRES_HOST:-/var/run/postgresql}"
error="the server never answered on ${socket}"
for attempt in $(seq "$tries"); do
  if pg_isready -q -h "$socket"; then
    # stdout is dropped (psql echoes nothing useful); stderr is kept for the failure line.
    if error=$(psql -X -q -h "$socket" -U supabase_admin -d postgres -v ON_ERROR_STOP=1 -v VERBOSITY=terse \
        -f /docker-entrypoint-initdb.d/init-scripts/99-roles.sql 2>&1 >/dev/null); then
      echo "silo-role-sync: role passwords applied (attempt ${attempt})"
      exit 0
    fi
  fi
  sleep "$delay"
done
error=$(printf '%s' "$error" | tail -n 5 | tr '\n' ' ')
if [ -n "${POSTGRES_PASSWORD:-}" ]; then
  error=${error//"$POSTGRES_PASSWORD"/[redacted]}
fi
echo "silo-role-sync: could not re-apply the role passwords after ${tries} attempts: ${error}" >&2
exit 1
