"""
Fleet jobs (L{dashd.domain.jobs}): the use cases (L{Jobs}) and what drives
them (L{JobRunner}).

Creating a job checks its whole spec and resolves its target before
anything is stored: a device the key may not see is ``skipped`` (``not
found``), one it may not act on (the method, the shadow keys, per the
key's kind, scope and the device's sharing) ``skipped`` (``forbidden:
WHY``): neither is ever touched. A continuous target is resolved whole
when a node starts driving the job (and every L{REFRESH} seconds as a
backstop); meanwhile the devices that events say changed (L{JOINING}: on
any node, the cluster's hub relays them; and the info a device gives the
node holding it) are looked at, only those, at the next step: those that
match now join (with the same checks).

Driving. Every ``jobs.interval`` each node steps the jobs that need it,
each job by one node at a time: the one holding its lease in the store
(``jobs.lease_timeout``; renewed at every step, taken over by another node
once it lapses). A step:

1. follows the calls of its executions (their durable states in the store:
   sent -> ``in_progress``; succeeded, failed, timed out, lost, expired ->
   the execution's end, or queued again while it has ``retries`` left).
   A call's end usually does that itself, in its own transaction
   (L{dashd.store.jobs_sql.call_ended}); a step (at most one an interval:
   it reads every execution out) finds the calls sent and what their ends
   did not end (a call cancelled through the API, one whose device was
   deleted, an execution that was locked at the time on PostgreSQL);
2. starts a scheduled job at its ``start_at``, ends one at its ``end_at``
   (``completed``, what was not sent cancelled);
3. checks the abort rules (``aborted`` with the rule that fired and the
   figures: what was not sent is cancelled);
4. sends to the next devices, as many as the concurrency has room for and
   the rate allows: an RPC job queues a call for each (dashd.app.calls), in
   the same store transaction that records it on the execution, and the
   call goes to its device on whichever node holds it (the router); a
   shadow job applies its change to the shadow;
5. completes the job when nothing is left (a continuous job runs until it
   is cancelled or its ``end_at``);
6. publishes ``job.progress`` (the counts) when they changed, and
   ``job.state`` on every change of state.

A step that moved anything (sent to devices, found calls ended, or found
its counts changed: an RPC execution ends with its call, in the call's own
store transaction, wherever the call ended) is followed by another a
tenth of ``jobs.interval`` later rather than a whole one: a job whose
devices answer quickly is not paced by the timer (and its end is seen at
once), while one that waits on its devices costs a step an interval.

Restarts and node deaths: nothing is sent twice. A call is made once per
attempt, atomically with its execution's record; the queued calls send it
once and mark it ``lost`` if its node died with it unanswered (the
execution then fails, or is retried if the job asked for retries). A shadow
change interrupted between its write and its record is applied again by
the next driver, which gives the same shadow.

Cancel: executions not sent yet are ``cancelled`` (their queued calls
too); those in progress were sent and are not recalled (an RPC cannot be
taken back): they finish, and their result is recorded. Cancel with
force also cancels those in progress (their later ends are not recorded:
the store follows only executions in progress) and stops the firmware
transfers under way (L{dashd.app.firmware.OtaManager.stop_job}, on every
node: the job.state event says ``force``). Pause stops sending; those in
progress finish likewise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from twisted.internet.defer import DeferredList, ensureDeferred, succeed
from twisted.logger import Logger

from dashd.app.devices import Devices
from dashd.app.fleet import Fleet
from dashd.domain import access, query, shadow, tokens
from dashd.domain import calls as c
from dashd.domain import jobs as j
from dashd.domain.errors import (Conflict, DomainError, Forbidden, Invalid, NotFound,
                                 TooLarge)
from dashd.domain.events import Event
from dashd.domain.model import ApiKey
from dashd.store.jobs_sql import JobStore

log = Logger()

# Seconds between two full resolutions of a continuous target (a backstop:
# devices join as events say they changed, see JobRunner.device_event).
REFRESH = 600.0
# The events after which a device may have come to match a continuous
# target: it is looked at (alone) at the next step.
JOINING = ("device.created", "device.updated", "online", "shadow.update")
# Devices a continuous job keeps to look at before its next step; more, and
# the next step resolves the whole target instead.
MAX_CANDIDATES = 10000
# Executions sent in one step of one job at most (one store transaction).
MAX_STEP = 5000
# Calls queued in one store transaction.
BATCH = 250
MAX_LIST = 500
# The code an execution's error carries for the errors a shadow change may end in.
_CODES = ((Forbidden, 403), (NotFound, 404), (Invalid, 400), (Conflict, 409),
          (TooLarge, 413))


def _shadow_body(action: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if "desired" in action:
        body["state"] = {"desired": action["desired"]}
    if "tags" in action:
        body["tags"] = action["tags"]
    return body


def check_device(key: ApiKey, device: Any, spec: dict[str, Any]) -> str | None:
    """Why C{key} may not act on the device (None: it may)."""
    action = spec["action"]
    try:
        if action["type"] == "rpc":
            access.check_rpc(key, device, action["method"])
        elif action["type"] == "firmware":
            access.require_owner(key, device, "update a device's firmware")
        else:
            access.check_shadow_update(key, device, shadow.parse_update(
                _shadow_body(action), allow_tags=True))
    except Forbidden as e:
        return "forbidden: " + e.message
    return None


class Jobs:
    """The use cases of fleet jobs."""

    def __init__(self, fleet: Fleet, devices: Devices, library: Any = None) -> None:
        self._fleet = fleet
        self.library = library
        self._store = fleet.store
        self._more = JobStore(fleet.store)
        self._devices = devices
        self._config = fleet.config
        # The runner of this node, woken when a job changes (set by the builder).
        self.runner: Any = None
        # Who else hears of job.state and job.progress (dashd.app.webhooks),
        # on the node that published them: (job, name, data).
        self.observers: list[Any] = []

    # Publishing

    def publish(self, job: dict[str, Any], name: str, data: Any) -> None:
        self._fleet.hub.publish(Event(name, job["id"], data, job["account_id"]))
        for observer in self.observers:
            try:
                observer(job, name, data)
            except Exception:
                log.failure("job observer {observer}", observer=observer)

    async def view(self, job: dict[str, Any], counts: dict[str, int] | None = None
                   ) -> dict[str, Any]:
        if counts is None:
            counts = await self._store.job_counts(job["id"])
        return view(job, counts)

    async def state_changed(self, job: dict[str, Any]) -> dict[str, Any]:
        shown = await self.view(job)
        self.publish(job, "job.state", shown)
        return shown

    def _wake(self) -> None:
        if self.runner is not None:
            self.runner.wake()

    # Targets

    async def resolve(self, key: ApiKey, spec: dict[str, Any], skip: set[str] | None = None
                      ) -> list[tuple[str, str, str | None]]:
        """The executions of the target's devices: (device ID, state,
        reason) in the target's order, leaving out those in C{skip}.
        @raise Invalid: a bad query, or more devices than jobs.max_devices."""
        most = self._config["jobs.max_devices"]
        target = spec["target"]
        out: list[tuple[str, str, str | None]] = []
        if "where" in target:
            selection = self._devices.selection(key, target["where"] or None)
            selection = replace(selection, limit=most + 1)
            found = await self._store.select_devices(selection)
            if len(found) > most:
                raise Invalid("the target selects more than %d devices (jobs.max_devices)"
                              % most, "target.where")
            for device in found:
                if skip and device.id in skip:
                    continue
                why = check_device(key, device, spec)
                out.append((device.id, j.SKIPPED if why else j.QUEUED, why))
            return out
        for device_id in target["devices"]:
            if skip and device_id in skip:
                continue
            device = await self._store.get_device(device_id)
            if device is None or not access.sees(key, device):
                out.append((device_id, j.SKIPPED, "not found: no such device, or one this "
                                                  "key may not see"))
                continue
            why = check_device(key, device, spec)
            out.append((device_id, j.SKIPPED if why else j.QUEUED, why))
        return out

    async def resolve_some(self, key: ApiKey, spec: dict[str, Any], device_ids: set[str]
                           ) -> list[tuple[str, str, str | None]]:
        """The executions of a query target's devices among C{device_ids}
        (the devices that may have come to match): one store query over
        those devices only."""
        selection = self._devices.selection(key, spec["target"]["where"] or None)
        ids = sorted(device_ids)
        if selection.devices is not None:  # a restricted key's scope
            ids = [d for d in ids if d in selection.devices]
        if not ids:
            return []
        found = await self._store.select_devices(replace(selection, devices=tuple(ids),
                                                         limit=None))
        out: list[tuple[str, str, str | None]] = []
        for device in found:
            why = check_device(key, device, spec)
            out.append((device.id, j.SKIPPED if why else j.QUEUED, why))
        return out

    # Use cases

    async def create(self, by: ApiKey, body: Any) -> dict[str, Any]:
        """Check the spec, resolve the target, store the job; fire with its
        view. Nothing is sent before the job is stored."""
        if by.kind == access.READ_ONLY:
            raise Forbidden("this key is read-only: it may not create jobs")
        if access.is_console(by):
            raise Forbidden("jobs belong to an account: create them with one of its keys")
        now = self._fleet.now()
        spec = j.parse_spec(body, self._config, now)
        if "where" in spec["target"]:
            node = query.parse(spec["target"]["where"]) if spec["target"]["where"] else None
            if node is not None:
                query.check_access(node, by.kind == access.RESTRICTED)
        firmware_id = None
        if spec["action"]["type"] == "firmware":
            firmware_id = spec["action"]["firmware"]
            if self.library is None:  # pragma: no cover - dashctl's stopped store
                raise Invalid("firmware jobs need a running dashd", "action")
            try:
                image = await self.library.get(by, firmware_id)
            except (NotFound, Forbidden):
                raise Invalid("no such firmware: %s" % firmware_id, "action.firmware") from None
            spec["action"]["sha256"] = image["sha256"]
        executions = await self.resolve(by, spec)
        phases = iter(j.assign_phases(sum(1 for e in executions if e[1] == j.QUEUED),
                                      spec.get("phases")))
        executions = [e + (next(phases) if e[1] == j.QUEUED else 0,) for e in executions]
        scheduled = spec.get("start_at") is not None and spec["start_at"] > now
        job = {"id": tokens.new_id("j"), "account_id": by.account_id, "key_id": by.id,
               "name": spec.pop("name"), "kind": spec["action"]["type"], "spec": spec,
               "state": j.SCHEDULED if scheduled else j.RUNNING, "created": now,
               "started": None if scheduled else now, "firmware_id": firmware_id}
        stored = await self._store.create_job(job, executions)
        if spec.get("phases"):
            stored["stage"] = {"phase": 0, "since": now}
            await self._store.set_job_stage(stored["id"], stored["stage"], now)
        log.info("job {id} ({kind}, {n} devices) created by {by}", id=stored["id"],
                 kind=stored["kind"], n=len(executions), by=by.id)
        shown = await self.state_changed(stored)
        self._wake()
        return shown

    async def get(self, by: ApiKey, job_id: str) -> dict[str, Any]:
        """The job, if C{by} may see it: its account's admin and read-only
        keys see its jobs; a restricted key the jobs it created."""
        job = await self._store.get_job(job_id)
        if job is None or not _sees(by, job):
            raise NotFound("no such job: %s" % job_id)
        return job

    async def list(self, by: ApiKey, limit: int = 50, before: int | None = None
                   ) -> tuple[list[dict[str, Any]], int | None]:
        if not 1 <= limit <= MAX_LIST:
            raise Invalid("limit must be 1 to %d" % MAX_LIST, "limit")
        account = None if access.is_console(by) else by.account_id
        found = await self._store.list_jobs(account, limit + 1, before)
        following = found[limit - 1]["seq"] if len(found) > limit else None
        shown = []
        for job in found[:limit]:
            if _sees(by, job):
                shown.append(await self.view(job))
        return shown, following

    async def executions(self, by: ApiKey, job_id: str, states: tuple[str, ...] | None,
                         limit: int = 100, after: int | None = None
                         ) -> tuple[list[dict[str, Any]], int | None]:
        if not 1 <= limit <= MAX_LIST:
            raise Invalid("limit must be 1 to %d" % MAX_LIST, "limit")
        if states is not None and (not states or any(s not in j.EXECUTION_STATES
                                                     for s in states)):
            raise Invalid("state must be a comma-separated list of %s"
                          % ", ".join(j.EXECUTION_STATES), "state")
        job = await self.get(by, job_id)
        found = await self._store.job_executions(job["id"], states, limit + 1, after)
        following = found[limit - 1]["seq"] if len(found) > limit else None
        return found[:limit], following

    def _control(self, by: ApiKey, job: dict[str, Any], what: str) -> None:
        if by.kind == access.READ_ONLY:
            raise Forbidden("this key is read-only: it may not %s" % what)
        if by.kind == access.RESTRICTED and job["key_id"] != by.id:
            raise Forbidden("a restricted key may %s only of the jobs it created" % what)

    async def pause(self, by: ApiKey, job_id: str) -> dict[str, Any]:
        job = await self.get(by, job_id)
        self._control(by, job, "pause jobs")
        after = await self._store.set_job_state(job_id, (j.RUNNING, j.SCHEDULED), j.PAUSED,
                                                self._fleet.now())
        if after is None or not after["changed"]:
            raise Conflict("job %s is %s: only a running or scheduled job may be paused"
                           % (job_id, (after or job)["state"]))
        return await self.state_changed(after)

    async def resume(self, by: ApiKey, job_id: str) -> dict[str, Any]:
        job = await self.get(by, job_id)
        self._control(by, job, "resume jobs")
        now = self._fleet.now()
        start = job["spec"].get("start_at")
        state = j.SCHEDULED if start is not None and start > now else j.RUNNING
        after = await self._store.set_job_state(job_id, (j.PAUSED,), state, now)
        if after is None or not after["changed"]:
            raise Conflict("job %s is %s: only a paused job may be resumed"
                           % (job_id, (after or job)["state"]))
        stage = after.get("stage")
        if stage is not None and stage.get("held"):
            # A person looked at the phase that paused it and goes on.
            stage = dict(stage, accepted=stage["phase"], held=None)
            await self._store.set_job_stage(job_id, stage, now)
            after["stage"] = stage
        self._wake()
        return await self.state_changed(after)

    async def approve(self, by: ApiKey, job_id: str) -> dict[str, Any]:
        """Let a staged rollout waiting for approval start its next phase."""
        job = await self.get(by, job_id)
        self._control(by, job, "approve phases")
        stage = job.get("stage")
        if job["state"] not in j.LIVE or not stage or not stage.get("awaiting_approval"):
            raise Conflict("job %s is not waiting for an approval" % job_id)
        stage = dict(stage, approved=stage["phase"], awaiting_approval=False)
        await self._store.set_job_stage(job_id, stage, self._fleet.now())
        job["stage"] = stage
        self._wake()
        return await self.state_changed(job)

    async def end(self, job: dict[str, Any], state: str, reason: Any = None
                  ) -> dict[str, Any] | None:
        """End the job (cancelled, aborted, completed at its end_at): what
        was not sent is cancelled. Fire with the job, or None if it had
        ended already."""
        now = self._fleet.now()
        after, cancelled = await self._store.cancel_job(job["id"], now, state, reason)
        if after is None or not after["changed"]:
            return None
        for call in cancelled:
            device = await self._store.get_device(call.device_id)
            if device is not None:
                self._fleet.publish(device, "call.status", c.view(call))
        return after

    async def cancel(self, by: ApiKey, job_id: str, force: bool = False) -> dict[str, Any]:
        job = await self.get(by, job_id)
        self._control(by, job, "cancel jobs")
        if force:
            return await self._force_cancel(by, job)
        after = await self.end(job, j.CANCELLED, {"message": "cancelled by key %s" % by.id})
        if after is None:
            latest = await self._store.get_job(job_id)
            raise Conflict("job %s has ended (%s): there is nothing to cancel"
                           % (job_id, (latest or job)["state"]))
        log.info("job {id} cancelled by {by}", id=job_id, by=by.id)
        return await self.state_changed(after)

    async def _force_cancel(self, by: ApiKey, job: dict[str, Any]) -> dict[str, Any]:
        """Cancel with force (see L{jobs_sql.force_cancel}); then stop what
        can be stopped: a firmware transfer under way (on whichever node
        drives it: the others hear of it from the job.state event)."""
        now = self._fleet.now()
        reason = {"message": "cancelled by key %s" % by.id, "force": True}
        after, calls, stopped = await self._more.force_cancel_job(job["id"], now, reason)
        if after is None:
            raise NotFound("no such job: %s" % job["id"])
        if not after["changed"] and not stopped:
            raise Conflict("job %s has ended (%s) and has nothing in progress: there is "
                           "nothing to cancel" % (job["id"], after["state"]))
        for call in calls:
            device = await self._store.get_device(call.device_id)
            if device is not None:
                self._fleet.publish(device, "call.status", c.view(call))
        if after["kind"] == "firmware":
            if self.runner is not None:
                self.runner.stopped(job["id"])
            if stopped and self.library is not None:
                self.library.stop_job_updates(job["id"], "the job was cancelled with force")
        log.info("job {id} cancelled with force by {by}: {n} executions in progress "
                 "cancelled", id=job["id"], by=by.id, n=len(stopped))
        if not after["changed"]:
            # Already ended: tell the nodes (a transfer to stop) all the same.
            after = dict(after, reason=dict(after.get("reason") or {}, force=True))
        return await self.state_changed(after)

    async def retry(self, by: ApiKey, job_id: str) -> dict[str, Any]:
        job = await self.get(by, job_id)
        self._control(by, job, "retry jobs")
        after, count = await self._store.retry_job(job_id, self._fleet.now())
        if count == 0:
            raise Conflict("job %s has no failed or timed-out executions to retry" % job_id)
        self._wake()
        shown = await self.state_changed(after)
        shown["retried"] = count
        return shown

    async def delete(self, by: ApiKey, job_id: str) -> dict[str, Any]:
        job = await self.get(by, job_id)
        self._control(by, job, "delete jobs")
        shown = await self.view(job)
        if not await self._store.delete_job(job_id):
            raise NotFound("no such job: %s" % job_id)
        return shown


def _sees(by: ApiKey, job: dict[str, Any]) -> bool:
    if access.is_console(by):
        return True
    if job["account_id"] != by.account_id:
        return False
    return by.kind != access.RESTRICTED or job["key_id"] == by.id


def view(job: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    """A job as the API shows it."""
    spec = job["spec"]
    out = {"id": job["id"], "name": job["name"], "state": job["state"],
           "account_id": job["account_id"], "key_id": job["key_id"],
           "created": job["created"], "started": job["started"],
           "finished": job["finished"], "updated": job["updated"],
           "progress": j.progress(counts)}
    out.update({k: v for k, v in spec.items() if v is not None})
    if job["reason"] is not None:
        out["reason"] = job["reason"]
    if job.get("stage"):
        out["stage"] = {k: v for k, v in job["stage"].items() if v is not None}
    return out


class _Driven:
    """What a node keeps of a job it drives."""

    def __init__(self, now: float) -> None:
        self.tokens = 0.0
        self.last = now
        self.refreshed = now
        # When the job's executions were last brought up to their calls
        # (an RPC job's sync).
        self.synced = float("-inf")
        self.counts: dict[str, int] | None = None
        # The lease: its token (epoch) and until when it holds.
        self.token = 0
        self.until = now
        # Cancelled with force: start nothing more.
        self.stopped = False
        # A continuous target: its devices (None: resolve it whole at the
        # next step), the devices to look at, and whether there were more
        # than MAX_CANDIDATES.
        self.continuous = False
        # The job's account (the cluster routes its devices' events here).
        self.account: str | None = None
        self.members: set[str] | None = None
        self.candidates: set[str] = set()
        self.overflow = False


class JobRunner:
    """Drives the jobs (see the module's doc). L{tick} runs on a timer."""

    def __init__(self, fleet: Fleet, jobs: Jobs, devices: Devices,
                 audit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._fleet = fleet
        self._store = fleet.store
        self._jobs = jobs
        self._devices = devices
        self._config = fleet.config
        self._audit = audit
        self._router = fleet.router
        # Called when accounts() may have changed (the cluster's interest).
        self.on_accounts_changed: Callable[[], Any] | None = None
        self._told_accounts: set[str] = set()
        self._driven: dict[str, _Driven] = {}
        self._more = JobStore(fleet.store)
        # The firmware updates this node is starting (their IDs).
        self._starting: set[str] = set()
        self._library = jobs.library
        self._ticking = False
        self._again = False
        # Whether the step under way moved anything (see the module's doc).
        self._moved = False
        # Read by dashd.ops.metrics.
        self.ended: dict[str, int] = {}
        jobs.runner = self

    # Metrics

    @property
    def jobs_driven(self) -> dict[str, int]:
        """Jobs driven here, by state (of the last step)."""
        out: dict[str, int] = {}
        for driven in self._driven.values():
            state = getattr(driven, "state", None)
            if state is not None:
                out[state] = out.get(state, 0) + 1
        return out

    def executions(self) -> dict[str, int]:
        """Executions of the jobs driven here, by state."""
        out: dict[str, int] = {}
        for driven in self._driven.values():
            for state, n in (driven.counts or {}).items():
                out[state] = out.get(state, 0) + n
        return out

    # Devices that may join continuous targets

    # The names of the events L{device_event} acts on.
    DEVICE_EVENTS = JOINING + ("job.state",)

    def device_event(self, event: Any) -> None:
        """A fleet event observer (and a cluster hub remote observer, with
        the node): a device that changed may match a continuous target; a
        job cancelled with force on another node starts nothing more."""
        if event.name in JOINING:
            self._candidate(event.device_id)
        elif event.name == "job.state" and isinstance(event.data, dict) \
                and (event.data.get("reason") or {}).get("force"):
            self.stopped(event.device_id)

    def stopped(self, job_id: str) -> None:
        """The job was cancelled with force: the firmware updates this node
        is about to start do not start."""
        driven = self._driven.get(job_id)
        if driven is not None:
            driven.stopped = True

    def remote_event(self, event: Any, node: str) -> None:
        self.device_event(event)

    def device_info(self, device: Any, info: Any) -> None:
        """A fleet info observer: what a device says of itself changed."""
        self._candidate(device.id)

    def _candidate(self, device_id: str) -> None:
        for driven in self._driven.values():
            if not driven.continuous or (driven.members is not None
                                         and device_id in driven.members):
                continue
            if len(driven.candidates) >= MAX_CANDIDATES:
                driven.overflow = True
            else:
                driven.candidates.add(device_id)

    # The steps

    def wake(self) -> None:
        """Step now (a job was created or resumed)."""
        self._fleet.clock.callLater(0, self.tick)

    def tick(self) -> Any:
        if self._ticking:
            self._again = True
            return succeed(None)
        self._ticking = True
        self._moved = False
        d = ensureDeferred(self._tick())
        d.addErrback(lambda f: log.failure("driving jobs", f))

        def done(_: Any) -> None:
            self._ticking = False
            if self._again:
                self._again = False
                self._fleet.clock.callLater(0, self.tick)
            elif self._moved:
                self._fleet.clock.callLater(self._config["jobs.interval"] / 10, self.tick)

        return d.addBoth(done)

    async def _tick(self) -> None:
        try:
            ids = await self._store.active_jobs()
        except DomainError as e:
            log.info("jobs: the store did not answer: {error}", error=e.message)
            return
        for job_id in set(self._driven) - set(ids):
            self._driven.pop(job_id, None)
        for job_id in ids:
            try:
                await self._step(job_id)
            except DomainError as e:
                log.info("job {id}: step failed: {error}", id=job_id, error=e.message)
        self._accounts_changed()

    def accounts(self) -> set[str]:
        """The accounts of the jobs driven here: in a cluster, their
        devices' events (joining continuous targets) and their jobs' events
        (a cancel with force) must come here (L{dashd.cluster.interest})."""
        return {d.account for d in self._driven.values() if d.account is not None}

    def _accounts_changed(self) -> None:
        # Told only when the set changed: the cluster's interest looks at
        # every subscriber of the node to recompute.
        if self.on_accounts_changed is None:
            return
        now = self.accounts()
        if now != self._told_accounts:
            self._told_accounts = now
            self.on_accounts_changed()

    async def stop(self) -> None:
        """Give up the leases held (another node may take the jobs at once)."""
        for job_id in list(self._driven):
            try:
                await self._store.release_job(job_id, self._router.node_id)
            except DomainError:
                pass
        self._driven.clear()

    async def _step(self, job_id: str) -> None:
        now = self._fleet.now()
        node = self._router.node_id
        until = now + self._config["jobs.lease_timeout"]
        token = await self._more.lease_job(job_id, node, now, until)
        if token is None:
            self._driven.pop(job_id, None)
            return
        driven = self._driven.get(job_id)
        if driven is None or driven.token != token:
            # Taken over (or first seen, or its lease had lapsed): a shadow
            # change cut off is applied again.
            driven = self._driven[job_id] = _Driven(now)
            driven.token = token
            log.info("job {id}: driven by this node ({node})", id=job_id, node=node)
            await self._store.requeue_job_executions(job_id, now)
        driven.until = until
        job = await self._store.get_job(job_id)
        if job is None:
            self._driven.pop(job_id, None)
            return
        if driven.account != job["account_id"]:
            driven.account = job["account_id"]
            self._accounts_changed()
        spec = job["spec"]
        if job["kind"] == "rpc" and now - driven.synced >= self._config["jobs.interval"]:
            # Once an interval, not every step: a call's end ends its
            # execution itself; this finds the calls sent (in progress)
            # and what their ends did not end, reading every execution
            # out (thousands, in a big job: a step comes every tenth of
            # the interval while the job moves).
            driven.synced = now
            if await self._store.sync_job(job_id, spec["retries"], now):
                self._moved = True
        elif job["kind"] == "firmware":
            await self._follow_firmware(job, now)
        if job["state"] == j.SCHEDULED and now >= (spec.get("start_at") or 0):
            after = await self._store.set_job_state(job_id, (j.SCHEDULED,), j.RUNNING, now)
            if after is not None and after["changed"]:
                job = after
                self._record(job, "started at its start_at")
                await self._jobs.state_changed(job)
        if job["state"] == j.RUNNING:
            job = await self._run(job, driven, now)
        counts = await self._store.job_counts(job_id)
        driven.state = job["state"]  # type: ignore[attr-defined]
        if counts != driven.counts:
            if driven.counts is not None:
                # Executions ended (their calls' ends end them, on any
                # node, between two steps): the job moved.
                self._moved = True
            before = driven.counts or {}
            for state in j.FINAL:
                grown = counts.get(state, 0) - before.get(state, 0)
                if grown > 0 and driven.counts is not None:
                    self.ended[state] = self.ended.get(state, 0) + grown
            driven.counts = counts
            self._jobs.publish(job, "job.progress", {"id": job["id"], "state": job["state"],
                                                     "key_id": job["key_id"],
                                                     "progress": j.progress(counts)})
        if job["state"] in j.ENDED and not counts.get(j.IN_PROGRESS) \
                and await self._store.jobs_in_flight(job_id) == 0:
            await self._store.release_job(job_id, node)
            self._driven.pop(job_id, None)

    async def _run(self, job: dict[str, Any], driven: _Driven, now: float) -> dict[str, Any]:
        spec = job["spec"]
        job_id = job["id"]
        if spec.get("end_at") is not None and now >= spec["end_at"]:
            return await self._end(job, j.COMPLETED, {"message": "its end_at came"})
        key = await self._key(job)
        if key is None:
            return await self._end(job, j.ABORTED, {
                "message": "the key that created it (%s) was revoked or has expired"
                           % job["key_id"]})
        counts = await self._store.job_counts(job_id)
        fired = j.rule_fired(spec, counts)
        if fired is not None:
            return await self._end(job, j.ABORTED, fired)
        if spec["target"].get("continuous"):
            driven.continuous = True
            joined = []
            try:
                if driven.members is None or driven.overflow \
                        or now - driven.refreshed >= REFRESH:
                    # Whole: taken over, too many changed, or the backstop.
                    driven.refreshed = now
                    driven.candidates, driven.overflow = set(), False
                    have = {e["device_id"] for e in await self._all_executions(job_id)}
                    driven.members = have
                    joined = await self._jobs.resolve(key, spec, skip=have)
                elif driven.candidates:
                    # Only the devices that changed since the last step.
                    look, driven.candidates = driven.candidates, set()
                    joined = await self._jobs.resolve_some(key, spec,
                                                           look - driven.members)
                    room = self._config["jobs.max_devices"] - len(driven.members)
                    if len(joined) > room:
                        log.info("job {id}: its target selects more than {most} devices "
                                 "(jobs.max_devices): no more join", id=job_id,
                                 most=self._config["jobs.max_devices"])
                        joined = joined[:max(0, room)]
            except Invalid as e:
                log.info("job {id}: its target: {error}", id=job_id, error=e.message)
            if driven.members is not None:
                driven.members.update(e[0] for e in joined)
            if joined:
                # Those that join later are in the last phase.
                last = max(0, len(spec.get("phases") or ()) - 1)
                joined = [e + (last,) for e in joined]
                await self._store.add_job_executions(job_id, joined, now)
                counts = await self._store.job_counts(job_id)
        phase = None
        if spec.get("phases"):
            job, phase = await self._stage(job, now)
            if job["state"] != j.RUNNING:
                return job
        if job["kind"] == "firmware":
            before = now - spec["timeouts"]["queued"]
            since = (job.get("stage") or {}).get("since", job["started"] or now)
            if since <= before:
                await self._store.expire_job_queued(job_id, phase, before, now)
        # Room: the concurrency, and the rate's tokens.
        in_flight = await self._store.jobs_in_flight(job_id)
        room = min(spec["concurrency"] - in_flight, MAX_STEP)
        rate = j.rate_now(spec, counts.get(j.SUCCEEDED, 0))
        if rate is not None:
            per_second = rate / 60.0
            driven.tokens = min(driven.tokens + per_second * max(0.0, now - driven.last),
                                max(1.0, per_second * self._config["jobs.interval"]))
            room = min(room, int(driven.tokens))
        driven.last = now
        if room > 0 and spec.get("abort"):
            # An execution that ended after the rules were checked above
            # (its call's end ends it, in its own transaction) may have made
            # this room: the counts read after the room see every such end,
            # so no device is sent to past a rule that has fired.
            counts = await self._store.job_counts(job_id)
            fired = j.rule_fired(spec, counts)
            if fired is not None:
                return await self._end(job, j.ABORTED, fired)
        if room > 0 and counts.get(j.QUEUED, 0) > 0:
            sent = await self._send(job, key, room, now, phase, driven)
            if sent:
                self._moved = True
            if rate is not None:
                driven.tokens -= sent
        if not spec["target"].get("continuous"):
            counts = await self._store.job_counts(job_id)
            if not counts.get(j.QUEUED) and not counts.get(j.IN_PROGRESS) \
                    and await self._store.jobs_in_flight(job_id) == 0:
                after = await self._store.set_job_state(job_id, (j.RUNNING,), j.COMPLETED, now)
                if after is not None and after["changed"]:
                    self._record(after, "completed")
                    await self._jobs.state_changed(after)
                    return after
        return job

    async def _all_executions(self, job_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = None
        while True:
            page = await self._store.job_executions(job_id, None, 5000, after)
            out.extend(page)
            if len(page) < 5000:
                return out
            after = page[-1]["seq"]

    async def _key(self, job: dict[str, Any]) -> ApiKey | None:
        found = await self._store.key_credentials(job["key_id"])
        if found is None:
            return None
        key = found[0]
        if key.expired(self._fleet.now()):
            return None
        return key

    async def _end(self, job: dict[str, Any], state: str, reason: Any) -> dict[str, Any]:
        after = await self._jobs.end(job, state, reason)
        if after is None:
            return await self._store.get_job(job["id"]) or job
        log.info("job {id} {state}: {why}", id=job["id"], state=state,
                 why=reason.get("message"))
        self._record(after, reason.get("message"))
        await self._jobs.state_changed(after)
        return after

    async def _send(self, job: dict[str, Any], key: ApiKey, room: int, now: float,
                    phase: int | None, driven: _Driven) -> int:
        config = self._config
        if job["kind"] == "rpc":
            # In batches, each its own transaction: other writers get their
            # turn in between (SQLite has one writer).
            sent = 0
            while sent < room:
                want = min(BATCH, room - sent)
                made = await self._store.dispatch_job(
                    job, want, now, config["calls.max_queued_per_device"],
                    config["calls.max_queued_per_account"], phase)
                for call in made:
                    self._router.calls_queued(call.device_id)
                sent += len(made)
                if len(made) < want:
                    break
            return sent
        if job["kind"] == "firmware":
            # Only to devices online now: the others wait (their queued timeout).
            waiting = await self._store.queued_job_devices(job["id"], room * 4 + 16, phase)
            online = [d for d in waiting if self._router.is_online(d)][:room]
            if not self._fresh(driven):
                return 0
            # Fenced: only while this node holds the lease (its token), and
            # each update's ID is recorded before it starts.
            started = await self._more.start_job_executions(
                job["id"], self._router.node_id, driven.token, now, online)
            self._starting.update(ref for _, ref in started)
            results = await DeferredList(
                [ensureDeferred(self._update(job, key, device_id, ref, driven))
                 for device_id, ref in started], consumeErrors=True)
            for ok, failure in results:
                if not ok:
                    log.failure("job {id}: starting a firmware update", failure, id=job["id"])
            return len(started)
        taken = await self._store.take_job_executions(job["id"], room, now, phase)
        body = _shadow_body(job["spec"]["action"])
        results = await DeferredList([ensureDeferred(self._apply(job, key, device_id, body))
                                      for device_id in taken], consumeErrors=True)
        for ok, failure in results:
            if not ok:
                log.failure("job {id}: applying a shadow change", failure, id=job["id"])
        return len(taken)

    async def _apply(self, job: dict[str, Any], key: ApiKey, device_id: str,
                     body: dict[str, Any]) -> None:
        retries = job["spec"]["retries"]
        try:
            device = await self._devices.change(key, device_id, shadow_update=body)
        except DomainError as e:
            code = next((n for kind, n in _CODES if isinstance(e, kind)), 503)
            await self._store.finish_job_execution(
                job["id"], device_id, j.FAILED, self._fleet.now(), None,
                {"code": code, "message": e.message}, retries)
            return
        await self._store.finish_job_execution(
            job["id"], device_id, j.SUCCEEDED, self._fleet.now(),
            {"shadow_version": device.shadow.get("version")}, None, retries)

    async def _stage(self, job: dict[str, Any], now: float) -> tuple[dict[str, Any], int]:
        """Where a staged rollout stands: pause it past a phase's error
        threshold (or a phase that ended short of its success threshold),
        start the next phase once one's success threshold is met (after its
        wait, and its approval if it asks for one). Fire with the job and
        the phase it may send to."""
        spec = job["spec"]
        stage = dict(job.get("stage") or {"phase": 0, "since": job["started"] or now})
        number = stage["phase"]
        counts = (await self._store.job_phase_counts(job["id"])).get(number, {})
        verdict, why = j.phase_verdict(spec, number, counts)
        if stage.get("accepted") == number and verdict in ("error", "short"):
            verdict, why = "next", None
        if verdict in ("error", "short"):
            after = await self._store.set_job_state(job["id"], (j.RUNNING,), j.PAUSED, now,
                                                    {"message": why, "phase": number + 1})
            if after is not None and after["changed"]:
                stage["held"] = True
                await self._store.set_job_stage(job["id"], stage, now)
                after["stage"] = stage
                log.info("job {id} paused: {why}", id=job["id"], why=why)
                self._record(after, why)
                await self._jobs.state_changed(after)
                return after, number
            return job, number
        if verdict != "next" or number >= len(spec["phases"]) - 1:
            return job, number
        phase = spec["phases"][number]
        changed = False
        if stage.get("reached") is None:
            stage["reached"] = now
            changed = True
        if phase["approval"] and stage.get("approved") != number:
            if not stage.get("awaiting_approval"):
                stage["awaiting_approval"] = True
                await self._store.set_job_stage(job["id"], stage, now)
                job = dict(job, stage=stage)
                await self._jobs.state_changed(job)
            return job, number
        if now - stage["reached"] >= phase["wait"]:
            stage = {"phase": number + 1, "since": now}
            await self._store.set_job_stage(job["id"], stage, now)
            job = dict(job, stage=stage)
            log.info("job {id}: phase {n} started", id=job["id"], n=number + 2)
            await self._jobs.state_changed(job)
            return job, number + 1
        if changed:
            await self._store.set_job_stage(job["id"], stage, now)
            job = dict(job, stage=stage)
        return job, number

    def _fresh(self, driven: _Driven) -> bool:
        """This node still holds the job's lease, with a margin: another
        node may take it over only once it has lapsed."""
        margin = min(2.0, self._config["jobs.lease_timeout"] / 4)
        return self._fleet.now() < driven.until - margin

    async def _update(self, job: dict[str, Any], key: ApiKey, device_id: str, ref: str,
                      driven: _Driven) -> None:
        """Start the firmware update C{ref} of one device (recorded on its
        execution, which follows its status), unless the node lost the
        lease meanwhile (then whichever node drives next puts it back)."""
        try:
            await self._start_update(job, key, device_id, ref, driven)
        finally:
            self._starting.discard(ref)

    async def _start_update(self, job: dict[str, Any], key: ApiKey, device_id: str,
                            ref: str, driven: _Driven) -> None:
        action = job["spec"]["action"]
        now = self._fleet.now()
        try:
            status = await self._library.update_device(
                key, device_id, action["firmware"], pull=action["mode"] == "pull",
                auto_commit=action["auto_commit"],
                commit_timeout=action.get("commit_timeout",
                                          self._config["ota.commit_timeout"]),
                job_id=job["id"], update_id=ref,
                fence=lambda: self._fresh(driven) and not driven.stopped)
        except DomainError as e:
            code = next((n for kind, n in _CODES if isinstance(e, kind)), 503)
            await self._store.finish_job_ref(job["id"], device_id, ref, j.FAILED, now, None,
                                             {"code": code, "message": e.message},
                                             job["spec"]["retries"])
            return
        if status is None:
            log.info("job {id}: device {device}: not started: the job was cancelled with "
                     "force, or this node lost its lease", id=job["id"], device=device_id)

    async def _follow_firmware(self, job: dict[str, Any], now: float) -> None:
        """End the firmware executions whose update has ended (from the
        devices' stored update status, so whichever node drives)."""
        auto_commit = job["spec"]["action"]["auto_commit"]
        retries = job["spec"]["retries"]
        grace = self._config["jobs.lease_timeout"]
        for e in await self._store.job_executions_in_progress(job["id"]):
            ref = e.get("call_id")
            if not e.get("dispatched") or ref in self._starting:
                continue  # being started here
            status = await self._store.get_ota_status(e["device_id"]) or {}
            if status.get("id") != ref:
                since = e["times"].get("dispatched", e["times"].get(j.IN_PROGRESS, now))
                if now - since < grace:
                    continue  # its node may be starting it (its status not stored yet)
                if not status.get("id") or (status.get("started") or 0) < since:
                    # Never started: its node lost the lease, or died, before
                    # it did (a node starts an update only while it holds the
                    # lease, and the lease lapsed before this node drove).
                    if await self._more.requeue_unstarted(job["id"], e["device_id"], ref,
                                                          now):
                        log.info("job {id}: device {device}: update {ref} was never "
                                 "started: queued again", id=job["id"],
                                 device=e["device_id"], ref=ref)
                    continue
                await self._store.finish_job_ref(
                    job["id"], e["device_id"], ref, j.FAILED, now, None,
                    {"code": 409, "message": "another firmware update of the device replaced "
                                             "this one"}, retries)
                continue
            state = status.get("state")
            if state == "committed" or (state == "uncommitted" and not auto_commit):
                await self._store.finish_job_ref(
                    job["id"], e["device_id"], ref, j.SUCCEEDED, now,
                    {"update": ref, "state": state, "fw_id": status.get("fw_id")}, None,
                    retries)
            elif state == "failed":
                await self._store.finish_job_ref(
                    job["id"], e["device_id"], ref, j.FAILED, now, None,
                    {"code": 502, "message": status.get("reason", "the update failed"),
                     "update": ref}, retries)

    def _record(self, job: dict[str, Any], what: str | None) -> None:
        if self._audit is None:
            return
        self._audit({"t": self._fleet.now(), "account_id": job["account_id"],
                     "key_id": job["key_id"], "method": "JOB",
                     "path": "/api/v2/jobs/%s (%s)" % (job["id"], job["state"]),
                     "device_id": None, "status": 200,
                     "error": what if job["state"] in (j.ABORTED, j.PAUSED) else None})

