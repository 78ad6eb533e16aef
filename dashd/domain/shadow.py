"""
The device shadow: pure functions over its JSON document, shared by every
store so that all backends agree on the semantics.

A stored document::

    {"state": {"desired": {...}, "reported": {...}},
     "tags": {...}, "version": 7, "timestamp": 1764090000.25,
     "sections": {"desired": {"version": 2, "timestamp": T},
                  "reported": {"version": 5, "timestamp": T},
                  "tags": {"version": 0, "timestamp": null}},
     "metadata": {"reported": {"env": {"temp": T}}}}

``version`` counts every change of the document (what mDash and AWS-style
clients send back); each section also counts its own (``sections``, as
Azure twins do), so that a change of ``desired`` can be made on the
condition that nobody changed ``desired`` meanwhile, however often the
device reports (``ShadowUpdate.versions``). ``metadata.reported`` mirrors
``reported`` with the time each key was last reported, changed or not (as
AWS's shadow metadata does): a sensor that stopped reporting is visible.
Documents stored before sections existed read as at version 0.

``state.delta`` is never stored: L{view} computes it, as the keys of
``desired`` (recursively) whose value differs from ``reported``. An update
is a JSON merge patch per section (RFC 7386): objects merge, ``null``
deletes a key, anything else replaces; a section given as ``null`` is
emptied. ``version`` grows by one on every update that changes something.
"""

from __future__ import annotations

import copy
from json.encoder import encode_basestring
from dataclasses import dataclass, field
from typing import Any

from dashd.domain.errors import Conflict, Invalid, TooLarge
from dashd.jsontext import compact

SECTIONS = ("desired", "reported", "tags")

# Chosen between AWS IoT (8 KB, depth 6) and Azure twins (32 KB, depth 10):
# roomy enough for real fleets, small enough for an 8 KB-RAM device to fetch.
DEFAULT_MAX_BYTES = 16384
DEFAULT_MAX_DEPTH = 8


class InvalidShadowUpdate(Invalid):
    pass


class VersionConflict(Conflict):
    def __init__(self, given: int, current: int):
        super().__init__(
            "shadow version %d is stale: the current version is %d" % (given, current)
        )
        self.given = given
        self.current = current


class SectionConflict(VersionConflict):
    def __init__(self, section: str, given: int, current: int):
        Conflict.__init__(
            self,
            "the shadow's %s is at version %d, not %d: it was changed meanwhile"
            % (section, current, given),
        )
        self.given = given
        self.current = current


class ShadowTooLarge(TooLarge):
    pass


# The errors an update can fail with.
SHADOW_ERRORS = (InvalidShadowUpdate, VersionConflict, SectionConflict, ShadowTooLarge)


@dataclass(frozen=True)
class ShadowUpdate:
    """
    What to change. A section that is absent from C{patches} is untouched;
    a section mapped to None is emptied.
    """

    patches: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    version: int | None = None
    # The version each named section must be at (a condition on what the
    # update changes, rather than on the whole document).
    versions: dict[str, int] = field(default_factory=dict)
    # Whether a reported patch is the device reporting those keys (their
    # times in metadata move), rather than something derived from it.
    stamp: bool = True

    @property
    def touches_desired(self) -> bool:
        return "desired" in self.patches


@dataclass(frozen=True)
class UpdateResult:
    document: dict[str, Any]
    changed: bool
    # Whether the delta a device sees may have changed because users changed
    # what they want (the server then sends Shadow.Delta).
    desired_changed: bool
    # Whether the stored document must be written (a change, or only the
    # times of a report).
    stamped: bool = False
    # The document as compact JSON (dashd.jsontext.compact), when applying
    # the update made it anyway (see L{encoded}).
    text: str | None = None


def encoded(result: UpdateResult) -> str:
    """C{result}'s document as the store writes it (compact JSON), encoded
    once: the size check of a change has encoded most of it already."""
    text = result.text
    return compact(result.document) if text is None else text


