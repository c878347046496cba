-- Upscaler models (ESRGAN family) from models/ESRGAN, models/RealESRGAN and models/upscale_models.
CREATE TABLE upscalers (
    id                 INTEGER PRIMARY KEY,
    name               TEXT    NOT NULL UNIQUE COLLATE NOCASE,  -- the file stem, as A1111 lists ESRGAN models
    alias              TEXT    NOT NULL DEFAULT '',             -- A1111's name for a Real-ESRGAN release ("R-ESRGAN 4x+")
    display_name       TEXT    NOT NULL,
    path               TEXT    NOT NULL UNIQUE,                 -- resolved absolute path
    relative_path      TEXT    NOT NULL,                        -- relative to its upscaler folder
    sha256             TEXT    NOT NULL UNIQUE,
    short_hash         TEXT    NOT NULL,                        -- the file's sha256[:10] (AutoV2)
    format             TEXT    NOT NULL,                        -- safetensors | pickle (.pth, read through the allow-list)
    kind               TEXT    NOT NULL,                        -- upscaler
    layout             TEXT    NOT NULL,                        -- esrgan | realesrgan | bsrgan | compact
    base               TEXT    NOT NULL DEFAULT '',             -- unused
    decided_by         TEXT    NOT NULL DEFAULT '',             -- the network, as bot/upscalers/detection.py labels it
    loadable           INTEGER NOT NULL,
    reason             TEXT    NOT NULL DEFAULT '',
    rank               INTEGER,                                 -- the scale of one pass
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
