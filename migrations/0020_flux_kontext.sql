-- FLUX.1 Kontext (an edit model, common/editing.py) is told apart from FLUX.1 dev by its file's name
-- (its tensors are dev's): files registered before that was known read as dev and, unchanged on
-- disk, are not inspected again by a scan. Those whose file name says Kontext become Kontext here.
-- The file name: relative_path after its last "/" (SQLite's rtrim idiom for a base name).
UPDATE checkpoints
SET variant = 'kontext',
    architecture = replace(architecture, 'FLUX.1 dev', 'FLUX.1 Kontext dev'),
    inspection_json = json_set(
        inspection_json,
        '$.architecture', replace(json_extract(inspection_json, '$.architecture'), 'FLUX.1 dev', 'FLUX.1 Kontext dev'),
        '$.architecture_info.variant', 'kontext',
        '$.architecture_info.label', replace(json_extract(inspection_json, '$.architecture_info.label'), 'FLUX.1 dev', 'FLUX.1 Kontext dev')
    )
WHERE family = 'flux' AND variant = 'dev'
  AND lower(replace(relative_path, rtrim(relative_path, replace(relative_path, '/', '')), '')) LIKE '%kontext%';
