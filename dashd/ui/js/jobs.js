// The Jobs page (#/jobs): fleet jobs of the account, their state and
// progress kept live (job.state, job.progress), and a form to create one:
// a device query with a live count of the devices it matches, an action
// (an RPC call, a change of desired, a firmware image of the library), the
// rate and concurrency, and for firmware the phases of a staged rollout.

import {api, describe, encode} from './api.js';
import {announce, field, h, messageArea, replace, showMessage, uid} from './dom.js';
import {timeEl} from './format.js';

export const STATES = ['queued', 'in_progress', 'succeeded', 'failed', 'timed_out', 'cancelled', 'skipped'];
export const STATE_LABELS = {
  queued: 'Queued', in_progress: 'In progress', succeeded: 'Succeeded', failed: 'Failed',
  timed_out: 'Timed out', cancelled: 'Cancelled', skipped: 'Skipped',
};

// One labelled bar a state: how many of the job's devices are in it.
export function progressBars(progress, label) {
  const total = progress.total || 0;
  return h('ul', {class: 'plain job-progress', 'aria-label': label},
    STATES.filter((s) => progress[s] || s === 'succeeded').map((s) => h('li', {class: `state-${s}`},
      h('span', {class: 'job-state-name'}, STATE_LABELS[s]),
      h('progress', {max: Math.max(total, 1), value: progress[s] || 0,
        'aria-label': `${STATE_LABELS[s]}: ${progress[s] || 0} of ${total}`}),
      h('span', {class: 'job-count'}, `${progress[s] || 0} of ${total}`))));
}

