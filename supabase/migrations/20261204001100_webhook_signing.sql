-- Webhooks users can verify: Standard Webhooks signatures with a secret per user, delivery status on
-- the request, retries spread over hours, redelivery on request.
--
-- Signing keys. Until now every delivery was signed with one operator-wide secret, which every
-- receiver had to know, so any user could sign a body that another user's receiver accepted. Now
-- each user has their own secret (whsec_ + 32 random bytes, base64), made or replaced by
-- public.dhgq_rotate_webhook_secret_v1(), which returns it once: it lives in dhgq.webhook_secrets,
-- which the Data API cannot reach. The user sees only its fingerprint and dates, in
-- public.webhook_signing_keys. After a rotation the previous secret still signs for 24 hours
-- (Standard Webhooks' webhook-signature carries one signature per key), so a receiver can switch
-- without losing a delivery.
--
-- Who set the callback URL decides whose key signs it (processing_jobs.callback_signer): a user's
-- own request is signed with their secret only (a callback_url without one is refused when the
-- request is made); a request the operator made (the service role, the CLI, SQL as the project
-- role) with DHGQ_WEBHOOK_SECRET when the worker has one, else with the owner's secret. So the
-- operator's secret signs only for receivers the operator chose, and no user key signs for
-- another user.
--
-- The same pattern as cancel and retry (20261130000200_user_access): users call a SECURITY
-- INVOKER function, row-level security decides, and a SECURITY DEFINER trigger that no API role
-- can execute does the privileged part. The new secret travels back to the caller through a
-- transaction-local setting, cleared before the function returns.

-- 1. Keys ---------------------------------------------------------------------------------------

CREATE TABLE dhgq.webhook_secrets (
    user_id uuid PRIMARY KEY REFERENCES auth.users(id) ON DELETE CASCADE,
    secret text NOT NULL,
    previous_secret text,
    previous_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dhgq.webhook_secrets IS
    'Each user''s webhook signing secret (and the previous one, which signs too until previous_until)';
REVOKE ALL ON TABLE dhgq.webhook_secrets FROM PUBLIC, anon, authenticated, service_role;

CREATE TABLE public.webhook_signing_keys (
    user_id uuid PRIMARY KEY DEFAULT auth.uid() REFERENCES auth.users(id) ON DELETE CASCADE,
    fingerprint text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz NOT NULL DEFAULT now(),
    previous_valid_until timestamptz
);
COMMENT ON TABLE public.webhook_signing_keys IS
    'Your webhook signing key: its fingerprint (first 16 hex digits of the secret''s sha256) and dates, '
    'never the secret itself (dhgq_rotate_webhook_secret_v1 returns that once)';
ALTER TABLE public.webhook_signing_keys ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.webhook_signing_keys FROM PUBLIC, anon, authenticated;
GRANT SELECT, INSERT (user_id), UPDATE (rotated_at) ON public.webhook_signing_keys TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.webhook_signing_keys TO service_role;
CREATE POLICY "Users read their own signing key" ON public.webhook_signing_keys
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY "Users make their own signing key" ON public.webhook_signing_keys
    FOR INSERT TO authenticated WITH CHECK (user_id = (SELECT auth.uid()));
CREATE POLICY "Users rotate their own signing key" ON public.webhook_signing_keys
    FOR UPDATE TO authenticated USING (user_id = (SELECT auth.uid())) WITH CHECK (user_id = (SELECT auth.uid()));

-- A row written (made or rotated): a new secret, kept in dhgq, handed to this transaction only.
CREATE FUNCTION dhgq.webhook_signing_keys_issue_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_secret text := 'whsec_' || encode(decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
                                               'hex'), 'base64');
    v_previous_until timestamptz;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.user_id IS DISTINCT FROM OLD.user_id THEN
        RAISE EXCEPTION 'a signing key belongs to its user for good' USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO dhgq.webhook_secrets AS s (user_id, secret) VALUES (NEW.user_id, v_secret)
    ON CONFLICT (user_id) DO UPDATE
        SET previous_secret = s.secret, previous_until = now() + interval '24 hours',
            secret = EXCLUDED.secret, rotated_at = now()
    RETURNING s.previous_until INTO v_previous_until;
    NEW.fingerprint := left(encode(sha256(convert_to(v_secret, 'UTF8')), 'hex'), 16);
    NEW.created_at := CASE WHEN TG_OP = 'INSERT' THEN now() ELSE OLD.created_at END;
    NEW.rotated_at := now();
    NEW.previous_valid_until := v_previous_until;
    PERFORM set_config('dhgq.issued_webhook_secret', v_secret, true);
    RETURN NEW;
END;
$$;

CREATE TRIGGER webhook_signing_keys_issue
    BEFORE INSERT OR UPDATE ON public.webhook_signing_keys
    FOR EACH ROW EXECUTE FUNCTION dhgq.webhook_signing_keys_issue_v1();

-- What users call (POST /rest/v1/rpc/dhgq_rotate_webhook_secret_v1): their new secret, shown once.
CREATE FUNCTION public.dhgq_rotate_webhook_secret_v1() RETURNS text
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_user uuid := (SELECT auth.uid());
    v_secret text;
BEGIN
    IF v_user IS NULL THEN
        RAISE EXCEPTION 'sign in to get a webhook secret of your own' USING ERRCODE = 'PT401';
    END IF;
    UPDATE public.webhook_signing_keys SET rotated_at = now() WHERE user_id = v_user;
    IF NOT FOUND THEN
        INSERT INTO public.webhook_signing_keys (user_id) VALUES (v_user);
    END IF;
    v_secret := current_setting('dhgq.issued_webhook_secret', true);
    PERFORM set_config('dhgq.issued_webhook_secret', '', true);
    RETURN v_secret;
END;
$$;
COMMENT ON FUNCTION public.dhgq_rotate_webhook_secret_v1() IS
    'Make or replace your webhook signing secret and return it (shown once; the previous one signs for 24 hours)';
REVOKE ALL ON FUNCTION public.dhgq_rotate_webhook_secret_v1() FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.dhgq_rotate_webhook_secret_v1() TO authenticated, service_role;

-- 2. Who signs, and how deliveries are doing, on the request ------------------------------------

ALTER TABLE public.processing_jobs
    ADD COLUMN callback_signer text CHECK (callback_signer IN ('user', 'operator')),
    ADD COLUMN callback_status text
        CHECK (callback_status IN ('queued', 'delivering', 'retrying', 'delivered', 'failed')),
    ADD COLUMN callback_outcome text,
    ADD COLUMN callback_attempts integer,
    ADD COLUMN callback_next_attempt_at timestamptz,
    ADD COLUMN callback_delivered_at timestamptz,
    ADD COLUMN callback_error text,
    ADD COLUMN redeliver_requested boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN public.processing_jobs.callback_signer IS
    'Whose key signs the webhook: the user''s own (they set callback_url) or the operator''s';
COMMENT ON COLUMN public.processing_jobs.callback_status IS
    'The latest webhook delivery (for callback_outcome): queued, delivering, retrying (see '
    'callback_next_attempt_at), delivered or failed (callback_error says why; dhgq_redeliver_webhook_v1 sends it again)';
GRANT UPDATE (redeliver_requested) ON public.processing_jobs TO authenticated;
-- Requests made before: their receivers know the operator's secret, which keeps signing for them.
UPDATE public.processing_jobs SET callback_signer = 'operator' WHERE callback_url IS NOT NULL;

-- The callback URL's checks, as before, and who set it.
CREATE OR REPLACE FUNCTION dhgq.processing_jobs_check_callback_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_url text := NEW.callback_url;
    v_authority text;
    v_port text;
    v_role text := coalesce(nullif(current_setting('role', true), ''), 'none');
    v_hint text := 'callback_url is an https:// (or http://) URL such as ''https://example.com/hooks/dhgq''';
BEGIN
    IF v_url IS NULL THEN
        NEW.callback_signer := NULL;
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
    IF v_role = 'none' OR pg_has_role(v_role, 'service_role', 'MEMBER') THEN
        NEW.callback_signer := 'operator';
    ELSE
        NEW.callback_signer := 'user';
        IF NOT EXISTS (SELECT 1 FROM public.webhook_signing_keys k WHERE k.user_id = NEW.user_id) THEN
            RAISE EXCEPTION 'callback_url needs a webhook signing secret of your own, and you have none yet'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'call dhgq_rotate_webhook_secret_v1() once and keep the secret it returns: your '
                             'receiver verifies each delivery with it (Standard Webhooks)';
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

ALTER TABLE dhgq.webhook_deliveries
    ADD COLUMN signer text NOT NULL DEFAULT 'operator' CHECK (signer IN ('user', 'operator')),
    ADD COLUMN next_attempt_at timestamptz;

-- As in 20261130000400_webhooks, with the signer recorded.
CREATE OR REPLACE FUNCTION dhgq.webhook_enqueue_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    INSERT INTO dhgq.webhook_deliveries (request_id, outcome, url, signer, event)
    VALUES (NEW.id, NEW.status, NEW.callback_url, coalesce(NEW.callback_signer, 'operator'), jsonb_build_object(
        'source_id', NEW.source_id,
        'status', NEW.status,
        'error', NEW.error,
        'result', NEW.result,
        'completed_at', to_char(NEW.completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
    ON CONFLICT (request_id, outcome) DO NOTHING;
    IF FOUND THEN
        PERFORM dhgq.webhook_defer_v1(NEW.id, NEW.status);
    END IF;  -- else this outcome was announced already
    RETURN NULL;
END;
$$;

-- Queue a delivery's job. A job already waiting under the same queueing lock is left to deliver.
CREATE FUNCTION dhgq.webhook_defer_v1(p_request_id uuid, p_outcome text) RETURNS bigint
    LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_job_id bigint;
BEGIN
    BEGIN
        SELECT (dhgq.procrastinate_defer_jobs_v1(ARRAY[ROW(
            'webhooks', 'dhgq.webhook', 0,
            'webhook:' || p_request_id, 'webhook:' || p_request_id || ':' || p_outcome,
            jsonb_build_object('request_id', p_request_id, 'outcome', p_outcome),
            NULL
        )::dhgq.procrastinate_job_to_defer_v1]))[1] INTO v_job_id;
    EXCEPTION WHEN unique_violation THEN
        v_job_id := NULL;
    END;
    IF v_job_id IS NOT NULL THEN
        UPDATE dhgq.webhook_deliveries SET job_id = v_job_id WHERE request_id = p_request_id AND outcome = p_outcome;
    END IF;
    RETURN v_job_id;
END;
$$;

-- Each change of a delivery shows on its request, unless a later outcome's delivery is there already.
CREATE FUNCTION dhgq.webhook_deliveries_show_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM dhgq.webhook_deliveries d
                WHERE d.request_id = NEW.request_id AND d.created_at > NEW.created_at) THEN
        RETURN NULL;
    END IF;
    UPDATE public.processing_jobs
       SET callback_status = NEW.status, callback_outcome = NEW.outcome, callback_attempts = NEW.attempts,
           callback_next_attempt_at = NEW.next_attempt_at, callback_delivered_at = NEW.delivered_at,
           callback_error = NEW.last_error
     WHERE id = NEW.request_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER webhook_deliveries_show
    AFTER INSERT OR UPDATE ON dhgq.webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION dhgq.webhook_deliveries_show_v1();

-- 3. Redelivery -----------------------------------------------------------------------------------

-- Send a finished delivery again (delivered or failed): the same webhook-id, a new timestamp and
-- signature, a fresh set of attempts. p_outcome NULL: the request's latest. Returns the outcome.
CREATE FUNCTION dhgq.webhook_redeliver_v1(p_request_id uuid, p_outcome text DEFAULT NULL) RETURNS text
    LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_delivery dhgq.webhook_deliveries;
BEGIN
    SELECT * INTO v_delivery FROM dhgq.webhook_deliveries
     WHERE request_id = p_request_id AND (p_outcome IS NULL OR outcome = p_outcome)
     ORDER BY created_at DESC LIMIT 1
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'request % has no webhook delivery%', p_request_id,
            coalesce(' for outcome ' || p_outcome, '') USING ERRCODE = 'PT404';
    END IF;
    IF v_delivery.status NOT IN ('delivered', 'failed') THEN
        RAISE EXCEPTION 'the % delivery of request % is % already', v_delivery.outcome, p_request_id,
            v_delivery.status USING ERRCODE = 'PT409';
    END IF;
    UPDATE dhgq.webhook_deliveries
       SET status = 'queued', attempts = 0, response_status = NULL, last_error = NULL, next_attempt_at = NULL,
           delivered_at = NULL
     WHERE request_id = p_request_id AND outcome = v_delivery.outcome;
    PERFORM dhgq.webhook_defer_v1(p_request_id, v_delivery.outcome);
    RETURN v_delivery.outcome;
END;
$$;

-- A user's redelivery, asked by setting a flag on their own request (row-level security checks it).
CREATE FUNCTION dhgq.processing_jobs_redeliver_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    PERFORM dhgq.webhook_redeliver_v1(NEW.id);
    UPDATE public.processing_jobs SET redeliver_requested = false WHERE id = NEW.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER processing_jobs_redeliver
    AFTER UPDATE OF redeliver_requested ON public.processing_jobs
    FOR EACH ROW WHEN (NEW.redeliver_requested) EXECUTE FUNCTION dhgq.processing_jobs_redeliver_v1();

CREATE FUNCTION public.dhgq_redeliver_webhook_v1(request_id uuid) RETURNS public.processing_jobs
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_request public.processing_jobs;
BEGIN
    SELECT * INTO v_request FROM public.processing_jobs WHERE id = request_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no request % of yours', request_id USING ERRCODE = 'PT404';  -- PostgREST: HTTP 404
    END IF;
    IF v_request.callback_status IS NULL THEN
        RAISE EXCEPTION 'request % has no webhook delivery to send again', request_id USING ERRCODE = 'PT409';
    END IF;
    IF v_request.callback_status NOT IN ('delivered', 'failed') THEN
        RAISE EXCEPTION 'the webhook of request % is % already', request_id, v_request.callback_status
            USING ERRCODE = 'PT409';  -- PostgREST: HTTP 409
    END IF;
    UPDATE public.processing_jobs SET redeliver_requested = true WHERE id = request_id;
    SELECT * INTO v_request FROM public.processing_jobs WHERE id = request_id;
    RETURN v_request;
END;
$$;
COMMENT ON FUNCTION public.dhgq_redeliver_webhook_v1(uuid) IS
    'Send your request''s latest webhook again (after it was delivered or finally failed)';
REVOKE ALL ON FUNCTION public.dhgq_redeliver_webhook_v1(uuid) FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.dhgq_redeliver_webhook_v1(uuid) TO authenticated, service_role;

-- As for everything in dhgq: nobody but the owner runs or reads it.
REVOKE ALL ON FUNCTION dhgq.webhook_signing_keys_issue_v1(), dhgq.webhook_defer_v1(uuid, text),
    dhgq.webhook_deliveries_show_v1(), dhgq.webhook_redeliver_v1(uuid, text), dhgq.processing_jobs_redeliver_v1()
    FROM PUBLIC, anon, authenticated, service_role;
