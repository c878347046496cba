-- Textual-inversion embeddings: a word in a prompt (or negative prompt) that stands for trained vectors.
CREATE TABLE embeddings (
    id                 INTEGER PRIMARY KEY,
    name               TEXT    NOT NULL UNIQUE COLLATE NOCASE,  -- the word a prompt uses: the file stem, as A1111
    alias              TEXT    NOT NULL DEFAULT '',             -- unused for embeddings
    display_name       TEXT    NOT NULL,
    path               TEXT    NOT NULL UNIQUE,                 -- resolved absolute path
    relative_path      TEXT    NOT NULL,                        -- relative to its LoRA folder
    sha256             TEXT    NOT NULL UNIQUE,
    short_hash         TEXT    NOT NULL,                        -- A1111's 12 hex: the file's sha256
    format             TEXT    NOT NULL,                        -- safetensors | pickle (.pt, .bin: read through the allow-list)
    kind               TEXT    NOT NULL,                        -- embedding
    layout             TEXT    NOT NULL,                        -- a1111 | safetensors | diffusers | sdxl
    base               TEXT    NOT NULL,                        -- sd1 | sd2 | sdxl | flux | sd3 | ''
    decided_by         TEXT    NOT NULL DEFAULT '',
    loadable           INTEGER NOT NULL,
    reason             TEXT    NOT NULL DEFAULT '',
    rank               INTEGER,                                 -- number of vectors
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
