// The Webhooks page (#/webhooks, admin keys): the account's webhooks, what
// each is sent, its deliveries (waiting, dropped, delivered, given up, and
// the last ones with their status codes), "Send test event", and a form to
// make one (its signing secret is shown once).

import {api, describe, encode} from './api.js';
import {announce, field, h, messageArea, replace, showMessage} from './dom.js';
import {confirmDialog, secretDialog} from './dialogs.js';
import {timeEl} from './format.js';
import {refusedPage} from './perms.js';

const KINDS = ['alarm.raised', 'alarm.cleared', 'alarm.acknowledged', 'device.online', 'device.offline', 'ota.status', 'job.state', 'job.progress'];

function deliveries(hook) {
  const d = hook.deliveries || {backlog: 0, dropped: 0, delivered: 0, failed: 0, last: []};
  const td = (label, ...content) => h('td', {'data-label': label}, h('span', {class: 'cell'}, content));
  return h('div', {class: 'deliveries'},
    h('p', {class: 'count'}, `${d.delivered} delivered, ${d.failed} given up, ${d.backlog} waiting, ${d.dropped} dropped (backlog full)`),
    d.last.length ? h('table', {class: 'deliveries'},
      h('caption', {class: 'visually-hidden'}, `Last deliveries to ${hook.url}`),
      h('thead', {}, h('tr', {}, ['When', 'Event', 'Attempt', 'Status'].map((t) => h('th', {scope: 'col'}, t)))),
      h('tbody', {}, d.last.map((x) => h('tr', {class: x.error ? 'failed' : null},
        td('When', timeEl(x.t)), td('Event', h('code', {}, x.kind)), td('Attempt', String(x.attempt)),
        td('Status', x.status !== null ? h('strong', {class: x.error ? 'status-failed' : 'status-ok'}, String(x.status)) : null,
          x.error ? ` ${x.error}` : ''))))) : h('p', {class: 'muted'}, 'Nothing sent yet.'));
}

export function mount(main, ctx) {
  if (!ctx.perms.admin) return refusedPage(main, ctx, 'Webhooks', '/webhooks', 'manage webhooks');
  const message = messageArea();
  const list = h('div', {class: 'webhooks'});
  const url = h('input', {type: 'url', required: true, placeholder: 'https://example.com/dashd', autocomplete: 'off'});
  const name = h('input', {type: 'text', maxlength: '200'});
  const boxes = KINDS.map((k) => h('input', {type: 'checkbox', value: k, checked: k === 'alarm.raised' || k === 'alarm.cleared'}));
  const form = h('form', {class: 'card', onsubmit: async (e) => {
    e.preventDefault();
    try {
      const hook = await api('POST', '/webhooks', {url: url.value, name: name.value,
        events: boxes.filter((b) => b.checked).map((b) => b.value)});
      url.value = '';
      name.value = '';
      await secretDialog({title: 'Webhook made', intro: `Deliveries to ${hook.url} are signed with this secret (X-Dashd-Signature, see the README's "Webhooks").`,
        fields: [{label: 'Signing secret', value: hook.secret}],
        note: 'It is shown this once (a new one can be made with POST /webhooks/ID {"rotate_secret": true}).'});
      load();
    } catch (error) {
      showMessage(message, describe(error), 'error');
    }
  }},
  h('h2', {}, 'New webhook'),
  field('URL', url, 'https:// (http:// only where dashd allows it); private addresses are refused unless configured.').field,
  field('Name', name).field,
  h('fieldset', {}, h('legend', {}, 'Events'), KINDS.map((k, i) => h('label', {class: 'check'}, boxes[i], ` ${k}`))),
  h('button', {type: 'submit'}, 'Make webhook'));

  function card(hook) {
    const status = messageArea();
    return h('section', {class: 'card webhook', dataset: {hookId: hook.id}, 'aria-label': `Webhook ${hook.name || hook.url}`},
      h('h2', {}, hook.name || hook.url),
      h('p', {}, h('code', {}, hook.url), hook.enabled ? null : h('span', {class: 'muted'}, ' (disabled)')),
      h('p', {class: 'muted'}, `Events: ${hook.events.join(', ') || 'only the alarms of rules that name it'}`),
      deliveries(hook),
      status,
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'secondary', onclick: async () => {
          try {
            await api('POST', `/webhooks/${encode(hook.id)}/test`, {});
            showMessage(status, 'Test event queued.', 'info');
            announce('Test event queued');
            window.setTimeout(() => { if (ctx.alive) load(); }, 1500);
          } catch (error) { showMessage(status, describe(error), 'error'); }
        }}, 'Send test event'),
        h('button', {type: 'button', class: 'secondary', onclick: () => load()}, 'Refresh'),
        h('button', {type: 'button', class: 'secondary', onclick: async () => {
          const ok = await confirmDialog({title: `Delete webhook ${hook.name || hook.url}?`,
            body: 'Deliveries waiting for it are dropped.', confirmLabel: 'Delete'});
          if (!ok) return;
          try {
            await api('DELETE', `/webhooks/${encode(hook.id)}`);
            load();
          } catch (error) { showMessage(status, describe(error), 'error'); }
        }}, 'Delete')));
  }

  async function load() {
    try {
      const hooks = await api('GET', '/webhooks');
      if (!ctx.alive) return;
      replace(list, hooks.length ? hooks.map(card) : h('p', {class: 'muted'}, 'No webhooks yet.'));
    } catch (error) {
      if (ctx.alive) showMessage(message, describe(error), 'error');
    }
  }

  main.append(h('h1', {}, 'Webhooks'), message, list, form);
  load();
  return 'Webhooks';
}
