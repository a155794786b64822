-- A user's file_path is checked as the key dhgq will fetch, because it is that key: the worker
-- uses it exactly as written (dhgq/fetch/keys.py), never percent-decoding it. Until now the key
-- was checked as written and decoded later, so `<uid>/%2e%2e/<other>/x.mp4` passed here and
-- reached another user's object (the worker reads with the service key).
--
-- Refused, besides what 20261130000200_user_access refused: '%' (an escape to whoever decodes
-- it), '?' and '#' (a query or fragment to whoever parses a URL), and every control character,
-- Unicode format character (zero-width and direction controls such as U+202E, which show a key
-- other than the one stored) and line or paragraph separator: Unicode 15.1's Cc, Cf, Zl and Zp,
-- the ranges of dhgq.fetch.keys.REFUSED_RANGES (the tests check the two agree).

CREATE OR REPLACE FUNCTION dhgq.user_object_uri_v1(p_user_id uuid, p_key text) RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_bucket text := (SELECT value #>> '{}' FROM dhgq.config WHERE key = 'storage_bucket');
    v_hint text;
    v_segment text;
    v_char text;
BEGIN
    v_hint := format('file_path is the key of an object in storage bucket %s under your own folder, like %s, '
                     'written as it is stored (not percent-encoded)',
                     quote_literal(v_bucket), quote_literal(p_user_id || '/talk.mp4'));
    IF p_key IS NULL OR p_key = '' THEN
        RAISE EXCEPTION 'file_path is empty' USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    IF length(p_key) > 1024 THEN
        RAISE EXCEPTION 'file_path is longer than 1024 characters' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_char := substring(p_key FROM '[\u0001-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891'
                                  '\u08e2\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff'
                                  '\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3'
                                  '\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]');
    IF v_char IS NOT NULL THEN
        RAISE EXCEPTION 'file_path contains a control character or an invisible formatting character (U+%)',
            upper(lpad(to_hex(ascii(v_char)), 4, '0'))
            USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    IF position('\' IN p_key) > 0 THEN
        RAISE EXCEPTION 'file_path contains a backslash' USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    v_char := substring(p_key FROM '[%?#]');
    IF v_char IS NOT NULL THEN
        RAISE EXCEPTION 'file_path % contains %: a key is used exactly as written, never decoded as a URL',
            quote_literal(left(p_key, 200)),
            CASE v_char WHEN '%' THEN 'a percent-escape (%)' ELSE quote_literal(v_char) END
            USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    IF p_key LIKE '/%' OR p_key ~ '^[A-Za-z][A-Za-z0-9+.-]*:' THEN
        RAISE EXCEPTION 'file_path % is an absolute path or a URL, not a storage key', quote_literal(left(p_key, 200))
            USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    FOREACH v_segment IN ARRAY string_to_array(p_key, '/') LOOP
        IF v_segment IN ('', '.', '..') THEN
            RAISE EXCEPTION 'file_path % has an empty, "." or ".." segment', quote_literal(left(p_key, 200))
                USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
        END IF;
    END LOOP;
    IF p_user_id IS NULL OR split_part(p_key, '/', 1) <> p_user_id::text OR position('/' IN p_key) = 0 THEN
        RAISE EXCEPTION 'file_path % is not in your own folder %', quote_literal(left(p_key, 200)),
            quote_literal(coalesce(p_user_id::text, '(not signed in)') || '/')
            USING ERRCODE = 'insufficient_privilege', HINT = v_hint;
    END IF;
    RETURN 'storage://' || v_bucket || '/' || p_key;
END;
$$;
