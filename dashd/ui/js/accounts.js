// The accounts of this dashd, for admin keys of the operator account: list
// and create. A new account's first admin key is shown once, with a copy
// button; its ID is what a device's sharing names.

import {api, describe} from './api.js';
import {announce, field, h, messageArea, replace, showMessage} from './dom.js';
import {secretDialog} from './dialogs.js';
import {timeEl} from './format.js';
import {refusedPage} from './perms.js';

export function mount(main, ctx) {
  const me = ctx.me;
  if (!ctx.perms.canManageAccounts) {
    return refusedPage(main, ctx, 'Accounts', '/accounts', 'manage accounts');
  }
  const message = messageArea();
  const tbody = h('tbody');
  const table = h('table', {class: 'accounts'},
    h('caption', {class: 'visually-hidden'}, 'Accounts of this dashd'),
    h('thead', {}, h('tr', {}, ['Name', 'ID', 'Created'].map((t) => h('th', {scope: 'col'}, t)))),
    tbody);

  const name = h('input', {type: 'text', maxlength: 128, autocomplete: 'off', required: true});
  const formMessage = messageArea();
  const create = h('button', {type: 'submit', class: 'primary'}, 'Create account');
  const form = h('form', {class: 'inline', novalidate: true},
    field('Name', name, 'Who the account is for, e.g. a customer or a team.').field,
    create,
    formMessage);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!name.value.trim()) {
      showMessage(formMessage, 'Enter a name for the account.', 'error');
      name.setAttribute('aria-invalid', 'true');
      name.focus();
      return;
    }
    name.setAttribute('aria-invalid', 'false');
    create.disabled = true;
    try {
      const reply = await api('POST', '/accounts', {name: name.value.trim()});
      form.reset();
      showMessage(formMessage, `Created account ${reply.name} (${reply.id}).`, 'success');
      // Disabled, the button lost the focus; the dialog gives it back to it.
      create.disabled = false;
      create.focus();
      await secretDialog({
        title: 'Account created',
        intro: `Account “${reply.name}”. Its ID is what a device's sharing names; its first admin key signs in to it and creates its other keys.`,
        fields: [
          {label: 'Account ID', value: reply.id},
          {label: 'Admin key', value: reply.admin_key.key},
        ],
        note: 'The admin key is shown only this once: dashd keeps only a hash of it. Copy it now and give it to the account’s owner.',
      });
      await load();
      announce(`Account ${reply.name} created`);
    } catch (error) {
      if (!ctx.alive) return;
      showMessage(formMessage, `Not created. ${describe(error)}`, 'error');
      name.focus();
    } finally {
      create.disabled = false;
    }
  });

  async function load() {
    let accounts;
    try {
      accounts = await api('GET', '/accounts');
    } catch (error) {
      if (ctx.alive) showMessage(message, describe(error), 'error');
      return;
    }
    if (!ctx.alive) return;
    const td = (label, ...content) => h('td', {'data-label': label}, h('span', {class: 'cell'}, content));
    replace(tbody, accounts.map((a) => h('tr', {dataset: {accountId: a.id}},
      td('Name', a.name,
        a.operator ? h('span', {class: 'badge this'}, 'operator') : null,
        a.id === me.account_id ? h('span', {class: 'badge this'}, 'yours') : null),
      td('ID', h('code', {}, a.id)),
      td('Created', timeEl(a.created)))));
  }

  main.append(
    h('h1', {}, 'Accounts'),
    h('p', {}, 'Every device and key belongs to an account. A device is shared with other accounts by their IDs (its page, Sharing); their keys then see and use it. Your account is ',
      h('code', {}, me.account_id), ', the operator account: its admin keys manage the accounts.'),
    message,
    h('section', {class: 'card', 'aria-labelledby': 'accounts-list'}, h('h2', {id: 'accounts-list'}, 'Accounts'),
      h('div', {class: 'table-wrap'}, table)),
    h('section', {class: 'card', 'aria-labelledby': 'accounts-create'}, h('h2', {id: 'accounts-create'}, 'Create an account'),
      h('p', {class: 'hint'}, 'The new account starts with one admin key, shown once.'),
      form),
  );
  load();
  return 'Accounts';
}
