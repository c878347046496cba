-- Per-server (and per-channel) defaults and policy, set by members with Manage Server.
CREATE TABLE guild_settings (
    guild_id      TEXT NOT NULL,
    channel_id    TEXT NOT NULL DEFAULT '',   -- '' = the whole server
    settings_json TEXT NOT NULL DEFAULT '{}',
    updated_at    REAL NOT NULL,
    updated_by    TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (guild_id, channel_id)
);

-- Checkpoints a server does not want offered (by identity, so a rename keeps them hidden).
CREATE TABLE guild_hidden_checkpoints (
    guild_id          TEXT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    PRIMARY KEY (guild_id, checkpoint_sha256)
);
