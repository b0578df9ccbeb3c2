"""A mode of your own with no media at all: a bot that answers text messages on the data channel.

    python examples/datachannel_bot.py [--port 8080 ...]     # any `fantasize-rtc serve` flag

Offer a data channel to the mode "bot" (``POST /rtc/offer {"mode": "bot"}`` or a room's ``@bot``)
and send it text: ``help``, ``time``, ``reverse <text>``, ``count``; anything else gets a hint.
Tracks offered alongside are read and dropped (the default ``on_track``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from aiortc import RTCDataChannel

from fantasize_rtc.media import MediaSession, Mode, ModeRegistry, modes

COMMANDS = "help, time, reverse <text>, count"


class Bot(Mode):
    """answers text messages on the data channel (help, time, reverse <text>, count)"""

    whip = False  # WHIP has no data channel

    def __init__(self) -> None:
        self.count = 0

    def answer(self, text: str) -> str:
        self.count += 1
        command, _, rest = text.strip().partition(" ")
        command = command.lower()
        if command == "help":
            return f"commands: {COMMANDS}"
        if command == "time":
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if command == "reverse":
            return rest[::-1]
        if command == "count":
            return f"{self.count} messages so far"
        return f"I do not know {command[:40]!r}; try: {COMMANDS}"

    def on_datachannel(self, session: MediaSession, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(message: Any) -> None:
            session.data_messages += 1
            if isinstance(message, str) and channel.readyState == "open":
                channel.send(self.answer(message))

    def report(self) -> dict[str, Any]:
        return {"bot": {"answered": self.count}}


def register(registry: ModeRegistry = modes) -> None:
    registry.register("bot", Bot)


if __name__ == "__main__":
    from fantasize_rtc.cli import main

    register()
    sys.exit(main(["serve", *sys.argv[1:]]))
