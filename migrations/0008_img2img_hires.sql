-- Jobs that start from a picture (img2img, inpainting): which one and which mask (kept in the data
-- directory by their sha256), and how; and jobs with A1111's hires fix (a second pass at a larger size).
ALTER TABLE jobs ADD COLUMN init_image_sha256 TEXT;
ALTER TABLE jobs ADD COLUMN denoising_strength REAL;
ALTER TABLE jobs ADD COLUMN resize_mode TEXT;
ALTER TABLE jobs ADD COLUMN mask_sha256 TEXT;   -- inpainting: the mask (white = redraw), kept like the picture
ALTER TABLE jobs ADD COLUMN mask_blur INTEGER;
ALTER TABLE jobs ADD COLUMN hires_json TEXT;  -- {"scale", "steps", "denoise", "upscaler"} or NULL
