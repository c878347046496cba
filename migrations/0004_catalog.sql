-- The catalog: facets an owner set, Civitai lookups, and the search index (entries, full text, embeddings).
ALTER TABLE checkpoints ADD COLUMN facets_json TEXT NOT NULL DEFAULT '{}';  -- owner-set: styles, realism, specialities, training, trigger_words

CREATE TABLE civitai_lookups (
    sha256       TEXT PRIMARY KEY,
    status       TEXT NOT NULL CHECK (status IN ('found', 'missing')),
    payload_json TEXT NOT NULL DEFAULT '{}',
    fetched_at   REAL NOT NULL
);

-- One row per searchable entry: installed checkpoints ("ckpt:<sha256>") and reference ones ("ref:<slug>").
CREATE TABLE catalog_entries (
    key             TEXT PRIMARY KEY,
    entry_json      TEXT NOT NULL,
    content_hash    TEXT NOT NULL,   -- of the text that is embedded; the embedding is redone only when it changes
    embedding       BLOB,            -- float32, L2-normalised
    embedding_model TEXT
);

CREATE VIRTUAL TABLE catalog_fts USING fts5(key UNINDEXED, name, description, tags, tokenize = 'porter unicode61');
