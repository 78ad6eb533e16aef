// Sign in with an API key. The key is checked with /api/v2/whoami and then
// kept in this tab's sessionStorage only: no cookie (so no CSRF surface),
// nothing that outlives the tab.

import {describe} from './api.js';
import {add, h, field, messageArea, showMessage} from './dom.js';

export function mount(main, ctx, params, {notice, signIn, next}) {
  const message = messageArea();
  const {field: keyField, input} = field('API key', h('input', {
    type: 'password', name: 'api-key', autocomplete: 'off', spellcheck: 'false', required: true,
  }), 'An admin, read-only or restricted key, e.g. the admin key in dashd-data/admin.key.');
  const button = h('button', {type: 'submit', class: 'primary'}, 'Sign in');
  const form = h('form', {class: 'card narrow', novalidate: true}, keyField, button, message);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) {
      showMessage(message, 'Enter an API key.', 'error');
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    button.disabled = true;
    showMessage(message, 'Checking the key…');
    try {
      await signIn(key);
      input.value = '';
      ctx.navigate(next);
    } catch (error) {
      button.disabled = false;
      input.setAttribute('aria-invalid', 'true');
      showMessage(message, describe(error), 'error');
      input.focus();
      input.select();
    }
  });
  add(main,
    h('h1', {}, 'Sign in'),
    notice ? h('p', {class: 'message info', role: 'status'}, notice) : null,
    h('p', {}, 'Sign in with a dashd API key. It is kept only in this browser tab until you sign out or close the tab.'),
    form,
  );
  ctx.focusTarget = input;
  return 'Sign in';
}
