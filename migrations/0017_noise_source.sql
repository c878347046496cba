-- The starting noise's source (common/parameters.py `rng`, A1111's "Random number generator
-- source"): jobs recorded before it existed drew their noise with CPU generators, so a rerun of one
-- (the same seed for Upscale, Vary, More) keeps drawing it so and keeps its composition; jobs from
-- here on record theirs (A1111's default, GPU, unless a place or the job chose another).
UPDATE jobs SET parameters_json = json_set(parameters_json, '$.rng', 'CPU')
WHERE parameters_json IS NOT NULL AND json_extract(parameters_json, '$.rng') IS NULL;
