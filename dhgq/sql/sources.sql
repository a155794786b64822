-- Queries about where a source's file came from (local, Supabase Storage, Google Drive, the web).

-- name: save_fetched_source
-- What fetching the source told of it: its content hash (what dhgq dedupes on) and, for a Drive
-- file, Drive's metadata (a drive_id another source already has is left alone: it is unique).
UPDATE sources_google s
   SET content_hash = %(sha256)s,
       size = coalesce(%(size)s, s.size),
       drive_id = CASE WHEN %(drive_id)s::text IS NOT NULL AND NOT EXISTS (
                           SELECT 1 FROM sources_google o WHERE o.drive_id = %(drive_id)s AND o.id <> s.id)
                       THEN %(drive_id)s ELSE s.drive_id END,
       root_drive_id = coalesce(%(root_drive_id)s, s.root_drive_id),
       parent_folder_id = coalesce(%(parent_folder_id)s, s.parent_folder_id),
       web_view_link = coalesce(%(web_view_link)s, s.web_view_link),
       thumbnail_link = coalesce(%(thumbnail_link)s, s.thumbnail_link),
       modified_time = coalesce(%(modified_time)s::timestamptz, s.modified_time),
       md5_checksum = coalesce(%(md5_checksum)s, s.md5_checksum),
       metadata = s.metadata || %(fetched)s
 WHERE s.id = %(source_id)s;

-- name: record_outputs
-- Where the exports were uploaded (format -> storage:// URI), for the owner's app to offer.
UPDATE sources_google SET metadata = metadata || jsonb_build_object('outputs', %(outputs)s::jsonb)
 WHERE id = %(source_id)s;

-- name: source_by_path
-- A source that already names this URI (dhgq process gdrive://... twice adds it once).
SELECT id, options FROM sources_google WHERE path = %(path)s AND NOT is_deleted ORDER BY created_at LIMIT 1;

-- name: source_options
SELECT options FROM sources_google WHERE id = %(source_id)s;
