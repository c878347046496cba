-- Live Civitai searches for checkpoints not installed here (GET /api/v1/models), one row per set of
-- parameters: what Civitai answered and when, kept for when it cannot be reached.
CREATE TABLE civitai_searches (
    params_key   TEXT PRIMARY KEY,  -- the parameters as sorted JSON
    payload_json TEXT NOT NULL,     -- the suggestions (bot/catalog/civitai.parse_model's shape)
    fetched_at   REAL NOT NULL
);