def empty() -> dict[str, Any]:
    return {
        "state": {"desired": {}, "reported": {}},
        "tags": {},
        "version": 0,
        "timestamp": None,
        "sections": {name: {"version": 0, "timestamp": None} for name in SECTIONS},
        "metadata": {"reported": {}},
    }


def sections(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each section's version and last change (0 and None for a document
    stored before sections had their own)."""
    stored = doc.get("sections") or {}
    return {name: stored.get(name) or {"version": 0, "timestamp": None} for name in SECTIONS}


def reported_times(doc: dict[str, Any]) -> dict[str, Any]:
    """C{reported}'s shape, with the time each key was last reported."""
    return (doc.get("metadata") or {}).get("reported") or {}


def _stamp(times: dict[str, Any], patch: dict[str, Any], now: float) -> dict[str, Any]:
    """C{times} after a report of C{patch}: every key it reaches (objects
    descended into) now, a key it deletes gone."""
    out = dict(times)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and value:
            old = out.get(key)
            out[key] = _stamp(old if isinstance(old, dict) else {}, value, now)
        else:
            out[key] = now
    return out


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Return C{target} with the RFC 7386 merge C{patch} applied (no mutation)."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            old = result.get(key)
            result[key] = merge_patch(old if isinstance(old, dict) else {}, value)
        elif isinstance(value, list):
            result[key] = copy.deepcopy(value)
        else:
            result[key] = value  # a string, number, bool: nothing to copy
    return result


