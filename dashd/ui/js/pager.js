// Going back through a log that dashd pages forwards: POST /logs and GET
// /audit answer `limit` items from an offset on, or from the end for a
// negative start, oldest first, each item with its `offset`.
//
// To get the items just before the oldest one shown (the boundary), ask for
// the last K: those the page holds from the boundary on (`known`) plus a
// page, and keep the ones before the boundary. The answer runs up to the
// end, so it holds the boundary too: whatever arrived meanwhile, what comes
// back joins what is shown without a gap; a count that is off only changes
// how many come. (Offsets are never reused; dashd drops the oldest items
// first.)

// Items per request, at most (both routes).
export const MAX_LIMIT = 1000;

// fetch(start, limit) -> {items, next}. Resolves with {items, all}: the
// items before the boundary, oldest first, and whether they reach back to
// the first item stored.
export async function pageBack(fetch, boundary, known, page) {
  const first = async () => {
    const {items} = await fetch(0, 1);
    return items.length ? items[0].offset : null;
  };
  let wanted = known + page;
  for (let attempt = 0; attempt < 8; attempt += 1) {
    const limit = Math.min(MAX_LIMIT, wanted);
    const {items, next} = await fetch(-wanted, limit);
    if (!items.length) return {items: [], all: true};
    // Fewer than asked, in a window that runs to the end: it began at the
    // first item stored.
    const fromFirst = limit === wanted && items.length < wanted;
    const at = items.findIndex((e) => e.offset >= boundary);
    let found = null;
    if (at > 0) {
      found = items.slice(0, at);
    } else if (at < 0) {
      // All of them older: the window (at most MAX_LIMIT long) ended
      // before the boundary. Walk on to it.
      found = items.concat(await walkTo(fetch, next, boundary));
    } else if (fromFirst || (limit < wanted && (await first()) >= boundary)) {
      return {items: [], all: true};
    }
    if (found) {
      const all = fromFirst || (limit < wanted && (await first()) === found[0].offset);
      return {items: found, all};
    }
    // More arrived than were counted: reach further back.
    wanted += page;
  }
  throw new Error('the log grew too fast to go back through; try again');
}

async function walkTo(fetch, start, boundary) {
  const out = [];
  for (;;) {
    const {items, next} = await fetch(start, MAX_LIMIT);
    const before = items.filter((e) => e.offset < boundary);
    out.push(...before);
    if (before.length < items.length || !items.length) return out;
    start = next;
  }
}
