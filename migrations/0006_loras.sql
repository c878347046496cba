-- LoRA adapters (and LyCORIS LoCon), registered apart from checkpoints: a prompt picks them by name.
CREATE TABLE loras (
    id                 INTEGER PRIMARY KEY,
    name               TEXT    NOT NULL UNIQUE COLLATE NOCASE,  -- what <lora:NAME:…> says: the file stem, as A1111
    alias              TEXT    NOT NULL DEFAULT '',             -- kohya ss_output_name, also accepted
    display_name       TEXT    NOT NULL,
    path               TEXT    NOT NULL UNIQUE,                 -- resolved absolute path
    relative_path      TEXT    NOT NULL,                        -- relative to its LoRA folder
    sha256             TEXT    NOT NULL UNIQUE,
    short_hash         TEXT    NOT NULL,                        -- A1111's 12 hex: sha256 after the safetensors header
    format             TEXT    NOT NULL,                        -- safetensors
    kind               TEXT    NOT NULL,                        -- lora | locon | loha | lokr
    layout             TEXT    NOT NULL,                        -- kohya | peft
    base               TEXT    NOT NULL,                        -- sd1 | sd2 | sdxl | flux | sd3 | ''
    decided_by         TEXT    NOT NULL DEFAULT '',
    loadable           INTEGER NOT NULL,
    reason             TEXT    NOT NULL DEFAULT '',
    rank               INTEGER,
    trigger_words_json TEXT    NOT NULL DEFAULT '[]',
    description        TEXT    NOT NULL DEFAULT '',
    nsfw               INTEGER NOT NULL DEFAULT 0,
    preview_path       TEXT,
    metadata_json      TEXT    NOT NULL DEFAULT '{}',
    file_size          INTEGER NOT NULL,
    mtime_ns           INTEGER NOT NULL,
    status             TEXT    NOT NULL DEFAULT 'present' CHECK (status IN ('present', 'missing')),
    added_at           REAL    NOT NULL,
    updated_at         REAL    NOT NULL
);

-- Earlier versions registered LoRA files found by a scan as checkpoints that cannot run.
DELETE FROM checkpoints WHERE family = 'lora';
