-- ControlNet models from models/ControlNet (A1111's extension) or models/controlnet (ComfyUI).
CREATE TABLE controlnets (
    id                 INTEGER PRIMARY KEY,
    name               TEXT    NOT NULL UNIQUE COLLATE NOCASE,  -- the file stem, as the A1111 extension lists ControlNets
    alias              TEXT    NOT NULL DEFAULT '',             -- unused
    display_name       TEXT    NOT NULL,
    path               TEXT    NOT NULL UNIQUE,                 -- resolved absolute path
    relative_path      TEXT    NOT NULL,                        -- relative to its ControlNet folder
    sha256             TEXT    NOT NULL UNIQUE,
    short_hash         TEXT    NOT NULL,                        -- A1111's old 8-hex model hash, as the extension writes it after the name
    format             TEXT    NOT NULL,                        -- safetensors | pickle (.pth, read through the allow-list)
    kind               TEXT    NOT NULL,                        -- controlnet
    layout             TEXT    NOT NULL,                        -- original (lllyasviel's layout) | diffusers | other
    base               TEXT    NOT NULL DEFAULT '',             -- sd1 | sd2 | sdxl
    decided_by         TEXT    NOT NULL DEFAULT '',             -- its label (bot/controlnets/detection.py)
    loadable           INTEGER NOT NULL,
    reason             TEXT    NOT NULL DEFAULT '',
    rank               INTEGER,                                 -- unused
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
