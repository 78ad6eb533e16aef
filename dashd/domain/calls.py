"""
Queued calls: a call to a device made durable, delivered when the device is
online, with a state a user can trust (L{dashd.app.calls} delivers them).

States, each with the time it was reached (C{times}):

- ``queued``: stored, not sent (again);
- ``sent``: recorded as sent, durably, before the frame goes out;
- ``succeeded`` (with the device's C{result}), ``failed`` (the device's
  error C{code} and C{message}), ``timed_out`` (no answer within
  C{timeout}), ``lost`` (sent, then the connection or the node that sent it
  went away before an answer: nobody knows whether the device did it);
- ``expired``: never sent before its deadline; ``cancelled``: by a user
  while queued.

A device call may not be idempotent (``GPIO.Toggle``), so nothing is sent
twice unless the caller asked for C{retries}: then a call that ended
``timed_out`` or ``lost`` is queued again, at most that many times, and
every attempt is recorded (C{attempts}: when it was sent, when and how it
ended).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

QUEUED = "queued"
SENT = "sent"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
LOST = "lost"
EXPIRED = "expired"
CANCELLED = "cancelled"

STATES = (QUEUED, SENT, SUCCEEDED, FAILED, TIMED_OUT, LOST, EXPIRED, CANCELLED)
FINAL = (SUCCEEDED, FAILED, TIMED_OUT, LOST, EXPIRED, CANCELLED)
# The outcomes after which a call may be sent again, if its caller asked.
RETRIABLE = (TIMED_OUT, LOST)


@dataclass(frozen=True)
class Call:
    id: str
    device_id: str
    account_id: str
    key_id: str
    method: str
    params: Any
    state: str
    created: float
    expires: float
    timeout: float
    retries: int
    times: dict[str, float] = field(default_factory=dict)
    attempts: tuple[dict[str, Any], ...] = ()
    result: Any = None
    error: dict[str, Any] | None = None
    # The node (and connection) that sent the attempt under way.
    claim: str | None = None
    sent: float | None = None
    finished: float | None = None
    seq: int = 0

    @property
    def final(self) -> bool:
        return self.state in FINAL


def view(call: Call) -> dict[str, Any]:
    """A call as the API shows it."""
    out: dict[str, Any] = {
        "id": call.id,
        "device_id": call.device_id,
        "method": call.method,
        "params": call.params,
        "state": call.state,
        "created": call.created,
        "expires": call.expires,
        "timeout": call.timeout,
        "retry": call.retries,
        "times": call.times,
        "attempts": list(call.attempts),
        "key_id": call.key_id,
    }
    if call.state == SUCCEEDED:
        out["result"] = call.result
    if call.error is not None:
        out["error"] = call.error
    return out


def ended(call: Call, state: str, now: float, result: Any = None,
          error: dict[str, Any] | None = None) -> Call:
    """C{call} (sent) after its attempt under way ended in C{state}: final,
    or queued again if it may be retried."""
    from dataclasses import replace

    attempts = list(call.attempts)
    last = dict(attempts[-1]) if attempts else {"sent": call.sent}
    last.update(ended=now, state=state)
    if error is not None:
        last["error"] = error
    if attempts:
        attempts[-1] = last
    else:
        attempts.append(last)
    times = dict(call.times)
    if state in RETRIABLE and len(attempts) <= call.retries:
        times[QUEUED] = now
        return replace(call, state=QUEUED, attempts=tuple(attempts), times=times, claim=None,
                       sent=None, error=error)
    times[state] = now
    return replace(call, state=state, attempts=tuple(attempts), times=times, result=result,
                   error=error, claim=None, finished=now)


def sent(call: Call, claim: str, now: float) -> Call:
    """C{call} (queued) as its next attempt goes out."""
    from dataclasses import replace

    times = dict(call.times)
    times[SENT] = now
    return replace(call, state=SENT, claim=claim, sent=now, times=times,
                   attempts=call.attempts + ({"sent": now},))


def finished(call: Call, state: str, now: float) -> Call:
    """C{call} (queued) expired or cancelled."""
    from dataclasses import replace

    times = dict(call.times)
    times[state] = now
    return replace(call, state=state, times=times, finished=now, claim=None)
