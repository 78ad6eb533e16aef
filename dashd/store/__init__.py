"""
Persistent state behind one small interface, so that a second backend
(PostgreSQL for cluster mode) plugs in without touching the REST or
WebSocket code.

Every method returns a Deferred that fires only once what it wrote is
durable: a caller that acknowledges something (a 200 to REST, a reply to a
device) after the Deferred fires never acknowledges what a crash could lose.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

from dashd.domain import errors
from dashd.domain.errors import LastAdminKey

__all__ = ["IStore", "LastAdminKey", "NotFound", "StoreError"]

# Seconds after which a client may try again when the store could not serve.
RETRY_AFTER = 5.0


class StoreError(errors.Unavailable):
    """The store cannot serve the request (disk full, overloaded, closed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=RETRY_AFTER)


class StoreUnreachable(StoreError):
    """The store's database cannot be reached now: a state that passes (a
    write may be tried again later)."""


# Creating an account whose name another has (whatever the case).
ACCOUNT_NAME_TAKEN = "an account named %r exists already: account names must be unique"


class NotFound(errors.NotFound):
    """The device a write is for does not exist (any more)."""

    def __init__(self, device_id: str) -> None:
        super().__init__("no such device: %s" % device_id)
        self.device_id = device_id


class IStore(Interface):
    shadow_limits = Attribute("(max_bytes, max_depth) applied to every shadow update")

    def start():
        """Open the store and bring its schema up to date (blocking; called
        once while the service starts, before anything is served)."""

    def stop():
        """Finish queued work and close; returns a Deferred."""

    # Accounts and keys

    def bootstrap_admin_key(key, secret_hash, account):
        """If the store holds no API key at all, create C{account} (unless an
        account exists already, in which case the key joins the first one)
        and store C{key}; fire with the stored L{ApiKey} or None."""

    def create_key(key, secret_hash):
        """Store a new L{ApiKey}; fire with it."""

    def key_credentials(key_id):
        """Fire with C{(ApiKey, secret_hash)}, or None if there is no such key."""

    def list_keys(account_id):
        """Fire with the account's keys, oldest first."""

    def delete_key(key_id, account_id, now):
        """Delete the key; fire with True, or False if there was none.
        @raise LastAdminKey: it is the account's last admin key that has not
            expired by C{now}."""

    def create_account(account, key, secret_hash):
        """Store a new L{Account} and its first admin L{ApiKey} together;
        fire with the account."""

    def list_accounts():
        """Fire with every account, oldest first."""

    def get_account(account_id):
        """Fire with the L{Account} or None."""

    # Devices

    def create_device(device, token_hash):
        """Store a new L{Device}; fire with it."""

    def get_device(device_id):
        """Fire with the L{Device} or None."""

    def get_device_view(device_id):
        """Fire with the L{Device} (or None) and its last OTA status
        document (or None): a REST view's reads as one store job, so that
        it waits for the writer once, not twice."""

    def device_credentials(device_id):
        """Fire with C{(Device, token_hash)}, or None if there is no such device."""

    def list_devices(account_id):
        """Fire with the devices the account owns or that are shared with it."""

    def select_devices(selection):
        """Fire with the devices of a L{dashd.domain.query.Selection}, in
        its order, one more than its limit if there are more (see
        L{dashd.store.query_sql}: the query runs in the store)."""

    def count_devices(selection):
        """Fire with how many devices the selection matches (its limit and
        cursor aside)."""

    def update_device(device_id, name, shared_with, shadow_update, now, share_scopes=None):
        """In one transaction change the name and/or sharing (None leaves a
        field alone; C{share_scopes}, with C{shared_with}, the scopes of the
        shares that have one) and apply a L{dashd.domain.shadow.ShadowUpdate}
        (or None).
        Fire with C{(Device, UpdateResult or None)}.
        @raise NotFound: no such device.
        @raise dashd.domain.shadow.SHADOW_ERRORS: the shadow update was refused;
            nothing was changed."""

    def update_shadow(device_id, update, now, save_data=False):
        """Apply a shadow update; fire with C{(Device, UpdateResult)}. With
        C{save_data} (a report from the device) the reported values of the
        keys listed in the shadow's C{tags.save} are appended to the device's
        stored data in the same transaction (see L{dashd.domain.timeseries})."""

    def record_info(device_id, info, shadow_update, now):
        """Record what a device says about itself (and its last-seen time),
        applying C{shadow_update} (or None) in the same transaction. Fire with
        C{(Device, UpdateResult or None)}."""

    def device_connected(device_id, now):
        """Set the device's last-seen time and fire with the L{Device} as it
        is then and its pull record (L{data_pull}), or None if there is no
        such device: one job where a device connects."""

    def touch(device_id, now):
        """Set the device's last-seen time."""

    def set_device_token(device_id, token_hash):
        """Replace the device's token hash (the old token stops working);
        fire with True, or False if there is no such device."""

    def delete_device(device_id):
        """Delete the device; fire with True, or False if there was none."""

    # Queued calls (dashd.domain.calls; the jobs are in calls_sql.py)

    def create_call(call, per_device, per_account):
        """Store a new queued L{dashd.domain.calls.Call}; fire with it (its
        seq set).
        @raise NotFound: no such device.
        @raise dashd.domain.errors.Busy: the device, or the call's account,
            has that many calls queued or under way already."""

    def get_call(call_id):
        """Fire with the call or None."""

    def list_calls(device_id, states, limit, before):
        """Fire with up to C{limit} of the device's calls (only those in
        C{states} if given), newest first, before seq C{before} if given."""

    def claim_calls(device_id, claim, now, limit):
        """Take the device's oldest queued calls (up to C{limit}) to send:
        each is recorded C{sent} by C{claim} (a new attempt) before this
        fires; those past their deadline become C{expired}. Fire with
        C{(sent, expired)}. A call is taken once, whoever asks."""

    def end_call(call_id, attempt, claim, state, now, result=None, error=None):
        """End attempt number C{attempt} of a sent call, if C{claim} sent it
        and it has not ended: fire with the call (final, or queued again
        to be retried), or None."""

    def unsend_call(call_id, claim):
        """Put a call taken to send back in the queue, its attempt undone
        (its frame never went out); fire with it or None."""

    def cancel_call(call_id, now):
        """Cancel the call if it is queued; fire with it as it is then, or
        None if there is no such call."""

    def expire_calls(now, limit=1000):
        """Expire queued calls past their deadline; fire with them."""

    def sent_calls(before, limit=1000):
        """Fire with calls sent before C{before} and not ended (to find
        those whose node is gone)."""

    def queued_devices(limit=100000):
        """Fire with the IDs of devices that have queued calls."""

    def prune_calls(before, batch=10000):
        """Delete up to C{batch} calls that ended before C{before}; fire
        with how many."""

    # The firmware library (dashd.app.library; the jobs are in firmware_sql.py)

    def begin_firmware(image, per_account):
        """Store the record of an image being uploaded (not complete yet).
        @raise dashd.domain.errors.Busy: its account has C{per_account}."""

    def put_firmware_chunk(firmware_id, n, data):
        """Store chunk C{n} (bytes) of an image being uploaded."""

    def complete_firmware(firmware_id):
        """Mark the image complete; fire with its record."""

    def get_firmware(firmware_id):
        """Fire with a complete image's record (a dict) or None."""

    def list_firmware(account_id):
        """Fire with the complete images of the account (None: all), newest
        first."""

    def firmware_chunk(firmware_id, n):
        """Fire with chunk C{n} of the image, or None past its end."""

    def delete_firmware(firmware_id):
        """Delete the image; fire with whether there was one.
        @raise dashd.domain.errors.Conflict: a job that has not ended uses it."""

    def drop_incomplete_firmware(before):
        """Delete images whose upload began before C{before} and never
        completed; fire with how many."""

    # Fleet jobs (dashd.domain.jobs, dashd.app.jobs; the jobs are in jobs_sql.py,
    # whose functions say what each does)

    def create_job(job, executions):
        """Store a job and its first executions; fire with the job."""

    def add_job_executions(job_id, executions, now):
        """Add executions for devices the job has none for; fire with how many."""

    def get_job(job_id):
        """Fire with the job (a dict) or None."""

    def job_counts(job_id):
        """Fire with the job's executions counted by state."""

    def list_jobs(account_id, limit, before):
        """Fire with jobs (of the account, None: all), newest first."""

    def job_executions(job_id, states, limit, after):
        """Fire with a page of the job's executions, in order."""

    def set_job_state(job_id, from_states, state, now, reason=None):
        """Compare-and-set the job's state; fire with the job as it is then."""

    def lease_job(job_id, node, now, until):
        """Take or renew the job's lease; fire with whether C{node} holds it."""

    def release_job(job_id, node):
        """Give up the job's lease."""

    def active_jobs(limit=1000):
        """Fire with the IDs of the jobs that need driving."""

    def jobs_in_flight(job_id):
        """Fire with how many executions of the job are out."""

    def dispatch_job(job, limit, now, per_device, per_account, phase=None):
        """Queue the calls of the next executions of an RPC job, each linked
        to its execution in the same transaction; fire with the calls."""

    def take_job_executions(job_id, limit, now, phase=None, devices=None):
        """Mark the next queued executions in progress; fire with their devices."""

    def queued_job_devices(job_id, limit, phase=None):
        """Fire with the devices of the next queued executions."""

    def set_job_execution_ref(job_id, device_id, ref):
        """Record what an execution in progress started (a firmware update)."""

    def job_executions_in_progress(job_id):
        """Fire with the job's executions in progress."""

    def finish_job_ref(job_id, device_id, ref, state, now, result=None, error=None,
                       retries=0):
        """End an execution in progress that follows C{ref}."""

    def job_phase_counts(job_id):
        """Fire with the executions counted by phase and state."""

    def set_job_stage(job_id, stage, now):
        """Record where a staged rollout is."""

    def expire_job_queued(job_id, phase, before, now):
        """Time out queued executions waiting since before C{before}."""

    def requeue_job_executions(job_id, now):
        """Queue again the executions in progress that are not calls."""

    def finish_job_execution(job_id, device_id, state, now, result=None, error=None,
                             retries=0):
        """End an execution in progress (not a call)."""

    def sync_job(job_id, retries, now):
        """Bring the job's executions up to their calls' states."""

    def cancel_job(job_id, now, state="cancelled", reason=None):
        """End the job and cancel what was not sent; fire with the job and
        the calls cancelled."""

    def retry_job(job_id, now):
        """Queue the failed and timed-out executions again; fire with the job
        and how many."""

    def delete_job(job_id):
        """Delete an ended job; fire with whether there was one.
        @raise dashd.domain.errors.Conflict: it has not ended."""

    # Stored data, device events, OTA status

    def query_data(account_id, device_id, skip, limit, text):
        """Fire with the stored points (C{{"device_id", "timestamp", "key",
        "value"}}) of C{device_id}, or of every device C{account_id} may see
        if it is None, oldest first: C{limit} of them from position C{skip}
        (negative: counted from the end), only those whose key or JSON value
        holds C{text} if given."""

    # Dashboard sessions

    def create_session(id_hash, csrf_hash, key_id, now, expires, prune=1000):
        """Store a session (by the hashes of its cookie and CSRF token) of
        key C{key_id} until C{expires}, dropping up to C{prune} expired
        ones; fire with False if the key no longer exists."""

    def get_session(id_hash):
        """Fire with C{(key_id, csrf_hash, expires)}, or None."""

    def delete_session(id_hash):
        """End a session; fire with whether there was one."""

    def delete_key_sessions(key_id):
        """End every session of a key; fire with how many."""

    def list_sessions(now, key_id=None, account_id=None, limit=1000):
        """Fire with the sessions that have not expired by C{now}, newest
        first, of one key or account if given: C{{"id_hash", "key_id",
        "key_name", "account_id", "created", "expires"}}."""

    def query_buckets(selection, start, end, bucket):
        """Fire with the points of [start, end) of each device in buckets
        of C{bucket} seconds, a series a device and key (see
        L{dashd.store.ranges_sql.buckets}); C{selection}: C{(device_id,
        keys)} pairs, C{keys} dotted paths that each cover their sub-keys
        (None: all)."""

    def query_range(selection, start, end, limit):
        """Fire with C{(series, next)}: the first C{limit} raw points of
        [start, end) over the devices, a series a device and key, and the
        time to continue from (None: no more; see
        L{dashd.store.ranges_sql.points})."""

    def prune_data(before, batch=10000):
        """Delete up to C{batch} points stored before time C{before}; fire
        with how many."""

    def append_event(device_id, account_id, name, data, now, keep):
        """Store a device event (log line, notification), keeping the
        device's last C{keep}; fire with its offset."""

    def query_events(account_id, device_id, start, limit):
        """Fire with C{(events, next_offset)}: up to C{limit} events the
        account may see (of C{device_id} only, if given) from offset
        C{start} (negative: that many before the end), oldest first."""

    def append_points(device_id, account_id, points, now):
        """Append C{(key, value)} data points the device sent (C{Dash.Data});
        fire with how many."""

    def data_pull(device_id):
        """Fire with the device's pull record C{{"file", "stored"}} (see
        L{dashd.app.datapull}), or None if it never stored data to pull."""

    def set_data_pull(device_id, file, stored, now, expected):
        """Set the device's pull record to C{file} set aside on the device
        (None: none) and C{stored} bytes of it stored, if the record names
        C{expected} (None: none), creating the record if there is none; fire
        with False (nothing changed) if it names another file or the device
        no longer exists: a compare-and-set, so that two pulls never both
        take a file."""

    def store_pulled(device_id, account_id, file, expected, stored, points, now):
        """In one transaction: move the pull record of C{file} from
        C{expected} to C{stored} bytes and append C{points}; fire with True,
        or False (nothing written) if the record did not say C{expected}."""

    def set_ota_status(device_id, status, now):
        """Store the status document of the device's firmware update; fire
        with False if the device no longer exists."""

    def get_ota_status(device_id):
        """Fire with the device's last OTA status document, or None."""

    def ota_statuses(states):
        """Fire with the OTA status documents whose state is in C{states}."""
    def append_audit(entries):
        """Store audit entries (see L{dashd.api.audit.entry_for}), in order, in
        one transaction; fire with how many were stored."""

    def query_audit(account_id, start, limit):
        """Fire with C{(entries, next_offset)}: the account's audit entries
        from offset C{start} (negative: that many before the end), oldest
        first."""

    def prune_audit(before, batch=10000):
        """Delete up to C{batch} audit entries older than C{before}; fire
        with how many."""

    # Operation

    def ping():
        """Fire once the store has answered a trivial query (health checks)."""

    # Alarm rules, alarms and webhooks

    def alarms_job(job, *args, read=False):
        """Run C{job(db, *args)} of L{dashd.store.alarms_sql} in a
        transaction (C{read}: it only reads); fire with its result."""
