-- Optional FK from user_id columns to the users table, which lives in another schema or database
-- depending on the deployment. The runner sets the custom GUC `silo.users_table` (transaction-local)
-- from apply(..., settings={"silo.users_table": "public.kilocode_users"}):
--   unset/empty  -> no FK (user ids are opaque text, e.g. the users live elsewhere);
--   set          -> the table must exist (else a clear error) and its primary key is referenced,
--                   ON DELETE CASCADE so deleting a user removes their towns and pins.
DO $$
DECLARE
    users_table text := nullif(current_setting('silo.users_table', true), '');
    users_oid   regclass;
BEGIN
    IF users_table IS NULL THEN
        RAISE NOTICE 'silo.users_table is not set: no foreign key from user_id to a users table';
        RETURN;
    END IF;
    users_oid := to_regclass(users_table);
    IF users_oid IS NULL THEN
        RAISE EXCEPTION 'silo.users_table is set to %, but that table does not exist', users_table
            USING HINT = 'create the users table first, or leave silo.users_table unset';
    END IF;
    EXECUTE format('ALTER TABLE gastown_towns ADD CONSTRAINT gastown_towns_user_fk
                    FOREIGN KEY (user_id) REFERENCES %s ON DELETE CASCADE', users_oid);
    EXECUTE format('ALTER TABLE kiloclaw_version_pins ADD CONSTRAINT kiloclaw_version_pins_user_fk
                    FOREIGN KEY (user_id) REFERENCES %s ON DELETE CASCADE', users_oid);
END
$$;
