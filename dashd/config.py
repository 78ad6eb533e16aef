"""
dashd's configuration: every option, its default and its check, in one
table. A TOML file (``--config``) sets any of them; command-line options
override the file; a wrong value stops the start with a message that names
the option.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Callable

import tomli_w


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Option:
    name: str  # "section.key", or "key" at the top level
    default: Any
    kind: type | tuple[type, ...]
    help: str
    check: Callable[[Any], str | None] | None = None


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _not_empty(value: Any) -> str | None:
    return None if value.strip() else "must not be empty"


def _endpoints(value: Any) -> str | None:
    if not value:
        return "must name at least one endpoint"
    if not all(isinstance(v, str) and v for v in value):
        return "must be a list of endpoint strings such as \"tcp:8080\""
    return None


def _url_or_empty(value: Any) -> str | None:
    if value == "" or (value.startswith(("http://", "https://")) and len(value) > 8):
        return None
    return "must be empty or an http:// or https:// URL"


def _origins(value: Any) -> str | None:
    for origin in value:
        if not isinstance(origin, str) or not origin.startswith(("http://", "https://")) \
                or origin.rstrip("/") != origin:
            return "must be a list of origins such as \"https://tools.example.com\""
def _networks(value: Any) -> str | None:
    for item in value:
        if not isinstance(item, str):
            return "must be a list of networks such as \"127.0.0.0/8\""
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return "holds %r, which is not an IP network such as \"10.0.0.0/8\"" % item
    return None


def _depth(value: Any) -> str | None:
    return None if 0 < value <= 64 else "must be from 1 to 64"


def _proxies(value: Any) -> str | None:
    return _networks([v for v in value if v != "unix"])


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else "must be one of %s" % ", ".join(choices)

    return check


def _url(*schemes: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value == "" or any(value.startswith(s + "://") for s in schemes):
            return None
        return "must be empty or a URL starting with %s" % " or ".join(s + "://" for s in schemes)

    return check


OPTIONS = [
    Option("listen", ["tcp:8080"], list,
           "Twisted endpoints to serve on (REST, UI, device and notification WebSockets), "
           "e.g. \"tcp:8080\", \"ssl:8443:privateKey=key.pem:certKey=cert.pem\", "
           "\"systemd:domain=INET:index=0\"", _endpoints),
    Option("listen_backlog", 4096, int,
           "Connections the kernel may queue for dashd to accept, on tcp:, ssl: and unix: "
           "endpoints that do not say backlog= themselves: when a fleet reconnects at once "
           "(after a restart), a short queue makes devices wait out SYN retries",
           _positive),
    Option("data_dir", "./dashd-data", str,
           "Directory for the SQLite store and the first admin key"),
    Option("device.ping_interval", 30.0, (int, float),
           "Seconds between WebSocket pings to each device (the first at a random point in "
           "the second half, so a fleet that connected at once is not pinged at once); "
           "0 turns pings off", _not_negative),
    Option("device.ping_timeout", 10.0, (int, float),
           "Seconds to wait for a pong before dropping the connection as dead", _positive),
    Option("device.info_request_delay", 3.0, (int, float),
           "Seconds to wait for Dash.Heartbeat after a device connects before asking it "
           "for Sys.GetInfo", _not_negative),
    Option("device.max_frame_bytes", 65536, int,
           "Largest JSON value a device may send; larger ones are skipped with an error reply",
           _positive),
    Option("device.max_message_bytes", 1048576, int,
           "Largest WebSocket message a device may send; larger ones close the connection "
           "(code 1009)", _positive),
    Option("device.frames_per_second", 50.0, (int, float),
           "Frames (calls and notifications) a device may send a second, on average "
           "(a token bucket; dashd's answers to its calls are not counted); the excess is "
           "dropped, answered with error 429 when it has an id, and logged; a device far over "
           "it for long is closed (code 4029); 0 turns the limit off", _not_negative),
    Option("device.frame_burst", 500, int,
           "Frames a device may send at once before device.frames_per_second applies",
           _positive),
    Option("device.max_calls_in_flight", 64, int,
           "Calls a device may have outstanding at once; more are refused with 429",
           _positive),
    Option("device.write_stall_timeout", 30.0, (int, float),
           "Seconds a device may leave dashd's writes to it unread (its buffer full) before "
           "it is disconnected (close code 4008); meanwhile calls to it fail with 503",
           _positive),
    Option("rpc.default_timeout", 10.0, (int, float),
           "Seconds a REST RPC call waits for the device when ?timeout= is not given",
           _positive),
    Option("rpc.max_timeout", 120.0, (int, float),
           "Largest ?timeout= a REST RPC call may ask for", _positive),
    Option("calls.default_expires_in", 86400.0, (int, float),
           "Seconds a queued call (POST /devices/:id/calls) waits for its device when it "
           "says neither expires_in nor expires_at", _positive),
    Option("calls.max_expires_in", 2592000.0, (int, float),
           "Longest a queued call may wait for its device, in seconds (expires_in, "
           "expires_at, ?queue=)", _positive),
    Option("calls.max_retries", 10, int,
           "Most times a queued call may ask to be sent again after it timed out or was "
           "lost (retry)", _not_negative),
    Option("calls.max_params_bytes", 16384, int,
           "Largest params of a queued call, as compact JSON; larger ones get 413",
           _positive),
    Option("calls.max_queued_per_device", 100, int,
           "Calls queued or under way a device may have; more get 429", _positive),
    Option("calls.max_queued_per_account", 10000, int,
           "Calls queued or under way the keys of one account may have made, over all "
           "devices; more get 429", _positive),
    Option("calls.in_flight_per_device", 4, int,
           "Queued calls sent to a device before it has answered the earlier ones (they go "
           "out in the order they were made)", _positive),
    Option("calls.sends_at_once", 256, int,
           "Queued calls a node has sent and not had answered, over all devices; devices "
           "wait their turn beyond it, so that one with thousands queued does not hold up "
           "the others", _positive),
    Option("calls.sweep_interval", 5.0, (int, float),
           "Seconds between two looks for queued calls past their deadline (expired) and "
           "sent calls whose node is gone (lost)", _positive),
    Option("calls.retention_days", 7.0, (int, float),
           "Days ended queued calls are kept for GET /calls/:id; 0 keeps them forever",
           _not_negative),
    Option("alarms.max_rules_per_account", 200, int,
           "Alarm rules one account may have", _positive),
    Option("alarms.refresh_interval", 10.0, (int, float),
           "Seconds between two readings of the alarm rules, webhooks and counts of active "
           "alarms from the store (what other nodes of a cluster changed)", _positive),
    Option("webhooks.allow_http", False, bool,
           "Whether webhooks may be plain http:// URLs (otherwise only https://, with the "
           "receiver's certificate verified)"),
    Option("webhooks.allowed_networks", [], list,
           "Private, loopback and link-local networks webhooks may nevertheless be sent to, "
           "e.g. [\"10.1.2.0/24\"]; other such addresses are refused, so that dashd is no "
           "way into the internal network", _networks),
    Option("webhooks.timeout", 10.0, (int, float),
           "Seconds a webhook receiver has to answer a delivery; then it counts as failed "
           "and is retried", _positive),
    Option("webhooks.max_attempts", 8, int,
           "Attempts at a delivery (the first and its retries, with exponential backoff) "
           "before it is given up", _positive),
    Option("webhooks.retry_delay", 1.0, (int, float),
           "Seconds before the first retry of a delivery; each next one waits twice as "
           "long (at most webhooks.max_retry_delay)", _positive),
    Option("webhooks.max_retry_delay", 300.0, (int, float),
           "Longest wait between two attempts at a delivery, in seconds", _positive),
    Option("webhooks.backlog", 1000, int,
           "Deliveries waiting per webhook; beyond it the oldest are dropped (counted and "
           "shown in GET /webhooks/:id)", _positive),
    Option("webhooks.max_per_account", 20, int,
           "Webhooks one account may have", _positive),
    Option("http.max_body_bytes", 1048576, int,
           "Largest REST request body; larger ones get 413", _positive),
    Option("http.idle_timeout", 60.0, (int, float),
           "Seconds an idle HTTP connection (or an unfinished request) is kept open",
           _positive),
    Option("http.request_timeout", 30.0, (int, float),
           "Seconds a client has to send a whole request (headers and body), or a WebSocket "
           "handshake; slower ones get 408 and are closed", _positive),
    Option("http.cors_origins", [], list,
           "Origins allowed to call the API from a browser (CORS), e.g. "
           "[\"https://tools.example.com\"]; empty: CORS off", _origins),
    Option("http.access_log", False, bool,
           "Log every HTTP request in the combined log format, the lines of one reactor turn "
           "as one log entry (secrets in query strings are masked). Off by default: the audit "
           "log keeps every change and device call, and a busy server's lines cost CPU and "
           "can exceed journald's rate limit"),
    Option("http.trusted_proxies", [], list,
           "Networks of the reverse proxies (e.g. the TLS proxy) whose forwarded-for header "
           "dashd believes, \"unix\" for peers on a unix: endpoint; empty: the peer's own "
           "address is the client's", _proxies),
    Option("http.forwarded_header", "X-Forwarded-For", str,
           "The header the trusted proxies set with the client's address: X-Forwarded-For "
           "or Forwarded (the other one is ignored)", _one_of("X-Forwarded-For", "Forwarded")),
    Option("limits.requests_per_second", 100.0, (int, float),
           "Requests a second each API key may make (token bucket); more get 429 with "
           "Retry-After; 0 turns the limit off", _not_negative),
    Option("limits.burst", 200, int,
           "Requests an API key may make at once before the rate applies", _positive),
    Option("limits.failed_auth_per_minute", 30, int,
           "Failed authentications a minute from one client address, and for one key or "
           "device ID, counted at each door apart; past that their failures get 429 (and are "
           "no longer logged one by one) until the minute ends, while valid credentials are "
           "always let in; 0 turns the limit off", _not_negative),
    Option("audit.retention_days", 90.0, (int, float),
           "Days the audit log of REST changes and device calls is kept; 0 keeps it forever",
           _not_negative),
    Option("shadow.max_bytes", 16384, int,
           "Largest shadow document (state and tags, as compact JSON)", _positive),
    Option("shadow.max_depth", 8, int,
           "Deepest nesting of objects within a shadow section (at most 64)", _depth),
    Option("store.synchronous", "FULL", str,
           "SQLite synchronous mode: FULL survives power loss, NORMAL only a crash "
           "of dashd", _one_of("FULL", "NORMAL")),
    Option("store.url", "", str,
           "Empty for SQLite in data_dir, or a PostgreSQL URL "
           "(\"postgresql://user:password@host:5432/dashd\"); cluster mode needs PostgreSQL",
           _url("postgresql", "postgres")),
    Option("store.pool_size", 8, int,
           "PostgreSQL: connections (and threads) the store uses at most", _positive),
    Option("store.timeout", 10.0, (int, float),
           "PostgreSQL: seconds a query, or waiting for a connection, may take before the "
           "request fails with 503", _positive),
    Option("notify.max_backlog", 1000, int,
           "Events held for a notification subscriber that is not reading; beyond it "
           "the subscriber is dropped (close code 1008)", _positive),
    Option("notify.max_backlog_bytes", 4194304, int,
           "Bytes of events held for a notification subscriber that is not reading; "
           "beyond it the subscriber is dropped (close code 1008)", _positive),
    Option("ota.max_bytes", 16777216, int,
           "Largest firmware file POST /devices/:id/ota accepts; larger ones get 413 "
           "before they are read", _positive),
    Option("ota.max_uploads", 8, int,
           "Firmware uploads dashd receives at once; more get 429 before their body is "
           "read", _positive),
    Option("ota.max_uploads_per_key", 2, int,
           "Firmware uploads one API key may send at once; more get 429 before their body "
           "is read", _positive),
    Option("ota.max_unpacked_bytes", 67108864, int,
           "Largest size a firmware .zip may unpack to (its entries' declared sizes added "
           "up, each held to its own): it is checked a step at a time, in bounded memory; "
           "a larger or lying one gets 400", _positive),
    Option("ota.chunk_bytes", 2048, int,
           "Firmware bytes in each OTA.Write call (sent base64-encoded, a third larger)",
           _positive),
    Option("ota.writes_in_flight", 4, int,
           "OTA.Write calls sent to a device before it has answered the earlier ones",
           _positive),
    Option("ota.upload_timeout", 600.0, (int, float),
           "Seconds a firmware upload may take to arrive, from its first line (instead of "
           "http.request_timeout); a slower one gets 408", _positive),
    Option("ota.step_timeout", 30.0, (int, float),
           "Seconds a device has to answer each OTA.Begin, OTA.Write, OTA.End and "
           "OTA.Commit", _positive),
    Option("ota.pull_timeout", 600.0, (int, float),
           "Seconds a device has to download the firmware and answer OTA.Update (pull "
           "mode); the one-time download link expires then", _positive),
    Option("ota.reboot_timeout", 300.0, (int, float),
           "Seconds a device has to come back after receiving new firmware before the "
           "update is marked failed", _positive),
    Option("ota.commit_timeout", 600, int,
           "commit_timeout sent with OTA.Update: seconds the new firmware has to be "
           "committed before the device reverts to the old one (0: no revert)",
           _not_negative),
    Option("ota.public_url", "", str,
           "Base URL devices download firmware from in pull mode, e.g. "
           "\"https://dash.example.com\"; empty: the address the device itself reached "
           "dashd at (needed behind a TLS proxy, and in a cluster)",
           _url_or_empty),
    Option("firmware.max_images_per_account", 100, int,
           "Firmware images one account may keep in the library (POST /firmware); more "
           "get 429", _positive),
    Option("jobs.max_devices", 100000, int,
           "Devices one job may act on; a target that selects more is refused (400)",
           _positive),
    Option("jobs.interval", 1.0, (int, float),
           "Seconds between two steps of the jobs a node drives (sending to the next "
           "devices, following the calls it sent)", _positive),
    Option("jobs.lease_timeout", 10.0, (int, float),
           "Seconds a node holds a job it drives without renewing its lease before "
           "another node takes the job over (a cluster)", _positive),
    Option("jobs.retention_days", 90.0, (int, float),
           "Days a job is kept once it has ended (with its executions); 0 keeps jobs "
           "forever", _not_negative),
    Option("data.retention_days", 90.0, (int, float),
           "Days stored data (tags.save) is kept; 0 keeps it forever", _not_negative),
    Option("data.pull_chunk_bytes", 1024, int,
           "Bytes asked for at a time (FS.Get) when dashd pulls what an mDash-library device "
           "stored on its file system (mDashStore)", _positive),
    Option("data.pulls_at_once", 16, int,
           "Devices whose stored data dashd pulls at the same time; more wait their turn, so "
           "that a fleet coming back at once does not flood the store", _positive),
    Option("logs.max_per_device", 1000, int,
           "Device log lines and notifications kept per device for POST /logs; older "
           "ones are dropped", _positive),
    Option("shutdown.grace_period", 10.0, (int, float),
           "Seconds dashd waits on SIGTERM for REST calls in flight to finish, after it "
           "stopped accepting connections and before it closes the device connections "
           "(code 1001)", _not_negative),
    Option("gc.full_collection_interval", 3600.0, (int, float),
           "Seconds between collections of everything dashd holds by Python's cycle "
           "collector; in between, what survived a full collection is frozen and not walked "
           "again, so that a large fleet does not stop dashd for most of a second each time; "
           "and only when a forked copy of dashd finds it would free enough to be worth the "
           "pause. 0: Python's own policy", _not_negative),
    Option("metrics.allow", ["127.0.0.0/8", "::1/128"], list,
           "Networks whose clients may read /metrics without an API key; any other client "
           "needs one (Authorization: Bearer KEY). [] requires a key from everyone",
           _networks),
    Option("cluster.redis_url", "", str,
           "Empty for a single node, or the Redis URL the nodes of a cluster share "
           "(\"redis://host:6379/0\"); needs store.url on PostgreSQL",
           _url("redis", "rediss", "unix")),
    Option("cluster.namespace", "dashd", str,
           "Prefix of every Redis key and channel of this cluster (several clusters may "
           "share one Redis)", _not_empty),
    Option("cluster.node_timeout", 5.0, (int, float),
           "Seconds without a sign of life from a node before the others take it for dead "
           "(its devices show offline and may reconnect elsewhere)", _positive),
    Option("cluster.route_events", True, bool,
           "Send each notification only to the nodes with a subscriber that may see it "
           "(each node publishes the accounts its subscribers belong to); false sends every "
           "notification to every node"),
    Option("lb.agent_listen", [], list,
           "Endpoints (e.g. [\"tcp:8089\"]) answering HAProxy's agent-check with \"up ready\" "
           "or \"drain\" (take no new devices, keep those connected); see etc/haproxy.cfg",
           lambda v: None if not v else _endpoints(v)),
]

_BY_NAME = {o.name: o for o in OPTIONS}


class Config:
    """Effective configuration; read options as C{config["device.ping_interval"]}."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self._values = {o.name: o.default for o in OPTIONS}
        for name, value in (values or {}).items():
            self.set(name, value)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def set(self, name: str, value: Any) -> None:
        option = _BY_NAME.get(name)
        if option is None:
            raise ConfigError("unknown option %r" % name)
        if isinstance(value, bool) and option.kind is not bool:
            raise ConfigError("%s: expected %s, got a boolean" % (name, _kind_name(option.kind)))
        if not isinstance(value, option.kind):
            raise ConfigError(
                "%s: expected %s, got %r" % (name, _kind_name(option.kind), value)
            )
        if isinstance(value, float) and not math.isfinite(value):
            # TOML has inf and nan; no option means either.
            raise ConfigError("%s: %r is not a finite number" % (name, value))
        if option.check is not None:
            problem = option.check(value)
            if problem:
                raise ConfigError("%s: %r %s" % (name, value, problem))
        self._values[name] = value

    def items(self) -> list[tuple[str, Any]]:
        return [(o.name, self._values[o.name]) for o in OPTIONS]

    def check(self) -> None:
        """Cross-option checks."""
        if self["rpc.default_timeout"] > self["rpc.max_timeout"]:
            raise ConfigError("rpc.default_timeout must not exceed rpc.max_timeout")
        if self["device.max_frame_bytes"] > self["device.max_message_bytes"] * 16:
            raise ConfigError(
                "device.max_frame_bytes is far larger than device.max_message_bytes"
            )
        if self["calls.max_params_bytes"] >= self["device.max_message_bytes"]:
            raise ConfigError("calls.max_params_bytes must be less than "
                              "device.max_message_bytes (a call's frame holds its params)")
        if self["cluster.redis_url"] and not self["store.url"]:
            raise ConfigError(
                "cluster.redis_url needs a store the nodes share: set store.url to a "
                "postgresql:// URL"
            )


