-- Every generation job: enough to look it up, reproduce it, and know how it ended.
CREATE TABLE jobs (
    id                TEXT    PRIMARY KEY,
    state             TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
    requester_id      TEXT    NOT NULL,
    requester_name    TEXT    NOT NULL DEFAULT '',
    guild_id          TEXT,
    channel_id        TEXT,
    message_id        TEXT,
    checkpoint_name   TEXT    NOT NULL,
    checkpoint_sha256 TEXT    NOT NULL,
    prompt            TEXT    NOT NULL,
    negative          TEXT    NOT NULL DEFAULT '',
    width             INTEGER NOT NULL,
    height            INTEGER NOT NULL,
    steps             INTEGER NOT NULL,
    cfg               REAL    NOT NULL,
    sampler           TEXT    NOT NULL,
    schedule          TEXT    NOT NULL,
    clip_skip         INTEGER NOT NULL DEFAULT 1,
    seeds_json        TEXT    NOT NULL,            -- every seed used, one per image
    error             TEXT,
    device            TEXT,
    batch_size        INTEGER,
    created_at        REAL    NOT NULL,
    started_at        REAL,
    finished_at       REAL,
    load_seconds      REAL,
    inference_seconds REAL,
    infotexts_json    TEXT
);
CREATE INDEX jobs_state ON jobs (state);
CREATE INDEX jobs_requester ON jobs (requester_id, created_at);
