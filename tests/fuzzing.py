"""What the fuzz tests draw from (hypothesis strategies) and what they check after every case.

The default suite runs a bounded sample (profile ``default``); ``make fuzz`` runs thousands of
cases with a printed seed (profile ``fuzz``, ``FUZZ_EXAMPLES``). The corpus is every input of
issue 12's adversarial run that broke something, replayed on every run.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "default",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")),
    deadline=None,  # a real server on a 2-core machine: time is not the property
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,  # a failure prints the line that replays it
)
settings.register_profile(
    "fuzz",
    parent=settings.get_profile("default"),
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# -- JSON values and hostile JSON text -------------------------------------------------------------------

ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9._~-]{1,64}", fullmatch=True),
    st.sampled_from(["@echo", "@probe", "@nobody", "", "a" * 65, "../x", "a/b", "é", "\x00", " "]),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=24,
)

#: Text that breaks naive JSON handling: non-standard numbers, lone surrogates, structure.
HOSTILE_TOKENS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e999",
    "9" * 5000,
    '"\\ud800"',
    '"\\udfff\\ud800"',
    '"\\uDBFF"',
    '"\\u0000"',
    '"\x01"',
    "\ud800",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    '"',
    "\\",
    "[" * 60,
    "\xff",
    "\ufeff",
]


@st.composite
def hostile_json(draw: Any, value: Any = None) -> bytes:
    """JSON text of a drawn value, then maybe spliced with hostile tokens or cut short; as the
    bytes a client would send (lone surrogates written as the raw bytes a broken client emits)."""
    if value is None:
        value = draw(json_values)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(HOSTILE_TOKENS)) + text[at:]
    if draw(st.booleans()) and len(text) > 2:
        text = text[: draw(st.integers(1, len(text)))]
    return text.encode("utf-8", "surrogatepass")


def body_of(draw: Any, fields: dict[str, Any]) -> bytes:
    """A request body: mostly a plausible object with some fields drawn hostile, sometimes raw."""
    shape = draw(st.sampled_from(["object", "object", "object", "hostile-object", "raw"]))
    if shape == "raw":
        return bytes(draw(hostile_json()))
    body = {name: draw(strategy) for name, strategy in fields.items() if draw(st.booleans()) or name == "signal"}
    if shape == "object":
        return json.dumps(body).encode()
    return bytes(draw(hostile_json(body)))


def strict_json(text: str) -> Any:
    """What a browser's JSON.parse accepts (no NaN, no Infinity)."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def check_answer(status: int, content_type: str, text: str) -> None:
    """Every answer: never 5xx, never a traceback, and JSON answers are strict JSON."""
    assert status < 500, (status, text[:300])
    assert "Traceback" not in text and 'File "' not in text, text[:300]
    if content_type == "application/json":
        strict_json(text)


def check_log(records: list[logging.LogRecord]) -> None:
    """Bad input may be a warning line, never an ERROR and never a traceback."""
    bad = [r for r in records if r.levelno >= logging.ERROR or r.exc_info is not None]
    assert bad == [], [f"{r.levelname} {r.name}: {r.getMessage()}" for r in bad]
