-- The picture check's outcome per job: {"scores": [per picture], "verdicts": [post | spoiler | withhold]}.
ALTER TABLE jobs ADD COLUMN safety_json TEXT;
