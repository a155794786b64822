"""A local stand-in for a Supabase project's API gateway: ``/storage/v1`` and ``/rest/v1`` on one URL.

Why: supabase-py (``create_client(url, key)``) talks to one base URL and adds ``/rest/v1`` and
``/storage/v1`` itself, as on ``https://<ref>.supabase.co``. No PostgREST server can be installed here,
so this module serves the Data API by running each request the way PostgREST runs it, against the
real database: verify the JWT (HS256, the project's secret), log in as ``authenticator``, open a
transaction, ``SET LOCAL ROLE`` to the token's role and put the claims in ``request.jwt.claims``, run
one statement, commit, answer JSON. Row-level security, grants and triggers are therefore the
database's own, which is what the tests are about. ``/storage/v1/...`` is forwarded, prefix stripped,
to the real Storage server (``tests/support/storage_server.py``), and its answer returned unchanged.

A user's client with supabase-py 2.34, without GoTrue (there is no auth server here): give the user's
access token as the ``Authorization`` header in the client options. Both the PostgREST and the Storage
client are built from those headers, so both act as the user; ``apikey`` stays the anon key::

    from supabase import ClientOptions, create_client

    client = create_client(gateway_url, anon_key, options=ClientOptions(headers={"Authorization": f"Bearer {token}"}))
    client.table("processing_jobs").insert({"user_id": user_id, "file_path": f"{user_id}/talk.mp4"}).execute()
    client.storage.from_("media").upload(f"{user_id}/talk.mp4", data, {"content-type": "video/mp4"})

(``client.postgrest.auth(token)`` switches only the PostgREST client; ``client.storage`` would stay anon.
With a real project, ``client.auth.sign_in_with_password(...)`` does the same switch for both.)

The Data API supported (what supabase-py's postgrest client sends), in schema ``public`` only:

- ``GET /rest/v1/<table>``: ``select=*`` or ``a,b`` (``alias:col``, ``col::type``; no embedding), filters
  ``<col>=[not.]eq|neq|gt|gte|lt|lte|like|ilike|in.(a,b)|is.null|true|false``, ``order=<col>.asc|desc
  [.nullsfirst|nullslast]``, ``limit``, ``offset``; ``Accept: application/vnd.pgrst.object+json`` for exactly
  one row (406 ``PGRST116`` otherwise), ``nulls=stripped``;
- ``POST /rest/v1/<table>`` with a JSON object or array (``columns=``; ``Prefer: return=representation|
  minimal``; upserts, ``resolution=merge-duplicates|ignore-duplicates`` on ``on_conflict=`` or the primary
  key), ``PATCH`` and ``DELETE`` with filters, ``return=representation`` likewise (201 / 200, or 201 / 204
  without a body); ``single()`` on a write that changes other than one row is 406 and rolled back;
- ``POST /rest/v1/rpc/<function>`` with a JSON object of named arguments: a set of rows comes back as a JSON
  array, a composite as an object, a scalar as its JSON value, ``void`` as 204; filters, ``select`` and
  ``order`` apply to a function that returns rows.

Errors have PostgREST's shape ``{"code", "message", "details", "hint"}`` and its HTTP statuses (its
``Error.hs`` table: 42501 is 401 for anon and 403 otherwise, 23505 and 23503 409, P0001 400, ``PTxyz``
status xyz, other P0* (P0002 no_data_found among them) and 55* 500, 42P01 and 42883 404, other 400).
A bad or expired JWT is 401 ``PGRST301`` (no key at all: 401, as Supabase's gateway answers). Reads run
in a READ ONLY transaction, as PostgREST's do; the role's own ``statement_timeout`` applies. Not
supported (answered 400 or 405, never silently wrong): ``count``, embedding, ``or=``/``and=``, JSON paths
in columns, limit on PATCH/DELETE, ``GET /rpc``, ``missing=default``, schemas other than ``public``
(``Accept-Profile``/``Content-Profile``: 406 ``PGRST106``).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import jwt
import psycopg
from psycopg import sql

API_ROLES = ("anon", "authenticated", "service_role")
ANON_ROLE = "anon"
SCHEMA = "public"
EXTRA_SEARCH_PATH = "public, extensions"  # Supabase's db-extra-search-path
OBJECT_MEDIA_TYPE = "application/vnd.pgrst.object+json"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "accept-encoding",
    "content-encoding",
}
OPERATORS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "like": "LIKE", "ilike": "ILIKE"}
IS_VALUES = {"null": "NULL", "true": "TRUE", "false": "FALSE", "unknown": "UNKNOWN"}
IDENTIFIER = re.compile(r"^[^\s\"(),.:*]+$")  # a column name as PostgREST reads one unquoted


@dataclass
class ApiError(Exception):
    """An answer in PostgREST's error shape."""

    status: int
    code: str | None
    message: str
    details: str | None = None
    hint: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return json.dumps(
            {"code": self.code, "details": self.details, "hint": self.hint, "message": self.message}
        ).encode()


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes | None = None
    headers: dict[str, str] | list[tuple[str, str]] = field(default_factory=dict)


