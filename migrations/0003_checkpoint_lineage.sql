-- How a checkpoint was made, and for merges, what it was made from.
ALTER TABLE checkpoints ADD COLUMN training TEXT NOT NULL DEFAULT '';        -- base | fine-tuned | merged | '' (unknown)
ALTER TABLE checkpoints ADD COLUMN lineage_json TEXT NOT NULL DEFAULT '[]';  -- merge parents: [{"sha256", "name", "role"}]
