// A JSON text editor (a labelled textarea) that says exactly what is wrong
// with the text and where, before anything is sent to dashd.

import {h, uid, pretty} from './dom.js';

function show(c) {
  if (c === undefined) return 'the end of the text';
  if (c === '\n') return 'a line break';
  if (c === "'") return "a single quote (JSON strings need double quotes)";
  return `'${c}'`;
}

// Where the first JSON syntax error in text is: {pos, reason}, or null.
export function locateError(text) {
  let i = 0;
  const fail = (reason) => { throw {pos: i, reason}; };
  const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i])) i += 1; };
  function string() {
    i += 1;
    while (i < text.length) {
      const c = text[i];
      if (c === '"') { i += 1; return; }
      if (c === '\\') {
        const n = text[i + 1];
        if (n !== undefined && '"\\/bfnrt'.includes(n)) i += 2;
        else if (n === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) i += 6;
        else fail('an invalid escape sequence in a string');
        continue;
      }
      if (c < ' ') fail('a line break or control character inside a string');
      i += 1;
    }
    fail('a string that is never closed');
  }
  function number() {
    const m = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(i));
    if (!m) fail('an invalid number');
    i += m[0].length;
  }
  function value() {
    ws();
    const c = text[i];
    if (c === '{') return object();
    if (c === '[') return array();
    if (c === '"') return string();
    if (c === '-' || (c >= '0' && c <= '9')) return number();
    for (const literal of ['true', 'false', 'null']) {
      if (text.startsWith(literal, i)) { i += literal.length; return undefined; }
    }
    return fail(`expected a value, found ${show(c)}`);
  }
  function object() {
    i += 1;
    ws();
    if (text[i] === '}') { i += 1; return; }
    for (;;) {
      ws();
      if (text[i] !== '"') fail(`expected a "quoted" key, found ${show(text[i])}${text[i] === '}' ? ' (a comma too many?)' : ''}`);
      string();
      ws();
      if (text[i] !== ':') fail(`expected ':' after the key, found ${show(text[i])}`);
      i += 1;
      value();
      ws();
      if (text[i] === ',') { i += 1; continue; }
      if (text[i] === '}') { i += 1; return; }
      fail(`expected ',' or '}' in an object, found ${show(text[i])}`);
    }
  }
  function array() {
    i += 1;
    ws();
    if (text[i] === ']') { i += 1; return; }
    for (;;) {
      value();
      ws();
      if (text[i] === ',') { i += 1; continue; }
      if (text[i] === ']') { i += 1; return; }
      fail(`expected ',' or ']' in a list, found ${show(text[i])}`);
    }
  }
  try {
    value();
    ws();
    if (i < text.length) fail(`${show(text[i])} after the end of the value`);
  } catch (e) {
    if (e && typeof e.pos === 'number') return e;
    throw e;
  }
  return null;
}

export function lineColumn(text, pos) {
  const before = text.slice(0, pos).split('\n');
  return {line: before.length, column: before[before.length - 1].length + 1};
}

// The path of the first null held by an object member, or null. (Lists
// are stored as they are, nulls included: merging stops at them.)
function nullPath(value, path = []) {
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) {
      if (v === null) return [...path, k];
      const inner = nullPath(v, [...path, k]);
      if (inner) return inner;
    }
  }
  return null;
}

// Check text: {ok: true, value} or {ok: false, message}.
export function check(text, {allowEmpty = false, objectOnly = true, noNulls = false} = {}) {
  if (!text.trim()) {
    if (allowEmpty) return {ok: true, value: undefined};
    return {ok: false, message: objectOnly ? 'Enter a JSON object, e.g. {}' : 'Enter a JSON value'};
  }
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const where = locateError(text);
    if (where) {
      const {line, column} = lineColumn(text, where.pos);
      return {ok: false, message: `Not valid JSON at line ${line}, column ${column}: ${where.reason}.`};
    }
    return {ok: false, message: `Not valid JSON: ${e.message}`};
  }
  if (objectOnly && (value === null || typeof value !== 'object' || Array.isArray(value))) {
    return {ok: false, message: 'This must be a JSON object: {"key": value, ...}.'};
  }
  if (noNulls) {
    const path = nullPath(value);
    if (path) {
      return {ok: false, message: `null is not allowed (at ${path.join('.')}): to delete a key, remove it from the text.`};
    }
  }
  return {ok: true, value};
}

export function jsonEditor({label, value, rows = 8, hint, options = {}, onInput}) {
  const id = uid('json');
  const errorId = `${id}-error`;
  const hintId = `${id}-hint`;
  const textarea = h('textarea', {
    id, rows, class: 'code', spellcheck: 'false', autocapitalize: 'off', autocomplete: 'off',
    'aria-describedby': hint ? `${hintId} ${errorId}` : errorId,
  });
  const error = h('p', {class: 'field-error', id: errorId});
  let clean = '';
  const editor = {
    textarea,
    element: h('div', {class: 'field'},
      h('label', {for: id}, label), textarea,
      hint ? h('p', {class: 'hint', id: hintId}, hint) : null, error),
    setValue(v) {
      textarea.value = v === undefined ? '' : pretty(v);
      clean = textarea.value;
      editor.validate();
    },
    isDirty: () => textarea.value !== clean,
    markClean() { clean = textarea.value; },
    validate() {
      const result = check(textarea.value, options);
      textarea.setAttribute('aria-invalid', result.ok ? 'false' : 'true');
      error.textContent = result.ok ? '' : result.message;
      return result;
    },
  };
  textarea.addEventListener('input', () => {
    editor.validate();
    if (onInput) onInput(editor);
  });
  editor.setValue(value);
  return editor;
}

// The RFC 7386 merge patch that turns `from` into `to` (objects merge key
// by key, null deletes a key, anything else replaces). Keys are own keys
// only: a shadow key may well be called "toString" or "__proto__" (the
// patch has no prototype, so that one is an ordinary key too).
export function mergePatch(from, to) {
  const patch = Object.create(null);
  for (const k of Object.keys(from)) {
    if (!Object.hasOwn(to, k)) patch[k] = null;
  }
  for (const [k, b] of Object.entries(to)) {
    const a = Object.hasOwn(from, k) ? from[k] : undefined;
    if (isObject(a) && isObject(b)) {
      const inner = mergePatch(a, b);
      if (Object.keys(inner).length) patch[k] = inner;
    } else if (!Object.hasOwn(from, k) || !same(a, b)) {
      patch[k] = b;
    }
  }
  return patch;
}

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

export function same(a, b) {
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => same(x, b[i]));
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && same(a[k], b[k]));
  }
  return a === b;
}