def status_of(sqlstate: str | None, authed: bool) -> int:
    """PostgREST's HTTP status for a database error (``Error.hs``: ``pgErrorStatus``)."""
    code = sqlstate or ""
    exact = {"23503": 409, "23505": 409, "25006": 405, "53400": 500, "57P01": 503, "P0001": 400}
    exact |= {"42883": 404, "42P01": 404, "42P17": 500, "42501": 403 if authed else 401}
    if code in exact:
        return exact[code]
    if code.startswith("PT") and code[2:].isdigit():
        return int(code[2:])
    prefixes = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500, "38": 500, "39": 500}
    prefixes |= {"3B": 500, "40": 500, "53": 503, "54": 500, "55": 500, "57": 500, "58": 500, "F0": 500, "HV": 500}
    prefixes |= {"P0": 500, "XX": 500}
    if code[:2] in prefixes:
        return prefixes[code[:2]]
    return 400 if code else 500


def database_error(exc: psycopg.Error, authed: bool) -> ApiError:
    diag = exc.diag
    code = exc.sqlstate
    message = diag.message_primary or str(exc).strip()
    if code == "PGRST":  # RAISE SQLSTATE 'PGRST' with the answer as JSON in message and detail
        try:
            body, extra = json.loads(message), json.loads(diag.message_detail or "{}")
            return ApiError(
                int(extra["status"]),
                body.get("code"),
                body.get("message", ""),
                body.get("details"),
                body.get("hint"),
                {str(k): str(v) for k, v in extra.get("headers", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return ApiError(500, "PGRST121", "Could not parse JSON in the RAISE SQLSTATE 'PGRST' error", message)
    error = ApiError(status_of(code, authed), code, message, diag.message_detail, diag.message_hint)
    if error.status == 401:
        error.headers["WWW-Authenticate"] = "Bearer"
    return error


def json_response(status: int, text: str | None) -> Response:
    if text is None:
        return Response(status, b"", {})
    return Response(status, text.encode(), {"Content-Type": JSON_CONTENT_TYPE})


# --- requests -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claims:
    role: str
    payload: dict[str, Any]

    @property
    def authed(self) -> bool:
        return self.role != ANON_ROLE


def authenticate(headers: dict[str, str], secret: str) -> Claims:
    """The JWT's claims, as PostgREST checks them: from ``Authorization: Bearer``, else the ``apikey``."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "PGRST301", "Invalid Authorization header: expected Bearer <JWT>")
        token = token.strip()
    else:
        token = headers.get("apikey", "")
    if not token:
        raise ApiError(
            401, None, "No API key found in request", hint="No `apikey` request header or url param was found."
        )
    try:
        payload = jwt.decode(token, secret, algorithms=["HS256"], options={"verify_aud": False})
    except jwt.ExpiredSignatureError:
        raise ApiError(401, "PGRST301", "JWT expired", headers={"WWW-Authenticate": "Bearer"}) from None
    except jwt.InvalidSignatureError:
        raise ApiError(
            401, "PGRST301", "JWSError JWSInvalidSignature", headers={"WWW-Authenticate": "Bearer"}
        ) from None
    except jwt.InvalidTokenError as exc:
        raise ApiError(401, "PGRST301", f"JWT is invalid: {exc}", headers={"WWW-Authenticate": "Bearer"}) from None
    role = payload.get("role") or ANON_ROLE
    if role not in API_ROLES:
        raise ApiError(403, "42501", f'permission denied to set role "{role}"')
    return Claims(str(role), payload)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """``text`` split at ``sep`` outside double quotes and parentheses (PostgREST's list syntax)."""
    parts, current, depth, quoted, escaped = [], [], 0, False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == "(" and not quoted:
            depth += 1
            current.append(char)
        elif char == ")" and not quoted:
            depth -= 1
            current.append(char)
        elif char == sep and not quoted and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def unquote_name(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return name


def column(name: str, what: str = "column") -> sql.Identifier:
    """A column named in the query string: quoted names as PostgREST takes them, plain ones checked."""
    raw = name.strip()
    if raw.startswith('"'):
        return sql.Identifier(unquote_name(raw))
    if not IDENTIFIER.match(raw):
        raise ApiError(
            400, "PGRST100", f"unsupported {what} {raw!r}", "the test gateway takes plain column names (no JSON paths)"
        )
    return sql.Identifier(raw)


def select_list(select: str | None) -> sql.Composable:
    """``select=`` as a SELECT list: ``*``, ``col``, ``alias:col``, ``col::type``; embedding is refused."""
    if select is None or select.strip() in ("", "*"):
        return sql.SQL("*")
    items: list[sql.Composable] = []
    for item in split_top_level(select):
        item = item.strip()
        if "(" in item:
            raise ApiError(400, "PGRST100", f"embedding ({item}) is not supported by the test gateway")
        if item == "*":
            items.append(sql.SQL("*"))
            continue
        alias = None
        if ":" in item.replace("::", "\0"):
            alias, item = item.replace("::", "\0").split(":", 1)
            alias, item = alias.replace("\0", "::"), item.replace("\0", "::")
        name, _, cast = item.partition("::")
        expr: sql.Composable = column(name)
        if cast:
            expr = sql.SQL("CAST({} AS {})").format(expr, sql.Identifier(cast.strip()))
        if alias:
            expr = sql.SQL("{} AS {}").format(expr, sql.Identifier(unquote_name(alias)))
        elif cast:
            expr = sql.SQL("{} AS {}").format(expr, sql.Identifier(unquote_name(name)))
        items.append(expr)
    return sql.SQL(", ").join(items)


def in_values(value: str) -> list[str | None]:
    if not (value.startswith("(") and value.endswith(")")):
        raise ApiError(400, "PGRST100", f"in. takes a list in parentheses, not {value!r}")
    inner = value[1:-1]
    if not inner:
        return []
    out: list[str | None] = []
    for item in split_top_level(inner):
        out.append(unquote_name(item) if item.strip().startswith('"') else item)
    return out


def filter_clause(name: str, value: str, params: list[Any]) -> sql.Composable:
    """One ``col=op.value`` filter, values as placeholders (PostgreSQL types them from the column)."""
    col = column(name)
    negate = value.startswith("not.")
    if negate:
        value = value[4:]
    op, dot, operand = value.partition(".")
    if not dot:
        raise ApiError(400, "PGRST100", f'"failed to parse filter ({value})" (line 1, column 1)')
    clause: sql.Composable
    if op in OPERATORS:
        if op in ("like", "ilike"):
            operand = operand.replace("*", "%")
        params.append(operand)
        clause = sql.SQL("{} {} %s").format(col, sql.SQL(OPERATORS[op]))
    elif op == "in":
        values = in_values(operand)
        if not values:
            clause = sql.SQL("false")
        else:
            params.extend(values)
            clause = sql.SQL("{} IN ({})").format(col, sql.SQL(", ").join(sql.Placeholder() * len(values)))
    elif op == "is":
        if operand.lower() not in IS_VALUES:
            raise ApiError(400, "PGRST100", f"is. takes null, true, false or unknown, not {operand!r}")
        clause = sql.SQL("{} IS {}").format(col, sql.SQL(IS_VALUES[operand.lower()]))
    else:
        raise ApiError(400, "PGRST100", f"operator {op!r} is not supported by the test gateway")
    return sql.SQL("NOT ({})").format(clause) if negate else clause


@dataclass
class Query:
    """The query string of a Data API request, read once."""

    select: str | None = None
    order: str | None = None
    limit: int | None = None
    offset: int | None = None
    columns: list[str] | None = None
    on_conflict: list[str] | None = None
    filters: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, query: str) -> Query:
        parsed = cls()
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "select":
                parsed.select = value
            elif key == "order":
                parsed.order = value
            elif key in ("limit", "offset"):
                try:
                    number = int(value)
                except ValueError:
                    raise ApiError(400, "PGRST100", f"{key} must be a whole number, not {value!r}") from None
                setattr(parsed, key, number)
            elif key in ("columns", "on_conflict"):
                setattr(parsed, key, [unquote_name(c) for c in split_top_level(value) if c.strip()])
            elif key in ("or", "and", "not.or", "not.and"):
                raise ApiError(400, "PGRST100", f"{key}=(...) filters are not supported by the test gateway")
            elif "." in key and not key.startswith('"'):
                raise ApiError(400, "PGRST100", f"{key}: options on embedded resources are not supported")
            else:
                parsed.filters.append((key, value))
        return parsed

    def where(self, params: list[Any]) -> sql.Composable:
        if not self.filters:
            return sql.SQL("")
        clauses = [filter_clause(name, value, params) for name, value in self.filters]
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses)

    def order_by(self) -> sql.Composable:
        if not self.order:
            return sql.SQL("")
        terms = []
        for term in split_top_level(self.order):
            parts = term.strip().split(".")
            name, modifiers = parts[0], parts[1:]
            pieces: list[sql.Composable] = [column(name)]
            for modifier in modifiers:
                words = {"asc": "ASC", "desc": "DESC", "nullsfirst": "NULLS FIRST", "nullslast": "NULLS LAST"}
                if modifier not in words:
                    raise ApiError(400, "PGRST100", f"cannot order by {term!r}")
                pieces.append(sql.SQL(words[modifier]))
            terms.append(sql.SQL(" ").join(pieces))
        return sql.SQL(" ORDER BY ") + sql.SQL(", ").join(terms)

    def page(self) -> sql.Composable:
        parts: list[sql.Composable] = []
        if self.limit is not None:
            parts.append(sql.SQL(" LIMIT {}").format(sql.Literal(self.limit)))
        if self.offset is not None:
            parts.append(sql.SQL(" OFFSET {}").format(sql.Literal(self.offset)))
        return sql.Composed(parts)


def preferences(headers: dict[str, str]) -> dict[str, str]:
    prefs: dict[str, str] = {}
    for item in headers.get("prefer", "").split(","):
        key, _, value = item.strip().partition("=")
        if key:
            prefs[key] = value
    if "count" in prefs:
        raise ApiError(400, "PGRST100", "Prefer: count=... is not supported by the test gateway")
    if prefs.get("missing") == "default":
        raise ApiError(400, "PGRST100", "Prefer: missing=default is not supported by the test gateway")
    return prefs


def read_json(body: bytes) -> Any:
    try:
        return json.loads(body or b"{}")
    except ValueError as exc:
        raise ApiError(400, "PGRST102", "Empty or invalid json", str(exc)) from None


# --- the Data API ----------------------------------------------------------------------------------------


@dataclass
class RestRequest:
    method: str
    path: str  # after /rest/v1
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes


Statement = tuple[sql.Composed, list[Any]]


def wants_object(headers: dict[str, str]) -> bool:
    """``Accept: application/vnd.pgrst.object+json`` (supabase-py's ``single()``): exactly one row, as an object."""
    return headers.get("accept", "").split(";")[0].strip() == OBJECT_MEDIA_TYPE


def aggregate(source: sql.Composable, query: Query, params: list[Any], strip_nulls: bool) -> sql.Composed:
    """PostgREST's shape of a read: the rows of ``source`` as one JSON array, and how many there are."""
    row = sql.SQL("json_strip_nulls(to_json(_pgrst_t))") if strip_nulls else sql.SQL("_pgrst_t")
    inner = sql.SQL("SELECT {select} FROM {source}{where}{order}{page}").format(
        select=select_list(query.select),
        source=source,
        where=query.where(params),
        order=query.order_by(),
        page=query.page(),
    )
    return sql.SQL("SELECT coalesce(json_agg({row}), '[]')::text, count(*) FROM ({inner}) _pgrst_t").format(
        row=row, inner=inner
    )


def fetch_rows(conn: psycopg.Connection, statement: sql.Composed, params: list[Any]) -> tuple[str, int]:
    row = conn.execute(statement, params).fetchone()
    return (str(row[0]), int(row[1])) if row else ("[]", 0)


def rows_answer(conn: psycopg.Connection, status: int, text: str, count: int, single: bool) -> Response:
    """The rows as PostgREST answers them: an array, or for ``single`` the one row (406, rolled back, else)."""
    if not single:
        return json_response(status, text)
    if count != 1:
        conn.rollback()
        raise ApiError(
            406, "PGRST116", "Cannot coerce the result to a single JSON object", f"The result contains {count} rows"
        )
    return json_response(status, json.dumps(json.loads(text)[0]))


class DataApi:
    """Runs Data API requests against the database, one transaction each, as PostgREST does."""

    def __init__(self, authenticator_url: str, jwt_secret: str) -> None:
        self.authenticator_url = authenticator_url
        self.jwt_secret = jwt_secret

    def handle(self, request: RestRequest) -> Response:
        claims: Claims | None = None
        try:
            claims = authenticate(request.headers, self.jwt_secret)
            self.check_schema(request)
            return self.run(request, claims)
        except ApiError as exc:
            return Response(exc.status, exc.body(), {"Content-Type": JSON_CONTENT_TYPE, **exc.headers})
        except psycopg.Error as exc:
            error = database_error(exc, claims.authed if claims else False)
            return Response(error.status, error.body(), {"Content-Type": JSON_CONTENT_TYPE, **error.headers})

    @staticmethod
    def check_schema(request: RestRequest) -> None:
        header = "accept-profile" if request.method in ("GET", "HEAD") else "content-profile"
        schema = request.headers.get(header)
        if schema is not None and schema != SCHEMA:
            raise ApiError(
                406, "PGRST106", f"Invalid schema: {schema}", hint=f"Only the following schemas are exposed: {SCHEMA}"
            )

    @contextmanager
    def transaction(self, request: RestRequest, claims: Claims) -> Iterator[psycopg.Connection]:
        """Log in as authenticator and impersonate the token's role for one transaction, committed at the end."""
        with psycopg.connect(self.authenticator_url, application_name="dhgq-test-gateway") as conn:
            if request.method in ("GET", "HEAD"):
                conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED READ ONLY")
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(claims.role)))
            conn.execute(
                "SELECT set_config('search_path', %s, true), set_config('request.jwt.claims', %s, true),"
                " set_config('request.method', %s, true), set_config('request.path', %s, true),"
                " set_config('request.headers', %s, true)",
                (
                    EXTRA_SEARCH_PATH,
                    json.dumps(claims.payload),
                    request.method,
                    request.path,
                    json.dumps(request.headers),
                ),
            )
            # PostgREST applies the impersonated role's own settings (ALTER ROLE anon SET statement_timeout)
            row = conn.execute(
                "SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setrole = %s::regrole AND s.setdatabase = 0",
                (claims.role,),
            ).fetchone()
            for setting in row[0] if row and row[0] else []:
                key, _, value = setting.partition("=")
                if key == "statement_timeout":
                    conn.execute("SELECT set_config('statement_timeout', %s, true)", (value,))
            yield conn

    def run(self, request: RestRequest, claims: Claims) -> Response:
        parts = [unquote(p) for p in request.path.strip("/").split("/") if p]
        query = Query.parse(request.query)
        if len(parts) == 2 and parts[0] == "rpc":
            if request.method != "POST":
                raise ApiError(405, "PGRST101", "the test gateway calls functions with POST only")
            return self.rpc(request, claims, parts[1], query)
        if len(parts) != 1:
            raise ApiError(404, "PGRST125", f"Invalid path specified in request URL: {request.path}")
        table = sql.Identifier(SCHEMA, parts[0])
        prefs = preferences(request.headers)
        if request.method in ("GET", "HEAD"):
            params: list[Any] = []
            statement = aggregate(table, query, params, "nulls=stripped" in request.headers.get("accept", ""))
            with self.transaction(request, claims) as conn:
                text, count = fetch_rows(conn, statement, params)
                answer = rows_answer(conn, 200, text, count, wants_object(request.headers))
            return Response(answer.status, b"" if request.method == "HEAD" else answer.body, answer.headers)
        if request.method == "POST":
            return self.mutate(request, claims, lambda conn: insert(conn, table, request.body, query, prefs), prefs)
        if request.method == "PATCH":
            return self.mutate(request, claims, lambda conn: update(table, request.body, query), prefs)
        if request.method == "DELETE":
            return self.mutate(request, claims, lambda conn: delete(table, query), prefs)
        raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {request.method}")

    def mutate(
        self,
        request: RestRequest,
        claims: Claims,
        build: Callable[[psycopg.Connection], Statement],
        prefs: dict[str, str],
    ) -> Response:
        """A write, with ``RETURNING`` only when the rows are asked for (which then need SELECT rights, as in
        PostgREST); a single-object request that changes other than one row is rolled back (406)."""
        single = wants_object(request.headers)
        status = 201 if request.method == "POST" else 200
        with self.transaction(request, claims) as conn:
            write, params = build(conn)
            if prefs.get("return") != "representation":
                changed = conn.execute(write, params).rowcount
                if single and changed != 1:
                    rows_answer(conn, status, "[]", changed, single)
                return Response(201 if request.method == "POST" else 204, b"", {})
            query = Query(select=Query.parse(request.query).select)
            returning = sql.SQL("WITH _pgrst_source AS ({} RETURNING *) ").format(write)
            strip_nulls = "nulls=stripped" in request.headers.get("accept", "")
            text, count = fetch_rows(
                conn, returning + aggregate(sql.SQL("_pgrst_source"), query, params, strip_nulls), params
            )
            return rows_answer(conn, status, text, count, single)

    def rpc(self, request: RestRequest, claims: Claims, name: str, query: Query) -> Response:
        """``POST /rpc/<name>``: the function called with named arguments, typed by ``json_to_record`` as
        PostgREST does; rows come back as an array (one object for a single composite), a scalar as itself."""
        args = read_json(request.body)
        if not isinstance(args, dict):
            raise ApiError(400, "PGRST102", "the test gateway takes a function's arguments as a JSON object")
        single = wants_object(request.headers)
        strip_nulls = "nulls=stripped" in request.headers.get("accept", "")
        with self.transaction(request, claims) as conn:
            function = find_function(conn, name, sorted(args))
            given = function.arg_names(args)
            call = sql.SQL("{}({})").format(
                sql.Identifier(SCHEMA, name),
                sql.SQL(", ").join(sql.SQL("{0} => _pgrst_args.{0}").format(sql.Identifier(a)) for a in given),
            )
            params: list[Any] = []
            args_from: sql.Composable = sql.SQL("")
            if given:
                definition = sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(a), sql.Identifier(*function.types[a])) for a in given
                )
                args_from = sql.SQL(" FROM json_to_record(%s::json) AS _pgrst_args({})").format(definition)
                params.append(json.dumps(args))
            if function.returns_void:
                conn.execute(sql.SQL("SELECT {}{}").format(call, args_from), params)
                return Response(204, b"", {})
            if not function.returns_rows:
                if query.filters or query.select or query.order:
                    raise ApiError(400, "PGRST100", "filters on a function's scalar result are not supported")
                template = (
                    "SELECT coalesce(json_agg(_pgrst_v), '[]')::text FROM (SELECT {} AS _pgrst_v{}) _pgrst_q"
                    if function.returns_set
                    else "SELECT to_json({})::text{}"
                )
                row = conn.execute(sql.SQL(template).format(call, args_from), params).fetchone()
                return json_response(200, row[0] if row and row[0] is not None else "null")
            source = sql.SQL("(SELECT _pgrst_r.*{}{} {} AS _pgrst_r) _pgrst_src").format(
                args_from, sql.SQL(", LATERAL") if given else sql.SQL(" FROM"), call
            )
            text, count = fetch_rows(conn, aggregate(source, query, params, strip_nulls), params)
            if function.returns_set or single:
                return rows_answer(conn, 200, text, count, single)
            rows = json.loads(text)
            return json_response(200, json.dumps(rows[0]) if rows else "null")