def delta(desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    """The part of C{desired} that C{reported} does not match yet."""
    out: dict[str, Any] = {}
    for key, want in desired.items():
        have = reported.get(key, _MISSING)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = delta(want, have)
            if sub:
                out[key] = sub
        elif have is _MISSING or not _same(want, have):
            out[key] = want
    return out


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    # JSON equality: 1 == 1.0, but True is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    if name == "tags":
        return doc["tags"]
    return doc["state"][name]


def depth(value: Any) -> int:
    """Nesting depth of objects and arrays (a scalar is 0, {} is 1)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def _merged(old: dict[str, Any], patch: dict[str, Any], room: int) -> tuple[dict[str, Any], bool]:
    """
    C{old} with the merge C{patch} applied (L{merge_patch}), and whether
    that differs from C{old} (L{_same}), walking only what C{patch} reaches.
    C{room}: how deep the values of the result may nest (L{depth}).

    What C{patch} does not reach is taken to be within the limit (as it was
    when it was written), so only C{patch}'s own values are measured.

    @raise ShadowTooLarge: C{patch} nests deeper than C{room}.
    """
    result = dict(old)
    changed = False
    for key, value in patch.items():
        if value is None:
            if key in result:
                del result[key]
                changed = True
            continue
        have = result.get(key, _MISSING)
        if isinstance(value, dict):
            if room < 1:
                raise _TooDeep()
            if isinstance(have, dict):
                value, sub = _merged(have, value, room - 1)
                changed = changed or sub
            else:
                value = _merged({}, value, room - 1)[0]
                changed = True
        else:
            if isinstance(value, list):
                if depth(value) > room:
                    raise _TooDeep()
                fresh = copy.deepcopy(value)
            else:
                fresh = value  # a string, number, bool: nothing to copy
            if not changed and (have is _MISSING or not _same(value, have)):
                changed = True
            value = fresh
        result[key] = value
    return result, changed


class _TooDeep(Exception):
    pass


def _times_text(times: dict[str, Any], now: Any, now_text: str) -> str:
    """C{compact(times)} for the report times, each C{now} written as
    C{now_text} (encoded once: a float's shortest repr is dear)."""
    parts = []
    for key, value in times.items():
        if value is now:
            text = now_text
        elif isinstance(value, dict):
            text = _times_text(value, now, now_text)
        else:
            text = compact(value)
        parts.append(_key_text(key) + text)
    return "{" + ",".join(parts) + "}"


def _sections_text(sections: dict[str, dict[str, Any]], now: Any, now_text: str) -> str:
    """C{compact(sections)}, each C{now} written as C{now_text}."""
    parts = []
    for name, section in sections.items():
        version = section.get("version")
        if type(version) is int and len(section) == 2 and next(iter(section)) == "version" \
                and "timestamp" in section:
            t = section["timestamp"]
            text = now_text if t is now else "null" if t is None else compact(t)
            key = _SECTION_KEYS.get(name) or _key_text(name)
            parts.append(f'{key}{{"version":{version},"timestamp":{text}}}')
        else:
            parts.append(_key_text(name) + compact(section))
    return "{" + ",".join(parts) + "}"


_SECTION_KEYS = {name: '"%s":' % name for name in SECTIONS}


def _key_text(key: Any) -> str:
    return (encode_basestring(key) if isinstance(key, str) else compact({key: 0})[1:-3]) + ":"


def apply_update(
    doc: dict[str, Any],
    update: ShadowUpdate,
    now: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> UpdateResult:
    """
    Apply C{update} to the stored document C{doc}.

    Only what the update's patches reach is walked (for the depth limit and
    to tell whether anything changed): the rest of a section is taken to be
    within the limits, as it was when it was written (a section stored
    deeper than a C{max_depth} lowered since is refused only for the parts
    an update reaches).

    @raise VersionConflict: C{update.version} is given and is not current.
    @raise ShadowTooLarge: the result would exceed the size or depth limit.
    """
    if update.version is not None and update.version != doc["version"]:
        raise VersionConflict(update.version, doc["version"])
    current = sections(doc)
    for name, version in update.versions.items():
        if version != current[name]["version"]:
            raise SectionConflict(name, version, current[name]["version"])
    new = {
        "state": dict(doc["state"]),
        "tags": doc["tags"],
        "version": doc["version"],
        "timestamp": doc["timestamp"],
        "sections": dict(current),
        "metadata": {"reported": reported_times(doc)},
    }
    changed: set[str] = set()
    stamped = False
    for name, patch in update.patches.items():
        old = _section(doc, name)
        if patch is None:
            value, differs = {}, bool(old)
            if max_depth < 1:
                raise _too_deep(name, max_depth)
        else:
            try:
                if max_depth < 1:
                    raise _TooDeep()
                value, differs = _merged(old, patch, max_depth - 1)
            except _TooDeep:
                raise _too_deep(name, max_depth) from None
        if name == "reported" and update.stamp:
            times = {} if patch is None else _stamp(reported_times(doc), patch, now)
            if patch is None or patch:
                new["metadata"] = {"reported": times}
                stamped = True
        if differs:
            changed.add(name)
            new["sections"][name] = {"version": current[name]["version"] + 1, "timestamp": now}
            if name == "tags":
                new["tags"] = value
            else:
                new["state"][name] = value
    if not changed:
        # A report of values the shadow has already: only their times move
        # (stored, not announced: nothing a client compares with changed).
        return UpdateResult(new if stamped else doc, changed=False, desired_changed=False,
                            stamped=stamped)
    head = compact({"state": new["state"], "tags": new["tags"]})
    size = len(head) if head.isascii() else len(head.encode("utf-8"))
    if size > max_bytes:
        raise ShadowTooLarge(
            "the shadow would be %d bytes, more than the limit of %d" % (size, max_bytes)
        )
    new["version"] = doc["version"] + 1
    new["timestamp"] = now
    # The whole document's text is the head's and the rest's (the keys in
    # the order of C{new}): state and tags are encoded once, and the times
    # of this update (several: the document's, the section's, each key
    # reported) are one text.
    now_text = compact(now)
    version = new["version"]
    tail = '"version":%s,"timestamp":%s,"sections":%s,"metadata":{"reported":%s}}' % (
        version if type(version) is int else compact(version), now_text,
        _sections_text(new["sections"], now, now_text),
        _times_text(new["metadata"]["reported"], now, now_text))
    return UpdateResult(new, changed=True, desired_changed="desired" in changed, stamped=True,
                        text=head[:-1] + "," + tail)


def _too_deep(name: str, max_depth: int) -> ShadowTooLarge:
    return ShadowTooLarge("the shadow's %s section would be nested deeper than %d levels"
                          % (name, max_depth))


def view(doc: dict[str, Any], include_tags: bool = True) -> dict[str, Any]:
    """The document as clients see it, with the computed delta."""
    desired = doc["state"]["desired"]
    reported = doc["state"]["reported"]
    out: dict[str, Any] = {
        "state": {
            "desired": desired,
            "reported": reported,
            "delta": delta(desired, reported),
        },
        "version": doc["version"],
        "timestamp": doc["timestamp"],
        "sections": sections(doc),
        "metadata": {"reported": reported_times(doc)},
    }
    if include_tags:
        out["tags"] = doc["tags"]
    else:
        out["sections"].pop("tags")
    return out


def parse_update(body: Any, allow_tags: bool) -> ShadowUpdate:
    """
    Read an update as REST clients send it::

        {"state": {"desired": {...}, "reported": {...}}, "tags": {...},
         "version": N}

    @raise InvalidShadowUpdate: with a message that names what is wrong.
    """
    if not isinstance(body, dict):
        raise InvalidShadowUpdate("the shadow update must be a JSON object")
    unknown = set(body) - {"state", "tags", "version", "versions"}
    if unknown:
        raise InvalidShadowUpdate(
            "unknown shadow field(s): %s" % ", ".join(sorted(unknown))
        )
    patches: dict[str, dict[str, Any] | None] = {}
    if "state" in body:
        state = body["state"]
        if not isinstance(state, dict):
            raise InvalidShadowUpdate("shadow.state must be an object")
        unknown = set(state) - {"desired", "reported"}
        if unknown:
            raise InvalidShadowUpdate(
                "shadow.state may hold only desired and reported, not %s"
                % ", ".join(sorted(unknown))
            )
        for name in ("desired", "reported"):
            if name in state:
                patches[name] = _section_patch(state[name], "state." + name)
    if "tags" in body:
        if not allow_tags:
            raise InvalidShadowUpdate("tags may not be changed here")
        patches["tags"] = _section_patch(body["tags"], "tags")
    versions = body.get("versions")
    if versions is not None:
        if not isinstance(versions, dict) or not set(versions) <= set(SECTIONS):
            raise InvalidShadowUpdate(
                "versions must be an object of section versions, e.g. {\"desired\": 3}")
        versions = {name: _version(v, "versions." + name) for name, v in versions.items()
                    if v is not None}
    return ShadowUpdate(patches=patches, version=_version(body.get("version")),
                        versions=versions or {})


def parse_device_update(params: Any) -> ShadowUpdate:
    """
    Read the params of Dash.Shadow.Update: C{{"state": {...}, "version": N}}.
    If C{state} has C{reported} and/or C{desired}, those sections are
    updated; otherwise the whole of C{state} is an update of C{reported}.
    """
    if not isinstance(params, dict):
        raise InvalidShadowUpdate("params must be an object with a state")
    state = params.get("state")
    if not isinstance(state, dict):
        raise InvalidShadowUpdate("params.state must be an object")
    patches: dict[str, dict[str, Any] | None] = {}
    if "desired" in state or "reported" in state:
        extra = set(state) - {"desired", "reported"}
        if extra:
            raise InvalidShadowUpdate(
                "state has desired/reported and also %s" % ", ".join(sorted(extra))
            )
        for name in ("desired", "reported"):
            if name in state:
                patches[name] = _section_patch(state[name], "state." + name)
    else:
        patches["reported"] = state
    return ShadowUpdate(patches=patches, version=_version(params.get("version")))


def _section_patch(value: Any, where: str) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise InvalidShadowUpdate("%s must be an object or null" % where)


def _version(value: Any, where: str = "version") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidShadowUpdate("%s must be a non-negative integer" % where)
    return value

