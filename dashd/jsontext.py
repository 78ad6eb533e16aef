"""
JSON text as dashd writes it everywhere (device frames, events, responses,
the store): compact, with non-ASCII characters kept as they are; and as it
reads what clients and devices send (L{loads}): strictly JSON, so that what
it stores and serves back is JSON too, and nested no deeper than dashd can
walk.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

# Built once: json.dumps with options builds a new encoder on every call,
# and so does JSONEncoder.encode (its C encoder, whose arguments alone cost
# more than encoding a small frame): the C encoder is made once here. It
# keeps no state between calls (no markers: dashd encodes no circular
# values; one would end in RecursionError rather than ValueError).
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
if json.encoder.c_make_encoder is not None:  # type: ignore[attr-defined]
    _encode = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False,
        True)
    _join = "".join

    def compact(value: Any) -> str:
        return _join(_encode(value, 0))
else:  # pragma: no cover (CPython has the C encoder)
    compact = _encoder.encode


class NotJSON(ValueError):
    """Text that Python's json module would read but JSON does not allow."""


def _constant(name: str) -> Any:
    raise NotJSON("%s is not a JSON number (JSON has no Infinity or NaN)" % name)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJSON("%s is out of range: a JSON number must be finite"
                      % (text if len(text) <= 40 else text[:40] + "..."))
    return value


_decoder = json.JSONDecoder(parse_constant=_constant, parse_float=_float)

# Deepest nesting of arrays and objects accepted from outside: far beyond
# any shadow (shadow.max_depth is capped below it), and far below where
# Python's recursion (json's decoder, dashd's own walks of a document) ends.
MAX_DEPTH = 100
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest more than C{limit} deep in C{text}
    (which need not be valid JSON)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads(text: str | bytes) -> Any:
    """
    Read a JSON value from a client or a device. Unlike json.loads, refuse
    ``NaN``, ``Infinity`` and numbers too large for a float (which would be
    read as infinities and written back as ``Infinity``, which is not JSON).

    Refuse values nested deeper than L{MAX_DEPTH}, before reading them.

    @raise ValueError: not JSON (L{NotJSON} for what json.loads would have
        accepted, or nested too deep), saying why.
    """
    if isinstance(text, (bytes, bytearray)):
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    if too_deep(text):
        raise NotJSON("arrays and objects are nested more than %d deep" % MAX_DEPTH)
    try:
        return _decoder.decode(text)
    except RecursionError:
        raise NotJSON("arrays and objects are nested too deep")


# Strings longer than this are left as they are by shared().
SHARED_MAX_CHARS = 64


def shared(value: Any) -> Any:
    """
    C{value} (a JSON value as read) with its object keys, and its strings of
    up to L{SHARED_MAX_CHARS} characters, interned: the same text one
    object for all who keep it. What thousands of devices keep of
    themselves (their info: the same keys, mostly the same firmware names
    and versions) is then one copy, not one a device. Dicts and lists are
    rebuilt (a dict's keys cannot be replaced in place); equal to C{value}.
    """
    kind = type(value)
    if kind is dict:
        return {_intern(k) if type(k) is str else k: shared(v) for k, v in value.items()}
    if kind is str:
        return _intern(value) if len(value) <= SHARED_MAX_CHARS else value
    if kind is list:
        return [shared(v) for v in value]
    return value


_intern = sys.intern
