"""
Fleet jobs on a Clock (tests/clocked.py): the timing of a scheduled start,
a phase's wait, and the lease that lets one node drive a job, another take
it over once it lapses. The end-to-end tests are in test_jobs.py.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import ensureDeferred

from clocked import World, done
from dashd.app.calls import END_WAIT, CallDelivery
from dashd.app.jobs import Jobs, JobRunner


def shadow_job(world: World, ids: list[str], **extra) -> dict:
    return done(world.app.jobs.create(world.admin, dict({
        "name": "clocked", "target": {"devices": ids},
        "action": {"type": "shadow", "desired": {"interval": 60}}}, **extra)))


def interval(world: World, device_id: str):
    device = done(world.store.get_device(device_id))
    return device.shadow["state"]["desired"].get("interval")


def step(runner: JobRunner) -> None:
    done(ensureDeferred(runner._tick()))


def state(world: World, job_id: str) -> str:
    return done(world.store.get_job(job_id))["state"]


def test_a_scheduled_job_starts_at_its_start_at(tmp_path):
    world = World(tmp_path)
    runner = JobRunner(world.fleet, world.app.jobs, world.app.devices)
    device, _ = world.register()
    now = world.clock.seconds()
    job = shadow_job(world, [device.id], start_at=now + 60)
    assert job["state"] == "scheduled"
    step(runner)
    world.clock.advance(59.9)
    step(runner)
    assert state(world, job["id"]) == "scheduled"
    assert interval(world, device.id) is None
    world.clock.advance(0.1)
    step(runner)
    step(runner)
    assert state(world, job["id"]) == "completed"
    assert interval(world, device.id) == 60
    world.close()


def test_the_next_phase_waits_for_its_wait(tmp_path):
    world = World(tmp_path)
    runner = JobRunner(world.fleet, world.app.jobs, world.app.devices)
    ids = [world.register("p%d" % i)[0].id for i in range(3)]
    job = shadow_job(world, ids, phases=[{"count": 1, "wait": 30}, {"percent": 100}])
    step(runner)
    step(runner)
    assert [interval(world, d) for d in ids] == [60, None, None]
    world.clock.advance(29.9)
    step(runner)
    step(runner)
    assert [interval(world, d) for d in ids] == [60, None, None]
    world.clock.advance(0.1)
    step(runner)
    step(runner)
    assert [interval(world, d) for d in ids] == [60, 60, 60]
    assert done(world.store.get_job(job["id"]))["stage"]["phase"] == 1
    step(runner)
    assert state(world, job["id"]) == "completed"
    world.close()


def test_one_node_drives_a_job_until_its_lease_lapses(tmp_path):
    world = World(tmp_path, {"jobs.lease_timeout": 10.0})
    here = JobRunner(world.fleet, world.app.jobs, world.app.devices)
    # Another node: the same store, its own ID.
    other = JobRunner(world.fleet, Jobs(world.fleet, world.app.devices), world.app.devices)
    other._router = SimpleNamespace(node_id="nother", calls_queued=lambda d: None,
                                    is_online=lambda d: False)
    ids = [world.register("l%d" % i)[0].id for i in range(2)]
    job = shadow_job(world, ids, start_at=world.clock.seconds() + 1000)
    world.clock.advance(0)  # the step the creation asked for
    step(here)
    step(other)
    assert here.jobs_driven == {"scheduled": 1} and other.jobs_driven == {}
    world.clock.advance(9.9)
    step(other)
    assert other.jobs_driven == {}
    # This node stops stepping (it died): the lease lapses, the other takes over.
    world.clock.advance(0.2)
    step(other)
    assert other.jobs_driven == {"scheduled": 1}
    step(here)
    assert here.jobs_driven == {}
    assert done(world.store.get_job(job["id"]))["lease"] == "nother"
    world.close()


def test_a_step_that_moved_anything_is_followed_at_a_tenth_of_the_interval(tmp_path):
    """A job whose devices are done quickly is not paced by jobs.interval:
    a step that sent anything schedules the next a tenth of it later (no
    interval's timer runs here: only those steps move the job)."""
    world = World(tmp_path)
    # Kept by the jobs (jobs.runner), which wake it when a job is created.
    JobRunner(world.fleet, world.app.jobs, world.app.devices)
    ids = [world.register("q%d" % i)[0].id for i in range(3)]
    job = shadow_job(world, ids, concurrency=1)
    tenth = world.fleet.config["jobs.interval"] / 10
    world.clock.advance(0)  # the step its creation asked for
    assert [interval(world, i) for i in ids].count(60) == 1
    world.clock.advance(tenth)
    assert [interval(world, i) for i in ids].count(60) == 2
    world.clock.advance(tenth)
    assert [interval(world, i) for i in ids].count(60) == 3
    world.clock.advance(tenth)
    assert state(world, job["id"]) == "completed"
    world.close()


def test_an_execution_ending_during_a_step_cannot_send_past_a_fired_abort_rule(tmp_path):
    """An RPC execution ends in its call's own end, whenever that comes: an
    end between the step's check of the abort rules and its reading of the
    room (the executions out) frees a slot, and the rule it makes fire must
    still stop the job before another device is sent to."""
    world = World(tmp_path)
    runner = JobRunner(world.fleet, world.app.jobs, world.app.devices)
    # Queued calls go to their devices as dashd.assembly connects them.
    delivery = CallDelivery(world.fleet, world.clock)
    world.fleet.ready_observers.append(delivery.device_ready)
    world.fleet.observe_events(delivery.device_event, delivery.DEVICE_EVENTS)
    world.router.queue_observers.append(delivery.calls_queued)
    fakes = [world.connect(world.register("abort%d" % i)[0]) for i in range(4)]
    job = done(world.app.jobs.create(world.admin, {
        "name": "abort mid-step", "target": {"devices": [f.device_id for f in fakes]},
        "concurrency": 1, "action": {"type": "rpc", "method": "Job.Step"},
        "abort": [{"on": "failed", "percent": 50, "min_finished": 2}]}))

    def called() -> list[int]:
        return [len(f.calls("Job.Step")) for f in fakes]

    def until_called(counts: list[int]) -> None:
        for _ in range(20):
            if called() == counts:
                return
            step(runner)
            world.clock.advance(0.1)
        assert called() == counts

    until_called([1, 0, 0, 0])
    fakes[0].refuse(fakes[0].calls("Job.Step")[0], 7)
    until_called([1, 1, 0, 0])
    # The second device's failure is stored just as the step reads the room.
    in_flight = world.store.jobs_in_flight
    failed_meanwhile = []

    def ended_meanwhile(job_id: str):
        unanswered = fakes[1].unanswered()
        if unanswered:
            fakes[1].refuse(unanswered[0], 7)
            world.clock.advance(END_WAIT)  # the end's batch goes to the store
            failed_meanwhile.append(done(world.store.job_counts(job_id)).get("failed"))
        return in_flight(job_id)

    world.store.jobs_in_flight = ended_meanwhile
    for _ in range(5):
        step(runner)
        world.clock.advance(0.1)
    assert failed_meanwhile == [2]
    after = done(world.store.get_job(job["id"]))
    assert after["state"] == "aborted", after
    assert called() == [1, 1, 0, 0]
    world.close()

