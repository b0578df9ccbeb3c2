"""Tokens: peer tokens, the optional connect JWT, the connect cookie, owner keys and TURN REST
credentials. Framework-free: the aiohttp transport and the framework examples share these rules."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

import jwt

from .errors import Forbidden, Unauthorized

__all__ = [
    "COOKIE_MAX_AGE",
    "COOKIE_PATH",
    "connect_cookie",
    "connect_cookie_name",
    "connect_cookie_value",
    "bearer_token",
    "identity_owner_key",
    "stale_cookies",
    "token_from_cookies",
    "looks_like_jwt",
    "mint_turn_credentials",
    "new_peer_token",
    "peer_token",
    "token_owner_key",
    "verify_connect_jwt",
    "verify_jwt_identity",
]


def new_peer_token() -> str:
    """A secret bearer token for one peer (no dots, so it never looks like a JWT)."""
    return secrets.token_urlsafe(24)


# -- the connect cookie (seed compatibility: the seed's fetch snippets send no token) --------------

COOKIE_PREFIX = "rtc!"
COOKIE_PATH = "/rtc"
#: Seconds a connect cookie lives. A token dies with its peer anyway; this bounds how long a
#: forgotten cookie rides along on every request.
COOKIE_MAX_AGE = 86_400
#: More connect cookies than this in a request: connect clears all but the one it sets. ~115 stale
#: cookies used to push the Cookie header past the server's header limit (issue 12).
MAX_COOKIES = 8
#: At most this many are cleared by one answer (clients limit the headers of an answer: aiohttp's
#: to about 128); the rest go with the next connects.
CLEAR_AT_ONCE = 32


def connect_cookie_name(room_id: str) -> str:
    """One cookie per room: a browser that joins the same room again (a reload, a new peer id)
    replaces it instead of adding one."""
    return f"{COOKIE_PREFIX}{room_id}"


def connect_cookie_value(peer_id: str, token: str) -> str:
    return f"{peer_id}:{token}"


def connect_cookie(room_id: str, peer_id: str, token: str) -> dict[str, Any]:
    """The connect cookie as keyword arguments of Starlette's ``set_cookie`` and Litestar's
    ``Cookie`` (``key``, ``value``, ``path``, ``max_age``, ``httponly``, ``samesite``)."""
    return {
        "key": connect_cookie_name(room_id),
        "value": connect_cookie_value(peer_id, token),
        "path": COOKIE_PATH,
        "max_age": COOKIE_MAX_AGE,
        "httponly": True,
        "samesite": "strict",
    }


def token_from_cookies(cookies: Mapping[str, str], room_id: str, peer_id: str) -> str | None:
    """The token the connect cookie holds for (room, peer), if it holds that peer's."""
    peer, sep, token = cookies.get(connect_cookie_name(room_id), "").partition(":")
    return token if sep and peer == peer_id and token else None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None for any other header)."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def peer_token(
    authorization: str | None, cookies: Mapping[str, str], room_id: str | None, peer_id: str | None
) -> str | None:
    """A seed route's token: the bearer token, else the connect cookie of (room, peer). What the
    framework examples and the aiohttp transport both read (the latter also takes ``?token=``)."""
    token = bearer_token(authorization)
    if token is None and room_id and peer_id:
        token = token_from_cookies(cookies, room_id, peer_id)
    return token


def stale_cookies(cookies: Mapping[str, str], keep: str | None = None) -> list[str]:
    """Connect cookies to clear: every other one when there are more than :data:`MAX_COOKIES`,
    and always those of the older ``rtc!<room>!<peer>`` form."""
    ours = [name for name in cookies if name.startswith(COOKIE_PREFIX) and name != keep]
    legacy = [name for name in ours if name.count("!") > 1]
    return (ours if len(ours) >= MAX_COOKIES else legacy)[:CLEAR_AT_ONCE]


def looks_like_jwt(token: str) -> bool:
    """Peer tokens have no dots; a JWT has two."""
    return token.count(".") == 2


def token_owner_key(token: str) -> str:
    """Who owns what a peer made (its media sessions and recordings), when ids are not
    authenticated: its token, which the next peer to take the same id never gets. Hashed, so the
    key kept in a recording's sidecar cannot be used as the token."""
    return "t:" + hashlib.sha256(token.encode()).hexdigest()[:40]


def identity_owner_key(secret: str, room_id: str, peer_id: str) -> str:
    """The owner key under a JWT gate: the id itself is authenticated (a JWT's ``sub``), so the
    same person keeps what they made across reconnects. Keyed with the server's secret: without
    that secret (the gate turned off later) nobody can present it."""
    mac = hmac.new(secret.encode(), f"{room_id}/{peer_id}".encode(), hashlib.sha256)
    return "i:" + mac.hexdigest()[:40]


def verify_jwt_identity(token: str | None, secret: str) -> tuple[str, str]:
    """Check an HS256 JWT with claims ``room``, ``sub`` (peer id) and ``exp``; return (room, sub)."""
    if not token:
        raise Unauthorized("This server requires a JWT to connect: send Authorization: Bearer <jwt>.")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["exp", "sub", "room"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("The JWT has expired.") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("The JWT is not valid.") from exc
    room, sub = claims["room"], claims["sub"]
    if not isinstance(room, str):
        raise Unauthorized("The JWT's room must be a room id.")
    if not isinstance(sub, str):
        raise Unauthorized("The JWT's sub must be a peer id.")
    return room, sub


def verify_connect_jwt(token: str | None, secret: str, room_id: str, peer_id: str | None) -> str:
    """:func:`verify_jwt_identity` for a connect to ``room_id`` (as ``peer_id``); returns the peer id."""
    room, sub = verify_jwt_identity(token, secret)
    if room != room_id:
        raise Unauthorized("The JWT is for another room.")
    if peer_id is not None and peer_id != sub:
        raise Forbidden("peerId does not match the JWT's sub.")
    return sub


def mint_turn_credentials(secret: str, peer_id: str, ttl_seconds: int, now_seconds: int) -> tuple[str, str]:
    """coturn ``use-auth-secret`` credentials: ``expiry:peerId`` and base64(HMAC-SHA1(secret, user))."""
    username = f"{now_seconds + ttl_seconds}:{peer_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()
