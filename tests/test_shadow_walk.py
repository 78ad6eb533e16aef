"""
L{shadow.apply_update} walks only what an update's patches reach (for the
depth limit and to tell whether anything changed) and writes the times of
an update once: the same documents, the same text and the same errors as
the whole-section walk it replaced (L{reference_apply_update}, kept here
as it was), for any stored document within the limits.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dashd.domain import shadow
from dashd.domain.shadow import ShadowTooLarge, ShadowUpdate, UpdateResult
from dashd.jsontext import compact


def reference_apply_update(doc, update, now, max_bytes=shadow.DEFAULT_MAX_BYTES,
                           max_depth=shadow.DEFAULT_MAX_DEPTH):
    """apply_update as it was at ca3e61e: each patched section merged, then
    walked whole for its depth and compared whole with the old one."""
    if update.version is not None and update.version != doc["version"]:
        raise shadow.VersionConflict(update.version, doc["version"])
    current = shadow.sections(doc)
    for name, version in update.versions.items():
        if version != current[name]["version"]:
            raise shadow.SectionConflict(name, version, current[name]["version"])
    new = {
        "state": dict(doc["state"]),
        "tags": doc["tags"],
        "version": doc["version"],
        "timestamp": doc["timestamp"],
        "sections": dict(current),
        "metadata": {"reported": shadow.reported_times(doc)},
    }
    changed = set()
    stamped = False
    for name, patch in update.patches.items():
        old = shadow._section(doc, name)
        value = {} if patch is None else shadow.merge_patch(old, patch)
        if shadow.depth(value) > max_depth:
            raise ShadowTooLarge("the shadow's %s section would be nested deeper than %d levels"
                                 % (name, max_depth))
        if name == "reported" and update.stamp:
            times = {} if patch is None else shadow._stamp(shadow.reported_times(doc), patch,
                                                           now)
            if patch is None or patch:
                new["metadata"] = {"reported": times}
                stamped = True
        if not shadow._same(value, old):
            changed.add(name)
            new["sections"][name] = {"version": current[name]["version"] + 1, "timestamp": now}
            if name == "tags":
                new["tags"] = value
            else:
                new["state"][name] = value
    if not changed:
        return UpdateResult(new if stamped else doc, changed=False, desired_changed=False,
                            stamped=stamped)
    size = len(compact({"state": new["state"], "tags": new["tags"]}).encode("utf-8"))
    if size > max_bytes:
        raise ShadowTooLarge("the shadow would be %d bytes, more than the limit of %d"
                             % (size, max_bytes))
    new["version"] = doc["version"] + 1
    new["timestamp"] = now
    return UpdateResult(new, changed=True, desired_changed="desired" in changed, stamped=True)


KEYS = st.sampled_from(["a", "b", "é", "x\"y"])
SCALARS = (st.integers(-3, 3) | st.sampled_from([1.0, 0.0, 2.5, True, False, "s", "", "ü"]))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8)
# A patch: None deletes; objects nest.
PATCH_VALUES = st.recursive(
    st.none() | SCALARS | st.none() | st.lists(SCALARS, max_size=2),
    lambda inner: st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8)
PATCHES = st.none() | st.dictionaries(KEYS, PATCH_VALUES, max_size=4)
UPDATES = st.builds(
    lambda patches, stamp: ShadowUpdate(patches=patches, stamp=stamp),
    st.dictionaries(st.sampled_from(shadow.SECTIONS), PATCHES, max_size=3),
    st.booleans())
# Times with long shortest reprs (as time.time() gives), and small ones.
TIMES = st.sampled_from([1795963007.2496085, 1795963007.2518804, 0, 10.0, 1795963099.125])


def outcome(f, *args, **kwargs):
    try:
        r = f(*args, **kwargs)
    except shadow.SHADOW_ERRORS as e:
        return type(e), str(e)
    return r


def _u(patches, stamp=True):
    return ShadowUpdate(patches=patches, stamp=stamp)


@settings(max_examples=1500, deadline=None)
# Each a change the walk of the patch alone must see (or not see).
@example(history=[(_u({"desired": {"a": 1}}), 1.0)], update=_u({"desired": {"a": None}}),
         now=2.0, max_depth=2, max_bytes=16384)
@example(history=[(_u({"desired": {"a": {"b": 1}}}), 1.0)],
         update=_u({"desired": {"a": {"b": None}}}), now=2.0, max_depth=2, max_bytes=16384)
@example(history=[(_u({"reported": {"a": 1}}), 1.0)], update=_u({"reported": {"a": 1.0}}),
         now=2.0, max_depth=2, max_bytes=16384)
@example(history=[(_u({"reported": {"a": 1}}), 1.0)], update=_u({"reported": {"a": True}}),
         now=2.0, max_depth=2, max_bytes=16384)
@example(history=[(_u({"tags": {"a": [1, {"b": 2}]}}), 1.0)],
         update=_u({"tags": {"a": [1, {"b": 2.0}]}}), now=2.0, max_depth=3, max_bytes=16384)
@example(history=[(_u({"tags": {"a": 5}}), 1.0)], update=_u({"tags": {"a": {}}}), now=2.0,
         max_depth=2, max_bytes=16384)
@example(history=[(_u({"tags": {"a": {}}}), 1.0)], update=_u({"tags": {"a": {}}}), now=2.0,
         max_depth=2, max_bytes=16384)
@example(history=[], update=_u({"tags": {"a": {"b": {}}}}), now=2.0, max_depth=2,
         max_bytes=16384)
@example(history=[], update=_u({"tags": {"a": {"b": [[1]]}}}), now=2.0, max_depth=3,
         max_bytes=16384)
@given(history=st.lists(st.tuples(UPDATES, TIMES), max_size=4), update=UPDATES, now=TIMES,
       max_depth=st.integers(1, 4), max_bytes=st.sampled_from([60, 200, 16384]))
def test_same_documents_text_and_errors_as_the_whole_walk(history, update, now, max_depth,
                                                          max_bytes):
    # A stored document within the limits: what earlier updates made.
    doc = shadow.empty()
    for earlier, t in history:
        r = outcome(reference_apply_update, doc, earlier, t, max_bytes, max_depth)
        if isinstance(r, UpdateResult):
            doc = r.document
    # As stored and read back (the store's cache keeps the parsed text).
    doc = json.loads(compact(doc))
    expected = outcome(reference_apply_update, doc, update, now, max_bytes, max_depth)
    got = outcome(shadow.apply_update, doc, update, now, max_bytes, max_depth)
    if not isinstance(expected, UpdateResult):
        assert got == expected
        return
    assert isinstance(got, UpdateResult)
    assert (got.changed, got.desired_changed, got.stamped) == (
        expected.changed, expected.desired_changed, expected.stamped)
    # Equal as JSON text: 1 and 1.0, True and 1, and the order of keys too.
    assert compact(got.document) == compact(expected.document)
    assert shadow.encoded(got) == compact(got.document)
    if not expected.changed and not expected.stamped:
        assert got.document is doc


def test_times_of_an_update_written_once_as_json_writes_them():
    now = 1795963007.2496085
    doc = shadow.empty()
    doc["metadata"] = {"reported": {"old": 1795963001.0000002, "n": {"deep": 17.5}}}
    doc["sections"]["desired"] = {"version": 3, "timestamp": 1795963000.3333333}
    r = shadow.apply_update(doc, ShadowUpdate({"reported": {"temp": 21.5, "n": {"k": 1}}}), now)
    assert r.text == compact(r.document)
    assert r.text.count(repr(now)) == 4  # the document's, the section's, temp's and n.k's
    assert r.document["metadata"]["reported"] == {
        "old": 1795963001.0000002, "n": {"deep": 17.5, "k": now}, "temp": now}


def test_a_section_stored_deeper_than_a_lowered_limit_takes_reports_beside_the_deep_part():
    # Stored when shadow.max_depth was 4, read with a limit of 2 now.
    doc = shadow.apply_update(shadow.empty(), ShadowUpdate({"reported": {
        "deep": {"a": {"b": {"c": 1}}}}}), 1.0, max_depth=4).document
    r = shadow.apply_update(doc, ShadowUpdate({"reported": {"temp": 20}}), 2.0, max_depth=2)
    assert r.changed and r.document["state"]["reported"]["temp"] == 20
    with pytest.raises(ShadowTooLarge):
        shadow.apply_update(doc, ShadowUpdate({"reported": {"new": {"a": {"b": 1}}}}), 3.0,
                            max_depth=2)
