-- JWT expiry for SQL (supabase/supabase:docker/volumes/db/jwt.sql, newest version). The secret itself
-- is not stored in the database: PostgREST supplies it as PGRST_APP_SETTINGS_JWT_SECRET.
\set jwt_exp `echo "$JWT_EXP"`

ALTER DATABASE postgres SET "app.settings.jwt_exp" TO :'jwt_exp';
