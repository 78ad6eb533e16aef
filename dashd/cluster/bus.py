"""
The nodes' bus: one Redis, reached through redis-py on two threads of
its own, never from the reactor thread.

- The I{command thread} runs, in the order they were submitted, the
  commands the node sends (publishes, presence scripts, heartbeats). The
  jobs of one reactor turn are handed to it together, at the end of the
  turn (one wake-up of the thread, not one a message), and it takes every
  job that is waiting and sends consecutive publishes in one pipeline, one
  round trip for many messages; it wakes the reactor with the results only
  when something waits for them (a live notification's publish has no
  result to give). Its backlog is bounded: when Redis is slow or gone,
  publishes beyond it are dropped (they are live notifications and calls,
  never something acknowledged) and commands fail at once with
  L{BusUnavailable}.
- The I{reader thread} holds the subscription (the broadcast channel and
  the node's own channel) and hands what arrives to the reactor in batches.
  When the connection breaks, or stays silent longer than C{stale_after}
  (every node, this one included, publishes a heartbeat a few times per
  C{cluster.node_timeout}), it reconnects with a growing pause (at most 2
  s) and, once subscribed again, tells the reactor (C{on_connected}), which
  then brings its view of the cluster up to date.

redis-py is Redis' own Python client, maintained by Redis; every socket
operation has a timeout (C{timeout}), so no thread waits forever either.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

_PUBLISH = "publish"
_CALL = "call"


class BusUnavailable(Exception):
    """Redis cannot be reached (or the bus is stopped or overloaded)."""


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "redis://..."
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc="%s:***@%s" % (parts.username or "", host)))


class RedisBus:
    def __init__(
        self,
        url: str,
        reactor: Any,
        channels: list[bytes],
        on_messages: Callable[[list[tuple[bytes, bytes]]], None],
        on_connected: Callable[[], None],
        on_disconnected: Callable[[str], None],
        timeout: float = 2.0,
        stale_after: float = 5.0,
        queue_size: int = 20000,
        batch_size: int = 500,
    ) -> None:
        self.url = url
        self._reactor = reactor
        self._channels = channels
        self._on_messages = on_messages
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._timeout = timeout
        self._stale_after = stale_after
        # Lists of jobs, one a reactor turn (or of batch_size jobs).
        self._queue: queue.Queue[list[Any]] = queue.Queue()
        self._queue_size = queue_size
        self._batch_size = batch_size
        # Jobs submitted in this reactor turn (reactor thread only)...
        self._turn: list[Any] = []
        # ...and jobs submitted that the command thread has not taken yet
        # (both threads, under the lock): at most queue_size.
        self._backlog = 0
        self._backlog_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._dropped = 0
        self._drop_logged = 0.0
        self.connected = False

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            socket_keepalive=True,
            # One quick reconnection attempt, then the error reaches the
            # caller: no command waits through an outage.
            retry=Retry(NoBackoff(), 1),
            client_name="dashd",
        )

    # Life cycle

    def start(self) -> None:
        commands = threading.Thread(target=self._run_commands, name="dashd-redis-commands",
                                    daemon=True)
        reader = threading.Thread(target=self._run_reader, name="dashd-redis-reader",
                                  daemon=True)
        self._threads = [commands, reader]
        commands.start()
        reader.start()

    def stop(self) -> Deferred[None]:
        """Take no more work; send what is queued (each command bounded by the
        timeout), then stop both threads."""
        self._hand_over()
        self._stopping.set()
        d: Deferred[None] = Deferred()

        def join() -> None:
            for thread in self._threads:
                thread.join(self._timeout * 3 + 2)
            self._reactor.callFromThread(d.callback, None)

        threading.Thread(target=join, name="dashd-redis-stop", daemon=True).start()
        return d

    # Submitting work (reactor thread)

    def publish(self, channel: bytes, message: bytes) -> Deferred[int]:
        """Publish; fire with the number of subscribers that got it."""
        return self._submit((_PUBLISH, channel, message))

    def publish_nowait(self, channel: bytes, message: bytes) -> None:
        """Publish a live notification: dropped (and counted in the log) if
        the bus cannot take it now."""
        if self._stopping.is_set():
            return
        if self._take():
            self._add((_PUBLISH, channel, message, None))
        else:
            self._dropped += 1
            now = time.monotonic()
            if now - self._drop_logged > 10:
                self._drop_logged = now
                log.warn("cluster bus: {n} messages dropped, Redis is not keeping up",
                         n=self._dropped)

    def publish_unheard(self, channel: bytes, message: bytes,
                        unheard: Callable[[Failure | None], None]) -> None:
        """Publish a message someone must hear (a call for another node):
        C{unheard} is called, on the reactor, with None if no subscriber got
        it, or with the failure if it could not be sent; when it was heard,
        nothing wakes the reactor."""
        if self._stopping.is_set():
            unheard(Failure(BusUnavailable("the cluster bus is stopped")))
        elif not self._take():
            unheard(Failure(BusUnavailable(
                "the cluster bus is overloaded (Redis is not keeping up)")))
        else:
            self._add((_PUBLISH, channel, message, _Unheard(unheard)))

    def call(self, fn: Callable[[redis.Redis], Any]) -> Deferred[Any]:
        """Run C{fn(client)} on the command thread, after what is queued."""
        return self._submit((_CALL, fn))

    def _submit(self, job: tuple[Any, ...]) -> Deferred[Any]:
        if self._stopping.is_set():
            return fail(BusUnavailable("the cluster bus is stopped"))
        if not self._take():
            return fail(BusUnavailable("the cluster bus is overloaded (Redis is not keeping up)"))
        d: Deferred[Any] = Deferred()
        self._add(job + (d,))
        return d

    def _take(self) -> bool:
        """Count one more job in the backlog, if there is room."""
        with self._backlog_lock:
            if self._backlog >= self._queue_size:
                return False
            self._backlog += 1
            return True

    def _add(self, job: tuple[Any, ...]) -> None:
        if not self._turn:
            self._reactor.callLater(0, self._hand_over)
        self._turn.append(job)
        if len(self._turn) >= self._batch_size:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the command thread the jobs of this turn."""
        if self._turn:
            jobs, self._turn = self._turn, []
            self._queue.put_nowait(jobs)

    # The command thread

    def _run_commands(self) -> None:
        client = self._client()
        try:
            while True:
                try:
                    batch = self._queue.get(timeout=0.2)
                except queue.Empty:
                    if self._stopping.is_set():
                        return  # stopping, and everything queued is sent
                    continue
                while len(batch) < self._batch_size:
                    try:
                        batch.extend(self._queue.get_nowait())
                    except queue.Empty:
                        break
                with self._backlog_lock:
                    self._backlog -= len(batch)
                results = [(d, result) for d, result in self._run_batch(client, batch)
                           if d is not None and (not isinstance(d, _Unheard)
                                                 or isinstance(result, Failure) or not result)]
                if results:
                    self._reactor.callFromThread(_deliver, results)
        finally:
            client.close()

    def _run_batch(self, client: redis.Redis, batch: list[Any]) -> list[tuple[Any, Any]]:
        results: list[tuple[Any, Any]] = []
        i = 0
        while i < len(batch):
            if batch[i][0] == _PUBLISH:
                j = i
                while j < len(batch) and batch[j][0] == _PUBLISH:
                    j += 1
                results.extend(self._publish_many(client, batch[i:j]))
                i = j
                continue
            _, fn, d = batch[i]
            try:
                results.append((d, fn(client)))
            except redis.RedisError as e:
                results.append((d, Failure(BusUnavailable("Redis: %s" % e))))
            except Exception:
                results.append((d, Failure()))
            i += 1
        return results

    def _publish_many(self, client: redis.Redis, jobs: list[Any]) -> list[tuple[Any, Any]]:
        try:
            pipe = client.pipeline(transaction=False)
            for _, channel, message, _d in jobs:
                pipe.publish(channel, message)
            counts = pipe.execute()
        except redis.RedisError as e:
            failure = Failure(BusUnavailable("Redis: %s" % e))
            return [(job[3], failure) for job in jobs]
        return [(job[3], count) for job, count in zip(jobs, counts)]

    # The reader thread

    def _run_reader(self) -> None:
        pause = 0.1
        while not self._stopping.is_set():
            client = self._client()
            pubsub = client.pubsub()
            try:
                pubsub.subscribe(*self._channels)
                confirmed = 0
                last = time.monotonic()
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=min(1.0, self._stale_after / 2))
                    now = time.monotonic()
                    if message is None:
                        if now - last > self._stale_after:
                            raise redis.ConnectionError(
                                "no message for %.1f s on the subscription" % (now - last))
                        continue
                    last = now
                    if message["type"] == "subscribe":
                        confirmed += 1
                        if confirmed == len(self._channels):
                            pause = 0.1
                            self.connected = True
                            self._reactor.callFromThread(self._on_connected)
                        continue
                    if message["type"] != "message":
                        continue
                    batch = [(message["channel"], message["data"])]
                    while len(batch) < self._batch_size:
                        more = pubsub.get_message(timeout=0)
                        if more is None:
                            break
                        if more["type"] == "message":
                            batch.append((more["channel"], more["data"]))
                    self._reactor.callFromThread(self._on_messages, batch)
            except (redis.RedisError, OSError) as e:
                if self._stopping.is_set():
                    break
                if self.connected:
                    self.connected = False
                    self._reactor.callFromThread(self._on_disconnected, str(e))
                self._stopping.wait(pause)
                pause = min(pause * 2, 2.0)
            finally:
                try:
                    pubsub.close()
                    client.close()
                except Exception:
                    pass


class _Unheard:
    """What to call when a message of L{RedisBus.publish_unheard} was not
    heard."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Failure | None], None]) -> None:
        self.fn = fn


def _deliver(results: list[tuple[Any, Any]]) -> None:
    for d, result in results:
        if isinstance(d, _Unheard):
            try:
                d.fn(result if isinstance(result, Failure) else None)
            except Exception:
                log.failure("cluster bus: a message not heard")
        elif isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
