-- Set the passwords of the roles the services log in as (supabase/supabase:docker/volumes/db/roles.sql).
-- Runs at init from /docker-entrypoint-initdb.d/init-scripts/99-roles.sql, and again on every boot
-- (components/services.py _pg_command) so a rotated POSTGRES_PASSWORD takes effect. The password is read
-- from the machine's environment (the POSTGRES_PASSWORD Fly secret); this file never contains it.
\set pgpass `echo "$POSTGRES_PASSWORD"`

ALTER USER postgres WITH PASSWORD :'pgpass';
ALTER USER supabase_admin WITH PASSWORD :'pgpass';
ALTER USER authenticator WITH PASSWORD :'pgpass';
ALTER USER pgbouncer WITH PASSWORD :'pgpass';
ALTER USER supabase_auth_admin WITH PASSWORD :'pgpass';
ALTER USER supabase_storage_admin WITH PASSWORD :'pgpass';
