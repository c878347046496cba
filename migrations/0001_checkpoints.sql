-- Registered checkpoints, their tags, and the file-hash cache.
CREATE TABLE checkpoints (
    id                 INTEGER PRIMARY KEY,
    name               TEXT    NOT NULL UNIQUE,   -- slug users type
    display_name       TEXT    NOT NULL,
    path               TEXT    NOT NULL UNIQUE,   -- resolved absolute path
    relative_path      TEXT    NOT NULL,          -- relative to the models directory
    sha256             TEXT    NOT NULL UNIQUE,   -- identity of the checkpoint
    autov1             TEXT,
    format             TEXT    NOT NULL,          -- safetensors | ckpt
    family             TEXT    NOT NULL,          -- sd1 | sd2 | sdxl | sdxl-refiner | sd3 | flux | ...
    variant            TEXT    NOT NULL DEFAULT '',
    prediction         TEXT    NOT NULL DEFAULT '',
    architecture       TEXT    NOT NULL,          -- human label, e.g. "SD2.x v-prediction"
    runnable           INTEGER NOT NULL,
    pipeline_config    TEXT,                      -- bundled diffusers config folder the worker uses
    file_size          INTEGER NOT NULL,
    mtime_ns           INTEGER NOT NULL,
    inspection_json    TEXT    NOT NULL,
    description        TEXT    NOT NULL DEFAULT '',
    nsfw               INTEGER NOT NULL DEFAULT 0,
    sidecars_json      TEXT    NOT NULL DEFAULT '{}',
    preview_path       TEXT,
    status             TEXT    NOT NULL DEFAULT 'present' CHECK (status IN ('present', 'missing')),
    added_at           REAL    NOT NULL,
    updated_at         REAL    NOT NULL
);

CREATE TABLE checkpoint_tags (
    checkpoint_id INTEGER NOT NULL REFERENCES checkpoints (id) ON DELETE CASCADE,
    tag           TEXT    NOT NULL,
    PRIMARY KEY (checkpoint_id, tag)
);
CREATE INDEX checkpoint_tags_tag ON checkpoint_tags (tag);

CREATE TABLE hash_cache (
    path      TEXT    PRIMARY KEY,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    sha256    TEXT    NOT NULL,
    autov1    TEXT,
    hashed_at REAL    NOT NULL
);
