"""
Who is calling: API keys for the REST API and the notification stream,
device tokens for the device channel. The two never open each other's
door, and the refusal says so, so that a misconfigured client learns what
is wrong without anyone learning anything about valid secrets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dashd.app.limits import FailureLimiter, TokenBucket, retry_after
from dashd.domain import tokens
from dashd.domain.errors import Busy, DomainError, Unauthenticated
from dashd.domain.model import ApiKey, Device
from dashd.store import IStore, StoreError

log = Logger()

# The two doors, as the log names them.
REST = "REST"
DEVICE_CHANNEL = "device channel"


def _key_id(secret: str | None) -> str | None:
    return tokens.key_id_of(secret) if secret else None


class Authenticator:
    """
    Checks secrets against the store: a lookup by the record ID the secret
    starts with, then a constant-time comparison of hashes. Valid API keys
    are cached for a few seconds (a REST call should not cost a database
    round trip); revoking a key through L{forget} takes effect at once.

    Failures are limited, never the credentials: each door (API keys at the
    REST API and the notification stream, device tokens at the device
    channel) counts its failures per client address and per key or device ID
    the secret names (L{FailureLimiter}); past the limit, a failure there is
    answered 429 with Retry-After instead of 401 and no longer logged one by
    one. A valid secret is always let in, whatever others failed from its
    address (a NAT, a proxy) or with its ID.
    """

    def __init__(
        self,
        store: IStore,
        clock: IReactorTime,
        cache_seconds: float = 5.0,
        rest_failures: FailureLimiter | None = None,
        device_failures: FailureLimiter | None = None,
        requests: TokenBucket | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._failures = {REST: rest_failures, DEVICE_CHANNEL: device_failures}
        self._requests = requests
        # key ID -> (key, its secret's hash, valid until)
        self._keys: dict[str, tuple[ApiKey, str, float]] = {}

    def _failed(self, door: str, address: str | None, record_id: str | None,
                error: Unauthenticated) -> DomainError:
        """Count a failure at C{door}; return what to answer it with: the
        error itself, or L{Busy} once the address or the record ID the
        secret named is past its limit."""
        limiter = self._failures[door]
        if limiter is None or limiter.limit <= 0:
            log.warn("{door}: failed authentication from {address}: {why}",
                     door=door, address=address, why=error.message)
            return error
        over = []
        for name, what in ((address, "from %s" % address),
                           (record_id and "id:" + record_id, "for %s" % record_id)):
            if not name:
                continue
            count = limiter.failed(name)
            if count == limiter.limit:
                log.warn("{door}: {count} failed authentications {what} within {window} s;"
                         " answering its failures with 429 until the window ends (valid "
                         "credentials are still let in)", door=door, count=count, what=what,
                         window=limiter.window)
            if count > limiter.limit:
                over.append((what, limiter.blocked(name)))
        if not over:
            log.warn("{door}: failed authentication from {address}: {why}",
                     door=door, address=address, why=error.message)
            return error
        what, wait = max(over, key=lambda o: o[1])
        return Busy("too many failed authentications %s; try again in %d s (valid credentials "
                    "are let in meanwhile)" % (what, retry_after(wait)),
                    retry_after=retry_after(wait))

    def api_key(self, secret: str | None, address: str | None = None) -> Deferred[ApiKey]:
        """The L{ApiKey} for C{secret}, counted against its rate limit.
        @raise Unauthenticated: no key, or a wrong or expired one.
        @raise Busy: the key's rate; a failure past the limit of failures
            from the address or for the key ID.

        A key in the cache is checked without a store job or a generator:
        this is on the path of every REST call."""
        try:
            key = self._cached_key(secret)
            if key is not None:
                return succeed(self._admit(key))
        except Unauthenticated as e:
            return fail(self._failed(REST, address, _key_id(secret), e))
        except Busy:
            return fail()  # over the key's rate: a failed Deferred, as promised
        d = self._stored_key(secret)  # type: ignore[arg-type]
        d.addErrback(self._stale_if_unreachable, secret)
        d.addErrback(self._refused, REST, address, _key_id(secret))
        d.addCallback(self._admit)
        return d

    def refused(self, error: Unauthenticated, address: str | None) -> DomainError:
        """Count a failed authentication at the REST door that was not a
        secret's (a notification ticket's); return what to answer."""
        return self._failed(REST, address, None, error)

    def api_key_by_id(self, key_id: str, address: str | None = None) -> Deferred[ApiKey]:
        """The key with that ID, if it still works (for a notification
        ticket, which stands for its key), counted against its rate limit.
        @raise Unauthenticated: revoked or expired."""
        now = self._clock.seconds()
        cached = self._keys.get(key_id)
        if cached is not None and cached[2] > now:
            d: Deferred[Any] = succeed((cached[0], cached[1]))
        else:
            d = self._store.key_credentials(key_id)

        def check(found: tuple[ApiKey, str] | None) -> ApiKey:
            if found is None:
                raise Unauthenticated("the ticket's API key no longer works")
            key = found[0]
            if key.expired(self._clock.seconds()):
                raise Unauthenticated("API key %s has expired" % key.id)
            return key

        d.addCallback(check)
        d.addErrback(self._refused, REST, address, key_id)
        return d.addCallback(self._admit)

    def _refused(self, failure: Failure, door: str, address: str | None,
                 record_id: str | None) -> Failure:
        if failure.check(Unauthenticated):
            return Failure(self._failed(door, address, record_id, failure.value))
        return failure

    def _admit(self, key: ApiKey) -> ApiKey:
        """Count a request against the key's rate limit."""
        if self._requests is not None:
            wait = self._requests.take(key.id)
            if wait:
                raise Busy(
                    "key %s is over its limit of %g requests a second"
                    % (key.id, self._requests.rate),
                    retry_after=retry_after(wait),
                )
        return key

    def _cached_key(self, secret: str | None) -> ApiKey | None:
        """The key from the cache; None if the store must be asked (the
        key is not cached, or the secret may be a device token)."""
        if secret is None:
            raise Unauthenticated(
                "an API key is required: send \"Authorization: Bearer KEY\" or ?access_token=KEY"
            )
        key_id = tokens.key_id_of(secret)
        if key_id is None:
            return None
        now = self._clock.seconds()
        cached = self._keys.get(key_id)
        if cached is None or cached[2] <= now:
            return None
        return self._checked(secret, cached[0], cached[1], now)

    def _checked(self, secret: str, key: ApiKey, secret_hash: str, now: float) -> ApiKey:
        if not tokens.matches(secret, secret_hash):
            raise Unauthenticated("unknown API key")
        if key.expired(now):
            raise Unauthenticated("API key %s has expired" % key.id)
        return key

    @inlineCallbacks
    def _stored_key(self, secret: str) -> Any:
        key_id = tokens.key_id_of(secret)
        if key_id is None:
            device_id = tokens.device_id_of(secret)
            if device_id is not None:
                found = yield self._store.device_credentials(device_id)
                if found is not None and tokens.matches(secret, found[1]):
                    raise Unauthenticated(
                        "this is a device token: it opens only the device channel "
                        "(/api/v2/rpc); use an API key here"
                    )
            raise Unauthenticated("unknown API key")
        found = yield self._store.key_credentials(key_id)
        now = self._clock.seconds()
        if found is None:
            self._keys.pop(key_id, None)
            raise Unauthenticated("unknown API key")
        key, secret_hash = found
        if len(self._keys) > 10000:
            self._keys.clear()
        self._keys[key_id] = (key, secret_hash, now + self._cache_seconds)
        return self._checked(secret, key, secret_hash, now)

    def _stale_if_unreachable(self, failure: Failure, secret: str) -> ApiKey:
        """The store cannot be asked (the database is away): a key that was
        valid when last read still is, unless revoked since (a revocation
        removes it from the cache, and needs the database anyway), so calls
        to the devices this node holds keep working."""
        failure.trap(StoreError)
        key_id = tokens.key_id_of(secret)
        cached = self._keys.get(key_id) if key_id else None
        if cached is None:
            failure.raiseException()
        return self._checked(secret, cached[0], cached[1], self._clock.seconds())

    def forget(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    def device(self, token: str | None, address: str | None = None) -> Deferred[Device]:
        """The L{Device} a token opens.
        @raise Unauthenticated: no token or a wrong one.
        @raise Busy: a failure past the limit of failures from the address
            or for the device ID.

        Callbacks rather than a generator: a refusal raised in a generator
        leaves its frames and the failure in a reference cycle, and a fleet
        with a wrong token retries all day."""
        record_id = tokens.device_id_of(token) if token else None
        try:
            d = self._device(token)
        except Unauthenticated as e:
            d = fail(e)
        d.addErrback(self._refused, DEVICE_CHANNEL, address, record_id)
        return d

    def _device(self, token: str | None) -> Deferred[Device]:
        if token is None:
            raise Unauthenticated(
                "a device token is required: send \"Authorization: Bearer TOKEN\" "
                "or ?access_token=TOKEN"
            )
        device_id = tokens.device_id_of(token)
        if device_id is not None:
            return self._store.device_credentials(device_id).addCallback(
                self._device_of, token)
        key_id = tokens.key_id_of(token)
        if key_id is None:
            raise Unauthenticated("unknown device token")
        return self._store.key_credentials(key_id).addCallback(self._not_a_key, token)

    @staticmethod
    def _device_of(found: tuple[Device, str] | None, token: str) -> Device:
        if found is None or not tokens.matches(token, found[1]):
            raise Unauthenticated("unknown device token")
        return found[0]

    @staticmethod
    def _not_a_key(found: tuple[ApiKey, str] | None, token: str) -> Device:
        if found is not None and tokens.matches(token, found[1]):
            raise Unauthenticated(
                "this is an API key: it cannot open the device channel; use the device's token"
            )
        raise Unauthenticated("unknown device token")
