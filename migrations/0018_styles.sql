-- Prompt styles (A1111's styles.csv: a name, a prompt and a negative prompt, `{prompt}` where the
-- person's prompt goes): a server's own, and the bot's (scope '') for every server, DMs and the CLI.
CREATE TABLE styles (
    scope    TEXT NOT NULL,  -- a server's id, or '' for the whole bot
    name     TEXT NOT NULL,
    prompt   TEXT NOT NULL,
    negative TEXT NOT NULL,
    PRIMARY KEY (scope, name)
);
