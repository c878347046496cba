-- Jobs that start from a picture (img2img): which one (kept in the data directory by its sha256), and how.
ALTER TABLE jobs ADD COLUMN init_image_sha256 TEXT;
ALTER TABLE jobs ADD COLUMN denoising_strength REAL;
ALTER TABLE jobs ADD COLUMN resize_mode TEXT;
