// The firmware section of a device page: upload a .zip or .bin (push or
// pull, optionally committed at once) with a progress bar that follows the
// file to dashd (the upload's own progress) and then to the device (the
// ota.progress and ota.status notifications); the outcome, a Commit button
// for firmware that is back but not committed, and the reason of a
// failure. Keys that may not update firmware see the status only.

import {api, describe, encode, upload} from './api.js';
import {clearMessage, field, h, messageArea, replace, showMessage, uid} from './dom.js';
import {timeEl} from './format.js';

const TRANSFERRING = ['uploading', 'downloading'];
const FINISHED = ['committed', 'failed'];
// commit_timeout as dashd takes it: whole seconds, at most 30 days.
const MAX_COMMIT_TIMEOUT = 86400 * 30;

export function bytes(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '';
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function fileSummary(status) {
  const parts = [status.kind === 'zip' ? 'Mongoose OS .zip' : status.kind === 'bin' ? '.bin image' : status.kind,
    bytes(status.size)];
  const manifest = status.manifest || {};
  if (manifest.version !== undefined) parts.push(`version ${manifest.version}`);
  if (manifest.build_id !== undefined) parts.push(`build ${manifest.build_id}`);
  return `${status.file} (${parts.filter(Boolean).join(', ')})`;
}

// What an upload refusal means for the person who picked the file.
function explainRefusal(error) {
  const text = describe(error);
  switch (error.status) {
    case 400: return `${text}. Nothing was sent to the device.`;
    case 408: return `${text}. The upload took longer than dashd allows (ota.upload_timeout); try again on a faster connection.`;
    case 409: return `${text}. Wait for it to end (its progress is shown below), then try again.`;
    case 413: return `${text}. dashd takes firmware files up to its ota.max_bytes setting; nothing was sent to the device.`;
    case 415: return `${text}. Choose a Mongoose OS .zip (from mos build) or a .bin image.`;
    case 503: return `${text}. dashd sends firmware only to a connected device.`;
    default: return text;
  }
}

// device(): the device as the page knows it now. canUpdate: the key may
// upload and commit. Returns {element, onEvent(event), setDevice()}.
export function firmwarePart(ctx, deviceId, device, canUpdate) {
  let status = device().ota || null;
  // The browser's own upload, before dashd answers: {file, sent, total}.
  let local = null;
  let lastPhase = '';

  const heading = h('h3', {});
  const summary = h('p', {class: 'ota-summary'});
  const progressId = uid('progress');
  const bar = h('progress', {id: progressId, max: 100, value: 0});
  const percent = h('span', {class: 'ota-percent'});
  const amount = h('span', {class: 'ota-bytes'});
  const progressRow = h('div', {class: 'ota-progress'},
    h('label', {for: progressId}, 'Update progress'), bar, percent, amount);
  // Said to screen readers when the phase changes; the figures that move
  // at every step stay out of it.
  const phase = h('p', {class: 'ota-phase', role: 'status', 'aria-live': 'polite'});
  const outcome = messageArea();
  const commitButton = h('button', {type: 'button', class: 'primary', hidden: true}, 'Commit the new firmware');
  const commitNote = messageArea();
  const box = h('div', {class: 'ota-status'}, heading, summary, progressRow, phase, outcome, commitButton, commitNote);

  function setPhase(text) {
    if (text !== lastPhase) {
      lastPhase = text;
      phase.textContent = text;
    }
  }

  function setBar(value, sent, size) {
    const v = Math.max(0, Math.min(100, Math.floor(value)));
    bar.value = v;
    percent.textContent = `${v}%`;
    amount.textContent = size ? `${bytes(sent)} of ${bytes(size)}` : '';
  }

  function render() {
    box.hidden = !status && !local;
    if (local) {
      heading.textContent = 'Update under way';
      replace(summary, `${local.file.name} (${bytes(local.file.size)})`);
      progressRow.hidden = false;
      const done = local.total ? local.sent * 100 / local.total : 0;
      setBar(done, local.sent, local.total);
      setPhase(done >= 100
        ? `dashd has ${local.file.name} and checks it…`
        : `Uploading ${local.file.name} to dashd…`);
      clearMessage(outcome);
      commitButton.hidden = true;
      return;
    }
    if (!status) {
      setPhase('');
      return;
    }
    const state = status.state;
    heading.textContent = FINISHED.includes(state) ? 'Last update' : 'Update under way';
    replace(summary, fileSummary(status), ', ', status.mode === 'pull' ? 'pulled by the device' : 'pushed by dashd',
      ', started ', timeEl(status.started), status.auto_commit ? ', committed automatically' : '',
      status.note ? `. ${status.note}` : '',
      status.device_state ? `. The device says: ${status.device_state.state}${status.device_state.msg ? ` (${status.device_state.msg})` : ''}` : '');
    progressRow.hidden = false;
    setBar(status.percent || 0, status.sent, status.size);
    commitButton.hidden = true;
    if (state === 'uploading') {
      setPhase(`dashd sends ${status.file} to the device…`);
      clearMessage(outcome);
    } else if (state === 'downloading') {
      setPhase(`The device downloads ${status.file} from dashd…`);
      clearMessage(outcome);
    } else if (state === 'rebooting') {
      setPhase(`The device has all of ${status.file} and reboots into it…`);
      clearMessage(outcome);
    } else if (state === 'uncommitted') {
      // The outcome says it (a live region too).
      setPhase('');
      const reverts = status.mode === 'pull' && status.commit_timeout
        ? `Mongoose OS goes back to the old firmware unless it is committed within ${status.commit_timeout} s of the reboot.`
        : 'Until it is committed the device may go back to the old firmware (Mongoose OS does, after its commit timeout).';
      showMessage(outcome, [
        h('strong', {}, 'Done, not committed yet. '),
        `The device runs fw_id ${status.fw_id}${status.fw_version ? ` (version ${status.fw_version})` : ''}. ${reverts}`,
        status.reason ? ` The last commit failed: ${status.reason}.` : '',
      ], 'warning');
      commitButton.hidden = !canUpdate();
    } else if (state === 'committed') {
      setPhase('');
      showMessage(outcome, `Committed: the device runs fw_id ${status.fw_id}${status.fw_version ? ` (version ${status.fw_version})` : ''}.`, 'success');
    } else if (state === 'failed') {
      setPhase('');
      showMessage(outcome, `The update failed: ${status.reason || 'no reason given'}. The device stays usable; a new update may start at once.`, 'error');
    } else {
      setPhase(`State: ${state}`);
      clearMessage(outcome);
    }
  }

  commitButton.addEventListener('click', async () => {
    commitButton.disabled = true;
    showMessage(commitNote, 'Committing (OTA.Commit)…');
    try {
      const reply = await api('POST', `/devices/${encode(deviceId)}/ota/commit`, {});
      if (!ctx.alive) return;
      status = reply;
      clearMessage(commitNote);
      render();
      heading.focus();
    } catch (error) {
      if (!ctx.alive) return;
      showMessage(commitNote, `Not committed. ${describe(error)}`, 'error');
    } finally {
      commitButton.disabled = false;
    }
  });
  heading.setAttribute('tabindex', '-1');

  // The upload form, for keys that may.

  function uploadForm() {
    const file = h('input', {type: 'file', accept: '.zip,.bin,application/zip,application/octet-stream'});
    const modeName = uid('mode');
    const push = h('input', {type: 'radio', name: modeName, value: 'push', checked: true, id: uid('mode')});
    const pull = h('input', {type: 'radio', name: modeName, value: 'pull', id: uid('mode')});
    const auto = h('input', {type: 'checkbox', id: uid('auto')});
    const commitTimeout = h('input', {type: 'number', min: 0, max: MAX_COMMIT_TIMEOUT, step: 1, inputmode: 'numeric'});
    const timeoutField = field('Commit timeout in seconds (optional)', commitTimeout,
      "How long the new firmware has to be committed before Mongoose OS reverts it (0: never). Empty: dashd's ota.commit_timeout.").field;
    timeoutField.hidden = true;
    const send = h('button', {type: 'submit', class: 'primary'}, 'Upload and update');
    const note = messageArea();
    const form = h('form', {class: 'ota-form', novalidate: true},
      field('Firmware file', file, 'A Mongoose OS .zip built by mos build, or a .bin image (ESP-IDF or Arduino firmware on the mDash library).').field,
      h('fieldset', {}, h('legend', {}, 'How it gets to the device'),
        h('div', {class: 'radio'}, push, h('label', {for: push.id}, h('strong', {}, 'Push'),
          " — dashd sends it in chunks over the device's connection (every device)")),
        h('div', {class: 'radio'}, pull, h('label', {for: pull.id}, h('strong', {}, 'Pull'),
          ' — the device downloads it from dashd at a one-time link (Mongoose OS)'))),
      h('div', {class: 'checkbox'}, auto, h('label', {for: auto.id}, 'Commit it as soon as the device is back with it')),
      timeoutField,
      h('div', {class: 'actions left'}, send),
      note);
    for (const radio of [push, pull]) {
      radio.addEventListener('change', () => { timeoutField.hidden = !pull.checked; });
    }
    const pullNote = h('p', {class: 'hint', hidden: true});
    form.querySelector('fieldset').append(pullNote);
    // Only devices with OTA.Update can pull (the mDash library has none):
    // when pull is chosen, the device is asked what it has.
    pull.addEventListener('change', () => {
      if (!pull.checked || !device().online) return;
      api('GET', `/devices/${encode(deviceId)}/rpc/RPC.List`).then((methods) => {
        if (!ctx.alive || !Array.isArray(methods) || methods.includes('OTA.Update')) return;
        pull.disabled = true;
        push.checked = true;
        timeoutField.hidden = true;
        pullNote.textContent = 'This device has no OTA.Update (the mDash library): it cannot download firmware itself, so dashd pushes it.';
        pullNote.hidden = false;
      }, () => {});  // it may not answer RPC.List; dashd falls back to push anyway
    });

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearMessage(note);
      const chosen = file.files && file.files[0];
      if (!chosen) {
        showMessage(note, 'Choose a firmware file first.', 'error');
        file.setAttribute('aria-invalid', 'true');
        file.focus();
        return;
      }
      file.setAttribute('aria-invalid', 'false');
      const query = [];
      if (pull.checked) query.push('mode=pull');
      if (auto.checked) query.push('auto_commit=true');
      if (pull.checked && commitTimeout.value.trim() !== '') {
        const seconds = commitTimeout.value.trim();
        if (!/^[0-9]+$/.test(seconds) || Number(seconds) > MAX_COMMIT_TIMEOUT) {
          showMessage(note, `The commit timeout must be a whole number of seconds from 0 to ${MAX_COMMIT_TIMEOUT} (30 days).`, 'error');
          commitTimeout.setAttribute('aria-invalid', 'true');
          commitTimeout.focus();
          return;
        }
        query.push(`commit_timeout=${seconds}`);
      }
      commitTimeout.setAttribute('aria-invalid', 'false');
      if (!device().online) {
        showMessage(note, 'Not sent: the device is offline. dashd sends firmware only to a connected device; try again once it is online.', 'error');
        return;
      }
      send.disabled = true;
      local = {file: chosen, sent: 0, total: chosen.size};
      render();
      try {
        const path = `/devices/${encode(deviceId)}/ota${query.length ? `?${query.join('&')}` : ''}`;
        const reply = await upload(path, chosen, {
          onProgress: (sent, total) => {
            if (!local) return;
            local.sent = sent;
            local.total = total;
            render();
          },
        });
        if (!ctx.alive) return;
        local = null;
        // The notifications may have told more already.
        if (!status || status.id !== reply.id) status = reply;
        render();
        form.reset();
        timeoutField.hidden = true;
        showMessage(note, `dashd took ${chosen.name} and started the update.`, 'success');
      } catch (error) {
        if (!ctx.alive) return;
        local = null;
        render();
        showMessage(note, `Not started. ${explainRefusal(error)}`, 'error');
        file.focus();
      } finally {
        send.disabled = false;
      }
    });
    return form;
  }

  const intro = canUpdate()
    ? null
    : h('p', {class: 'hint'}, ctx.perms.readOnly
      ? 'This key is read-only: it sees firmware updates but may not start one.'
      : 'Only admin keys of the account that owns the device update its firmware.');
  const empty = h('p', {class: 'muted'}, 'No firmware update of this device yet.');
  const element = h('div', {},
    canUpdate() ? uploadForm() : intro,
    box,
    canUpdate() ? null : empty);

  function refresh() {
    empty.hidden = Boolean(status);
    render();
  }
  refresh();

  return {
    element,
    onEvent(event) {
      if (event.name === 'ota.status' && event.data && typeof event.data === 'object') {
        status = event.data;
        // dashd has the whole file: the browser's part is over.
        local = null;
        refresh();
      } else if (event.name === 'ota.progress' && event.data && status && status.id === event.data.update) {
        if (!TRANSFERRING.includes(status.state)) return;
        status.percent = event.data.percent;
        status.sent = event.data.sent;
        status.size = event.data.size;
        render();
      }
    },
    // The device was loaded again (the stream reconnected).
    setDevice() {
      const fresh = device().ota || null;
      if (fresh) status = fresh;
      refresh();
    },
  };
}
