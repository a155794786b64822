"""JWTs as a Supabase project issues them: HS256, signed with the project's JWT secret.

The Storage server and the test gateway's Data API accept exactly these, as Supabase's Storage and
PostgREST do: the ``role`` claim picks the database role a request runs as (anon, authenticated,
service_role) and ``sub`` is what ``auth.uid()`` returns. The anon and service keys are long-lived
tokens with no ``sub``; a user's access token (what GoTrue hands out at sign-in) lives an hour.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

ALGORITHM = "HS256"
KEY_LIFETIME = 10 * 365 * 24 * 3600  # Supabase's API keys live ten years
USER_TOKEN_LIFETIME = 3600  # GoTrue's default access-token lifetime
PROJECT_REF = "dhgqtestproject"


def sign(secret: str, claims: dict[str, Any]) -> str:
    """Any claims, signed as Supabase signs them (tests forge the odd token with this)."""
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _api_key(secret: str, role: str) -> str:
    now = int(time.time())
    return sign(secret, {"iss": "supabase", "ref": PROJECT_REF, "role": role, "iat": now, "exp": now + KEY_LIFETIME})


def anon_key(secret: str) -> str:
    """The project's anon (publishable) key: what an app ships; requests with it run as anon."""
    return _api_key(secret, "anon")


def service_key(secret: str) -> str:
    """The service_role key: the worker's own; bypasses row-level security."""
    return _api_key(secret, "service_role")


def user_token(
    secret: str,
    user_id: uuid.UUID | str,
    *,
    email: str | None = None,
    issued_at: int | None = None,
    lifetime: int = USER_TOKEN_LIFETIME,
    supabase_url: str = "http://127.0.0.1",
) -> str:
    """A signed-in user's access token, with the claims GoTrue puts in one (role authenticated, ``sub``)."""
    now = int(time.time()) if issued_at is None else issued_at
    claims: dict[str, Any] = {
        "iss": f"{supabase_url.rstrip('/')}/auth/v1",
        "sub": str(user_id),
        "aud": "authenticated",
        "exp": now + lifetime,
        "iat": now,
        "email": email or f"{user_id}@example.test",
        "phone": "",
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {},
        "role": "authenticated",
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": now}],
        "session_id": str(uuid.uuid4()),
        "is_anonymous": False,
    }
    return sign(secret, claims)


def expired_user_token(secret: str, user_id: uuid.UUID | str) -> str:
    """A user's access token that expired a minute ago: what a client holds after an hour without a refresh."""
    return user_token(secret, user_id, issued_at=int(time.time()) - USER_TOKEN_LIFETIME - 60)
