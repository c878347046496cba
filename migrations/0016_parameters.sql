-- Everything that shaped a job's pictures as one JSON record (common/parameters.py `Parameters`,
-- final: size, sampler and schedule as run, the first seed): a later option is a new key, not a new
-- column. Jobs recorded before get theirs from the columns they have. From here on, the option
-- columns of migrations 0008, 0010 and 0011 (denoising_strength, resize_mode, mask_blur, hires_json,
-- inpaint_json, cfg_rescale, distilled_cfg) are left empty; the rest stay for listing and lookups.
ALTER TABLE jobs ADD COLUMN parameters_json TEXT;
UPDATE jobs SET parameters_json = json_object(
    'prompt', prompt,
    'negative', negative,
    'width', width,
    'height', height,
    'steps', steps,
    'cfg', cfg,
    'sampler', sampler,
    'schedule', schedule,
    'seed', coalesce(json_extract(seeds_json, '$[0]'), -1),
    'count', max(1, coalesce(json_array_length(seeds_json), 1)),
    'clip_skip', clip_skip,
    'init_image', init_image_sha256,
    'strength', coalesce(denoising_strength, 0.75),
    'resize_mode', coalesce(resize_mode, 'crop'),
    'mask_image', mask_sha256,
    'mask_blur', coalesce(mask_blur, 4),
    'masked_content', coalesce(json_extract(inpaint_json, '$.masked_content'), 'original'),
    'only_masked', json(CASE WHEN json_extract(inpaint_json, '$.only_masked') THEN 'true' ELSE 'false' END),
    'mask_padding', coalesce(json_extract(inpaint_json, '$.padding'), 32),
    'hires_scale', coalesce(json_extract(hires_json, '$.scale'), 0.0),
    'hires_steps', coalesce(json_extract(hires_json, '$.steps'), 0),
    'hires_denoise', coalesce(json_extract(hires_json, '$.denoise'), 0.7),
    'hires_upscaler', coalesce(json_extract(hires_json, '$.upscaler'), 'Latent'),
    'cfg_rescale', coalesce(cfg_rescale, 0.0),
    'vae', vae_sha256,
    'distilled_cfg', coalesce(distilled_cfg, 3.5)
)
WHERE parameters_json IS NULL;
