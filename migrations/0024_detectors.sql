-- Detectors the detail pass finds faces and hands with (ADetailer's models/adetailer: YOLOv8 files).
CREATE TABLE detectors (
    id                 INTEGER PRIMARY KEY,
    name               TEXT    NOT NULL UNIQUE COLLATE NOCASE,  -- the file stem
    alias              TEXT    NOT NULL DEFAULT '',             -- unused
    display_name       TEXT    NOT NULL,
    path               TEXT    NOT NULL UNIQUE,                 -- resolved absolute path
    relative_path      TEXT    NOT NULL,                        -- relative to its folder
    sha256             TEXT    NOT NULL UNIQUE,
    short_hash         TEXT    NOT NULL,                        -- sha256[:10]
    format             TEXT    NOT NULL,                        -- pickle (vetted) or safetensors
    kind               TEXT    NOT NULL,                        -- detector
    layout             TEXT    NOT NULL,                        -- detect, segment, or other (not run)
    base               TEXT    NOT NULL DEFAULT '',             -- what it finds for the detail pass: faces, hands, persons or ''
    decided_by         TEXT    NOT NULL DEFAULT '',             -- its label (bot/detectors.py)
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
