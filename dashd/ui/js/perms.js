// What the signed-in key may do, from /api/v2/whoami and the device's
// account, so that the page offers only what dashd would allow. dashd
// checks everything again; a refusal it sends is shown as it comes.

import {api, describe} from './api.js';
import {h} from './dom.js';

// A page the key may not use, reached by its address (the menu does not link
// it): the heading, and why not, in dashd's words if its answer to PROBE
// says more than ours. Returns the title, as a page's mount does.
export function refusedPage(main, ctx, title, probe, notAllowed) {
  const refusal = h('p', {class: 'message error', role: 'alert'});
  main.append(h('h1', {}, title), refusal);
  api('GET', probe).then(
    () => { if (ctx.alive) refusal.textContent = `This ${ctx.me.kind} key may not ${notAllowed} here.`; },
    (error) => { if (ctx.alive) refusal.textContent = describe(error); });
  return title;
}

// fnmatch-style: '*' any run of characters, '?' one character.
export function matches(pattern, name) {
  const source = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${source}$`).test(name);
}

export function permissions(me) {
  const kind = me.kind;
  const admin = kind === 'admin';
  const restricted = kind === 'restricted';
  const acl = (device) => (restricted && me.scope && me.scope.devices && me.scope.devices[device.id]) || {};
  return {
    kind,
    admin,
    readOnly: kind === 'read-only',
    restricted,
    canRegister: admin,
    canManageKeys: admin,
    // The audit log is the account's; accounts are the operator's.
    canReadAudit: admin,
    canManageAccounts: admin && me.operator === true,
    // Rename, share, change tags (tags.save too) or reported, delete,
    // rotate the token, update and commit firmware.
    owns: (device) => admin && device.account_id === me.account_id,
    seesInfo: !restricted,
    // Stored data, logs and the firmware update status: every key but a
    // restricted one (dashd answers those 403).
    seesLog: !restricted,
    seesData: !restricted,
    seesFirmware: !restricted,
    rpcPatterns: (device) => (admin ? ['*'] : restricted ? (acl(device).rpc || []) : []),
    canCall(device, method) {
      return this.rpcPatterns(device).some((p) => matches(p, method));
    },
    canCallAny(device) {
      return this.rpcPatterns(device).length > 0;
    },
    writableKeys: (device) => (restricted ? (acl(device).write || []) : null),
    canWriteDesired(device) {
      if (admin) return true;
      return restricted && (acl(device).write || []).length > 0;
    },
  };
}
