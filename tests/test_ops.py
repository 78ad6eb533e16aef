"""
What operators see: /healthz, /readyz, /metrics and who may read it, the
open-files limit, one dashd per data directory, --print-config.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import tomllib

import pytest
import pytest_twisted

from dashd import config as configuration
from support import TWISTD, Client, DashdProcess, connect_device, device_online, eventually


def sample(text: str, name: str, labels: str = "") -> float:
    """One sample of a Prometheus text exposition."""
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    assert m, "no %s%s in /metrics" % (name, labels)
    return float(m.group(1))


@pytest_twisted.ensureDeferred
async def test_health_and_readiness(server: DashdProcess, admin: Client):
    health = await admin.get("/healthz", key=None)
    assert (health.status, health.body) == (200, {"status": "ok"})
    ready = await admin.get("/readyz", key=None)
    assert (ready.status, ready.body) == (200, {"status": "ready"})


def test_a_batch_of_store_latencies_counts_as_each_observed_alone():
    """dashd.ops.metrics.Metrics.observe_store_jobs (the SQLite store tells
    a batch's latencies at once) leaves the histogram as observing each
    one does, bounds included."""
    from dashd.ops import metrics

    seconds = [0.0001, 0.0005, 0.00051, 0.001, 0.003, 0.0025, 0.2, 7.0, 0.0005, 100.0]
    one = metrics.Metrics(None, None, None, None)
    many = metrics.Metrics(None, None, None, None)
    for s in seconds:
        one.observe_store_job(s)
    many.observe_store_jobs(seconds[:1])
    many.observe_store_jobs(seconds[1:])

    def samples(m):
        return {(s.name, s.labels.get("le")): s.value
                for family in m.store_seconds.collect() for s in family.samples}

    assert samples(many).keys() == samples(one).keys()
    for name, value in samples(one).items():
        assert samples(many)[name] == pytest.approx(value), name


def test_full_collections_are_timed(monkeypatch):
    """dashd.ops.metrics.FullCollections, fed the cycle collector's callbacks
    with a fake perf_counter: only full collections (generation 2) count,
    each in the bucket of its duration, and their seconds add up."""
    from dashd.ops import metrics

    now = [100.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
    timer = metrics.FullCollections()

    def collection(generation: int, seconds: float) -> None:
        timer("start", {"generation": generation})
        now[0] += seconds
        timer("stop", {"generation": generation, "collected": 0, "uncollectable": 0})

    collection(0, 0.5)
    collection(1, 0.5)
    collection(2, 0.03)
    collection(2, 0.7)
    collection(2, 3.0)
    family = timer.family()
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert values[("dashd_gc_full_collection_seconds_count", None)] == 3
    assert values[("dashd_gc_full_collection_seconds_sum", None)] == pytest.approx(3.73)
    buckets = {le: v for (name, le), v in values.items() if name.endswith("_bucket")}
    assert buckets == {"0.01": 0, "0.025": 0, "0.05": 1, "0.1": 1, "0.25": 1, "0.5": 1,
                       "1": 2, "2.5": 2, "+Inf": 3}


@pytest.mark.parametrize("own_server", ["sqlite"], indirect=True)  # a lock on its file
@pytest_twisted.ensureDeferred
async def test_readyz_is_503_while_starting_and_while_the_store_is_stuck(own_server):
    """The store's write lock held by another process (as a stuck store's
    would be): while dashd's first job on start waits for it, /readyz says
    dashd is starting; once it serves, a ping the store cannot answer
    within 2 s makes /readyz say so. Both with Retry-After, both over as
    soon as the lock is let go."""
    await own_server.start_async()
    own_server.stop()  # the second start finds admin.key: start_async returns
    client = Client(own_server, None)
    locker = sqlite3.connect(os.path.join(own_server.data_dir, "dashd.sqlite3"),
                             isolation_level=None, timeout=0)

    async def ready() -> bool:
        return (await client.get("/readyz", key=None)).status == 200

    try:
        locker.execute("BEGIN IMMEDIATE")
        try:
            await own_server.start_async()
            starting = await client.get("/readyz", key=None)
        finally:
            locker.execute("ROLLBACK")
        assert (starting.status, starting.error["message"]) == (
            503, "not ready: dashd is starting"), starting
        assert starting.headers.getRawHeaders("retry-after") == ["5"]
        await eventually(ready)

        # dashd may be writing at this moment (a CI run met its lock):
        # wait for that write, then hold the lock.
        locker.execute("PRAGMA busy_timeout = 5000")
        locker.execute("BEGIN IMMEDIATE")
        try:
            stuck = await client.get("/readyz", key=None)
        finally:
            locker.execute("ROLLBACK")
        assert (stuck.status, stuck.error["message"]) == (
            503, "not ready: the store did not answer within 2s"), stuck
        assert stuck.headers.getRawHeaders("retry-after") == ["5"]
        await eventually(ready)
    finally:
        locker.close()


@pytest_twisted.ensureDeferred
async def test_metrics_count_what_happens(server: DashdProcess, admin: Client):
    async def metrics() -> str:
        reply = await admin.get("/metrics", key=None)  # loopback: no key needed
        assert reply.status == 200
        assert reply.headers.getRawHeaders("content-type")[0].startswith("text/plain")
        return reply.raw.decode()

    before = await metrics()
    device_id, token = await admin.register("metered")
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        assert (await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)).status == 200
        failed = await admin.post("/api/v2/devices/%s/rpc/Sim.Fail" % device_id,
                                  {"code": 7, "message": "no"})
        assert failed.status == 502
        after = await metrics()
        assert sample(after, "dashd_devices_connected") >= 1
        assert sample(after, "dashd_rpc_calls_total", '{outcome="ok"}') == \
            sample(before, "dashd_rpc_calls_total", '{outcome="ok"}') + 1
        assert sample(after, "dashd_rpc_calls_total", '{outcome="device_error"}') == \
            sample(before, "dashd_rpc_calls_total", '{outcome="device_error"}') + 1
        assert sample(after, "dashd_rpc_call_duration_seconds_count") == \
            sample(before, "dashd_rpc_call_duration_seconds_count") + 2
        # Heartbeat in, its reply out, two calls and their answers at least.
        assert sample(after, "dashd_device_frames_received_total") >= \
            sample(before, "dashd_device_frames_received_total") + 3
        assert sample(after, "dashd_device_frames_sent_total") >= \
            sample(before, "dashd_device_frames_sent_total") + 3
        assert sample(after, "dashd_store_job_duration_seconds_count") > \
            sample(before, "dashd_store_job_duration_seconds_count")
        assert sample(after, "dashd_http_requests_total", '{code="502"}') >= 1
        assert sample(after, "process_max_fds") > 0
        # Full garbage collections are timed from the start: the histogram
        # is there before any has run (what it counts:
        # test_full_collections_are_timed below; dashd's own collections
        # showing in it: test_collector).
        sample(after, "dashd_gc_full_collection_seconds_count")
        sample(after, "dashd_gc_full_collection_seconds_sum")
        # The stall probe runs from the start and keeps running (what it
        # records: tests/test_stallprobe.py).
        async def probed() -> bool:
            return sample(await metrics(), "dashd_reactor_lag_seconds_count") > \
                sample(after, "dashd_reactor_lag_seconds_count")

        await eventually(probed)
        assert sample(after, "dashd_reactor_lag_max_seconds") >= 0
    finally:
        await sim.stop()
    await device_online(admin, device_id, online=False)
    offline = await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)
    assert offline.status == 503
    final = await metrics()
    assert sample(final, "dashd_rpc_calls_total", '{outcome="offline"}') >= 1


@pytest_twisted.ensureDeferred
async def test_metrics_need_a_key_from_outside_metrics_allow(tmp_path):
    server = DashdProcess(str(tmp_path), config={"metrics": {"allow": ["10.0.0.0/8"]}})
    await server.start_async()
    try:
        admin = Client(server, server.admin_key)
        refused = await admin.get("/metrics", key=None)
        assert refused.status == 401
        assert "metrics.allow" in refused.error["message"]
        wrong = await admin.get("/metrics", key="k000000000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        assert (wrong.status, wrong.error["message"]) == (401, "unknown API key")
        allowed = await admin.get("/metrics")
        assert allowed.status == 200 and b"dashd_devices_connected" in allowed.raw
        # Health stays open: load balancers ask without a key.
        assert (await admin.get("/readyz", key=None)).status == 200
    finally:
        server.stop()
    assert not server.problems()


def test_bad_metrics_allow_names_the_option(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text('[metrics]\nallow = ["10.0.0.0/8", "intranet"]\n')
    with pytest.raises(configuration.ConfigError) as e:
        configuration.load(str(path))
    assert "metrics.allow" in str(e.value) and "'intranet'" in str(e.value)


@pytest_twisted.ensureDeferred
async def test_open_files_soft_limit_is_raised_to_the_hard_limit(tmp_path):
    server = DashdProcess(str(tmp_path), command_prefix=["prlimit", "--nofile=256:4096"])
    await server.start_async()
    try:
        with open("/proc/%d/limits" % server.proc.pid) as f:
            line = [x for x in f if x.startswith("Max open files")][0]
        assert line.split()[3:5] == ["4096", "4096"]
        assert "open files limit raised from 256 to 4096" in server.log()
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_a_second_dashd_on_the_same_data_dir_refuses_to_start(server: DashdProcess):
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "dashd", "--data-dir", server.data_dir,
         "--listen", "tcp:0:interface=127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "cannot start: %s is in use by another dashd (pid %d)" % (
        server.data_dir, server.proc.pid) in result.stdout + result.stderr


def test_print_config_shows_the_effective_configuration(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text('[device]\nping_interval = 5\n[rpc]\nmax_timeout = 60\n')
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "dashd", "--config", str(path), "--ping-interval", "7",
         "--listen", "tcp:9000", "--print-config"],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "ping_interval = 7.0  # default: 30.0" in text
    assert "max_timeout = 60  # default: 120.0" in text
    assert str(path) in text.splitlines()[0]
    printed = configuration.flatten(tomllib.loads(text))
    expected = configuration.load(str(path), {"device.ping_interval": 7.0,
                                              "listen": ["tcp:9000"]})
    assert printed == dict(expected.items())
    assert not os.path.exists(tmp_path / "dashd-data")  # printed, started nothing


def test_print_config_with_a_bad_value_names_the_option(tmp_path):
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "dashd", "--ping-interval", "-3", "--print-config"],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
    )
    assert result.returncode != 0
    assert "device.ping_interval: -3.0 must be 0 or more" in result.stdout + result.stderr


@pytest_twisted.ensureDeferred
async def test_openapi_document_is_served(server: DashdProcess, admin: Client):
    reply = await admin.get("/api/v2/openapi.json", key=None)
    assert reply.status == 200
    assert reply.body["openapi"].startswith("3.")
    assert "/devices/{device_id}/rpc/{method}" in reply.body["paths"]


def test_full_garbage_collections_are_timed():
    import gc

    from dashd.ops.metrics import GC_BUCKETS, full_collections

    timer = full_collections()
    assert full_collections() is timer and gc.callbacks.count(timer) == 1
    count, seconds = sum(timer.counts), timer.seconds
    gc.collect(1)  # a younger generation: not counted
    assert sum(timer.counts) == count
    gc.collect()
    assert sum(timer.counts) == count + 1 and timer.seconds > seconds
    family = timer.family()
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert list(buckets) == [*map(str, GC_BUCKETS), "+Inf"]
    assert buckets["+Inf"] == count + 1


def _listen_backlog(port: int) -> int:
    """The backlog of the socket listening on C{port} (for a listening
    socket, ss shows it as Send-Q)."""
    out = subprocess.run(["ss", "-ltnH", "sport = :%d" % port], capture_output=True,
                         text=True, timeout=10, check=True).stdout.split()
    assert out and out[0] == "LISTEN", out
    return int(out[2])


def test_listen_backlog_reaches_the_sockets(tmp_path):
    """listen_backlog is what the kernel gets for each endpoint that does
    not say its own backlog= (Twisted's default would be 50)."""
    from support import free_port

    other = free_port()
    server = DashdProcess(str(tmp_path), {"listen_backlog": 77}, listen=[
        "tcp:{port}:interface=127.0.0.1",
        "tcp:%d:interface=127.0.0.1:backlog=33" % other,
    ])
    server.start()
    try:
        assert _listen_backlog(server.port) == 77
        assert _listen_backlog(other) == 33
    finally:
        server.stop()
    assert not server.problems()
