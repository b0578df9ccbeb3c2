"""The error tree. Every error a client can cause is an :class:`RtcError`.

::

    RtcError (code, status)
    ├── InvalidRequest          400 invalid_request
    │   └── InvalidJson         400 invalid_json
    ├── Unauthorized            401 unauthorized
    ├── Forbidden               403 forbidden
    ├── NotFound                404 not_found
    │   ├── RoomNotFound        404 room_not_found
    │   ├── PeerNotFound        404 peer_not_found
    │   ├── SessionNotFound     404 session_not_found
    │   └── RecordingNotFound   404 recording_not_found
    ├── MethodNotAllowed        405 method_not_allowed
    ├── RequestTimeout          408 request_timeout
    ├── Conflict                409 conflict
    │   ├── PeerIdTaken         409 peer_id_taken
    │   ├── RoomFull            409 room_full
    │   └── RoomExists          409 room_exists
    ├── PreconditionFailed      412 precondition_failed
    ├── PayloadTooLarge         413 payload_too_large
    ├── UnsupportedMediaType    415 unsupported_media_type
    ├── UnprocessableContent    422 unprocessable_content
    ├── RateLimited             429 rate_limited
    └── CapacityExceeded        503 capacity_exceeded (retry_after seconds)
        └── Draining            503 draining (the process is shutting down: try again, elsewhere)

Transports map an error to ``{"error": {"code", "message"}}`` with its status (HTTP)
or to an ``{"type": "error"}`` frame (WebSocket). This module imports only the standard library.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "CapacityExceeded",
    "Conflict",
    "Draining",
    "Forbidden",
    "InvalidJson",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PeerIdTaken",
    "PeerNotFound",
    "PreconditionFailed",
    "RateLimited",
    "RecordingNotFound",
    "RequestTimeout",
    "RoomExists",
    "RoomFull",
    "RoomNotFound",
    "RtcError",
    "SessionNotFound",
    "Unauthorized",
    "UnprocessableContent",
    "UnsupportedMediaType",
]


class RtcError(Exception):
    """Base of every client-facing error: a machine ``code``, an HTTP ``status``, a sentence."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "Internal server error."

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.details)
        return {"error": body}

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with this error's answer (``Retry-After`` for 503)."""
        return {}


class InvalidRequest(RtcError):
    code = "invalid_request"
    status = 400
    default_message = "The request is not valid."


class InvalidJson(InvalidRequest):
    """The text is not standard JSON (RFC 8259): malformed, ``NaN``/``Infinity``, a number out of
    range, a lone UTF-16 surrogate, or bytes that are not UTF-8."""

    code = "invalid_json"
    default_message = "The body is not valid JSON."


class Unauthorized(RtcError):
    code = "unauthorized"
    status = 401
    default_message = "A valid token is required."


class Forbidden(RtcError):
    code = "forbidden"
    status = 403
    default_message = "This token may not do that."


class NotFound(RtcError):
    code = "not_found"
    status = 404
    default_message = "Not found."


class RoomNotFound(NotFound):
    code = "room_not_found"
    default_message = "No such room."


class PeerNotFound(NotFound):
    code = "peer_not_found"
    default_message = "No such peer in this room."


class SessionNotFound(NotFound):
    code = "session_not_found"
    default_message = "No such media session."


class RecordingNotFound(NotFound):
    code = "recording_not_found"
    default_message = "No such recording."


class MethodNotAllowed(RtcError):
    code = "method_not_allowed"
    status = 405
    default_message = "Method not allowed on this route."


class RequestTimeout(RtcError):
    """The client sent its request body too slowly; the connection is closed."""

    code = "request_timeout"
    status = 408
    default_message = "The request body did not arrive in time."


class Conflict(RtcError):
    code = "conflict"
    status = 409
    default_message = "Conflict."


class PeerIdTaken(Conflict):
    code = "peer_id_taken"
    default_message = "That peer id is already connected in this room."


class RoomFull(Conflict):
    code = "room_full"
    default_message = "The room is full."


class RoomExists(Conflict):
    code = "room_exists"
    default_message = "A room with that id already exists."


class PreconditionFailed(RtcError):
    """A conditional request's ``If-Match`` does not match (WHIP: the ICE session's ``ETag``)."""

    code = "precondition_failed"
    status = 412
    default_message = "The resource is not the one If-Match names."


class PayloadTooLarge(RtcError):
    code = "payload_too_large"
    status = 413
    default_message = "The payload is too large."


class UnsupportedMediaType(RtcError):
    code = "unsupported_media_type"
    status = 415
    default_message = "Unsupported content type."


class UnprocessableContent(RtcError):
    """Well-formed, but asking for something this server does not do (WHIP: an ICE restart)."""

    code = "unprocessable_content"
    status = 422
    default_message = "The request is understood but cannot be carried out."


class RateLimited(RtcError):
    code = "rate_limited"
    status = 429
    default_message = "Too many messages; slow down."


class CapacityExceeded(RtcError):
    code = "capacity_exceeded"
    status = 503
    default_message = "The server is at capacity; try again later."

    def __init__(self, message: str | None = None, *, retry_after: int = 5, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Draining(CapacityExceeded):
    """The process is draining (SIGTERM): it takes no new connects, sockets or media sessions.
    Another process behind the same load balancer does; or this server once it is back."""

    code = "draining"
    default_message = "This server is restarting; connect again (another server takes over)."

    def __init__(self, message: str | None = None, *, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
