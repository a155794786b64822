-- Media-aware progress: a model stage reports how many seconds of audio it has done, its realtime
-- factor and an ETA, written on its stage row as it goes (and so NOTIFYd to the monitor, which
-- reads the row again); the claim clears what an earlier run left.
ALTER TABLE dhgq.audio_processing_stages ADD COLUMN progress_detail jsonb;
COMMENT ON COLUMN dhgq.audio_processing_stages.progress_detail IS
    'While a model stage runs: audio_seconds_done, audio_seconds, realtime_factor, eta_seconds';