def insert(
    conn: psycopg.Connection, table: sql.Identifier, body: bytes, query: Query, prefs: dict[str, str]
) -> Statement:
    """``POST``: the body's rows through ``json_populate_recordset`` (PostgREST's own way: the table's types,
    absent keys NULL), into the columns named by ``columns=`` or by the rows' keys; upserts on conflict."""
    payload = read_json(body)
    rows = [payload] if isinstance(payload, dict) else payload
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ApiError(400, "PGRST102", "the body must be a JSON object or an array of objects")
    names = query.columns or list(dict.fromkeys(key for row in rows for key in row))
    if not names:
        if len(rows) != 1:
            raise ApiError(400, "PGRST102", "rows without columns: give at least one column")
        return sql.SQL("INSERT INTO {} DEFAULT VALUES").format(table), []
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    statement = sql.SQL(
        "INSERT INTO {table} ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::{table}, %s::json)"
    ).format(table=table, cols=cols)
    resolution = prefs.get("resolution")
    if resolution in ("merge-duplicates", "ignore-duplicates"):
        target = query.on_conflict or primary_key(conn, table)
        conflict = sql.SQL(", ").join(sql.Identifier(n) for n in target)
        if resolution == "ignore-duplicates":
            statement += sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(conflict)
        else:
            updated = [n for n in names if n not in target] or target
            updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in updated)
            statement += sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(conflict, updates)
    return statement, [json.dumps(rows)]


