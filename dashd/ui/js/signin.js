// Sign in with an API key. The key is checked with /api/v2/whoami and then
// kept in this tab's sessionStorage only: no cookie (so no CSRF surface),
// nothing that outlives the tab. Unless the user asks to stay signed in on
// this browser: then dashd mints a session (POST /api/v2/session), an
// HttpOnly SameSite=Strict cookie with a CSRF token, that every tab uses
// until it expires, the user signs out or the key is revoked; the key
// itself is not kept at all.

import {describe} from './api.js';
import {add, h, field, messageArea, showMessage} from './dom.js';

export function mount(main, ctx, params, {notice, signIn, next}) {
  const message = messageArea();
  const {field: keyField, input} = field('API key', h('input', {
    type: 'password', name: 'api-key', autocomplete: 'off', spellcheck: 'false', required: true,
  }), 'An admin, read-only or restricted key, e.g. the admin key in dashd-data/admin.key.');
  const keep = h('input', {type: 'checkbox', name: 'keep', id: 'keep-signed-in'});
  const keepHint = h('p', {class: 'hint', id: 'keep-signed-in-hint'},
    'In every tab of this browser for 12 hours, with a cookie that only dashd reads (the key itself is not kept). Signing out ends it, and so does revoking the key. Leave it off on a shared computer.');
  keep.setAttribute('aria-describedby', keepHint.id);
  const keepField = h('div', {class: 'field check'},
    h('label', {class: 'choice', for: keep.id}, keep, ' Keep me signed in on this browser'), keepHint);
  const button = h('button', {type: 'submit', class: 'primary'}, 'Sign in');
  const form = h('form', {class: 'card narrow', novalidate: true}, keyField, keepField, button, message);
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
      await signIn(key, {keep: keep.checked});
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
    h('p', {}, 'Sign in with a dashd API key. It is kept only in this browser tab until you sign out or close the tab, unless you choose to stay signed in on this browser.'),
    form,
  );
  ctx.focusTarget = input;
  return 'Sign in';
}
