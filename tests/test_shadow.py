"""The shadow's semantics, as pure functions."""

from __future__ import annotations

import re

import pytest

from dashd.domain import shadow
from dashd.domain.shadow import ShadowUpdate


def doc(desired=None, reported=None, tags=None, version=0):
    d = shadow.empty()
    d["state"] = {"desired": desired or {}, "reported": reported or {}}
    d["tags"] = tags or {}
    d["version"] = version
    return d


def test_delta_is_desired_minus_reported_recursively():
    assert shadow.delta({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]},
                        {"a": 1, "b": {"c": 2}, "e": [1, 2]}) == {"b": {"d": 3}}
    assert shadow.delta({"a": {"b": 1}}, {"a": 5}) == {"a": {"b": 1}}
    assert shadow.delta({"a": 1}, {"a": 1.0}) == {}
    assert shadow.delta({"a": True}, {"a": 1}) == {"a": True}
    assert shadow.delta({"a": [1, True]}, {"a": [1, 1]}) == {"a": [1, True]}
    assert shadow.delta({"a": None}, {}) == {"a": None}
    assert shadow.delta({}, {"x": 1}) == {}


def test_merge_patch():
    assert shadow.merge_patch({"a": 1, "b": {"c": 2}}, {"b": {"c": None, "d": 4}, "e": 5}) == {
        "a": 1, "b": {"d": 4}, "e": 5}
    assert shadow.merge_patch({"a": {"b": 1}}, {"a": 7}) == {"a": 7}
    assert shadow.merge_patch({"a": 7}, {"a": {"b": None}}) == {"a": {}}


def test_update_bumps_version_only_on_change():
    d = doc()
    r = shadow.apply_update(d, ShadowUpdate({"desired": {"x": 1}}), now=10.0)
    assert r.changed and r.desired_changed and r.document["version"] == 1
    assert r.document["timestamp"] == 10.0
    assert d["version"] == 0 and d["state"]["desired"] == {}  # input untouched
    r2 = shadow.apply_update(r.document, ShadowUpdate({"desired": {"x": 1}}), now=11.0)
    assert not r2.changed and r2.document["version"] == 1
    r3 = shadow.apply_update(r.document, ShadowUpdate({"reported": {"x": 1}}), now=12.0)
    assert r3.changed and not r3.desired_changed and r3.document["version"] == 2


def test_version_conflict():
    d = doc(version=5)
    with pytest.raises(shadow.VersionConflict) as e:
        shadow.apply_update(d, ShadowUpdate({"desired": {"x": 1}}, version=4), now=0)
    assert str(e.value) == "shadow version 4 is stale: the current version is 5"
    r = shadow.apply_update(d, ShadowUpdate({"desired": {"x": 1}}, version=5), now=0)
    assert r.document["version"] == 6


def test_limits():
    with pytest.raises(shadow.ShadowTooLarge):
        shadow.apply_update(doc(), ShadowUpdate({"reported": {"x": "y" * 100}}), 0, max_bytes=80)
    deep = {"a": {"b": {"c": {"d": 1}}}}
    with pytest.raises(shadow.ShadowTooLarge):
        shadow.apply_update(doc(), ShadowUpdate({"tags": deep}), 0, max_depth=3)
    shadow.apply_update(doc(), ShadowUpdate({"tags": deep}), 0, max_depth=4)


def test_parse_device_update():
    u = shadow.parse_device_update({"state": {"temp": 20}})
    assert u.patches == {"reported": {"temp": 20}} and u.version is None
    u = shadow.parse_device_update({"state": {"desired": None, "reported": {"a": 1}}, "version": 3})
    assert u.patches == {"desired": None, "reported": {"a": 1}} and u.version == 3
    for bad in (None, [], {"state": 1}, {"state": {"reported": 1}},
                {"state": {"reported": {}, "x": 1}}, {"state": {}, "version": -1},
                {"state": {}, "version": True}):
        with pytest.raises(shadow.InvalidShadowUpdate):
            shadow.parse_device_update(bad)


def test_parse_rest_update():
    u = shadow.parse_update({"state": {"desired": {"a": 1}}, "tags": {"t": 1}, "version": 2},
                            allow_tags=True)
    assert u.patches == {"desired": {"a": 1}, "tags": {"t": 1}} and u.version == 2
    with pytest.raises(shadow.InvalidShadowUpdate, match="tags may not be changed"):
        shadow.parse_update({"tags": {}}, allow_tags=False)
    with pytest.raises(shadow.InvalidShadowUpdate, match="unknown shadow field"):
        shadow.parse_update({"metadata": {}}, allow_tags=True)


def test_view_hides_tags_from_devices():
    d = doc(desired={"a": 1}, tags={"t": 1}, version=3)
    assert shadow.view(d)["tags"] == {"t": 1}
    device_view = shadow.view(d, include_tags=False)
    assert "tags" not in device_view and device_view["state"]["delta"] == {"a": 1}