def primary_key(conn: psycopg.Connection, table: sql.Identifier) -> list[str]:
    """The table's primary key columns: PostgREST's conflict target when ``on_conflict=`` is not given."""
    found = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = ANY(i.indkey::int2[]) WHERE i.indrelid = %s::regclass AND i.indisprimary"
        " ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (table.as_string(conn),),
    ).fetchall()
    if not found:
        raise ApiError(400, "PGRST100", "an upsert on a table without a primary key needs on_conflict=")
    return [str(row[0]) for row in found]


def update(table: sql.Identifier, body: bytes, query: Query) -> Statement:
    """``PATCH``: the body's columns, typed through ``json_populate_record``, on the rows the filters select."""
    if query.limit is not None or query.offset is not None:
        raise ApiError(400, "PGRST100", "limit/offset on PATCH is not supported by the test gateway")
    payload = read_json(body)
    if not isinstance(payload, dict) or not payload:
        raise ApiError(400, "PGRST102", "PATCH takes a non-empty JSON object")
    params: list[Any] = [json.dumps(payload)]
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in payload)
    where = query.where(params)
    statement = sql.SQL(
        "UPDATE {table} SET ({cols}) = (SELECT {cols} FROM json_populate_record(NULL::{table}, %s::json)){where}"
    ).format(table=table, cols=cols, where=where)
    return statement, params


