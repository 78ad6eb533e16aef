"""
The README's quick start, run as written (with this test's port and paths)
against a real dashd, with curl and the simulator in their own processes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from support import DashdProcess, SECRETS

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def quickstart_block() -> str:
    with open(README) as f:
        text = f.read()
    m = re.search(r"<!-- quickstart -->\n```sh\n(.*?)```", text, re.S)
    assert m, "the README lost its quick start block"
    return m.group(1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_quickstart_as_written(tmp_path):
    server = DashdProcess(str(tmp_path))
    server.start()
    try:
        SECRETS.add(server.admin_key)
        script = quickstart_block()
        script = script.replace("localhost:8080", "127.0.0.1:%d" % server.port)
        script = script.replace("dashd-data/", server.data_dir + "/")
        script = script.replace(".venv/bin/python", sys.executable)
        result = subprocess.run(
            ["bash", "-e", "-c", script], cwd=str(tmp_path), capture_output=True, text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        registered, info, toggled = lines[0], lines[1], lines[2]
        assert '"token"' in registered
        assert '"fw_version"' in info and '"arch"' in info
        assert toggled == '{"value":1}'
    finally:
        server.stop()
    assert not server.problems()
