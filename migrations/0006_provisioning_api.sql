-- The provisioning API (service/, README "Provisioning API"): its tokens, its operations, the answers it
-- replays for an Idempotency-Key, and what it records on the towns it runs.
--
-- A town whose create failed stays visible as `failed` with its reason until a later create retries it
-- (seed 001's rollback: its Fly objects are removed, its row is kept to say why).
ALTER TABLE gastown_towns DROP CONSTRAINT gastown_towns_status_check;
ALTER TABLE gastown_towns ADD CONSTRAINT gastown_towns_status_check
    CHECK (status IN ('provisioning', 'running', 'stopped', 'failed', 'destroyed'));
-- Each town reports its heartbeats with a token of its own (its Fly secret KILO_JWT); only its SHA-256
-- is kept, so the registry cannot be used to impersonate a town.
ALTER TABLE gastown_towns ADD COLUMN heartbeat_token_sha256 text
    CHECK (heartbeat_token_sha256 IS NULL OR heartbeat_token_sha256 ~ '^[0-9a-f]{64}$');
CREATE UNIQUE INDEX uq_gastown_towns_heartbeat_token
    ON gastown_towns (heartbeat_token_sha256) WHERE heartbeat_token_sha256 IS NOT NULL;
ALTER TABLE gastown_towns ADD COLUMN failure text;     -- why the last operation on the town failed
-- When the town's temporary R2 credentials lapse (a week at most): the service renews them before.
ALTER TABLE gastown_towns ADD COLUMN r2_credentials_expire_at timestamptz;
ALTER TABLE gastown_towns ADD COLUMN boot_phase text;  -- what the town last said it was doing

-- Bearer tokens of the API's callers: only their SHA-256 (the tokens are 256 random bits, so a fast
-- hash is enough), each with its role (seed 004's access-control matrix, plus `backend`).
CREATE TABLE silo_api_tokens (
    token_sha256 text        PRIMARY KEY CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    role         text        NOT NULL CHECK (role IN
                     ('backend', 'devops', 'dev-worker', 'dev-orchestrator', 'security-auditor', 'clientele')),
    name         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

-- One row per accepted mutation: what a caller polls (GET /v1/operations/{id}).
CREATE TABLE silo_operations (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    kind         text        NOT NULL,   -- town.create, town.stop, town.start, town.delete, town.rigs, silo.start, ...
    stack        text        NOT NULL,   -- the Pulumi stack it runs
    town_id      uuid        REFERENCES gastown_towns (id),
    silo_id      text,
    requested_by text        NOT NULL,   -- role and acting user, e.g. backend:user-1
    status       text        NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    resource     text,                   -- on failure: the resource that failed
    error        text,                   -- on failure: why, in one line
    attempts     integer     NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);
CREATE INDEX ix_silo_operations_town ON silo_operations (town_id, created_at DESC);

-- The first answer to each Idempotency-Key, replayed for the same caller and request.
CREATE TABLE silo_idempotency (
    principal      text        NOT NULL,   -- the token's hash: keys are per caller
    key            text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_sha256 text        NOT NULL,
    status_code    integer     NOT NULL,
    body           jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
