-- Watched Google Drive folders (dhgq/drive_watch.py).

-- name: drive_watch_upsert
INSERT INTO drive_watches (folder_id, folder_name, drive_id, page_token, options)
VALUES (%(folder_id)s, %(folder_name)s, %(drive_id)s, %(page_token)s, dhgq.request_options_v1(%(options)s))
ON CONFLICT (folder_id) DO UPDATE
    SET folder_name = EXCLUDED.folder_name, drive_id = EXCLUDED.drive_id, page_token = EXCLUDED.page_token,
        options = EXCLUDED.options, last_error = NULL, failed_at = NULL;

-- name: drive_watch_delete
DELETE FROM drive_watches WHERE folder_id = %(folder_id)s RETURNING folder_id;

-- name: drive_watch_list
SELECT folder_id, folder_name, drive_id, options, created_at, checked_at, sources_added, last_error, failed_at
  FROM drive_watches ORDER BY created_at;

-- name: drive_watch_due
-- The watches to check now, each locked for this check (another worker's check of the same folder skips it).
SELECT folder_id, drive_id, page_token, options FROM drive_watches
 WHERE checked_at IS NULL OR checked_at <= now() - make_interval(secs => %(every)s)
 ORDER BY checked_at NULLS FIRST
   FOR UPDATE SKIP LOCKED;

-- name: drive_watch_one
SELECT folder_id, drive_id, page_token, options FROM drive_watches WHERE folder_id = %(folder_id)s
   FOR UPDATE SKIP LOCKED;

-- name: drive_watch_checked
UPDATE drive_watches
   SET page_token = %(page_token)s, checked_at = now(), sources_added = sources_added + %(added)s,
       last_error = NULL, failed_at = NULL
 WHERE folder_id = %(folder_id)s;

-- name: drive_watch_failed
UPDATE drive_watches SET checked_at = now(), last_error = %(error)s, failed_at = now() WHERE folder_id = %(folder_id)s;

-- name: drive_source_add
-- A Drive file of a watched folder as a source, unless one has it already (by its Drive id or its URI); a known
-- file whose content changed (another md5) gets the new checksum and runs its pipeline again. Returns the
-- source and whether it is new ('added'), changed ('changed'), or neither (no row).
WITH known AS (
    SELECT id, md5_checksum FROM sources_google
     WHERE (drive_id = %(file_id)s OR path = 'gdrive://' || %(file_id)s) AND NOT is_deleted
     ORDER BY created_at LIMIT 1
), added AS (
    INSERT INTO sources_google (name, path, mime_type, drive_id, root_drive_id, parent_folder_id, size,
                                md5_checksum, modified_time, metadata, options)
    SELECT %(name)s, 'gdrive://' || %(file_id)s, %(mime_type)s, %(file_id)s, %(root_drive_id)s, %(folder_id)s,
           %(size)s, %(md5)s, %(modified_time)s, jsonb_build_object('added_by', 'drive watch ' || %(folder_id)s),
           dhgq.request_options_v1(%(options)s)
     WHERE NOT EXISTS (SELECT 1 FROM known)
    ON CONFLICT (drive_id) DO NOTHING
    RETURNING id
), changed AS (
    UPDATE sources_google s SET md5_checksum = %(md5)s, modified_time = %(modified_time)s, size = %(size)s
      FROM known k
     WHERE s.id = k.id AND k.md5_checksum IS NOT NULL AND k.md5_checksum <> %(md5)s::text
    RETURNING s.id
)
SELECT id, 'added' FROM added
UNION ALL
SELECT id, 'changed' FROM changed;
