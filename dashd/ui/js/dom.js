// Building the page without innerHTML: every value from the API becomes a
// text node, so nothing a device or a user named can turn into markup.

let nextId = 0;

// A document-unique id, for label/aria pairs.
export function uid(prefix = 'id') {
  nextId += 1;
  return `${prefix}-${nextId}`;
}

// h('button', {type: 'button', onclick: fn, 'aria-label': 'x'}, 'text', child...)
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      el.className = value;
    } else if (name === 'text') {
      el.textContent = value;
    } else if (name === 'checked') {
      el.defaultChecked = value;
      el.checked = value;
    } else if (name === 'value' || name === 'disabled'
               || name === 'hidden' || name === 'readOnly' || name === 'required') {
      el[name] = value;
    } else if (name === 'dataset') {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  add(el, children);
  return el;
}

// Append children, skipping null, undefined and false (which the native
// append() would show as text) and flattening arrays.
export function add(el, ...children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) add(el, ...child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  add(el, children);
  return el;
}

// Say something to screen-reader users (the polite live region).
export function announce(text) {
  const region = document.getElementById('announcer');
  if (!region) return;
  // Clear first, so that the same text twice is announced twice.
  region.textContent = '';
  window.setTimeout(() => { region.textContent = text; }, 50);
}

// A labelled form field: returns {field (the wrapper), input}.
export function field(label, input, hint) {
  const id = input.id || uid('f');
  input.id = id;
  const parts = [h('label', {for: id}, label), input];
  if (hint) {
    const hintId = uid('hint');
    input.setAttribute('aria-describedby', hintId);
    parts.push(h('p', {class: 'hint', id: hintId}, hint));
  }
  return {field: h('div', {class: 'field'}, parts), input};
}

// A message area that screen readers hear when it changes.
export function messageArea() {
  return h('div', {class: 'message', role: 'status', 'aria-live': 'polite'});
}

export function showMessage(area, text, kind = 'info') {
  area.className = `message ${kind}`;
  area.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  replace(area, text);
}

export function clearMessage(area) {
  area.className = 'message';
  area.replaceChildren();
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

// Tables too wide for the screen scroll sideways in their .table-wrap; one
// that does is made a focusable, named region, so that the keyboard can
// scroll it too (WCAG 2.1.1; axe's scrollable-region-focusable). Watches
// every .table-wrap that appears under root, and the size of it and its
// table.
export function keyboardScroll(root) {
  const name = (wrap) => {
    const table = wrap.querySelector('table');
    const caption = table && table.querySelector('caption');
    const label = (table && table.getAttribute('aria-label')) || (caption && caption.textContent) || 'Table';
    return `${label} (scrolls sideways)`;
  };
  const check = (wrap) => {
    const scrolls = wrap.scrollWidth > wrap.clientWidth + 1;
    if (scrolls && !wrap.hasAttribute('tabindex')) {
      wrap.setAttribute('tabindex', '0');
      wrap.setAttribute('role', 'region');
      wrap.setAttribute('aria-label', name(wrap));
    } else if (!scrolls && wrap.hasAttribute('tabindex')) {
      for (const a of ['tabindex', 'role', 'aria-label']) wrap.removeAttribute(a);
    }
  };
  const sizes = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const wrap = entry.target.closest('.table-wrap');
      if (wrap) check(wrap);
    }
  });
  const watched = new WeakSet();
  const watch = () => {
    for (const wrap of root.querySelectorAll('.table-wrap')) {
      if (watched.has(wrap)) continue;
      watched.add(wrap);
      sizes.observe(wrap);
      const table = wrap.querySelector('table');
      if (table) sizes.observe(table);
      check(wrap);
    }
  };
  new MutationObserver(watch).observe(root, {childList: true, subtree: true});
  watch();
}
