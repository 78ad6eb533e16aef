"""
Read a device channel as a stream of JSON values.

Firmware in the field does not always send one JSON object per WebSocket
message: an object may be split over several messages, several objects may
share one message, and white space (usually a newline) may follow each one.
L{JSONStreamDecoder} takes the raw message payloads in order and yields
complete values, and a L{StreamError} for every stretch of input that is
not JSON, so the caller can answer with a parse error and carry on.

Only objects and arrays are accepted at the top level: they have an
unambiguous end, so the decoder knows when a value is complete without
waiting for more input. Anything else is garbage; the decoder skips to the
next C{{} or C{[} to resynchronise.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Iterator, Union

# Outside a string only brackets and quotes matter to find the end of a value;
# inside one, only the closing quote and the escape character.
_STRUCTURAL = re.compile(r'[{}\[\]"]')
_IN_STRING = re.compile(r'["\\]')
_NOT_SPACE = re.compile(r"\S")
_VALUE_START = re.compile(r"[{\[]")


@dataclass(frozen=True)
class StreamError:
    """A stretch of the stream that is not a JSON value."""

    message: str
    # True when the decoder threw away input it could not make sense of.
    discarded: bool = False
    # True when a whole value was skipped for being over the size limit.
    too_large: bool = False


Item = Union[object, StreamError]


class JSONStreamDecoder:
    """
    Incremental splitter of a byte stream into JSON values.

    Each input character is scanned once (the scanner's state survives
    between calls), so a value that arrives in many small pieces costs linear
    time. The buffer never holds more than C{max_value_bytes} characters of a
    value (plus the chunk being fed): a larger value is skipped to its end
    without being buffered and reported as a L{StreamError} with
    C{too_large} set; the values after it are read as usual.
    """

    def __init__(self, max_value_bytes: int = 65536) -> None:
        self.max_value_bytes = max_value_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self._buf = ""
        # Scanner state of the value that starts the buffer, if any.
        self._in_value = False
        self._pos = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False
        # Set while skipping the rest of an oversized value.
        self._skipping = False

    @property
    def pending(self) -> int:
        """Characters held while waiting for the rest of a value."""
        return len(self._buf)

    def feed(self, data: Union[bytes, str]) -> Iterator[Item]:
        """
        Add a message payload and yield every value (or error) it completes.
        """
        if isinstance(data, bytes):
            try:
                text = self._utf8.decode(data)
            except UnicodeDecodeError:
                self._utf8.reset()
                self._end_value()
                self._buf = ""
                self._skipping = False
                yield StreamError("invalid UTF-8 in the stream", discarded=True)
                return
        else:
            text = data
        if not self._buf and not self._in_value and len(text) <= self.max_value_bytes:
            # Fast path: most firmware sends one whole value per message.
            try:
                value = json.loads(text)
            except ValueError:
                pass
            else:
                if isinstance(value, (dict, list)):
                    yield value
                    return
        self._buf += text
        yield from self._drain()

    def _end_value(self) -> None:
        self._in_value = False
        self._pos = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def _drain(self) -> Iterator[Item]:
        while True:
            if not self._in_value:
                # Between values: skip white space and resynchronise on the
                # next opening bracket if there is anything else.
                m = _NOT_SPACE.search(self._buf)
                if m is None:
                    self._buf = ""
                    return
                start = m.start()
                if self._buf[start] not in "{[":
                    nxt = _VALUE_START.search(self._buf, start)
                    end = nxt.start() if nxt else len(self._buf)
                    junk = self._buf[start:end]
                    self._buf = self._buf[end:]
                    yield StreamError(
                        "not a JSON object: %s" % _preview(junk), discarded=True
                    )
                    continue
                self._buf = self._buf[start:]
                self._in_value = True
                self._pos = 0
            end = self._scan()
            if end is None:
                if self._skipping or len(self._buf) > self.max_value_bytes:
                    # Keep the scanner's state, forget what it has scanned.
                    self._skipping = True
                    self._buf = self._buf[self._pos :]
                    self._pos = 0
                return
            text, self._buf = self._buf[:end], self._buf[end:]
            self._end_value()
            if self._skipping or len(text) > self.max_value_bytes:
                self._skipping = False
                yield StreamError(
                    "a JSON value is larger than %d bytes" % self.max_value_bytes,
                    discarded=True,
                    too_large=True,
                )
                continue
            try:
                yield json.loads(text)
            except ValueError as e:
                yield StreamError("invalid JSON: %s" % e)

    def _scan(self) -> int | None:
        """
        Continue scanning the value at the start of the buffer; return the
        index just past its end, or None if it is not complete yet.
        """
        buf = self._buf
        pos = self._pos
        depth = self._depth
        in_string = self._in_string
        if self._escaped:
            # The previous chunk ended right after a backslash.
            if pos >= len(buf):
                return None
            pos += 1
            self._escaped = False
        while True:
            if in_string:
                m = _IN_STRING.search(buf, pos)
                if m is None:
                    pos = len(buf)
                    break
                if m.group() == "\\":
                    if m.end() >= len(buf):
                        pos = m.end()
                        self._escaped = True
                        break
                    pos = m.end() + 1
                    continue
                in_string = False
                pos = m.end()
                continue
            m = _STRUCTURAL.search(buf, pos)
            if m is None:
                pos = len(buf)
                break
            c = m.group()
            pos = m.end()
            if c == '"':
                in_string = True
            elif c in "{[":
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    return pos
        self._pos = pos
        self._depth = depth
        self._in_string = in_string
        return None


def _preview(text: str, limit: int = 40) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")