def delete(table: sql.Identifier, query: Query) -> Statement:
    if query.limit is not None or query.offset is not None:
        raise ApiError(400, "PGRST100", "limit/offset on DELETE is not supported by the test gateway")
    params: list[Any] = []
    where = query.where(params)
    return sql.SQL("DELETE FROM {}{}").format(table, where), params


@dataclass(frozen=True)
class Function:
    """A function of schema public as PostgREST's schema cache knows it: its named inputs and its result."""

    names: tuple[str, ...]
    types: dict[str, tuple[str, str]]  # argument -> (schema, type name), for json_to_record's column list
    returns_set: bool
    returns_rows: bool  # a composite: a table's row type, or OUT / TABLE columns
    returns_void: bool

    def arg_names(self, args: dict[str, Any]) -> list[str]:
        return [n for n in self.names if n in args]


_FUNCTIONS = """
SELECT p.proargnames, p.proargmodes, coalesce(p.proallargtypes, p.proargtypes::oid[]), p.pronargdefaults,
       p.proretset, p.prorettype = 'pg_catalog.void'::regtype,
       t.typtype = 'c' OR (p.prorettype = 'pg_catalog.record'::regtype
                           AND coalesce(p.proargmodes, '{}') && ARRAY['o', 't']::"char"[])
  FROM pg_proc p JOIN pg_type t ON t.oid = p.prorettype
 WHERE p.pronamespace = %s::regnamespace AND p.proname = %s AND p.prokind = 'f'
"""


