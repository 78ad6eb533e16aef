// One job (#/jobs/ID): its state (and why it ended or paused), its stage
// (a staged rollout), bars by execution state and the per-device table,
// filterable by state, all kept live from job.state and job.progress; the
// controls its state allows: pause, resume, cancel, retry the failed,
// approve the next phase, delete.

import {api, describe, encode} from './api.js';
import {announce, field, h, messageArea, replace, showMessage} from './dom.js';
import {confirmDialog} from './dialogs.js';
import {timeEl} from './format.js';
import {STATES, STATE_LABELS, progressBars} from './jobs.js';

export function mount(main, ctx, params) {
  const id = params.id;
  const message = messageArea();
  const heading = h('h1', {}, 'Job');
  const summary = h('div', {class: 'job-summary'});
  const bars = h('div', {});
  const controls = h('div', {class: 'actions left'});
  const filter = h('select', {}, h('option', {value: ''}, 'Every state'),
    STATES.map((s) => h('option', {value: s}, STATE_LABELS[s])));
  const tbody = h('tbody');
  const table = h('table', {class: 'executions'},
    h('caption', {class: 'visually-hidden'}, 'The devices of this job'),
    h('thead', {}, h('tr', {}, ['Device', 'State', 'Attempts', 'Result or why', 'Updated'].map((t) => h('th', {scope: 'col'}, t)))),
    tbody);
  let job = null;

  function outcome(e) {
    if (e.reason) return e.reason;
    if (e.error) return `${e.error.message} (${e.error.code})`;
    if (e.result !== undefined) return JSON.stringify(e.result);
    return '';
  }

  async function act(verb, label) {
    if (verb === 'cancel') {
      const ok = await confirmDialog({
        title: `Cancel ${job.name}?`,
        body: 'Devices not sent to yet are cancelled (their queued calls too). Those in progress were sent: they finish, and their results are recorded.',
        confirmLabel: 'Cancel job',
      });
      if (!ok) return;
    }
    if (verb === 'force') {
      const ok = await confirmDialog({
        title: `Cancel ${job.name} with force?`,
        body: 'Devices not sent to yet are cancelled, and so are those in progress: what they report later is not recorded, and a firmware transfer under way is stopped (the device keeps its firmware). A call already sent cannot be recalled.',
        confirmLabel: 'Cancel with force',
      });
      if (!ok) return;
    }
    if (verb === 'delete') {
      try {
        await api('DELETE', `/jobs/${encode(id)}`);
        announce(`Job ${job.name} deleted`);
        ctx.navigate('#/jobs');
      } catch (error) {
        showMessage(message, describe(error), 'error');
      }
      return;
    }
    try {
      const path = verb === 'force' ? 'cancel?force=true' : verb;
      const after = await api('POST', `/jobs/${encode(id)}/${path}`);
      showJob(after);
      showMessage(message, `${label}: the job is ${after.state}.`, 'success');
      announce(`Job ${after.state}`);
      loadExecutions();
    } catch (error) {
      showMessage(message, describe(error), 'error');
    }
  }

  function button(verb, label, kind = 'secondary') {
    return h('button', {type: 'button', class: kind, onclick: () => act(verb, label)}, label);
  }

  function showJob(next) {
    job = next;
    replace(heading, `Job ${job.name}`);
    const facts = [
      ['State', job.state],
      ['Action', job.action.type === 'rpc' ? `call ${job.action.method}` : job.action.type === 'shadow' ? `change desired ${JSON.stringify(job.action.desired || {})}` : `firmware ${job.action.firmware}`],
      ['Devices', job.target.where !== undefined ? `query ${job.target.where || '(every device)'}${job.target.continuous ? ', continuous' : ''}` : `${job.target.devices.length} listed`],
      ['Created', timeEl(job.created)],
    ];
    if (job.reason && job.reason.message) facts.push(['Why', job.reason.message]);
    if (job.stage) {
      facts.push(['Phase', `${job.stage.phase + 1} of ${job.phases.length}${job.stage.awaiting_approval ? ': waiting for an approval' : ''}`]);
    }
    replace(summary, h('dl', {class: 'facts'}, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
    replace(bars, progressBars(job.progress, 'Progress by state'));
    const live = ['scheduled', 'running', 'paused'].includes(job.state);
    const buttons = [];
    if (!ctx.perms.readOnly) {
      if (job.state === 'running' || job.state === 'scheduled') buttons.push(button('pause', 'Pause'));
      if (job.state === 'paused') buttons.push(button('resume', 'Resume', 'primary'));
      if (job.stage && job.stage.awaiting_approval && live) buttons.push(button('approve', 'Approve the next phase', 'primary'));
      if ((job.progress.failed || job.progress.timed_out) && job.state !== 'cancelled') buttons.push(button('retry', 'Retry the failed'));
      if (live) buttons.push(button('cancel', 'Cancel job', 'danger'));
      if (job.progress.in_progress) buttons.push(button('force', 'Cancel with force', 'danger'));
      else buttons.push(button('delete', 'Delete job', 'danger'));
    }
    replace(controls, buttons);
  }

  async function loadExecutions() {
    const state = filter.value;
    try {
      const list = await api('GET', `/jobs/${encode(id)}/executions?limit=500${state ? `&state=${state}` : ''}`);
      if (!ctx.alive || state !== filter.value) return;
      replace(tbody, list.map((e) => h('tr', {},
        h('td', {'data-label': 'Device'}, h('a', {href: `#/devices/${encode(e.device_id)}`}, e.device_id)),
        h('td', {'data-label': 'State'}, h('span', {class: `badge exec-${e.state}`}, STATE_LABELS[e.state])),
        h('td', {'data-label': 'Attempts'}, String(e.attempts)),
        h('td', {'data-label': 'Result or why', class: 'outcome'}, outcome(e)),
        h('td', {'data-label': 'Updated'}, timeEl(e.updated)))));
    } catch (error) {
      showMessage(message, describe(error), 'error');
    }
  }
  filter.addEventListener('change', loadExecutions);

  // Progress comes often: the table is read again at most once a second.
  let pending = null;
  function soon() {
    if (pending) return;
    pending = window.setTimeout(() => { pending = null; if (ctx.alive) loadExecutions(); }, 1000);
  }
  ctx.onDestroy(() => window.clearTimeout(pending));
  ctx.listen((event) => {
    if (event.id !== id || !job) return;
    if (event.name === 'job.state') showJob(event.data);
    else if (event.name === 'job.progress') showJob(Object.assign({}, job, {state: event.data.state, progress: event.data.progress}));
    else return;
    soon();
  });

  main.append(heading, message, summary, bars, controls,
    h('h2', {}, 'Devices'), field('Show', filter).field,
    h('div', {class: 'table-wrap'}, table),
    h('p', {}, h('a', {href: '#/jobs'}, 'All jobs')));
  api('GET', `/jobs/${encode(id)}`).then((found) => {
    if (!ctx.alive) return;
    showJob(found);
    loadExecutions();
  }, (error) => showMessage(message, describe(error), 'error'));
  return 'Job';
}
