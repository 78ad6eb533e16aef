"""
Fleet jobs on a Clock (tests/clocked.py): the timing of a scheduled start,
a phase's wait, and the lease that lets one node drive a job, another take
it over once it lapses. The end-to-end tests are in test_jobs.py.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import ensureDeferred

from clocked import World, done
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
