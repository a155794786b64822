-- Watched Google Drive folders (the seeds' Drive sync): `dhgq drive watch FOLDER_ID` lists the folder's
-- media files once, adding each as a source (gdrive://FILE_ID), and keeps Drive's change-list page
-- token here; the periodic task dhgq.drive_watch (queue maintenance) asks Drive for the changes since
-- that token and adds the media files that arrived in the folder (a new version of a known file runs
-- its pipeline again). Private to the operator, like everything in schema dhgq.

CREATE TABLE dhgq.drive_watches (
    folder_id text PRIMARY KEY CHECK (folder_id ~ '^[A-Za-z0-9_-]{10,200}$'),
    folder_name text,
    drive_id text,                                  -- the shared drive of the folder, if in one
    page_token text NOT NULL,                       -- Drive's changes.list token: where the next check starts
    options jsonb NOT NULL DEFAULT '{}'::jsonb,     -- request options given to the sources it adds
    created_at timestamptz NOT NULL DEFAULT now(),
    checked_at timestamptz,
    sources_added integer NOT NULL DEFAULT 0,
    last_error text,                                -- why the last check failed (NULL: it did not)
    failed_at timestamptz
);
COMMENT ON TABLE dhgq.drive_watches IS
    'Google Drive folders whose new media files become sources (dhgq drive watch | unwatch | list)';

REVOKE ALL ON dhgq.drive_watches FROM PUBLIC, anon, authenticated, service_role;
