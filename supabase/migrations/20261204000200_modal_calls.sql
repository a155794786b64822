-- Modal calls that a stopped worker leaves running are found and cancelled.
--
-- A GPU call's ledger row (dhgq.ledger, kind 'gpu') now records the id of the Modal call it stands
-- for as soon as the call is spawned. A worker killed outright cannot cancel its calls; the next
-- attempt of the same stage cancels every call still open for the source and stage before it spawns
-- its own, and `dhgq cancel SOURCE` cancels those of the source, so nothing keeps running and billing
-- for a stage nobody waits on.

ALTER TABLE dhgq.ledger ADD COLUMN remote_call_id text;
COMMENT ON COLUMN dhgq.ledger.remote_call_id IS
    'The Modal FunctionCall id of a GPU call, once spawned: cancelled by the next attempt or dhgq cancel if left open';
CREATE INDEX idx_ledger_open_remote_calls ON dhgq.ledger (source_id, stage)
    WHERE status = 'started' AND remote_call_id IS NOT NULL;
