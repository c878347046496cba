-- Annotator models (Forge's models/ControlNetPreprocessor) that ControlNet preprocessors run.
CREATE TABLE annotators (
    id                 INTEGER PRIMARY KEY,
    name               TEXT    NOT NULL UNIQUE COLLATE NOCASE,  -- the file stem
    alias              TEXT    NOT NULL DEFAULT '',             -- unused
    display_name       TEXT    NOT NULL,
    path               TEXT    NOT NULL UNIQUE,                 -- resolved absolute path
    relative_path      TEXT    NOT NULL,                        -- relative to its folder
    sha256             TEXT    NOT NULL UNIQUE,
    short_hash         TEXT    NOT NULL,                        -- sha256[:10]
    format             TEXT    NOT NULL,                        -- pickle (vetted) or safetensors
    kind               TEXT    NOT NULL,                        -- annotator
    layout             TEXT    NOT NULL,                        -- hed, lineart, or other (not run)
    base               TEXT    NOT NULL DEFAULT '',             -- its network (hed, lineart), '' when not run
    decided_by         TEXT    NOT NULL DEFAULT '',             -- its label (bot/controlnets/annotators.py)
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
