-- Image version catalog and per-user pins (seed 003), used for every deployable image (service column).
-- image_tag is the deployable identity; image_digest (content) is unique when known. Fixes over the
-- seed: catalog writes go through sync_catalog() under a lock (no raw unique violations), and a pin
-- can only name a tag that exists (FK).
CREATE TABLE kiloclaw_available_versions (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service      text        NOT NULL
                 CHECK (service IN ('pg', 'rest', 'auth', 'storage', 'meta', 'studio', 'kong', 'town')),
    repository   text        NOT NULL CHECK (repository <> ''),
    image_tag    text        NOT NULL CONSTRAINT uq_kiloclaw_versions_image_tag UNIQUE
                 CHECK (image_tag <> ''),
    image_digest text        CONSTRAINT kiloclaw_versions_digest_format
                 CHECK (image_digest ~ '^sha256:[0-9a-f]{64}$'),
    status       text        NOT NULL DEFAULT 'active'
                 CONSTRAINT kiloclaw_versions_status_check
                 CHECK (status IN ('active', 'deprecated', 'disabled')),
    notes        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX uq_kiloclaw_versions_image_digest
    ON kiloclaw_available_versions (image_digest) WHERE image_digest IS NOT NULL;
CREATE INDEX ix_kiloclaw_versions_service_status ON kiloclaw_available_versions (service, status);

CREATE TABLE kiloclaw_version_pins (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    text        NOT NULL,
    service    text        NOT NULL DEFAULT 'town',
    -- ON UPDATE CASCADE: a tag is never renamed by sync, but an operator fix should follow through.
    image_tag  text        NOT NULL REFERENCES kiloclaw_available_versions (image_tag) ON UPDATE CASCADE,
    pinned_by  text,
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uq_kiloclaw_version_pins_user_service UNIQUE (user_id, service)
);
