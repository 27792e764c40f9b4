-- Gastown rigs (repositories worked on inside a town), seed 001's columns. The partial unique index
-- is written exactly as PostgreSQL stores it (the seed's Drizzle schema and SQL disagreed, §1.7).
CREATE TABLE gastown_rigs (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    town_id    uuid        NOT NULL REFERENCES gastown_towns (id) ON DELETE CASCADE,
    rig_name   text        NOT NULL CHECK (length(rig_name) BETWEEN 1 AND 100),
    repo_url   text        NOT NULL CHECK (repo_url <> ''),
    branch     text        NOT NULL DEFAULT 'main' CHECK (branch <> ''),
    status     text        NOT NULL DEFAULT 'active'
               CONSTRAINT gastown_rigs_status_check CHECK (status IN ('active', 'removed')),
    config     jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(config) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A rig name is unique among a town's active rigs; a removed rig's name can be reused.
CREATE UNIQUE INDEX uq_gastown_rigs_active_town_rig
    ON gastown_rigs (town_id, rig_name) WHERE status = 'active';
