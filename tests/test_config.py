from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest

from fantasize_rtc import IceServer, RtcConfig
from fantasize_rtc.auth import mint_turn_credentials
from fantasize_rtc.cli import _SERVE_FLAGS, build_parser
from fantasize_rtc.errors import InvalidRequest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_defaults_match_the_seed() -> None:
    config = RtcConfig()
    assert config.max_peers_per_room == 8
    assert config.heartbeat_interval_ms == 30_000
    assert config.peer_timeout_ms == 75_000
    assert config.ice_servers == ()  # no hidden public STUN server


def test_peer_timeout_follows_interval() -> None:
    assert RtcConfig(heartbeat_interval_ms=1000).peer_timeout_ms == 2500
    assert RtcConfig().replace(heartbeat_interval_ms=2000).peer_timeout_ms == 5000
    assert RtcConfig(peer_timeout_ms=10).peer_timeout_ms == 10
    assert RtcConfig(peer_timeout_ms=1000).reaper_interval_ms == 250


def test_ice_server_urls() -> None:
    assert IceServer.parse("stun:stun.example.org:3478").to_wire() == {"urls": ["stun:stun.example.org:3478"]}
    turn = IceServer.parse("turn:al%40ice:s3cr%3At@turn.example.org:3478?transport=udp")
    assert turn.to_wire() == {
        "urls": ["turn:turn.example.org:3478?transport=udp"],
        "username": "al@ice",
        "credential": "s3cr:t",
    }
    assert RtcConfig(ice_servers=("stun:a:1",)).ice_servers == (IceServer(("stun:a:1",)),)  # type: ignore[arg-type]
    for good in ("turns:turn.example.org:443", "turn:[2001:db8::1]:3478?transport=TCP", "stun:198.51.100.1"):
        assert IceServer.parse(good).urls == (good,)
    bad_urls = ["http://x", "turn:", "turn:user@host", "turn:host:0", "turn:host:70000", "stun:host:34x"]
    bad_urls += ["turn:2001:db8::1:3478", "turn:[2001:db8::1", "turn:[nothost]:1", "stun:host?transport=tcp"]
    bad_urls += ["turn:host?transport=sctp", "turn:host:1?foo=bar", "turn:ho st:1"]
    for bad in bad_urls:
        with pytest.raises(InvalidRequest):
            IceServer.parse(bad)


def test_turn_rest_credentials_are_coturns() -> None:
    # Reference: echo -n 4600:alice | openssl dgst -sha1 -hmac secret -binary | base64
    user, password = mint_turn_credentials("secret", "alice", 3600, 1_000)
    assert user == "4600:alice"
    assert password == "a3AFq0ZxH8TvdQLL5U+temOYdmc="


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        RtcConfig(max_peers_per_room=0)


# README's "Configuration" table is written by hand; these tests hold it to RtcConfig and the CLI.

_NUMBER = re.compile(r"\d[\d,_]*(\.\d+)?")
_UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_WORDS: dict[str, Any] = {"none": None, "off": False, "on": True}


def _number(text: str) -> int | float:
    text = text.replace(",", "").replace("_", "")
    return float(text) if "." in text else int(text)


def readme_default(text: str) -> Any:
    """The value a README default cell means: `512 MiB`, `86400`, `none`, `off`, `./recordings`..."""
    match = re.fullmatch(r"(.*?)\s*(?:\((.*)\))?", text.replace("`", "").strip())
    assert match is not None
    value, remark = match.group(1), match.group(2)
    # A number in parentheses is what a derived default works out to ("2.5 x interval (75000)");
    # other parentheses are remarks ("none (CORS off)", "50 (burst 200)").
    if remark is not None and _NUMBER.fullmatch(remark):
        value = remark
    if value in _WORDS:
        return _WORDS[value]
    sized = re.fullmatch(r"(\d+(?:\.\d+)?) (KiB|MiB|GiB)", value)
    if sized:
        return _number(sized.group(1)) * _UNITS[sized.group(2)]
    if _NUMBER.fullmatch(value):
        return _number(value)
    return value


@pytest.mark.parametrize(
    ("cell", "value"),
    [
        ("512 MiB", 512 * 1024 * 1024),
        ("86400", 86_400),
        ("10,000", 10_000),
        ("none", None),
        ("none (CORS off)", None),
        ("off", False),
        ("2.5 x interval (75000)", 75_000),
        ("50 (burst 200)", 50),
        ("`./recordings`", "./recordings"),
        ("`127.0.0.1`", "127.0.0.1"),
    ],
)
def test_readme_default_reads_the_forms_the_table_uses(cell: str, value: Any) -> None:
    got = readme_default(cell)
    assert got == value and type(got) is type(value)


def readme_configuration_rows() -> list[tuple[str, str | None, str]]:
    """(flag, RtcConfig field or None, default cell) of each row of README's Configuration table."""
    section = README.read_text().split("\n## Configuration\n", 1)[1]
    lines = iter(section.splitlines())
    for line in lines:
        if line.startswith("| flag |"):
            break
    next(lines)  # the |---| line
    rows: list[tuple[str, str | None, str]] = []
    for line in lines:
        if not line.startswith("|"):
            break
        flag, field, default = (cell.strip() for cell in line.split("|")[1:4])
        name = flag.strip("`").split()[0].removeprefix("--")  # `--ice-server URL` -> ice-server
        rows.append((name, None if field == "\N{EN DASH}" else field.strip("`"), default))
    return rows


def _same(readme: Any, real: Any) -> bool:
    if real == ():  # an empty list of ICE servers or origins is "none"
        real = None
    return bool(readme == real) and isinstance(readme, bool) == isinstance(real, bool)


def test_readme_configuration_table_matches_the_cli_and_rtc_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FANTASIZE_RTC_"):
            monkeypatch.delenv(name)  # the CLI's defaults, not this shell's
    rows = readme_configuration_rows()
    flags = {flag.name: flag for flag in _SERVE_FLAGS}
    fields = {f.name for f in dataclasses.fields(RtcConfig)}
    config, cli_defaults = RtcConfig(), build_parser().parse_args(["serve"])
    assert len(rows) > 20
    for name, field, default in rows:
        assert name in flags, f"README row --{name}: no such flag"
        assert field == flags[name].field, f"README row --{name} names {field}, the flag sets {flags[name].field}"
        if field is None:
            real = getattr(cli_defaults, flags[name].dest)
        else:
            assert field in fields, f"README row --{name}: RtcConfig has no field {field}"
            real = getattr(config, field)
        assert _same(readme_default(default), real), f"README row --{name}: default {default!r}, really {real!r}"
    missing = sorted(set(flags) - {name for name, _field, _default in rows})
    assert not missing, f"flags without a README row: {missing}"
