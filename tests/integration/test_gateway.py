"""dhgq's Data API as an app meets it: supabase-py against the local gateway, which runs each request as
PostgREST does (``tests/support/gateway.py``) on a database with dhgq's migrations and Supabase Storage.

What is checked is dhgq's, not the gateway's: JWTs are verified, anon has no rights on dhgq's tables,
a signed-in user makes requests for objects in their own folder and sees only their own, and cancels
only their own. A few checks at the end pin the gateway's PostgREST behaviour that the SDK relies on.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest
from postgrest.exceptions import APIError

from supabase import Client, ClientOptions, create_client
from tests.support import jwt as tokens
from tests.support.storage_server import StorageStack

# supabase-py 2.34 passes its own sub-clients parameters that they deprecate; not dhgq's to fix
pytestmark = pytest.mark.filterwarnings(r"ignore::DeprecationWarning:supabase\._sync\.client")


def client_for(gateway_url: str, stack: StorageStack, token: str | None = None) -> Client:
    """supabase-py with the anon key, acting as the holder of ``token`` (a user's access token) when given."""
    options = ClientOptions(headers={"Authorization": f"Bearer {token}"}) if token else None
    return create_client(gateway_url, stack.anon_key(), options=options)


def rest(gateway_url: str, stack: StorageStack, token: str, path: str, **kwargs: Any) -> httpx.Response:
    """A raw Data API request, to see the HTTP status supabase-py's APIError does not carry."""
    headers = {"apikey": stack.anon_key(), "Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return httpx.request(kwargs.pop("method", "GET"), f"{gateway_url}/rest/v1/{path}", headers=headers, **kwargs)


@pytest.fixture
def user(storage_stack: StorageStack) -> uuid.UUID:
    return storage_stack.new_user()


@pytest.fixture
def user_client(gateway_url: str, storage_stack: StorageStack, user: uuid.UUID) -> Client:
    return client_for(gateway_url, storage_stack, storage_stack.user_token(user))


def make_request(client: Client, user: uuid.UUID) -> dict[str, Any]:
    """A processing request for an object in the user's own folder, as an app inserts one."""
    key = f"{user}/{uuid.uuid4().hex}/talk.mp4"
    response = client.table("processing_jobs").insert({"user_id": str(user), "file_path": key}).execute()
    assert len(response.data) == 1
    row: dict[str, Any] = response.data[0]
    return row


# --- authentication -----------------------------------------------------------------------------------------


def test_a_forged_signature_is_401(gateway_url: str, storage_stack: StorageStack, user: uuid.UUID) -> None:
    forged = tokens.user_token("not-the-project-secret-" + "x" * 32, user)

    response = rest(gateway_url, storage_stack, forged, "processing_jobs?select=id")

    assert response.status_code == 401
    assert response.json()["code"] == "PGRST301"
    with pytest.raises(APIError) as refused:
        client_for(gateway_url, storage_stack, forged).table("processing_jobs").select("id").execute()
    assert refused.value.code == "PGRST301"


def test_an_expired_token_is_401(gateway_url: str, storage_stack: StorageStack, user: uuid.UUID) -> None:
    response = rest(gateway_url, storage_stack, storage_stack.expired_token(user), "processing_jobs?select=id")

    assert response.status_code == 401
    assert (response.json()["code"], response.json()["message"]) == ("PGRST301", "JWT expired")


def test_no_key_at_all_is_401(gateway_url: str) -> None:
    assert httpx.get(f"{gateway_url}/rest/v1/processing_jobs").status_code == 401


def test_anon_cannot_read_requests(gateway_url: str, storage_stack: StorageStack) -> None:
    response = rest(gateway_url, storage_stack, storage_stack.anon_key(), "processing_jobs?select=*")

    assert response.status_code == 401  # dhgq revokes anon's rights: insufficient_privilege, and anon is not authed
    assert response.json()["code"] == "42501"
    with pytest.raises(APIError) as refused:
        client_for(gateway_url, storage_stack).table("processing_jobs").select("*").execute()
    assert refused.value.code == "42501"


# --- a user's requests ------------------------------------------------------------------------------------


def test_a_user_makes_a_request_and_reads_it_back(
    gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client
) -> None:
    made = make_request(user_client, user)

    assert made["user_id"] == str(user)
    assert made["status"] == "queued"
    assert made["source_id"] is not None
    read = user_client.table("processing_jobs").select("id, status, file_path").eq("id", made["id"]).single().execute()
    assert read.data == {"id": made["id"], "status": "queued", "file_path": made["file_path"]}
    listed = user_client.table("processing_jobs").select("id").order("created_at", desc=True).limit(5).execute()
    assert made["id"] in [row["id"] for row in listed.data]
    source = user_client.table("sources_google").select("id, path").eq("id", made["source_id"]).execute()
    assert source.data == [{"id": made["source_id"], "path": f"storage://media/{made['file_path']}"}]


def test_a_user_sees_none_of_another_users_requests(
    gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client
) -> None:
    made = make_request(user_client, user)
    other = storage_stack.new_user()
    other_client = client_for(gateway_url, storage_stack, storage_stack.user_token(other))

    assert other_client.table("processing_jobs").select("*").execute().data == []
    assert other_client.table("processing_jobs").select("id").eq("id", made["id"]).execute().data == []
    assert other_client.table("sources_google").select("id").eq("id", made["source_id"]).execute().data == []
    with pytest.raises(APIError) as none:
        other_client.table("processing_jobs").select("id").eq("id", made["id"]).single().execute()
    assert none.value.code == "PGRST116"


def test_a_user_cannot_request_another_users_object(
    gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client
) -> None:
    other = storage_stack.new_user()

    with pytest.raises(APIError) as refused:  # the row names the user, the key another user's folder
        user_client.table("processing_jobs").insert({"user_id": str(user), "file_path": f"{other}/talk.mp4"}).execute()
    assert refused.value.code == "42501"
    with pytest.raises(APIError) as impersonating:  # the row names the other user: row-level security says no
        user_client.table("processing_jobs").insert({"user_id": str(other), "file_path": f"{other}/talk.mp4"}).execute()
    assert impersonating.value.code == "42501"
    response = rest(
        gateway_url,
        storage_stack,
        storage_stack.user_token(user),
        "processing_jobs",
        method="POST",
        json={"user_id": str(user), "file_path": f"{other}/talk.mp4"},
    )
    assert response.status_code == 403  # authenticated: 403, not 401


def test_a_bad_option_is_400(
    gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client
) -> None:
    with pytest.raises(APIError) as bad:
        user_client.table("processing_jobs").insert(
            {"user_id": str(user), "file_path": f"{user}/talk.mp4", "options": {"model": "no-such-model"}}
        ).execute()
    assert bad.value.code == "22023"
    assert "options.model" in (bad.value.message or "")


# --- cancelling -------------------------------------------------------------------------------------------


def test_the_owner_cancels_a_request(
    gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client
) -> None:
    made = make_request(user_client, user)

    cancelled = user_client.rpc("dhgq_cancel_request_v1", {"request_id": made["id"]}).execute()

    assert isinstance(cancelled.data, dict)  # a composite result: one JSON object, as PostgREST answers
    assert cancelled.data["id"] == made["id"]
    status = user_client.table("processing_jobs").select("status").eq("id", made["id"]).single().execute()
    assert status.data["status"] == "cancelled"


def test_another_user_cannot_cancel_a_request(
    gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client
) -> None:
    made = make_request(user_client, user)
    other_client = client_for(gateway_url, storage_stack, storage_stack.user_token(storage_stack.new_user()))

    with pytest.raises(APIError) as unknown:
        other_client.rpc("dhgq_cancel_request_v1", {"request_id": made["id"]}).execute()

    assert unknown.value.code == "PT404"  # to them it does not exist (PostgREST answers 404)
    with psycopg.connect(storage_stack.database_url) as conn:
        row = conn.execute("SELECT status, cancel_requested FROM public.processing_jobs WHERE id = %s", (made["id"],))
        assert row.fetchone() == ("queued", False)


def test_another_users_cancel_is_404(gateway_url: str, storage_stack: StorageStack, user: uuid.UUID) -> None:
    made = make_request(client_for(gateway_url, storage_stack, storage_stack.user_token(user)), user)
    other = storage_stack.user_token(storage_stack.new_user())

    response = rest(
        gateway_url, storage_stack, other, "rpc/dhgq_cancel_request_v1", method="POST", json={"request_id": made["id"]}
    )

    assert response.status_code == 404


def test_anon_cannot_cancel(
    gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client
) -> None:
    made = make_request(user_client, user)

    response = rest(
        gateway_url,
        storage_stack,
        storage_stack.anon_key(),
        "rpc/dhgq_cancel_request_v1",
        method="POST",
        json={"request_id": made["id"]},
    )

    assert response.status_code == 401
    assert response.json()["code"] == "42501"


# --- the gateway itself: what the SDK relies on ------------------------------------------------------------


def test_service_role_reads_every_request(
    gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client
) -> None:
    made = make_request(user_client, user)
    service = client_for(gateway_url, storage_stack, storage_stack.service_key())

    rows = service.table("processing_jobs").select("id, user_id").in_("id", [made["id"], str(uuid.uuid4())]).execute()

    assert rows.data == [{"id": made["id"], "user_id": str(user)}]


def test_filters_order_and_paging(
    gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client
) -> None:
    made = [make_request(user_client, user) for _ in range(3)]
    ids = [row["id"] for row in made]
    table = user_client.table("processing_jobs")

    newest_first = table.select("id").order("created_at", desc=True).execute().data
    assert [row["id"] for row in newest_first] == ids[::-1]
    page = table.select("id").order("created_at").limit(1).offset(1).execute().data
    assert page == [{"id": ids[1]}]
    assert len(table.select("id").neq("id", ids[0]).is_("completed_at", "null").execute().data) == 2
    assert len(table.select("id").gte("created_at", made[1]["created_at"]).execute().data) == 2
    assert table.select("ref:id").eq("id", ids[2]).execute().data == [{"ref": ids[2]}]
    assert table.select("id").in_("id", ids[:2]).order("created_at").execute().data == [{"id": i} for i in ids[:2]]


def test_unknown_table_function_and_schema(gateway_url: str, storage_stack: StorageStack, user: uuid.UUID) -> None:
    token = storage_stack.user_token(user)

    assert rest(gateway_url, storage_stack, token, "no_such_table").status_code == 404
    no_function = rest(gateway_url, storage_stack, token, "rpc/no_such_function", method="POST", json={})
    assert (no_function.status_code, no_function.json()["code"]) == (404, "PGRST202")
    other_schema = rest(gateway_url, storage_stack, token, "processing_jobs", headers={"Accept-Profile": "dhgq"})
    assert (other_schema.status_code, other_schema.json()["code"]) == (406, "PGRST106")
    bad_uuid = rest(gateway_url, storage_stack, token, "processing_jobs?id=eq.not-a-uuid")
    assert (bad_uuid.status_code, bad_uuid.json()["code"]) == (400, "22P02")


def test_storage_is_forwarded_unchanged(gateway_url: str, storage_stack: StorageStack) -> None:
    status = httpx.get(f"{gateway_url}/storage/v1/status")
    direct = httpx.get(f"{storage_stack.storage_url}/status")

    assert (status.status_code, status.content) == (direct.status_code, direct.content)


def test_a_user_cancels_by_updating_the_row(
    gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client
) -> None:
    """The other way to cancel: PATCH the flag (the one column besides retry_requested a user may update)."""
    made = make_request(user_client, user)
    other_client = client_for(gateway_url, storage_stack, storage_stack.user_token(storage_stack.new_user()))

    assert (
        other_client.table("processing_jobs").update({"cancel_requested": True}).eq("id", made["id"]).execute().data
        == []
    )
    updated = user_client.table("processing_jobs").update({"cancel_requested": True}).eq("id", made["id"]).execute()

    assert [row["id"] for row in updated.data] == [made["id"]]
    status = user_client.table("processing_jobs").select("status").eq("id", made["id"]).single().execute()
    assert status.data["status"] == "cancelled"
    with pytest.raises(APIError) as not_theirs:  # a column outside the user's UPDATE grant
        user_client.table("processing_jobs").update({"status": "completed"}).eq("id", made["id"]).execute()
    assert not_theirs.value.code == "42501"


def test_service_role_deletes_a_request(
    gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client
) -> None:
    made = make_request(user_client, user)
    service = client_for(gateway_url, storage_stack, storage_stack.service_key())

    with pytest.raises(APIError) as refused:
        user_client.table("processing_jobs").delete().eq("id", made["id"]).execute()
    assert refused.value.code == "42501"
    deleted = service.table("processing_jobs").delete().eq("id", made["id"]).execute()

    assert [row["id"] for row in deleted.data] == [made["id"]]
    assert service.table("processing_jobs").select("id").eq("id", made["id"]).execute().data == []


@pytest.fixture(scope="module")
def gateway_objects(storage_stack: StorageStack) -> None:
    """A table and functions of every result shape PostgREST distinguishes, for the gateway's own checks; made by
    the project role, so that Supabase's default privileges grant them to the API roles."""
    with psycopg.connect(storage_stack.database_url, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS public.gateway_test_items (id integer PRIMARY KEY, name text, note text);
            CREATE OR REPLACE FUNCTION public.gateway_test_rows(n integer)
                RETURNS TABLE (i integer, label text) LANGUAGE sql SET search_path = '' AS
                $$ SELECT g, 'row ' || g FROM generate_series(1, n) g $$;
            CREATE OR REPLACE FUNCTION public.gateway_test_scalar(a integer, b integer DEFAULT 10)
                RETURNS integer LANGUAGE sql SET search_path = '' AS $$ SELECT a + b $$;
            CREATE OR REPLACE FUNCTION public.gateway_test_numbers(n integer)
                RETURNS SETOF integer LANGUAGE sql SET search_path = '' AS $$ SELECT generate_series(1, n) $$;
            CREATE OR REPLACE FUNCTION public.gateway_test_void() RETURNS void LANGUAGE sql SET search_path = ''
                AS $$ SELECT $$;
            CREATE OR REPLACE FUNCTION public.gateway_test_raise(status text) RETURNS void LANGUAGE plpgsql
                SET search_path = '' AS $$ BEGIN RAISE SQLSTATE 'PT418' USING MESSAGE = status; END $$;
            """
        )


@pytest.mark.usefixtures("gateway_objects")
def test_rpc_result_shapes(gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client) -> None:
    rows = user_client.rpc("gateway_test_rows", {"n": 4}).gt("i", 1).order("i", desc=True).limit(2).execute()
    assert rows.data == [{"i": 4, "label": "row 4"}, {"i": 3, "label": "row 3"}]
    assert user_client.rpc("gateway_test_rows", {"n": 2}).select("label").execute().data == [
        {"label": "row 1"},
        {"label": "row 2"},
    ]
    assert user_client.rpc("gateway_test_scalar", {"a": 1}).execute().data == 11
    assert user_client.rpc("gateway_test_scalar", {"a": 1, "b": 2}).execute().data == 3
    assert user_client.rpc("gateway_test_numbers", {"n": 3}).execute().data == [1, 2, 3]
    void = rest(
        gateway_url, storage_stack, storage_stack.user_token(user), "rpc/gateway_test_void", method="POST", json={}
    )
    assert (void.status_code, void.content) == (204, b"")
    teapot = rest(
        gateway_url,
        storage_stack,
        storage_stack.user_token(user),
        "rpc/gateway_test_raise",
        method="POST",
        json={"status": "no"},
    )
    assert (teapot.status_code, teapot.json()["message"]) == (418, "no")
    with pytest.raises(APIError) as missing_argument:
        user_client.rpc("gateway_test_scalar", {"b": 1}).execute()
    assert missing_argument.value.code == "PGRST202"


@pytest.mark.usefixtures("gateway_objects")
def test_writes_and_upserts(gateway_url: str, storage_stack: StorageStack) -> None:
    items = client_for(gateway_url, storage_stack, storage_stack.service_key()).table("gateway_test_items")
    base = int(uuid.uuid4().int % 1_000_000) * 10

    minimal = items.insert([{"id": base, "name": "a"}, {"id": base + 1, "name": "b", "note": "x"}], returning="minimal")
    assert minimal.execute().data == []
    merged = items.upsert({"id": base, "name": "a2"}).execute()
    assert merged.data == [{"id": base, "name": "a2", "note": None}]
    ignored = items.upsert({"id": base + 1, "name": "ignored"}, ignore_duplicates=True).execute()
    assert ignored.data == []
    assert items.select("id, note").eq("id", base).strip_nulls().execute().data == [{"id": base}]
    patched = items.update({"note": "y"}).in_("id", [base, base + 1]).order("id").execute()
    assert [(row["id"], row["name"], row["note"]) for row in patched.data] == [(base, "a2", "y"), (base + 1, "b", "y")]
    with pytest.raises(APIError) as duplicate:
        items.insert({"id": base, "name": "again"}).execute()
    assert duplicate.value.code == "23505"
    deleted = items.delete().gte("id", base).lte("id", base + 1).execute()
    assert sorted(row["id"] for row in deleted.data) == [base, base + 1]
    assert items.select("*").in_("id", [base, base + 1]).execute().data == []


# --- webhook secrets, through the SDK -----------------------------------------------------------------------


def test_a_user_gets_a_webhook_secret_once_and_requests_with_a_callback(
    gateway_url: str, storage_stack: StorageStack, user: uuid.UUID, user_client: Client
) -> None:
    from dhgq.client import DhgqClient

    sdk = DhgqClient(user_client)
    with pytest.raises(APIError) as refused:  # no secret yet: no key a receiver of theirs could check
        sdk.submit(f"{uuid.uuid4().hex}.mp4", callback_url="https://hooks.example.com/dhgq")
    assert refused.value.code == "22023" and "webhook signing secret" in str(refused.value.message)
    secret = sdk.rotate_webhook_secret()
    assert secret.startswith("whsec_") and sdk.rotate_webhook_secret() != secret
    job = sdk.submit(f"{uuid.uuid4().hex}.mp4", callback_url="https://hooks.example.com/dhgq")
    assert job.status == "queued" and job.callback_status is None
    keys = user_client.table("webhook_signing_keys").select("*").execute().data
    assert [row["user_id"] for row in keys] == [str(user)] and "secret" not in keys[0]
    with pytest.raises(APIError) as nothing_yet:
        sdk.redeliver_webhook(job.id)
    assert nothing_yet.value.code == "PT409"
    other = DhgqClient(client_for(gateway_url, storage_stack, storage_stack.user_token(storage_stack.new_user())))
    with pytest.raises(APIError) as unknown:
        other.redeliver_webhook(job.id)
    assert unknown.value.code == "PT404"
    assert other.supabase.table("webhook_signing_keys").select("*").execute().data == []
