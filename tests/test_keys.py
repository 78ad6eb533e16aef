"""
API keys on a Clock (L{dashd.app.keys}, L{dashd.app.auth}): revoking
respects expiry whoever asks (the REST API's key or dashctl's console),
expiry and revocation through the authenticator's cache, and the two
limits the authenticator applies (requests per key, failures per address)
over their windows. End to end (HTTP statuses, headers, the log, dashctl's
process and the control socket): test_keys in test_rest.py, test_limits.py,
test_ctl.py.
"""

from __future__ import annotations

import pytest

from clocked import World, done, failure_of
from dashd.app import console
from dashd.domain.errors import Busy, LastAdminKey, Unauthenticated


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


@pytest.fixture
def limited(tmp_path):
    w = World(tmp_path, {"limits.requests_per_second": 5.0, "limits.burst": 5,
                         "limits.failed_auth_per_minute": 4})
    yield w
    w.close()


def admin_key(world, name, expires=None):
    return done(world.app.keys.create(world.admin, name=name, expires=expires))


# Revoking


def test_dashctl_revoke_respects_expiry(world):
    """One live admin key and one expired: the live one is the last that
    opens anything, and dashctl (the console) may not revoke it any more
    than the REST API may (issue 14: dashctl passed no time, read as 0)."""
    brief, _ = admin_key(world, "brief", expires=world.clock.seconds() + 60)
    world.clock.advance(61)
    live = world.admin.id
    message = "%s is the account's last admin key; create another first" % live
    error = failure_of(console.run(world.app, "keys revoke", {"key_id": live}), LastAdminKey)
    assert error.message == message
    error = failure_of(world.app.keys.revoke(world.admin, live), LastAdminKey)
    assert error.message == message
    assert done(world.auth.api_key(world.admin_secret)) == world.admin


def test_revoke_before_the_other_key_expires(world):
    """The same two keys a minute earlier: two live admin keys, so either
    may go."""
    brief, _ = admin_key(world, "brief", expires=world.clock.seconds() + 60)
    world.clock.advance(59)
    result = done(console.run(world.app, "keys revoke", {"key_id": world.admin.id}))
    assert result.result == {"id": world.admin.id, "deleted": True}


def test_an_expired_admin_key_may_be_revoked_beside_the_last_live_one(world):
    brief, _ = admin_key(world, "brief", expires=world.clock.seconds() + 60)
    world.clock.advance(61)
    assert done(world.app.keys.revoke(world.admin, brief.id)) == brief
    failure_of(world.app.keys.revoke(world.admin, world.admin.id), LastAdminKey)


def test_revoke_closes_streams_and_forgets_the_cached_key_at_once(world):
    key, secret = admin_key(world, "watcher")
    assert done(world.auth.api_key(secret)) == key  # cached now
    stream = Stream(key)
    other = Stream(world.admin)
    world.hub.subscribe(stream)
    world.hub.subscribe(other)
    done(console.run(world.app, "keys revoke", {"key_id": key.id}))
    assert stream.revoked_times == 1 and other.revoked_times == 0
    error = failure_of(world.auth.api_key(secret), Unauthenticated)
    assert error.message == "unknown API key"


class Stream:
    """A notification subscriber (ISubscriber) that records what it is told."""

    def __init__(self, key):
        self.key = key
        self.revoked_times = 0

    def deliver(self, event):
        pass

    def revoked(self):
        self.revoked_times += 1


# The authenticator's cache


def test_an_expired_key_is_refused_even_from_the_cache(world):
    key, secret = admin_key(world, "brief", expires=world.clock.seconds() + 10)
    world.clock.advance(8)
    assert done(world.auth.api_key(secret)) == key  # read, and cached for 5 s
    world.clock.advance(1.99)
    assert done(world.auth.api_key(secret)) == key
    world.clock.advance(0.01)
    error = failure_of(world.auth.api_key(secret), Unauthenticated)
    assert error.message == "API key %s has expired" % key.id


def test_a_key_deleted_behind_dashd_s_back_opens_things_until_the_cache_expires(world):
    """What the cache costs: a key removed from the store by anything but
    the application (which forgets it at once) still opens for 5 s."""
    key, secret = admin_key(world, "doomed")
    done(world.auth.api_key(secret))
    done(world.store.delete_key(key.id, key.account_id, world.clock.seconds()))
    world.clock.advance(4.9)
    assert done(world.auth.api_key(secret)) == key
    world.clock.advance(0.1)
    failure_of(world.auth.api_key(secret), Unauthenticated)


def test_a_wrong_secret_for_a_cached_key_is_refused(world):
    done(world.auth.api_key(world.admin_secret))
    wrong = world.admin_secret[:-4] + "xxxx"
    error = failure_of(world.auth.api_key(wrong), Unauthenticated)
    assert error.message == "unknown API key"


# Limits


def test_requests_per_key_over_the_burst_wait_for_the_bucket_to_refill(limited):
    w = limited
    other, other_secret = admin_key(w, "other")
    for _ in range(5):
        done(w.auth.api_key(w.admin_secret))
    error = failure_of(w.auth.api_key(w.admin_secret), Busy)
    assert error.message == "key %s is over its limit of 5 requests a second" % w.admin.id
    assert error.retry_after == 1
    # Another key is not affected.
    assert done(w.auth.api_key(other_secret)) == other
    # One more token every 0.2 s.
    w.clock.advance(0.19)
    failure_of(w.auth.api_key(w.admin_secret), Busy)
    w.clock.advance(0.01)
    done(w.auth.api_key(w.admin_secret))
    failure_of(w.auth.api_key(w.admin_secret), Busy)
    w.clock.advance(1.0)
    for _ in range(5):
        done(w.auth.api_key(w.admin_secret))