function parseJson(text, what) {
  if (!text.trim()) return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${what} is not valid JSON: ${e.message}`);
  }
}

export function mount(main, ctx, params) {
  const perms = ctx.perms;
  const message = messageArea();
  const rows = new Map();
  const tbody = h('tbody');
  const empty = h('p', {class: 'muted', hidden: true}, 'No jobs yet.');
  const table = h('table', {class: 'jobs'},
    h('caption', {class: 'visually-hidden'}, 'Jobs, newest first'),
    h('thead', {}, h('tr', {}, ['Name', 'State', 'Action', 'Progress', 'Created'].map((t) => h('th', {scope: 'col'}, t)))),
    tbody);

  // The form
  const name = h('input', {type: 'text', maxlength: 128, autocomplete: 'off'});
  const where = h('input', {type: 'text', autocomplete: 'off', spellcheck: 'false', maxlength: 1024,
    placeholder: 'shadow.tags.site = "berlin"'});
  const matched = h('p', {class: 'count', role: 'status', 'aria-live': 'polite'});
  const continuous = h('input', {type: 'checkbox'});
  const action = h('select', {},
    h('option', {value: 'rpc'}, 'Call a method (RPC)'),
    h('option', {value: 'shadow'}, 'Change the desired state'),
    h('option', {value: 'firmware'}, 'Update the firmware'));
  const method = h('input', {type: 'text', autocomplete: 'off', spellcheck: 'false', maxlength: 256});
  const args = h('textarea', {rows: 2, spellcheck: 'false'});
  const desired = h('textarea', {rows: 3, spellcheck: 'false', placeholder: '{"interval": 60}'});
  const image = h('select', {});
  const concurrency = h('input', {type: 'number', min: 1, max: 10000, value: 50});
  const rate = h('input', {type: 'number', min: 1, placeholder: 'no limit'});
  const phases = h('input', {type: 'text', autocomplete: 'off', placeholder: '1, 10, 50, 100'});
  const errorThreshold = h('input', {type: 'number', min: 0, max: 100, placeholder: 'none'});
  const approval = h('input', {type: 'checkbox'});
  const rpcFields = h('div', {}, field('Method', method).field, field('Params (JSON, optional)', args).field);
  const shadowFields = h('div', {hidden: true}, field('Desired (JSON: merged into each device\'s desired state)', desired).field);
  const firmwareFields = h('div', {hidden: true}, field('Image', image, 'From the firmware library.').field);
  const create = h('button', {type: 'submit', class: 'primary'}, 'Create job');
  const formMessage = messageArea();
  const form = h('form', {novalidate: true, hidden: perms.readOnly},
    h('h2', {}, 'New job'),
    field('Job name', name).field,
    field('Devices (a device query)', where, 'Empty: every device this key may act on.').field, matched,
    h('div', {class: 'field checkbox'}, continuous, h('label', {for: (continuous.id = uid('continuous'))}, 'Continuous: devices that match later join')),
    field('Action', action).field, rpcFields, shadowFields, firmwareFields,
    field('Concurrency (devices at once)', concurrency).field,
    field('Rate (devices a minute)', rate).field,
    h('fieldset', {}, h('legend', {}, 'Staged rollout (optional)'),
      field('Phases (cumulative percentages)', phases, 'e.g. 1, 10, 50, 100: each phase starts when the one before has all succeeded.').field,
      field('Error threshold (%)', errorThreshold, 'A phase with this share of failures pauses the job before the next sends anything.').field,
      h('div', {class: 'field checkbox'}, approval, h('label', {for: (approval.id = uid('approval'))}, 'Each next phase waits for an approval'))),
    h('div', {class: 'actions left'}, create), formMessage);

  action.addEventListener('change', () => {
    rpcFields.hidden = action.value !== 'rpc';
    shadowFields.hidden = action.value !== 'shadow';
    firmwareFields.hidden = action.value !== 'firmware';
  });

  // The live count of what the query matches.
  let counting = 0;
  let timer = null;
  async function count() {
    const asked = where.value.trim();
    const mine = ++counting;
    try {
      const reply = await api('GET', asked ? `/devices/count?where=${encode(asked)}` : '/devices/count');
      if (ctx.alive && mine === counting) {
        matched.textContent = `${reply.count} device${reply.count === 1 ? '' : 's'} match.`;
        matched.classList.remove('error');
      }
    } catch (error) {
      if (ctx.alive && mine === counting) {
        matched.textContent = describe(error);
        matched.classList.add('error');
      }
    }
  }
  where.addEventListener('input', () => {
    window.clearTimeout(timer);
    timer = window.setTimeout(count, 300);
  });
  ctx.onDestroy(() => window.clearTimeout(timer));

  function spec() {
    const body = {name: name.value.trim(), target: {where: where.value.trim()}};
    if (continuous.checked) body.target.continuous = true;
    if (action.value === 'rpc') {
      body.action = {type: 'rpc', method: method.value.trim()};
      const p = parseJson(args.value, 'Params');
      if (p !== undefined) body.action.params = p;
    } else if (action.value === 'shadow') {
      body.action = {type: 'shadow', desired: parseJson(desired.value, 'Desired') || {}};
    } else {
      body.action = {type: 'firmware', firmware: image.value};
    }
    body.concurrency = Number(concurrency.value || 50);
    if (rate.value) body.rate = {per_minute: Number(rate.value)};
    if (phases.value.trim()) {
      body.phases = phases.value.split(',').map((s) => s.trim()).filter(Boolean).map((p) => {
        const phase = {percent: Number(p)};
        if (errorThreshold.value) phase.error_threshold = Number(errorThreshold.value);
        if (approval.checked) phase.approval = true;
        return phase;
      });
    }
    return body;
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    let body;
    try {
      body = spec();
    } catch (error) {
      showMessage(formMessage, error.message, 'error');
      return;
    }
    create.disabled = true;
    try {
      const job = await api('POST', '/jobs', body);
      announce(`Job ${job.name} created`);
      ctx.navigate(`#/jobs/${encode(job.id)}`);
    } catch (error) {
      showMessage(formMessage, `Not created. ${describe(error)}`, 'error');
    } finally {
      create.disabled = false;
    }
  });

  function row(job) {
    return h('tr', {},
      h('td', {'data-label': 'Name'}, h('a', {href: `#/jobs/${encode(job.id)}`}, job.name)),
      h('td', {'data-label': 'State'}, h('span', {class: `badge job-${job.state}`}, job.state)),
      h('td', {'data-label': 'Action'}, job.action.type === 'rpc' ? `call ${job.action.method}` : job.action.type === 'shadow' ? 'change desired' : 'firmware update'),
      h('td', {'data-label': 'Progress'}, progressBars(job.progress, `Progress of ${job.name}`)),
      h('td', {'data-label': 'Created'}, timeEl(job.created)));
  }

  function show(job) {
    const fresh = row(job);
    const old = rows.get(job.id);
    if (old) old.replaceWith(fresh);
    else tbody.prepend(fresh);
    rows.set(job.id, fresh);
    empty.hidden = true;
  }

  async function load() {
    try {
      const jobs = await api('GET', '/jobs?limit=100');
      if (!ctx.alive) return;
      rows.clear();
      replace(tbody);
      for (const job of jobs.reverse()) show(job);
      empty.hidden = jobs.length > 0;
    } catch (error) {
      showMessage(message, describe(error), 'error');
    }
    if (!perms.readOnly && !perms.restricted) {
      try {
        const images = await api('GET', '/firmware');
        if (!ctx.alive) return;
        replace(image, images.map((i) => h('option', {value: i.id}, `${i.name}${i.manifest && i.manifest.version ? ` ${i.manifest.version}` : ''} (${i.id})`)));
        if (params.firmware) {
          image.value = params.firmware;
          action.value = 'firmware';
          action.dispatchEvent(new Event('change'));
        }
      } catch (error) {
        showMessage(formMessage, describe(error), 'error');
      }
    }
  }

  ctx.listen((event) => {
    if (event.name === 'job.state') show(event.data);
    else if (event.name === 'job.progress') {
      const old = rows.get(event.id);
      if (old) {
        const cell = old.querySelector('td[data-label="Progress"]');
        const name = old.querySelector('td a').textContent;
        replace(cell, progressBars(event.data.progress, `Progress of ${name}`));
      }
    }
  });

  main.append(h('h1', {}, 'Jobs'),
    h('p', {class: 'hint'}, 'One call, shadow change or firmware update on many devices, with a state for each device.'),
    message, form, h('h2', {}, 'Jobs'), h('div', {class: 'table-wrap'}, table), empty);
  load();
  if (!perms.readOnly) count();
  return 'Jobs';
}
