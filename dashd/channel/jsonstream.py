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

Garbage can also open a value that never closes (C{"x{{{"}), which would
swallow everything after it and leave a device that is never heard again.
So while a value is unfinished, a message that is a whole JSON object or
array on its own ends it if what is held cannot be the start of a JSON
value (a real split value's middle part may well be a whole value, like
C{[]}), or if the held value is already being skipped as too large: the
unfinished part is reported as discarded and the new message is read.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Iterator, Union

from dashd.jsontext import loads

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
        if len(text) <= self.max_value_bytes:
            # Most firmware sends one whole value per message: the fast path,
            # and the way back to the stream after an unfinished value.
            try:
                value = loads(text)
            except ValueError:
                pass
            else:
                if isinstance(value, (dict, list)):
                    if not (self._buf.strip() or self._in_value):
                        yield value
                        return
                    if self._skipping or not _could_continue(self._buf):
                        yield self._abandon()
                        yield value
                        return
        self._buf += text
        yield from self._drain()

    def _abandon(self) -> StreamError:
        """Forget the unfinished value at the start of the buffer."""
        too_large = self._skipping
        preview = _preview(self._buf)
        self._buf = ""
        self._skipping = False
        self._end_value()
        if too_large:
            return StreamError(
                "a JSON value is larger than %d bytes" % self.max_value_bytes,
                discarded=True,
                too_large=True,
            )
        return StreamError("an unfinished JSON value was abandoned: %s" % preview, discarded=True)

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
                yield loads(text)
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


_NUMBER_TAIL = re.compile(r"[0-9.eE+-]*")


def _could_continue(text: str) -> bool:
    """
    Whether C{text} (an unfinished value, as the scanner sees it) can be the
    start of a JSON value. Generous where unsure: a wrong yes only means
    waiting for the rest as before.
    """
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        rest = text[e.pos :]
        if not rest or e.msg.startswith("Unterminated string"):
            return True
        if any(literal.startswith(rest) for literal in ("true", "false", "null")):
            return True
        if e.msg == "Expecting value" and rest[0] == "-" and _NUMBER_TAIL.fullmatch(rest):
            return True
        # A number cut short: "1." or "1e" stops the decoder after the digit.
        return text[e.pos - 1].isdigit() and bool(_NUMBER_TAIL.fullmatch(rest))
    return True


def _preview(text: str, limit: int = 40) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")
