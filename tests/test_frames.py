"""Frames in the Mongoose OS dialect."""

from __future__ import annotations

import json

import pytest

from dashd.channel import frames


def test_requests_notifications_and_responses():
    r = frames.parse_frame({"id": 1, "method": "Dash.Heartbeat", "params": {"a": 1},
                            "src": "d1-esp32_ABC", "dst": "wss://x/api/v2/rpc", "key": "t",
                            "tag": "x", "auth": {}, "v": 2})
    assert r == frames.Request("Dash.Heartbeat", {"a": 1}, 1, "d1-esp32_ABC")
    r = frames.parse_frame({"method": "Dash.Log", "args": {"data": "x"}})
    assert r == frames.Request("Dash.Log", {"data": "x"}, None, None)
    r = frames.parse_frame({"method": "M", "id": None, "params": 1, "args": 2})
    assert r.id is None and r.params == 1
    assert frames.parse_frame({"id": "7", "result": None}) == frames.Response("7", None)
    assert frames.parse_frame({"id": 7, "error": {"code": 404, "message": "nope"}}) == \
        frames.Response(7, error={"code": 404, "message": "nope"})
    assert frames.parse_frame({"id": 7, "error": "boom"}).error == {"code": -32603,
                                                                    "message": "boom"}
    # Mongoose OS says "done" with neither result nor error (OTA.Commit).
    assert frames.parse_frame({"id": 8, "src": "d1-esp32_A"}) == frames.Response(8, None)


@pytest.mark.parametrize("value, message", [
    ([1], "must be a JSON object"),
    ({"id": [1], "method": "x"}, "id must be"),
    ({"id": True, "method": "x"}, "id must be"),
    ({"id": 1, "method": ""}, "method must be"),
    ({"params": {}}, "needs a method"),
])
def test_invalid_frames(value, message):
    with pytest.raises(frames.InvalidFrame, match=message):
        frames.parse_frame(value)


def test_encoding_addresses_the_device():
    assert json.loads(frames.encode_request(3, "Sys.GetInfo", None, "d1-esp32_A")) == {
        "id": 3, "method": "Sys.GetInfo", "dst": "d1-esp32_A"}
    assert json.loads(frames.encode_request(3, "X", {"p": 1})) == {
        "id": 3, "method": "X", "params": {"p": 1}}
    assert json.loads(frames.encode_result(4, True, "s")) == {"id": 4, "result": True, "dst": "s"}
    assert json.loads(frames.encode_error(None, -32700, "bad")) == {
        "id": None, "error": {"code": -32700, "message": "bad"}}
