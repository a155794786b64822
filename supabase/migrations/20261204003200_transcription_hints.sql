-- A request's hints for Whisper: `initial_prompt` (text that conditions the decoder: spelling, style,
-- context; Whisper reads its last 224 tokens) and `vocabulary` (names and jargon to favour:
-- faster-whisper's hotwords, and a glossary after the prompt for openai-whisper on Modal). Checked
-- here like the other options; both are part of the transcription's reuse key.
--
-- The checks of the options dhgq had are kept as they are: the function that makes them is renamed
-- request_options_base_v1 and the new request_options_v1 checks the hints, then hands it the rest,
-- so every caller (requests, `dhgq process`, reruns, Drive watches) checks the hints too, and a
-- migration that changed the other options before this one keeps its change.

ALTER FUNCTION dhgq.request_options_v1(jsonb) RENAME TO request_options_base_v1;

CREATE FUNCTION dhgq.request_options_v1(p_options jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_prompt jsonb;
    v_vocabulary jsonb;
    v_term jsonb;
    v_rest jsonb;
    v_hints jsonb := '{}'::jsonb;
BEGIN
    IF p_options IS NULL OR jsonb_typeof(p_options) <> 'object' THEN
        RETURN dhgq.request_options_base_v1(p_options);  -- which says what is wrong, or gives '{}'
    END IF;
    v_prompt := p_options -> 'initial_prompt';
    v_vocabulary := p_options -> 'vocabulary';
    IF v_prompt IS NOT NULL AND v_prompt <> 'null'::jsonb THEN
        IF jsonb_typeof(v_prompt) <> 'string' OR length(btrim(v_prompt #>> '{}')) = 0
           OR length(v_prompt #>> '{}') > 1000 THEN
            RAISE EXCEPTION 'options.initial_prompt must be a text of 1 to 1000 characters'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (v_prompt #>> '{}') ~ '[\u0001-\u0008\u000b-\u001f\u007f]' THEN
            RAISE EXCEPTION 'options.initial_prompt contains a control character' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_hints := v_hints || jsonb_build_object('initial_prompt', v_prompt);
    END IF;
    IF v_vocabulary IS NOT NULL AND v_vocabulary <> 'null'::jsonb THEN
        IF jsonb_typeof(v_vocabulary) <> 'array' OR jsonb_array_length(v_vocabulary) NOT BETWEEN 1 AND 100 THEN
            RAISE EXCEPTION 'options.vocabulary must be a list of 1 to 100 terms, such as ["Procrastinate", "pgvector"]'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR v_term IN SELECT value FROM jsonb_array_elements(v_vocabulary) LOOP
            IF jsonb_typeof(v_term) <> 'string' OR length(btrim(v_term #>> '{}')) = 0 OR length(v_term #>> '{}') > 100
               OR (v_term #>> '{}') ~ '[\u0001-\u001f\u007f]' THEN
                RAISE EXCEPTION 'options.vocabulary: each term is a text of 1 to 100 characters on one line'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        END LOOP;
        v_hints := v_hints || jsonb_build_object('vocabulary', v_vocabulary);
    END IF;
    BEGIN
        v_rest := dhgq.request_options_base_v1(p_options - 'initial_prompt' - 'vocabulary');
    EXCEPTION WHEN invalid_parameter_value THEN
        IF SQLERRM LIKE 'unknown option %; allowed: %' THEN
            RAISE EXCEPTION '%, initial_prompt, vocabulary', SQLERRM USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RAISE;
    END;
    RETURN v_rest || v_hints;
END;
$$;
COMMENT ON FUNCTION dhgq.request_options_v1(jsonb) IS
    'A request''s options, checked (model, language, speaker counts, ..., initial_prompt, vocabulary); the options to store';

REVOKE ALL ON FUNCTION dhgq.request_options_v1(jsonb), dhgq.request_options_base_v1(jsonb)
    FROM PUBLIC, anon, authenticated, service_role;
