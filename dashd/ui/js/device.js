// One device: its info, its shadow (desired and tags edited as JSON,
// saved as merge patches on the condition that the section is still at the
// version read, so that a concurrent change of it is refused with 409 and
// explained, while the device's reports meanwhile are not in the way), its stored data (series.js), an RPC
// console, firmware updates (firmware.js), its log, stored and live
// (devicelog.js), its queued calls (calls.js; the console queues one for a
// device that is away), sharing, a new token and deletion. What the key
// may not do is not offered.

import {api, describe, encode} from './api.js';
import {add, announce, clearMessage, field, h, messageArea, pretty, replace, showMessage, uid} from './dom.js';
import {confirmDialog, tokenDialog} from './dialogs.js';
import {callsPart} from './calls.js';
import {deleteDevice, displayName, statusBadge} from './devices.js';
import {logPart} from './devicelog.js';
import {firmwarePart} from './firmware.js';
import {timeEl} from './format.js';
import {jsonEditor, mergePatch} from './jsonedit.js';
import {dataPart} from './series.js';
import {chartsPart} from './charts.js';
import {deviceMenu} from './devicemenu.js';

function section(title, ...children) {
  const id = uid('section');
  return h('section', {class: 'card', 'aria-labelledby': id}, h('h2', {id}, title), children);
}

