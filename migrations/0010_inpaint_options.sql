-- Inpainting jobs' A1111 options beyond the mask blur: {"masked_content", "only_masked", "padding"},
-- or NULL for A1111's defaults (original, whole picture).
ALTER TABLE jobs ADD COLUMN inpaint_json TEXT;
