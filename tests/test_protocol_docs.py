"""The wire's names have one owner (``fantasize_rtc.protocol`` and ``fantasize_rtc.errors``): both
clients use the same names, and docs/protocol.md lists every code the server can send."""

from __future__ import annotations

import re
from pathlib import Path

from fantasize_rtc import client, errors
from fantasize_rtc.protocol import CloseCode, LeaveReason

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_MD = (ROOT / "docs" / "protocol.md").read_text()
RTC_CLIENT_JS = (ROOT / "static" / "rtc-client.js").read_text()


def _js_object(name: str) -> dict[str, str]:
    """``export const <name> = Object.freeze({ KEY: value, ... })`` of rtc-client.js, as text."""
    match = re.search(rf"export const {name} = Object\.freeze\(\{{(.*?)\}}\);", RTC_CLIENT_JS, re.S)
    assert match, f"rtc-client.js exports no {name}"
    return {key: value.strip().strip('"') for key, value in re.findall(r"(\w+):\s*([^,\n]+)", match.group(1))}


def test_the_js_client_has_the_same_close_codes_and_reasons() -> None:
    assert _js_object("CloseCode") == {code.name: str(code.value) for code in CloseCode}
    assert _js_object("LeaveReason") == {name: getattr(LeaveReason, name) for name in ("LEFT", "TIMEOUT", "REPLACED")}


def test_the_js_client_names_codes_instead_of_numbers() -> None:
    for code in CloseCode:
        literal = re.findall(rf"(?:===|close\()\s*{code.value}\b", RTC_CLIENT_JS)
        assert literal == [], f"rtc-client.js compares or closes with {code.value}: use CloseCode.{code.name}"


def test_the_python_client_uses_the_protocols_close_codes() -> None:
    source = Path(client.__file__).read_text()
    for code in CloseCode:
        assert not re.search(rf"==\s*{code.value}\b", source), f"client.py compares with {code.value}"


def test_protocol_md_lists_every_close_code() -> None:
    section = PROTOCOL_MD[PROTOCOL_MD.index("Close codes:") :]
    for code in CloseCode:
        assert f"`{code.value}`" in section, f"docs/protocol.md does not list close code {code.value} ({code.name})"


def _error_classes() -> list[type[errors.RtcError]]:
    found, stack = [], [errors.RtcError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return [c for c in found if c.__module__ == errors.__name__]


def test_protocol_md_lists_every_error_code_with_its_status() -> None:
    table = PROTOCOL_MD[PROTOCOL_MD.index("| code | status | when |") :].split("\n\n")[0].splitlines()
    for cls in _error_classes():
        rows = [line for line in table if f"`{cls.code}`" in line.split("|")[1]]
        assert rows, f"docs/protocol.md's error table has no row for {cls.code}"
        assert f"| {cls.status} |" in rows[0], f"{cls.code}: the table says {rows[0]!r}, the code {cls.status}"


def test_protocol_md_lists_every_leave_reason() -> None:
    for reason in LeaveReason.ALL:
        assert f'"{reason}"' in PROTOCOL_MD, f"docs/protocol.md does not list the reason {reason!r}"


MEDIA_MD = (ROOT / "docs" / "media.md").read_text()


def test_media_md_lists_every_ending_state_and_via() -> None:
    from fantasize_rtc.protocol import RecordingState, SessionEnd, SessionState, Via

    endings = MEDIA_MD[MEDIA_MD.index("## Endings") :]
    for reason in SessionEnd.ALL:
        assert f"`{reason}`" in endings, f"docs/media.md's Endings do not list {reason!r}"
    for value in (*SessionState.ALL[1:], *Via.ALL, *RecordingState.ALL):
        assert value in MEDIA_MD, f"docs/media.md does not mention {value!r}"


def test_media_code_ends_sessions_only_for_named_reasons() -> None:
    """Every ``close("<reason>")`` in the media layer is gone: reasons are SessionEnd names."""
    media = ROOT / "server" / "fantasize_rtc" / "media"
    literal = re.compile(r"""\.close\(\s*["'][a-z_]+["']\s*\)|reason = ["'][a-z_]+["']""")
    found = [f"{p.name}: {m.group(0)}" for p in media.glob("*.py") for m in literal.finditer(p.read_text())]
    assert found == []