def find_function(conn: psycopg.Connection, name: str, keys: Sequence[str]) -> Function:
    """The one function ``name`` whose named inputs take exactly these keys (PGRST202 / PGRST203 otherwise)."""
    matches: list[tuple[tuple[str, ...], dict[str, int], bool, bool, bool]] = []
    for names, modes, types, n_defaults, retset, void, rows in conn.execute(_FUNCTIONS, (SCHEMA, name)).fetchall():
        all_modes = modes or ["i"] * len(types)
        inputs = [(n, t) for n, m, t in zip(names or [""] * len(types), all_modes, types, strict=True) if m in "ibv"]
        if any(not arg_name for arg_name, _ in inputs):
            continue  # an unnamed argument cannot be given by name
        input_names = tuple(str(arg_name) for arg_name, _ in inputs)
        required = set(input_names[: len(input_names) - n_defaults])
        if set(keys) <= set(input_names) and required <= set(keys):
            matches.append((input_names, dict(inputs), retset, rows, void))
    if not matches:
        raise ApiError(
            404,
            "PGRST202",
            f"Could not find the function {SCHEMA}.{name}({', '.join(keys)}) in the schema cache",
            hint="If a new function was created in the database with this name and parameters, try reloading "
            "the schema cache.",
        )
    if len(matches) > 1:
        raise ApiError(300, "PGRST203", f"Could not choose the best candidate function between: {SCHEMA}.{name}")
    arg_names, oids, retset, rows, void = matches[0]
    type_names = {
        oid: (str(nsp), str(typ))
        for oid, nsp, typ in conn.execute(
            "SELECT t.oid, n.nspname, t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE t.oid = ANY(%s)",
            (list(oids.values()),),
        ).fetchall()
    }
    return Function(
        names=arg_names,
        types={arg: type_names[oid] for arg, oid in oids.items()},
        returns_set=bool(retset),
        returns_rows=bool(rows),
        returns_void=bool(void),
    )


