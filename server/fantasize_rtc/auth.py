"""Tokens: peer tokens, the optional connect JWT, and TURN REST credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

import jwt

from .errors import Forbidden, Unauthorized

__all__ = ["mint_turn_credentials", "new_peer_token", "verify_connect_jwt"]


def new_peer_token() -> str:
    """A secret bearer token for one peer (no dots, so it never looks like a JWT)."""
    return secrets.token_urlsafe(24)


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def verify_connect_jwt(token: str | None, secret: str, room_id: str, peer_id: str | None) -> str:
    """Check an HS256 JWT with claims ``room``, ``sub`` (peer id) and ``exp``; return the peer id."""
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
    if claims["room"] != room_id:
        raise Unauthorized("The JWT is for another room.")
    sub = claims["sub"]
    if not isinstance(sub, str):
        raise Unauthorized("The JWT's sub must be a peer id.")
    if peer_id is not None and peer_id != sub:
        raise Forbidden("peerId does not match the JWT's sub.")
    return sub


def mint_turn_credentials(secret: str, peer_id: str, ttl_seconds: int, now_seconds: int) -> tuple[str, str]:
    """coturn ``use-auth-secret`` credentials: ``expiry:peerId`` and base64(HMAC-SHA1(secret, user))."""
    username = f"{now_seconds + ttl_seconds}:{peer_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()
