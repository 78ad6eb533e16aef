"""
Python heap an idle connected device costs dashd, by tracemalloc, and
where it was allocated (docs/performance.md, memory per idle device).
dashd runs in this process (tests/support's InProcessDashd, SQLite);
lean devices (bench/heap_devices.py) connect from a child process.

    PYTHONPATH=$PWD:$PWD/tests NWARM=100 NDEV=600 .venv/bin/python -m pytest -q -s \
        -p no:cacheprovider bench/heap_per_device.py

NWARM devices connect first (not counted: what is made on first use),
then NDEV more between two snapshots; PING: keep-alive interval (30 s).
"""

import gc, sys, os, tracemalloc, subprocess, linecache
import pytest_twisted
from twisted.internet import reactor, task
from support import Client, eventually
from test_garbage import InProcessDashd

N_WARM, N = int(os.environ.get("NWARM", 100)), int(os.environ.get("NDEV", 800))

async def register(admin, n):
    return [await admin.register() for _ in range(n)]

async def connect(server, regs, path):
    with open(path, "w") as f:
        f.write("\n".join(t for _, t in regs))
    url = server.device_url
    hostport = url.split("//")[1].split("/")[0]
    host, port = hostport.rsplit(":", 1)
    p = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "heap_devices.py"), host, port, path], stdout=subprocess.PIPE, text=True)
    router = server.service.parts.fleet.router
    await eventually(lambda: all(router.is_online(i) for i, _ in regs), seconds=120)
    return p

@pytest_twisted.ensureDeferred
async def test_trace(tmp_path):
    server = InProcessDashd(str(tmp_path), {"gc": {"full_collection_interval": 0}, "device": {"ping_interval": int(os.environ.get("PING", 30))}})
    await server.start_here()
    admin = Client(server, server.admin_key)
    warm = await register(admin, N_WARM)
    main = await register(admin, N)
    procs = [await connect(server, warm, str(tmp_path / "w.txt"))]
    await task.deferLater(reactor, 5, lambda: None)
    gc.collect()
    tracemalloc.start(12)
    s1 = tracemalloc.take_snapshot()
    procs.append(await connect(server, main, str(tmp_path / "m.txt")))
    await task.deferLater(reactor, 6, lambda: None)
    gc.collect()
    s2 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    filt = [tracemalloc.Filter(False, tracemalloc.__file__)]
    s1 = s1.filter_traces(filt); s2 = s2.filter_traces(filt)
    total = sum(st.size_diff for st in s2.compare_to(s1, "filename"))
    print("\nPER DEVICE bytes (python heap, tracemalloc): %.1f" % (total / N))
    for st in s2.compare_to(s1, "lineno")[:40]:
        print("%7.1f B/dev %6.2f n/dev  %s" % (st.size_diff / N, st.count_diff / N, st.traceback[0]))
    print("--- by traceback")
    for st in s2.compare_to(s1, "traceback")[:30]:
        if st.size_diff / N < 20: continue
        print("%7.1f B/dev %6.2f n/dev" % (st.size_diff / N, st.count_diff / N))
        for fr in list(st.traceback)[-7:]:
            print("        %s:%d %s" % (fr.filename.split("site-packages/")[-1], fr.lineno, linecache.getline(fr.filename, fr.lineno).strip()[:90]))
    for p in procs: p.kill()
    await server.stop_here()
