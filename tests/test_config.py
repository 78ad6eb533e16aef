"""Configuration: defaults, the TOML file, overrides and errors."""

from __future__ import annotations

import pytest

from dashd import config


def test_defaults():
    c = config.load(None)
    assert c["listen"] == ["tcp:8080"]
    assert c["data_dir"] == "./dashd-data"
    assert c["rpc.default_timeout"] <= c["rpc.max_timeout"]


def test_file_and_overrides(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text('listen = ["tcp:9000"]\n[device]\nping_interval = 5\n[rpc]\nmax_timeout = 60\n')
    c = config.load(str(path), {"device.ping_interval": 7.5})
    assert c["listen"] == ["tcp:9000"]
    assert c["device.ping_interval"] == 7.5
    assert c["rpc.max_timeout"] == 60


@pytest.mark.parametrize("text, message", [
    ("[device]\nping_interval = -1\n", "device.ping_interval: -1 must be 0 or more"),
    ("[device]\nmax_frame_bytes = 1.5\n", "device.max_frame_bytes: expected an integer"),
    ("[device]\nnope = 1\n", "unknown option 'device.nope'"),
    ("listen = []\n", "listen: [] must name at least one endpoint"),
    ("[store]\nsynchronous = \"OFF\"\n", "must be one of FULL, NORMAL"),
    ("[http]\naccess_log = 1\n", "http.access_log: expected true or false"),
    ("[gc]\nfull_collection_interval = -5\n",
     "gc.full_collection_interval: -5 must be 0 or more"),
    ("[gc]\nfull_collection_interval = \"hourly\"\n",
     "gc.full_collection_interval: expected a number"),
    ("[rpc]\nmax_timeout = true\n", "rpc.max_timeout: expected a number, got a boolean"),
    ("[rpc]\ndefault_timeout = 50\nmax_timeout = 10\n", "must not exceed rpc.max_timeout"),
    ("this is = not toml [", "is not valid TOML"),
])
def test_errors_name_the_option(tmp_path, text, message):
    path = tmp_path / "d.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as e:
        config.load(str(path))
    assert message in str(e.value)


def test_example_file_lists_every_option_with_its_default():
    """etc/dashd.toml documents every option, and says its true default."""
    import os
    import tomllib

    path = os.path.join(os.path.dirname(__file__), "..", "etc", "dashd.toml")
    with open(path, "rb") as f:
        values = config.flatten(tomllib.load(f))
    assert values == {o.name: o.default for o in config.OPTIONS}


def test_readme_documents_every_option():
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(path) as f:
        readme = f.read()
    missing = [o.name for o in config.OPTIONS if "`%s`" % o.name not in readme]
    assert not missing


def test_backlog_is_added_where_it_applies():
    assert config.with_backlog("tcp:8080", 4096) == "tcp:8080:backlog=4096"
    assert config.with_backlog("ssl:8443:privateKey=k.pem", 10) == \
        "ssl:8443:privateKey=k.pem:backlog=10"
    assert config.with_backlog("tcp:8080:backlog=7", 4096) == "tcp:8080:backlog=7"
    assert config.with_backlog("systemd:domain=INET:index=0", 4096) == \
        "systemd:domain=INET:index=0"
