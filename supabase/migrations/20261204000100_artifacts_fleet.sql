-- Many machines, one database: stages hand each other artifacts, not paths on one machine's disk.
--
-- Artifacts. What one stage makes and a later stage reads (extraction's 16 kHz WAV and its compact
-- copy) is recorded in dhgq.artifacts under a URI in an artifact store, with its sha256 and size:
-- a path in the work dir for the embedded single-machine default (the local store), or
-- storage://<artifact bucket>/<source id>/<name> in Supabase Storage (a private bucket that only the
-- service key reaches), kept in parts of at most DHGQ_ARTIFACT_PART_BYTES. A worker on any machine
-- fetches an artifact by that row into its bounded local cache and checks it by hash; the Modal
-- functions fetch it by a signed URL. sources_google.audio_extraction_path keeps naming the WAV's
-- URI, as before. A source's artifacts go with it (ON DELETE CASCADE); `dhgq gc` removes the
-- stored objects of sources whose audio retention has passed, and objects no row names.
--
-- Fleet. Each `dhgq worker` process registers in dhgq.workers (its host, pid, queues), renews
-- seen_at while it runs and says stopped_at when it stops; a stage row names the host and worker
-- that ran it (claimed it last). `dhgq status` and the monitor show both.

CREATE TABLE dhgq.artifacts (
    source_id uuid NOT NULL REFERENCES public.sources_google(id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('audio', 'compact')),
    uri text NOT NULL,
    sha256 text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size bigint CHECK (size >= 0),
    content_type text NOT NULL,
    parts integer NOT NULL DEFAULT 1 CHECK (parts >= 1),
    host text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, kind)
);
COMMENT ON TABLE dhgq.artifacts IS
    'What a stage made for later stages, by URI in the artifact store (a work-dir path, or storage://bucket/key)';
COMMENT ON COLUMN dhgq.artifacts.sha256 IS
    'Checked by every worker that fetches it; NULL only for audio extracted before artifacts were recorded';
COMMENT ON COLUMN dhgq.artifacts.parts IS
    'Objects the store keeps it in: 1 is the URI itself, more are <uri>.part0000, .part0001, ... in order';
CREATE INDEX artifacts_uri ON dhgq.artifacts (uri);

-- Audio extracted before this migration: the WAV (and the compact copy beside it, when the
-- extraction's result names one) as artifacts of the local store, unverified (no hash known).
INSERT INTO dhgq.artifacts (source_id, kind, uri, content_type)
SELECT s.id, 'audio', s.audio_extraction_path, 'audio/wav'
  FROM public.sources_google s
 WHERE s.audio_extraction_path IS NOT NULL
ON CONFLICT DO NOTHING;
INSERT INTO dhgq.artifacts (source_id, kind, uri, content_type)
SELECT st.source_id, 'compact', st.result ->> 'compact_path', 'audio/ogg'
  FROM dhgq.audio_processing_stages st
  JOIN public.sources_google s ON s.id = st.source_id AND s.audio_extraction_path IS NOT NULL
 WHERE st.stage = 'extraction' AND st.status = 'completed' AND st.result ->> 'compact_path' IS NOT NULL
ON CONFLICT DO NOTHING;

CREATE TABLE dhgq.workers (
    id uuid PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    queues text[] NOT NULL,
    version text,
    artifact_store text,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz
);
COMMENT ON TABLE dhgq.workers IS
    'dhgq worker processes: where they run and what they serve; seen_at is renewed while they run';
CREATE INDEX workers_seen_at ON dhgq.workers (seen_at);

ALTER TABLE dhgq.audio_processing_stages
    ADD COLUMN host text,
    ADD COLUMN worker_id uuid;
COMMENT ON COLUMN dhgq.audio_processing_stages.host IS 'The machine whose worker claimed the stage last';

-- The artifact bucket, where Supabase Storage is installed: private, and no policy names it, so
-- only the service key (the workers) reaches its objects. Elsewhere the workers create it on first
-- use with the service key, or the local store needs none.
DO $$
BEGIN
    IF to_regclass('storage.buckets') IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO storage.buckets (id, name, public) VALUES ('dhgq-artifacts', 'dhgq-artifacts', false)
    ON CONFLICT (id) DO NOTHING;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot create the dhgq-artifacts bucket as %: the workers create it on first use', current_user;
END
$$;

REVOKE ALL ON TABLE dhgq.artifacts, dhgq.workers FROM PUBLIC, anon, authenticated, service_role;
