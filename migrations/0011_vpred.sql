-- v-prediction checkpoints registered before zero-terminal-SNR models (the `ztsnr` key) were told
-- apart: their stamp is cleared so that the next scan inspects them again (their hash cache stays).
UPDATE checkpoints SET mtime_ns = 0
WHERE json_extract(inspection_json, '$.architecture_info.prediction') = 'v'
  AND json_extract(inspection_json, '$.architecture_info.zero_snr') IS NULL;

-- "CFG Rescale φ" (Lin et al. 2023): how much of the guided prediction's spread is pulled back; NULL = 0.
ALTER TABLE jobs ADD COLUMN cfg_rescale REAL;
