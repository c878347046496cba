-- Text encoders on their own (CLIP-L, CLIP-G, T5-XXL) from models/text_encoders or models/clip, for transformer-only checkpoints.
CREATE TABLE text_encoders (
    id                 INTEGER PRIMARY KEY,
    name               TEXT    NOT NULL UNIQUE COLLATE NOCASE,  -- the file stem
    alias              TEXT    NOT NULL DEFAULT '',             -- unused
    display_name       TEXT    NOT NULL,
    path               TEXT    NOT NULL UNIQUE,                 -- resolved absolute path
    relative_path      TEXT    NOT NULL,                        -- relative to its folder
    sha256             TEXT    NOT NULL UNIQUE,
    short_hash         TEXT    NOT NULL,                        -- sha256[:10]
    format             TEXT    NOT NULL,                        -- safetensors
    kind               TEXT    NOT NULL,                        -- text_encoder
    layout             TEXT    NOT NULL,                        -- hf (the Hugging Face layout)
    base               TEXT    NOT NULL DEFAULT '',             -- clip-l | clip-g | t5xxl
    decided_by         TEXT    NOT NULL DEFAULT '',             -- its label (bot/components/text_encoders.py)
    loadable           INTEGER NOT NULL,
    reason             TEXT    NOT NULL DEFAULT '',
    rank               INTEGER,                                 -- hidden width (768 CLIP-L, 1280 CLIP-G, 4096 T5-XXL)
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

-- Flux and SD3 checkpoints, and LoRAs for them, registered when they could not run: inspected again
-- at the next scan (they may run now).
UPDATE checkpoints SET mtime_ns = 0 WHERE family IN ('flux', 'sd3');
UPDATE loras SET mtime_ns = 0 WHERE base IN ('flux', 'sd3');

-- Forge's "Distilled CFG Scale": a Flux dev job's guidance input; NULL for every other job.
ALTER TABLE jobs ADD COLUMN distilled_cfg REAL;
