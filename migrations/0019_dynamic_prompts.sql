-- Prompts are expanded as A1111's Dynamic Prompts extension expands them ({a|b}, __wildcards__,
-- common/parameters.py `dynamic`) from here on; jobs recorded before read their braces as text, so a
-- rerun of one (Upscale, Vary, More) keeps its prompt as it was drawn.
UPDATE jobs SET parameters_json = json_set(parameters_json, '$.dynamic', json('false'))
WHERE parameters_json IS NOT NULL AND json_extract(parameters_json, '$.dynamic') IS NULL;
