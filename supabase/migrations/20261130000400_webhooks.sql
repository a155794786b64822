-- Webhooks: a request may name a callback URL, called once per outcome when the request ends.
--
-- public.processing_jobs.callback_url is checked here when it is written (an http(s) URL without
-- credentials or control characters, at most 2048 characters). Whether its host is a public
-- address is decided by the worker at delivery time (dhgq/netguard.py), because DNS can change.
--
-- When a request's status becomes completed, failed or cancelled, the transaction that changes it
-- records a delivery in dhgq.webhook_deliveries (one row per request and outcome, never a second)
-- and queues one Procrastinate job `dhgq.webhook` on queue `webhooks` for it. A request that
-- fails, is retried and fails again is announced as failed once; one that is retried and then
-- completes gets its own `completed` delivery. The worker (dhgq/tasks/webhook.py) signs and POSTs
-- the body, and writes what happened (attempts, response status, last error) on the row.

ALTER TABLE public.processing_jobs ADD COLUMN callback_url text;
COMMENT ON COLUMN public.processing_jobs.callback_url IS
    'Optional https:// (or http://) URL that dhgq POSTs a signed JSON body to when the request completes, '
    'fails or is cancelled (once per outcome; X-Dhgq-Signature: t=<unix seconds>,v1=<HMAC-SHA256 hex>)';

-- Users set it when they make a request (the service role's table-wide rights include it).
GRANT INSERT (callback_url) ON public.processing_jobs TO authenticated;

-- The checks on a callback URL, in the writer's own rights (they read nothing but the row).
CREATE FUNCTION dhgq.processing_jobs_check_callback_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_url text := NEW.callback_url;
    v_authority text;
    v_port text;
    v_hint text := 'callback_url is an https:// (or http://) URL such as ''https://example.com/hooks/dhgq''';
BEGIN
    IF v_url IS NULL THEN
        RETURN NEW;
    END IF;
    IF length(v_url) > 2048 THEN
        RAISE EXCEPTION 'callback_url is longer than 2048 characters (% characters)', length(v_url)
            USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    IF v_url ~ '[[:cntrl:][:space:]\\]' THEN
        RAISE EXCEPTION 'callback_url contains a control character, a space or a backslash'
            USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    IF v_url !~* '^https?://' THEN
        RAISE EXCEPTION 'callback_url % is not an https:// or http:// URL', quote_literal(left(v_url, 200))
            USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    v_authority := substring(v_url FROM '^[A-Za-z]+://([^/?#]*)');
    IF position('@' IN v_authority) > 0 THEN
        RAISE EXCEPTION 'callback_url must not carry credentials (user:password@): the body is signed instead'
            USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    IF v_authority !~ '^([A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$' OR v_authority ~ '^[:.]' THEN
        RAISE EXCEPTION 'callback_url % has no valid host', quote_literal(left(v_url, 200))
            USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    v_port := substring(v_authority FROM ':([0-9]+)$');
    IF v_port IS NOT NULL AND v_port::integer NOT BETWEEN 1 AND 65535 THEN
        RAISE EXCEPTION 'callback_url port % is not from 1 to 65535', v_port
            USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    RETURN NEW;
END;
$$;

-- Before processing_jobs_start_pipeline (triggers fire in name order): a bad URL starts nothing.
CREATE TRIGGER processing_jobs_check_callback
    BEFORE INSERT OR UPDATE OF callback_url ON public.processing_jobs
    FOR EACH ROW EXECUTE FUNCTION dhgq.processing_jobs_check_callback_v1();

-- One row per (request, outcome): the guard that makes a second announcement impossible, and
-- what the worker did about it. `event` and `url` are the request as that outcome left it, so a
-- later retry of the request does not change what this delivery says or where it goes.
CREATE TABLE dhgq.webhook_deliveries (
    request_id uuid NOT NULL REFERENCES public.processing_jobs(id) ON DELETE CASCADE,
    outcome text NOT NULL CHECK (outcome IN ('completed', 'failed', 'cancelled')),
    url text NOT NULL,
    event jsonb NOT NULL,
    status text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'delivering', 'retrying', 'delivered', 'failed')),
    job_id bigint,
    attempts integer NOT NULL DEFAULT 0,
    response_status integer,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    PRIMARY KEY (request_id, outcome)
);
COMMENT ON TABLE dhgq.webhook_deliveries IS
    'Webhook deliveries, one per request and outcome: queued, delivering, retrying, delivered or failed';
CREATE INDEX idx_webhook_deliveries_status ON dhgq.webhook_deliveries(status) WHERE status <> 'delivered';

CREATE TRIGGER webhook_deliveries_touch_updated_at
    BEFORE UPDATE ON dhgq.webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION dhgq.touch_updated_at_v1();

-- A request ended: record its delivery and queue the job, unless this outcome was announced
-- already. SECURITY DEFINER: the status may change in a service role's transaction, which has no
-- rights in schema dhgq. A job already waiting under the same queueing lock (an operator deleted
-- the row) is left to deliver: a webhook never fails the transaction that ends a request.
CREATE FUNCTION dhgq.webhook_enqueue_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_job_id bigint;
BEGIN
    INSERT INTO dhgq.webhook_deliveries (request_id, outcome, url, event)
    VALUES (NEW.id, NEW.status, NEW.callback_url, jsonb_build_object(
        'source_id', NEW.source_id,
        'status', NEW.status,
        'error', NEW.error,
        'result', NEW.result,
        'completed_at', to_char(NEW.completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
    ON CONFLICT (request_id, outcome) DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;  -- this outcome was announced already
    END IF;
    BEGIN
        SELECT (dhgq.procrastinate_defer_jobs_v1(ARRAY[ROW(
            'webhooks', 'dhgq.webhook', 0,
            'webhook:' || NEW.id, 'webhook:' || NEW.id || ':' || NEW.status,
            jsonb_build_object('request_id', NEW.id, 'outcome', NEW.status),
            NULL
        )::dhgq.procrastinate_job_to_defer_v1]))[1] INTO v_job_id;
    EXCEPTION WHEN unique_violation THEN
        v_job_id := NULL;
    END;
    UPDATE dhgq.webhook_deliveries SET job_id = v_job_id WHERE request_id = NEW.id AND outcome = NEW.status;
    RETURN NULL;
END;
$$;

CREATE TRIGGER processing_jobs_webhook
    AFTER INSERT OR UPDATE OF status ON public.processing_jobs
    FOR EACH ROW WHEN (NEW.callback_url IS NOT NULL AND NEW.status IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION dhgq.webhook_enqueue_v1();

-- As for everything in dhgq: nobody but the owner runs or reads it.
REVOKE ALL ON FUNCTION dhgq.processing_jobs_check_callback_v1(), dhgq.webhook_enqueue_v1()
    FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON TABLE dhgq.webhook_deliveries FROM PUBLIC, anon, authenticated, service_role;
