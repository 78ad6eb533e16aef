"""
The authenticator's limits on failures, on a fake store and a Clock: valid
credentials always go in; failures are counted per address and per key or
device ID, at each door apart. And who a request comes from, through
trusted proxies.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from dashd.api.base import ClientAddresses
from dashd.app.auth import Authenticator
from dashd.app.keys import mint
from dashd.app.limits import FailureLimiter
from dashd.domain import tokens
from dashd.domain.errors import Busy, Unauthenticated
from dashd.domain.model import Device


class FakeStore:
    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.devices: dict[str, Any] = {}

    def key_credentials(self, key_id: str) -> Any:
        return succeed(self.keys.get(key_id))

    def device_credentials(self, device_id: str) -> Any:
        return succeed(self.devices.get(device_id))


def _outcome(d: Any) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    (result,) = results
    if hasattr(result, "value"):
        return result.value
    return result


def _authenticator(limit: int = 3) -> tuple[Authenticator, FakeStore, Clock]:
    clock = Clock()
    clock.advance(1000)
    store = FakeStore()
    auth = Authenticator(store, clock, rest_failures=FailureLimiter(clock, limit),
                         device_failures=FailureLimiter(clock, limit))
    return auth, store, clock


def _key(store: FakeStore) -> str:
    key, secret = mint("a1", "k", "admin", 0.0)
    store.keys[key.id] = (key, tokens.hash_secret(secret))
    return secret


def _device(store: FakeStore) -> str:
    device_id = tokens.new_id("d")
    token = tokens.new_device_token(device_id)
    store.devices[device_id] = (Device(id=device_id, account_id="a1", name="x", created=0.0),
                                tokens.hash_secret(token))
    return token


def test_valid_credentials_go_in_whatever_failed_from_their_address():
    auth, store, clock = _authenticator(limit=3)
    secret, token = _key(store), _device(store)
    outcomes = [_outcome(auth.api_key("k000000000000.nope", "10.0.0.1")) for _ in range(5)]
    assert [type(o) for o in outcomes] == [Unauthenticated] * 3 + [Busy] * 2
    assert "too many failed authentications from 10.0.0.1" in outcomes[-1].message
    assert "valid credentials are let in meanwhile" in outcomes[-1].message
    assert 1 <= outcomes[-1].retry_after <= 60
    # A valid key and a valid device token from the same address go in.
    assert _outcome(auth.api_key(secret, "10.0.0.1")).account_id == "a1"
    assert isinstance(_outcome(auth.device(token, "10.0.0.1")), Device)
    # The device door counts apart: its first failures are 401s.
    wrong = tokens.new_device_token(tokens.new_id("d"))
    assert isinstance(_outcome(auth.device(wrong, "10.0.0.1")), Unauthenticated)
    # The window ends.
    clock.advance(61)
    assert isinstance(_outcome(auth.api_key("k000000000000.nope", "10.0.0.1")),
                      Unauthenticated)


def test_failures_are_counted_per_key_id_across_addresses():
    auth, store, clock = _authenticator(limit=3)
    secret = _key(store)
    key_id = tokens.key_id_of(secret)
    guess = key_id + "." + "A" * 43
    outcomes = [_outcome(auth.api_key(guess, "10.0.0.%d" % i)) for i in range(5)]
    assert [type(o) for o in outcomes] == [Unauthenticated] * 3 + [Busy] * 2
    assert "too many failed authentications for %s" % key_id in outcomes[-1].message
    # The key itself still opens, from anywhere.
    assert _outcome(auth.api_key(secret, "10.0.0.9")).id == key_id
    # Device IDs likewise, at their door.
    token = _device(store)
    device_id = tokens.device_id_of(token)
    guesses = [_outcome(auth.device(device_id + "-" + "0" * 64, "10.1.0.%d" % i))
               for i in range(4)]
    assert [type(o) for o in guesses] == [Unauthenticated] * 3 + [Busy]
    assert "for %s" % device_id in guesses[-1].message
    assert isinstance(_outcome(auth.device(token, "10.1.0.1")), Device)


class FakeRequest:
    def __init__(self, peer: Any, headers: dict[str, list[str]]) -> None:
        self._peer = peer
        self.requestHeaders = Headers(headers)

    def getClientAddress(self) -> Any:
        return self._peer


def _peer(host: str) -> Any:
    return IPv4Address("TCP", host, 4000)


def test_forwarded_addresses_are_believed_only_from_trusted_proxies():
    addresses = ClientAddresses(["10.0.0.0/8", "unix"])
    xff = {"X-Forwarded-For": ["203.0.113.9, 10.0.0.7"]}
    assert addresses(FakeRequest(_peer("10.0.0.2"), xff)) == "203.0.113.9"
    # From an untrusted peer the header is the client's own: ignored.
    assert addresses(FakeRequest(_peer("192.0.2.1"), xff)) == "192.0.2.1"
    # A client's spoofed hops to the left of the first untrusted one count
    # for nothing.
    spoofed = {"X-Forwarded-For": ["10.9.9.9, 198.51.100.4", "10.0.0.8"]}
    assert addresses(FakeRequest(_peer("10.0.0.2"), spoofed)) == "198.51.100.4"
    assert addresses(FakeRequest(_peer("10.0.0.2"), {})) == "10.0.0.2"
    assert addresses(FakeRequest(UNIXAddress(b"/run/dashd.sock"), xff)) == "203.0.113.9"
    assert addresses(FakeRequest(_peer("10.0.0.2"),
                                 {"X-Forwarded-For": ["unknown\u0007"]})) == "unknown"
    # The Forwarded header only when it is the one configured.
    fwd = {"Forwarded": ['for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"'],
           "X-Forwarded-For": ["203.0.113.1"]}
    assert ClientAddresses(["10.0.0.0/8"], "Forwarded")(
        FakeRequest(_peer("10.0.0.2"), fwd)) == "2001:db8::1"
    assert addresses(FakeRequest(_peer("10.0.0.2"), fwd)) == "203.0.113.1"
    assert ClientAddresses([])(FakeRequest(_peer("10.0.0.2"), xff)) == "10.0.0.2"
