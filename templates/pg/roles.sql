-- Set the passwords of the roles the services log in as (supabase/supabase:docker/volumes/db/roles.sql).
-- Runs at init from /docker-entrypoint-initdb.d/init-scripts/99-roles.sql, and again on every boot
-- (components/domain/services.py _pg_command) so a rotated POSTGRES_PASSWORD takes effect. The password is read
-- from the machine's environment (the POSTGRES_PASSWORD Fly secret); this file never contains it.
\set pgpass `echo "$POSTGRES_PASSWORD"`

ALTER USER postgres WITH PASSWORD :'pgpass';
ALTER USER supabase_admin WITH PASSWORD :'pgpass';
ALTER USER authenticator WITH PASSWORD :'pgpass';
ALTER USER pgbouncer WITH PASSWORD :'pgpass';
ALTER USER supabase_auth_admin WITH PASSWORD :'pgpass';
ALTER USER supabase_storage_admin WITH PASSWORD :'pgpass';

-- silo:pgPublic: the login pg_hba.conf admits from the internet, with its own password (the Fly secret
-- SILO_PUBLIC_DB_PASSWORD of the pg app only; no other app holds it). It acts as postgres (a member of
-- it), which supabase/postgres has demoted from superuser; supabase_admin stays private. Without the
-- secret (pgPublic off) the role is kept but cannot log in.
\set publicpass `echo "${SILO_PUBLIC_DB_PASSWORD:-}"`
SELECT :'publicpass' <> '' AS public_login, to_regrole('{{ public_role }}') IS NULL AS public_missing \gset
\if :public_login
\if :public_missing
CREATE ROLE {{ public_role }};
\endif
ALTER ROLE {{ public_role }} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'publicpass';
GRANT postgres TO {{ public_role }};
\elif :public_missing
\else
ALTER ROLE {{ public_role }} NOLOGIN;
\endif