def dump(config: Config, source: str | None = None) -> str:
    """The effective configuration as TOML that L{load} reads back: every
    option, and after each one that is not at its default, that default."""
    lines = ["# dashd's effective configuration: the defaults, then %s, then the command line"
             % (source or "no configuration file")]
    section = ""
    for option in OPTIONS:
        head, _, key = option.name.rpartition(".")
        if head != section:
            lines.append("\n[%s]" % head)
            section = head
        value = config[option.name]
        line = "%s = %s" % (key, _toml_value(value))
        if value != option.default:
            line += "  # default: %s" % _toml_value(option.default)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    # tomli_w writes arrays over several lines; one line reads better here.
    line = tomli_w.dumps({"v": value}).strip()
    line = " ".join(part.strip() for part in line.splitlines())
    return re.sub(r",\s*\]$", " ]", line)[len("v = "):]


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list"}
    if isinstance(kind, tuple):
        return "a number" if float in kind else " or ".join(names[k] for k in kind)
    return names.get(kind, kind.__name__)


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"device": {"ping_interval": 5}} -> {"device.ping_interval": 5}"""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = prefix + key
        if isinstance(value, dict) and name not in _BY_NAME:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load(path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the TOML file at C{path} (if any), then apply C{overrides}."""
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise ConfigError("cannot read %s: %s" % (path, e.strerror or e))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("%s is not valid TOML: %s" % (path, e))
        for name, value in flatten(doc).items():
            try:
                config.set(name, value)
            except ConfigError as e:
                raise ConfigError("%s: %s" % (path, e))
    for name, value in (overrides or {}).items():
        config.set(name, value)
    config.check()
    return config


_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "ssl6", "unix")


def with_backlog(endpoint: str, backlog: int) -> str:
    """C{endpoint} with C{backlog=} added where its type takes one and it
    says none (Twisted's default is 50)."""
    kind = endpoint.split(":", 1)[0].lower()
    if kind not in _BACKLOG_TYPES or ":backlog=" in endpoint.lower():
        return endpoint
    return "%s:backlog=%d" % (endpoint, backlog)