def test_each_section_counts_its_own_versions_and_updates_may_be_conditioned_on_them():
    doc = shadow.empty()
    r = shadow.apply_update(doc, shadow.ShadowUpdate({"desired": {"fan": "auto"}}), 1.0)
    doc = r.document
    for t in (2.0, 3.0, 4.0):  # a chatty device
        doc = shadow.apply_update(doc, shadow.ShadowUpdate({"reported": {"temp": t}}), t).document
    assert doc["version"] == 4
    assert shadow.sections(doc) == {"desired": {"version": 1, "timestamp": 1.0},
                                    "reported": {"version": 3, "timestamp": 4.0},
                                    "tags": {"version": 0, "timestamp": None}}
    # Conditioned on desired: the reports meanwhile are not in the way...
    r = shadow.apply_update(doc, shadow.ShadowUpdate({"desired": {"setpoint": 22}},
                                                     versions={"desired": 1}), 5.0)
    assert r.changed and shadow.sections(r.document)["desired"]["version"] == 2
    # ...a change of desired meanwhile is.
    with pytest.raises(shadow.SectionConflict,
                       match="the shadow's desired is at version 2, not 1: it was changed meanwhile"):
        shadow.apply_update(r.document, shadow.ShadowUpdate({"desired": {"x": 1}},
                                                            versions={"desired": 1}), 6.0)
    # The document's version still works as before.
    with pytest.raises(shadow.VersionConflict):
        shadow.apply_update(r.document, shadow.ShadowUpdate({"desired": {"x": 1}}, version=4), 6.0)


def test_reported_keys_keep_when_they_were_last_reported():
    doc = shadow.apply_update(shadow.empty(), shadow.ShadowUpdate(
        {"reported": {"env": {"temp": 20, "hum": 40}, "led": True}}), 1.0).document
    assert shadow.reported_times(doc) == {"env": {"temp": 1.0, "hum": 1.0}, "led": 1.0}
    # The same value reported again: its time moves, nothing else changes.
    r = shadow.apply_update(doc, shadow.ShadowUpdate({"reported": {"env": {"temp": 20}}}), 2.0)
    assert not r.changed and r.stamped
    assert r.document["version"] == doc["version"]
    assert shadow.reported_times(r.document) == {"env": {"temp": 2.0, "hum": 1.0}, "led": 1.0}
    # Deleting a key deletes its time; a report derived from something else
    # (the firmware in a heartbeat) moves none.
    r = shadow.apply_update(r.document, shadow.ShadowUpdate({"reported": {"led": None}}), 3.0)
    assert shadow.reported_times(r.document) == {"env": {"temp": 2.0, "hum": 1.0}}
    r = shadow.apply_update(r.document, shadow.ShadowUpdate({"reported": {"ota": {"v": 1}}},
                                                            stamp=False), 4.0)
    assert "ota" not in shadow.reported_times(r.document)
    # A document stored before sections existed reads as at version 0.
    old = {"state": {"desired": {}, "reported": {}}, "tags": {}, "version": 7, "timestamp": 1.0}
    assert shadow.sections(old)["desired"] == {"version": 0, "timestamp": None}
    view = shadow.view(old)
    assert view["sections"]["tags"]["version"] == 0 and view["metadata"] == {"reported": {}}


@pytest.mark.parametrize("versions, message", [
    ("3", "versions must be an object of section versions"),
    ({"state": 1}, "versions must be an object of section versions"),
    ({"desired": -1}, "versions.desired must be a non-negative integer"),
    ({"desired": True}, "versions.desired must be a non-negative integer"),
])
def test_bad_section_versions_are_refused(versions, message):
    with pytest.raises(shadow.InvalidShadowUpdate, match=re.escape(message)):
        shadow.parse_update({"state": {"desired": {"a": 1}}, "versions": versions},
                            allow_tags=True)


def test_the_document_s_text_is_encoded_once_and_is_its_compact_json():
    from dashd.jsontext import compact

    d = doc(desired={"led": "on"}, reported={"t": 1}, tags={"site": "Zürich"})
    for update, now in [
        (ShadowUpdate(patches={"reported": {"t": 2.5, "name": "é \u2028 \"q\""}}), 1000.25),
        (ShadowUpdate(patches={"desired": None}), 1001.0),
        (ShadowUpdate(patches={"tags": {"site": None, "n": [1, 2.0, None, True]}}), 1002),
        (ShadowUpdate(patches={"reported": {"t": 3}}, stamp=False), 1003.5),
    ]:
        result = shadow.apply_update(d, update, now)
        assert result.changed and result.text == compact(result.document)
        assert shadow.encoded(result) == result.text
        d = result.document
    # Only the times of a report move: nothing was encoded.
    result = shadow.apply_update(d, ShadowUpdate(patches={"reported": {"t": 3}}), 1004.0)
    assert not result.changed and result.stamped and result.text is None
    assert shadow.encoded(result) == compact(result.document)
