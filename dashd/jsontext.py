"""
JSON text as dashd writes it everywhere (device frames, events, responses,
the store): compact, with non-ASCII characters kept as they are; and as it
reads what clients and devices send (L{loads}): strictly JSON, so that what
it stores and serves back is JSON too.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

# Built once: json.dumps with options builds a new encoder on every call.
compact: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


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


def loads(text: str | bytes) -> Any:
    """
    Read a JSON value from a client or a device. Unlike json.loads, refuse
    ``NaN``, ``Infinity`` and numbers too large for a float (which would be
    read as infinities and written back as ``Infinity``, which is not JSON).

    @raise ValueError: not JSON (L{NotJSON} for what json.loads would have
        accepted), saying why.
    """
    if isinstance(text, (bytes, bytearray)):
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _decoder.decode(text)
