-- Gastown towns: one row per town sandbox (seed 001's columns), soft-deleted via destroyed_at.
-- Fixes over the seed (gastown-r2-postgres.md §1.7): sandbox_id is unique only among active towns, so
-- a destroyed town's name and deterministic sandbox id can be used again; the Fly app name is stored
-- (the sandbox id is the Fly app name). The FK to the users table is optional: see 0004.
CREATE EXTENSION IF NOT EXISTS pgcrypto;  -- gen_random_uuid() before PostgreSQL 13; harmless after

CREATE TABLE gastown_towns (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           text        NOT NULL,
    town_name         text        NOT NULL CHECK (length(town_name) BETWEEN 1 AND 100),
    sandbox_id        text        NOT NULL CHECK (length(sandbox_id) BETWEEN 1 AND 63),
    fly_app           text,
    fly_machine_id    text,
    fly_volume_id     text,
    fly_region        text        DEFAULT 'iad',
    status            text        NOT NULL DEFAULT 'provisioning'
                      CONSTRAINT gastown_towns_status_check
                      CHECK (status IN ('provisioning', 'running', 'stopped', 'destroyed')),
    last_r2_sync_at   timestamptz,
    last_heartbeat_at timestamptz,
    config            jsonb       NOT NULL DEFAULT '{}'::jsonb
                      CHECK (jsonb_typeof(config) = 'object'),  -- {rigs, models, max_polecats}
    created_at        timestamptz NOT NULL DEFAULT now(),
    destroyed_at      timestamptz,
    -- A destroyed town always says so in both places; listings filter on destroyed_at.
    CONSTRAINT gastown_towns_destroyed_consistent
        CHECK ((status = 'destroyed') = (destroyed_at IS NOT NULL))
);

-- One active town per (user, name); destroyed towns don't count.
CREATE UNIQUE INDEX uq_gastown_towns_active_user_name
    ON gastown_towns (user_id, town_name) WHERE destroyed_at IS NULL;
-- The sandbox id (= Fly app name) is unique among active towns only.
CREATE UNIQUE INDEX uq_gastown_towns_active_sandbox_id
    ON gastown_towns (sandbox_id) WHERE destroyed_at IS NULL;
CREATE UNIQUE INDEX uq_gastown_towns_active_fly_app
    ON gastown_towns (fly_app) WHERE destroyed_at IS NULL AND fly_app IS NOT NULL;
CREATE INDEX ix_gastown_towns_user ON gastown_towns (user_id);
