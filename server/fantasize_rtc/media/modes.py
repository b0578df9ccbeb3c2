"""Which media modes a server offers: a registry of names and the :class:`~.session.Mode` each makes.

A mode is what one of the server's own peers does with a session's media (echo it, record it,
probe the connection, play a pattern, or what an application wants). Every mode is reachable the
same three ways: ``POST /rtc/offer`` with ``"mode": name``, an offer signaled to ``@name`` in a
room, and WHIP with ``?mode=name``. The built-in ones are registered here exactly as an
application registers its own (docs/modes.md)::

    from fantasize_rtc.media import Mode, modes

    @modes.register("shout", description="answers every text message in capitals")
    class Shout(Mode):
        def on_datachannel(self, session, channel):
            channel.on("message", lambda message: channel.send(str(message).upper()))

A mode is given as a :class:`Mode` subclass, a function returning a new :class:`Mode`, or a
``"module:attribute"`` string imported on first use (so a server that never records never imports
the recorder). Each session gets a new instance. Register before ``create_app``: the app lists the
registry's names as server peers when it starts. ``create_app(modes=registry)`` takes another
registry (``modes.copy()`` to start from the built-ins).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import InvalidRequest
from .session import Mode

__all__ = ["ModeInfo", "ModeRegistry", "modes"]

#: Mode names: what follows ``@`` in a room, so the same characters as a peer id's, lower case.
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ModeInfo:
    """One registered mode, as ``GET /rtc/modes`` lists it."""

    name: str
    description: str
    #: Whether a WHIP publisher (which only sends) can use it.
    whip: bool

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "serverPeer": "@" + self.name, "whip": self.whip}


class ModeRegistry:
    """Mode names -> how to make a :class:`Mode` for a session (see the module's doc)."""

    def __init__(self) -> None:
        self._targets: dict[str, Any] = {}
        self._info: dict[str, ModeInfo] = {}

    def register(
        self,
        name: str,
        target: Any = None,
        *,
        description: str = "",
        whip: bool | None = None,
        replace: bool = False,
    ) -> Any:
        """Register ``target`` (a :class:`Mode` subclass, a factory, or ``"module:attr"``) as
        ``name``; without ``target``, a decorator that does so and returns what it decorates.

        ``whip``: whether WHIP publishers may use it (default: the class's ``whip`` attribute,
        else True). A name already taken is a ValueError unless ``replace``."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"mode name {name!r}: 1 to 32 of a-z 0-9 _ -, starting with a letter")
        if name in self._targets and not replace:
            raise ValueError(f"mode {name!r} is registered already (replace=True to replace it)")

        def add(target: T) -> T:
            if not (isinstance(target, str) and ":" in target) and not callable(target):
                raise TypeError(f"mode {name!r}: a Mode subclass, a factory or 'module:attr', not {target!r}")
            takes_whip = whip if whip is not None else bool(getattr(target, "whip", True))
            doc = description or _first_line(getattr(target, "__doc__", None))
            self._targets[name] = target
            self._info[name] = ModeInfo(name, doc, takes_whip)
            return target

        return add if target is None else add(target)

    def unregister(self, name: str) -> None:
        self._targets.pop(name, None)
        self._info.pop(name, None)

    def create(self, name: str) -> Mode:
        """A new :class:`Mode` for one session; InvalidRequest (400) for a name not registered."""
        target = self._targets.get(name) if isinstance(name, str) else None
        if target is None:
            raise InvalidRequest(f"mode must be one of {', '.join(self)}.")
        if isinstance(target, str):
            module, _, attribute = target.partition(":")
            target = self._targets[name] = getattr(importlib.import_module(module), attribute)
        mode = target()
        if not isinstance(mode, Mode):
            raise TypeError(f"mode {name!r} made {type(mode).__name__}, not a fantasize_rtc.media.Mode")
        mode.name = name
        return mode

    def info(self, name: str) -> ModeInfo:
        return self._info[name]

    def describe(self) -> list[dict[str, Any]]:
        return [info.to_wire() for info in self._info.values()]

    def copy(self) -> ModeRegistry:
        other = ModeRegistry()
        other._targets, other._info = dict(self._targets), dict(self._info)
        return other

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""


#: The registry ``create_app`` uses unless given another: the built-in modes, and yours.
modes = ModeRegistry()
modes.register(
    "echo",
    "fantasize_rtc.media.echo:EchoMode",
    description="sends your audio and video back (passthrough: true skips decoding), and echoes data channel messages",
)
modes.register(
    "record",
    "fantasize_rtc.media.record:RecordMode",
    description="records your audio and video into a file (webm, mkv or mp4) you can play, download or delete",
)
modes.register(
    "probe",
    "fantasize_rtc.media.probe:ProbeMode",
    description="tests the connection: how it connected, round trip and loss, in the session report",
)
modes.register(
    "play",
    "fantasize_rtc.media.play:PlayMode",
    description="sends a generated test video and tone",
    whip=False,  # a WHIP client only sends
)
modes.register(
    "sfu",
    "fantasize_rtc.media.sfu:SfuMode",
    description="group calls: forwards what you send, as it is, to the room's other members and theirs to you",
)