function valueText(v) {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

export function mount(main, ctx, {id, section: part = ''}) {
  const perms = ctx.perms;
  let device = null;
  const message = messageArea();
  const heading = h('h1', {}, id);
  const badge = h('span', {class: 'status-slot'});
  const body = h('div', {class: 'device-body'});
  main.append(
    h('p', {class: 'back'}, h('a', {href: '#/devices'}, '← All devices')),
    h('div', {class: 'page-head'}, heading, badge),
    message,
    body,
  );
  const parts = {};

  async function load() {
    try {
      device = await api('GET', `/devices/${encode(id)}`);
    } catch (error) {
      if (!ctx.alive) return;
      heading.textContent = 'Device not available';
      showMessage(message, describe(error), 'error');
      return;
    }
    if (!ctx.alive) return;
    heading.textContent = displayName(device);
    document.title = `${displayName(device)} · dashd`;
    replace(badge, statusBadge(device.online));
    add(body,
      infoSection(),
      shadowSection(),
      chartsSection(),
      perms.seesData ? dataSection() : null,
      rpcSection(),
      callsSection(),
      perms.seesFirmware ? firmwareSection() : null,
      perms.seesLog ? logSection() : null,
      perms.restricted ? null : sharingSection(),
      perms.owns(device) ? dangerSection() : null,
    );
    if (device.online) parts.rpc?.listMethods();
    menuPart(part);
  }

  // The section menu, and the parts' own addresses (#/devices/ID/rpc)

  function menuPart(first) {
    const note = h('p', {class: 'message warning', role: 'status', hidden: true});
    const menu = deviceMenu(id, body, note);
    body.before(menu.element, note);
    menu.show(first);
    ctx.reroute = (view, params) => {
      if (params.id !== id || !ctx.alive) return false;
      menu.show(params.section || '');
      return true;
    };
  }

  // Info

  function infoSection() {
    const dl = h('dl', {class: 'facts'});
    const infoTable = h('div');
    parts.info = () => {
      const facts = [
        ['ID', h('code', {}, device.id)],
        ['Status', statusBadge(device.online)],
        ['Last seen', device.online ? 'now (connected)' : timeEl(device.last_seen)],
      ];
      if (device.created !== undefined) facts.push(['Registered', timeEl(device.created)]);
      if (device.account_id !== undefined) {
        facts.push(['Account', [h('code', {}, device.account_id),
          device.account_id === ctx.me.account_id ? ' (yours)' : ' (shared with you)']]);
      }
      replace(dl, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
      if (perms.seesInfo) {
        const info = device.info || {};
        const keys = Object.keys(info).sort();
        replace(infoTable, h('h3', {}, 'System info'), keys.length
          ? h('table', {class: 'kv'},
            h('caption', {class: 'visually-hidden'}, 'System info reported by the device'),
            h('tbody', {}, keys.map((k) => h('tr', {}, h('th', {scope: 'row'}, k), h('td', {}, valueText(info[k]))))))
          : h('p', {class: 'muted'}, 'The device has not reported its system info yet.'));
      }
    };
    parts.info();
    const children = [dl, infoTable];
    if (perms.owns(device)) children.push(renameForm());
    return section('Info', children);
  }

  function renameForm() {
    const input = h('input', {type: 'text', maxlength: 128, autocomplete: 'off', value: device.name || ''});
    const note = messageArea();
    const form = h('form', {class: 'inline', novalidate: true},
      field('Name', input).field,
      h('button', {type: 'submit', class: 'secondary'}, 'Rename'),
      note);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        device = await api('POST', `/devices/${encode(id)}`, {name: input.value});
        heading.textContent = displayName(device);
        showMessage(note, `Renamed to ${device.name}.`, 'success');
      } catch (error) {
        showMessage(note, describe(error), 'error');
        input.focus();
      }
    });
    return form;
  }

  // Shadow

  function shadowSection() {
    const meta = h('p', {class: 'meta'});
    const delta = h('div');
    const reported = h('div');
    const grid = h('div', {class: 'shadow-grid'});
    const editors = {};
    const canDesired = perms.canWriteDesired(device);
    const canTags = perms.owns(device);

    function shadow() {
      return device.shadow;
    }

    function showStatic() {
      const s = shadow();
      replace(meta, `Version ${s.version}`, s.timestamp ? [', changed ', timeEl(s.timestamp)] : ', never changed');
      const d = s.state.delta || {};
      replace(delta, h('h3', {}, 'Delta'), Object.keys(d).length
        ? [h('p', {class: 'hint'}, 'Desired but not yet reported by the device:'), h('pre', {class: 'code delta', tabindex: '0', 'aria-label': 'Delta'}, pretty(d))]
        : h('p', {class: 'muted'}, 'None: the device reports everything that is desired.'));
      replace(reported, h('h3', {}, 'Reported'), h('p', {class: 'hint'}, 'What the device says it has.'),
        h('pre', {class: 'code', tabindex: '0', 'aria-label': 'Reported state'}, pretty(s.state.reported || {})),
        reportTimes(s));
    }

    // When each reported key was last reported, the oldest first: a sensor
    // that stopped reporting is at the top.
    function reportTimes(s) {
      const times = [];
      (function walk(node, path) {
        for (const [key, value] of Object.entries(node || {})) {
          if (value && typeof value === 'object') walk(value, path.concat(key));
          else if (typeof value === 'number') times.push([path.concat(key).join('.'), value]);
        }
      })((s.metadata || {}).reported, []);
      if (!times.length) return null;
      times.sort((a, b) => a[1] - b[1]);
      return h('details', {class: 'report-times'}, h('summary', {}, 'When each key was last reported'),
        h('table', {class: 'compact'},
          h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Key'), h('th', {scope: 'col'}, 'Last reported'))),
          h('tbody', {}, times.map(([key, t]) => h('tr', {}, h('td', {}, h('code', {}, key)), h('td', {}, timeEl(t)))))));
    }

    function sectionVersion(name) {
      const sections = shadow().sections || {};
      return sections[name] ? sections[name].version : 0;
    }

    function makeEditor(name, label, value, hint) {
      const status = messageArea();
      const editor = jsonEditor({label, value, rows: 8, hint, options: {objectOnly: true, noNulls: true},
        onInput: () => clearMessage(status)});
      editor.base = value;
      editor.baseVersion = sectionVersion(name);
      const save = h('button', {type: 'button', class: 'primary'}, `Save ${name}`);
      const revert = h('button', {type: 'button', class: 'secondary'}, 'Revert');
      save.addEventListener('click', () => saveSection(name, editor, status));
      revert.addEventListener('click', () => {
        editor.setValue(editor.base);
        editor.conflict = false;
        clearMessage(status);
        editor.textarea.focus();
      });
      editor.status = status;
      editors[name] = editor;
      return h('div', {class: 'editor'}, editor.element, h('div', {class: 'actions'}, revert, save), status);
    }

    async function saveSection(name, editor, status) {
      const result = editor.validate();
      if (!result.ok) {
        showMessage(status, `Not saved: ${result.message}`, 'error');
        editor.textarea.focus();
        return;
      }
      const patch = mergePatch(editor.base, result.value);
      if (!Object.keys(patch).length) {
        showMessage(status, `Nothing to save: this is the stored ${name}.`);
        return;
      }
      // On the condition that nobody changed this section meanwhile (the
      // device's reports change another one).
      const update = name === 'tags'
        ? {tags: patch, versions: {tags: editor.baseVersion}}
        : {state: {desired: patch}, versions: {desired: editor.baseVersion}};
      editor.saving = true;
      try {
        device = await api('POST', `/devices/${encode(id)}`, {shadow: update});
      } catch (error) {
        editor.saving = false;
        if (error.status === 409) return explainConflict(name, editor, status, error);
        showMessage(status, `Not saved. ${describe(error)}`, 'error');
        editor.textarea.focus();
        return;
      }
      editor.saving = false;
      editor.conflict = false;
      editor.setValue(sectionValue(name));
      editor.base = sectionValue(name);
      editor.baseVersion = sectionVersion(name);
      refreshShadow();
      showMessage(status, `Saved ${name} (now its version ${sectionVersion(name)}; the shadow's ${shadow().version}).`, 'success');
    }

    function explainConflict(name, editor, status, error) {
      const draft = editor.textarea.value;
      const load = h('button', {type: 'button', class: 'secondary'}, 'Load the latest version');
      load.addEventListener('click', async () => {
        try {
          device = await api('GET', `/devices/${encode(id)}`);
        } catch (e) {
          showMessage(status, describe(e), 'error');
          return;
        }
        editor.setValue(sectionValue(name));
        editor.base = sectionValue(name);
        editor.baseVersion = sectionVersion(name);
        editor.conflict = false;
        refreshShadow();
        showMessage(status, [
          `Loaded ${name} version ${editor.baseVersion}. Make your change again and save. `,
          h('details', {}, h('summary', {}, 'Your unsaved text'), h('pre', {class: 'code'}, draft)),
        ]);
        editor.textarea.focus();
      });
      // Stays until dealt with: live updates do not replace it.
      editor.conflict = true;
      showMessage(status, [
        h('strong', {}, `Not saved: ${name} changed since you loaded it. `),
        `You edited its version ${editor.baseVersion}; someone else saved a newer one meanwhile, and saving yours would overwrite their change. dashd said: ${error.message}. `,
        load,
      ], 'error');
      load.focus();
    }

    function sectionValue(name) {
      const s = shadow();
      return name === 'tags' ? (s.tags || {}) : (s.state.desired || {});
    }

    function refreshShadow() {
      showStatic();
      for (const [name, editor] of Object.entries(editors)) {
        if (editor.saving) continue;
        if (!editor.isDirty()) {
          editor.setValue(sectionValue(name));
          editor.base = sectionValue(name);
          editor.baseVersion = sectionVersion(name);
        } else if (!editor.conflict && editor.baseVersion !== sectionVersion(name)) {
          showMessage(editor.status, `${name} changed (now its version ${sectionVersion(name)}) while you were editing its version ${editor.baseVersion}: saving will be refused. Revert to see the latest, then edit again.`, 'warning');
        }
      }
    }
    parts.shadow = refreshShadow;

    showStatic();
    const desired = canDesired
      ? makeEditor('desired', 'Desired (JSON)', sectionValue('desired'),
        perms.restricted
          ? `What you want the device to have. This key may change: ${perms.writableKeys(device).join(', ')}.`
          : 'What you want the device to have. Remove a key to delete it; the device gets the difference as its delta.')
      : h('div', {}, h('h3', {}, 'Desired'),
        h('pre', {class: 'code', tabindex: '0', 'aria-label': 'Desired state'}, pretty(sectionValue('desired'))),
        h('p', {class: 'hint'}, perms.readOnly ? 'This key is read-only.' : 'This key may not change the desired state.'));
    grid.append(h('div', {}, delta, reported), h('div', {}, desired));
    if (!perms.restricted) {
      grid.append(canTags
        ? h('div', {}, makeEditor('tags', 'Tags (JSON)', sectionValue('tags'),
          'Settings for people; the device never sees them. tags.save lists reported keys to keep as time series.'))
        : h('div', {}, h('h3', {}, 'Tags'),
          h('pre', {class: 'code', tabindex: '0', 'aria-label': 'Tags'}, pretty(sectionValue('tags'))),
          h('p', {class: 'hint'}, 'Only admins of the account that owns the device change its tags.')));
    }
    return section('Shadow', meta, grid);
  }

  // RPC console

  function rpcSection() {
    if (!perms.canCallAny(device)) {
      return section('RPC console', h('p', {class: 'muted'}, perms.readOnly
        ? 'This key is read-only: it may not call methods on devices.'
        : 'This key may not call methods on this device.'));
    }
    const listId = uid('methods');
    const method = h('input', {type: 'text', list: listId, autocomplete: 'off', spellcheck: 'false', required: true});
    const datalist = h('datalist', {id: listId});
    const methodsNote = h('p', {class: 'hint', role: 'status'});
    const refresh = h('button', {type: 'button', class: 'secondary small'}, 'Reload methods');
    const params = jsonEditor({label: 'Params (JSON)', value: undefined, rows: 5,
      hint: 'Leave empty to call without params.', options: {allowEmpty: true, objectOnly: false}});
    const timeout = h('input', {type: 'number', min: 1, max: 120, step: 1, value: 10, inputmode: 'numeric'});
    const queue = h('input', {type: 'checkbox'});
    const expiry = h('input', {type: 'number', min: 1, max: 720, step: 1, value: 24, inputmode: 'numeric'});
    const expiryField = field('Expires after (hours)', expiry, 'A queued call not sent by then is dropped (expired).');
    expiryField.field.hidden = true;
    queue.addEventListener('change', () => { expiryField.field.hidden = !queue.checked; });
    const queueField = h('div', {class: 'check'}, h('label', {}, queue, ' Queue until the device is back'),
      h('p', {class: 'hint'}, 'If the device is offline, the call waits for it and is sent once when it connects; see Queued calls below.'));
    const call = h('button', {type: 'submit', class: 'primary'}, 'Call');
    const outcome = h('p', {class: 'rpc-outcome', role: 'status', 'aria-live': 'polite'});
    const output = h('pre', {class: 'code rpc-output', tabindex: '0', 'aria-label': 'Result', hidden: true});

    const patterns = perms.rpcPatterns(device);
    function setMethods(names) {
      replace(datalist, names.map((n) => h('option', {value: n})));
    }
    // A restricted key's own list is a start (wildcards aside).
    if (perms.restricted) setMethods(patterns.filter((p) => !/[*?]/.test(p)));
    methodsNote.textContent = 'Type a method name.';

    async function listMethods() {
      if (!perms.canCall(device, 'RPC.List')) {
        methodsNote.textContent = 'Type a method name this key may call.';
        return;
      }
      methodsNote.textContent = 'Asking the device for its methods (RPC.List)…';
      try {
        const names = await api('GET', `/devices/${encode(id)}/rpc/RPC.List`);
        if (!ctx.alive) return;
        const usable = (Array.isArray(names) ? names : []).filter((n) => typeof n === 'string' && perms.canCall(device, n)).sort();
        setMethods(usable);
        parts.rpc.listed = true;
        methodsNote.textContent = `${usable.length} methods from RPC.List: pick one or type a name.`;
      } catch (error) {
        if (ctx.alive) methodsNote.textContent = `No method list: ${describe(error)}`;
      }
    }
    refresh.addEventListener('click', listMethods);

    const form = h('form', {class: 'rpc', novalidate: true},
      h('div', {class: 'method-row'}, field('Method', method).field, refresh),
      datalist, methodsNote,
      params.element,
      field('Timeout (seconds)', timeout).field,
      queueField, expiryField.field,
      h('div', {class: 'actions'}, call),
      outcome, output);

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const name = method.value.trim();
      output.hidden = true;
      if (!/^[^\s/?#]+$/.test(name)) {
        outcome.className = 'rpc-outcome error';
        outcome.textContent = name ? 'A method name has no spaces, slashes, ? or #.' : 'Enter a method name.';
        method.setAttribute('aria-invalid', 'true');
        method.focus();
        return;
      }
      method.setAttribute('aria-invalid', 'false');
      const checked = params.validate();
      if (!checked.ok) {
        outcome.className = 'rpc-outcome error';
        outcome.textContent = `Not called: ${checked.message}`;
        params.textarea.focus();
        return;
      }
      const seconds = Number(timeout.value || 10);
      let path = `/devices/${encode(id)}/rpc/${encode(name)}?timeout=${encode(String(seconds))}`;
      if (queue.checked) {
        const hours = Number(expiry.value);
        if (!(hours > 0 && hours <= 720)) {
          outcome.className = 'rpc-outcome error';
          outcome.textContent = 'Not called: the expiry is 1 to 720 hours.';
          expiry.setAttribute('aria-invalid', 'true');
          expiry.focus();
          return;
        }
        expiry.setAttribute('aria-invalid', 'false');
        // The bridge answers at once when the device is online, else
        // queues the call (202) for that long.
        path += `&queue=${encode(String(Math.round(hours * 3600)))}`;
      }
      call.disabled = true;
      outcome.className = 'rpc-outcome';
      outcome.textContent = `Calling ${name}…`;
      const started = performance.now();
      try {
        const reply = checked.value === undefined
          ? await api('GET', path, undefined, {withStatus: true})
          : await api('POST', path, checked.value, {withStatus: true});
        const ms = Math.round(performance.now() - started);
        if (reply.status === 202) {
          outcome.className = 'rpc-outcome success';
          outcome.textContent = `${name} is queued: the device is offline, and the call goes out when it is back (until ${new Date(reply.body.expires * 1000).toLocaleString()}).`;
          parts.calls?.show(reply.body, true);
          return;
        }
        outcome.className = 'rpc-outcome success';
        outcome.textContent = `${name} answered in ${ms} ms:`;
        output.textContent = pretty(reply.body);
        output.hidden = false;
      } catch (error) {
        outcome.className = 'rpc-outcome error';
        outcome.textContent = `${name} failed. ${describe(error)}`;
      } finally {
        call.disabled = false;
      }
    });
    parts.rpc = {listMethods, listed: false};
    return section('RPC console', form);
  }

  // Queued calls

  function callsSection() {
    parts.calls = callsPart(ctx, id, (method) => perms.canCall(device, method));
    return section('Queued calls', parts.calls.element);
  }

  // Stored data

  function dataSection() {
    parts.data = dataPart(ctx, id, () => device, {
      canChangeSaved: () => perms.owns(device),
      setDevice: (d) => {
        device = d;
        parts.shadow();
      },
    });
    return section('Stored data', parts.data.element);
  }

  // Charts over time (every kind of key: a restricted one, of what it may read)

  function chartsSection() {
    parts.charts = chartsPart(ctx, id, () => device);
    return section('Charts', parts.charts.element);
  }

  // Firmware

  function firmwareSection() {
    parts.firmware = firmwarePart(ctx, id, () => device, () => perms.owns(device));
    return section('Firmware update', parts.firmware.element);
  }

  // The log, stored and live

  function logSection() {
    parts.log = logPart(ctx, id);
    return section('Device log', parts.log.element);
  }

  // Sharing

  function sharingSection() {
    if (!perms.owns(device)) {
      return section('Sharing',
        h('p', {}, 'Shared with: ', device.shared_with ? h('code', {}, device.shared_with) : h('span', {class: 'muted'}, 'nobody')),
        h('p', {class: 'hint'}, perms.admin
          ? 'This device belongs to another account: only its admins change its sharing.'
          : 'Only admin keys change sharing.'));
    }
    const input = h('input', {type: 'text', autocomplete: 'off', spellcheck: 'false', value: device.shared_with || ''});
    const note = messageArea();
    const form = h('form', {class: 'inline', novalidate: true},
      field('Shared with', input, `Account IDs, comma-separated, whose keys may also see and use this device (not rename, share or delete it). Your account is ${ctx.me.account_id}.`).field,
      h('button', {type: 'submit', class: 'secondary'}, 'Save sharing'),
      note);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        device = await api('POST', `/devices/${encode(id)}`, {shared_with: input.value});
        input.value = device.shared_with;
        showMessage(note, device.shared_with
          ? `Shared with ${device.shared_with}.`
          : 'Shared with nobody.', 'success');
      } catch (error) {
        showMessage(note, describe(error), 'error');
        input.focus();
      }
    });
    return section('Sharing', form);
  }

  // Token and deletion

  function dangerSection() {
    const note = messageArea();
    const rotate = h('button', {type: 'button', class: 'secondary'}, 'Give the device a new token');
    rotate.addEventListener('click', async () => {
      const ok = await confirmDialog({
        title: 'Give the device a new token?',
        body: 'The current token stops working at once, and a device connected with it is disconnected until it is provisioned with the new one.',
        confirmLabel: 'New token',
      });
      if (!ok) return;
      try {
        const reply = await api('POST', `/devices/${encode(id)}/token`, {});
        await tokenDialog({title: 'New device token', device, token: reply.token});
        announce('The device has a new token');
      } catch (error) {
        showMessage(note, describe(error), 'error');
      }
    });
    const del = h('button', {type: 'button', class: 'danger'}, 'Delete device');
    del.addEventListener('click', async () => {
      if (await deleteDevice(device, note)) ctx.navigate('#/devices');
    });
    return section('Token and deletion', h('div', {class: 'actions left'}, rotate, del), note);
  }

  // Live updates

  ctx.listen((event) => {
    if (!device) return;
    if (event.name === 'stream.reconnected') {
      api('GET', `/devices/${encode(id)}`).then((d) => {
        if (!ctx.alive) return;
        device = d;
        replace(badge, statusBadge(device.online));
        parts.info();
        parts.shadow();
        parts.data?.shadowChanged();
        parts.firmware?.setDevice();
        parts.calls?.reload();
      }, () => {});
      return;
    }
    if (event.id !== id || device.deleting) return;
    if (parts.log) parts.log.onEvent(event);
    if (parts.calls) parts.calls.onEvent(event);
    if (parts.firmware) parts.firmware.onEvent(event);
    if (event.name === 'online' || event.name === 'offline') {
      device.online = event.name === 'online';
      device.last_seen = Date.now() / 1000;
      replace(badge, statusBadge(device.online));
      parts.info();
      announce(`${displayName(device)} is now ${event.name}`);
      // A device that comes back is asked for its methods if it never was.
      if (device.online && parts.rpc && !parts.rpc.listed) parts.rpc.listMethods();
    } else if (event.name === 'rpc.out.Heartbeat' && event.data && typeof event.data === 'object') {
      device.info = {...(device.info || {}), ...event.data};
      parts.info();
    } else if (event.name === 'shadow.update' && event.data && event.data.state) {
      device.shadow = event.data;
      parts.shadow();
      parts.data?.shadowChanged();
    } else if (event.name === 'device.updated' && event.data) {
      device.name = event.data.name;
      if (event.data.shared_with) device.shared_with = event.data.shared_with.join(',');
      heading.textContent = displayName(device);
      document.title = `${displayName(device)} · dashd`;
      parts.info();
    } else if (event.name === 'device.deleted') {
      // Deleted elsewhere (another page, a script, dashctl).
      device.deleting = true;
      replace(body);
      heading.textContent = 'Device deleted';
      showMessage(message, `${displayName(device)} was deleted (through the API, another page or dashctl).`, 'warning');
      announce(`${displayName(device)} was deleted`);
    }
  });

  load();
  return 'Device';
}