# --- the HTTP server -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.dispatch()

    do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = do_OPTIONS = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        return  # quiet: pytest shows failures, not every request

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def dispatch(self) -> None:
        body = self.read_body()
        target = urlsplit(self.path)
        gateway = self.server.gateway
        try:
            if target.path == "/storage/v1" or target.path.startswith("/storage/v1/"):
                response = gateway.forward_storage(
                    self.command, self.path[len("/storage/v1") :], self.headers.items(), body
                )
            elif target.path.startswith("/rest/v1/"):
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = RestRequest(self.command, target.path[len("/rest/v1") :], target.query, headers, body)
                response = gateway.data_api.handle(request)
            else:
                response = Response(
                    404, b'{"message":"no Route matched with those values"}', {"Content-Type": JSON_CONTENT_TYPE}
                )
        except httpx.TransportError as exc:  # what Supabase's gateway answers when Storage is down
            response = Response(
                502,
                ApiError(502, None, f"An invalid response was received from the upstream server: {exc}").body(),
                {"Content-Type": JSON_CONTENT_TYPE},
            )
        except Exception as exc:  # a bug here must reach the test as an answer, not a hung connection
            response = Response(
                500,
                ApiError(500, "GATEWAY", f"{type(exc).__name__}: {exc}").body(),
                {"Content-Type": JSON_CONTENT_TYPE},
            )
        self.respond(response)

    def respond(self, response: Response) -> None:
        body = response.body or b""
        headers = list(response.headers.items()) if isinstance(response.headers, dict) else response.headers
        self.send_response(response.status)
        for name, value in headers:
            self.send_header(name, value)
        if not any(name.lower() == "content-length" for name, _ in headers):  # HEAD keeps the upstream length
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    gateway: Gateway


class Gateway:
    """The gateway on 127.0.0.1 (a free port), serving in a background thread until ``stop()``."""

    def __init__(self, *, storage_url: str, authenticator_url: str, jwt_secret: str) -> None:
        self.storage_url = storage_url.rstrip("/")
        self.data_api = DataApi(authenticator_url, jwt_secret)
        self.http = httpx.Client(timeout=httpx.Timeout(60.0))
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.gateway = self
        self.thread = threading.Thread(target=self.server.serve_forever, name="dhgq-test-gateway", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Gateway:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        self.http.close()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def forward_storage(self, method: str, target: str, headers: Any, body: bytes) -> Response:
        """The request as the Storage server gets it behind Supabase's gateway: prefix gone, answer unchanged."""
        forwarded = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        forwarded.append(("Accept-Encoding", "identity"))
        upstream = self.http.request(method, self.storage_url + (target or "/"), headers=forwarded, content=body)
        # the body is read whole (and decoded): its framing headers are the gateway's own, but for HEAD's length
        kept = [
            (k, v)
            for k, v in upstream.headers.multi_items()
            if k.lower() not in HOP_BY_HOP or (method == "HEAD" and k.lower() == "content-length")
        ]
        return Response(upstream.status_code, upstream.content, kept)
