-- VAEs (A1111's "SD VAE") from models/VAE or models/vae, a checkpoint's chosen default, and a job's.
CREATE TABLE vaes (
    id                 INTEGER PRIMARY KEY,
    name               TEXT    NOT NULL UNIQUE COLLATE NOCASE,  -- the file stem
    alias              TEXT    NOT NULL DEFAULT '',             -- unused
    display_name       TEXT    NOT NULL,
    path               TEXT    NOT NULL UNIQUE,                 -- resolved absolute path
    relative_path      TEXT    NOT NULL,                        -- relative to its VAE folder
    sha256             TEXT    NOT NULL UNIQUE,
    short_hash         TEXT    NOT NULL,                        -- A1111's "VAE hash": sha256[:10]
    format             TEXT    NOT NULL,                        -- safetensors | pickle (read through the allow-list)
    kind               TEXT    NOT NULL,                        -- vae
    layout             TEXT    NOT NULL,                        -- ldm | diffusers
    base               TEXT    NOT NULL DEFAULT '',             -- sd (4-channel latents) | 16ch
    decided_by         TEXT    NOT NULL DEFAULT '',             -- its label (bot/components/detection.py)
    loadable           INTEGER NOT NULL,
    reason             TEXT    NOT NULL DEFAULT '',
    rank               INTEGER,                                 -- latent channels
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
ALTER TABLE checkpoints ADD COLUMN vae_sha256 TEXT;  -- its default VAE (A1111's per-checkpoint "SD VAE"), or NULL
ALTER TABLE jobs ADD COLUMN vae_sha256 TEXT;         -- the VAE a job ran with, or NULL for the checkpoint's own
