// MallBots Admin: the operations console of the mall, served by the MallBots binary at /admin.
//
// Plain modern JavaScript, no framework and no build step. The page's Content-Security-Policy
// allows no inline script or style: every element is built with the DOM API, every text goes in
// through textContent (never innerHTML), colours come from classes, charts are SVG built here.
//
// Data: the admin REST API (bearer token), and the live feed, a WebSocket at /api/admin/live
// fed from the broker: {"token", "after"} first, then {"type":"welcome"|"error"|"event", …}.
'use strict';

// ---------------------------------------------------------------------------------------------
// Small helpers

const TOKEN_KEY = 'mallbots-admin-token';

/** An element: h('div', {class: 'x', 'data-id': id, onclick: fn}, 'text', child, [more]). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** A table's header row of column titles. */
function tableHead(titles) {
  return h('thead', null, h('tr', null, titles.map((c) => h('th', null, c))));
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** An SVG element, with presentation attributes (never a style attribute). */
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  if (!attrs) return;
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'style') throw new Error('no inline styles: the page CSP forbids them');
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      el.setAttribute('class', Array.isArray(value) ? value.filter(Boolean).join(' ') : value);
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const $ = (selector, root = document) => root.querySelector(selector);

/** Replaces an element's children (null, undefined and false are skipped, as in h()). */
function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/**
 * A short form of an id. MallBots' ids are UUIDv7, whose first characters are a timestamp that
 * orders placed in the same minute share: the last 8 (random) characters tell them apart.
 */
function shortId(id) {
  if (typeof id !== 'string' || !id) return '—';
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id) ? `…${id.slice(-8)}` : id.length > 12 ? `${id.slice(0, 12)}…` : id;
}

const moneyFormat = new Intl.NumberFormat(undefined, { style: 'currency', currency: 'USD' });

function fmtMoney(value) {
  const n = Number(value);
  return value === null || value === undefined || Number.isNaN(n) ? '—' : moneyFormat.format(n);
}

function fmtDateTime(value) {
  if (!value) return '—';
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleString();
}

function fmtTime(value) {
  if (!value) return '—';
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleTimeString();
}

/** The time alone for today, else the date and time, local. */
function fmtWhen(value) {
  if (!value) return '—';
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return d.toDateString() === new Date().toDateString()
    ? d.toLocaleTimeString()
    : d.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' });
}

/** "12s", "5m", "3h", "2d": how long ago. */
function ago(value) {
  const t = new Date(value).getTime();
  if (Number.isNaN(t)) return '';
  const secs = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h`;
  return `${Math.floor(secs / 86400)}d`;
}

function statusBadge(status) {
  return h('span', { class: ['status', `status-${status || 'unknown'}`], 'data-status': status || '' }, status || 'unknown');
}

function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

function errorMessage(e) {
  return e && e.message ? e.message : String(e);
}

/** A JSON value, pretty, in a <pre>. */
function jsonBlock(value) {
  const text = typeof value === 'string' ? value : JSON.stringify(value, null, 2);
  return h('pre', { class: 'json' }, text);
}

/** A definition list of [label, value] pairs; a value can be a node. */
function fields(pairs) {
  return h('dl', { class: 'fields' }, pairs.filter(Boolean).map(([label, value, field]) => [
    h('dt', null, label),
    h('dd', { 'data-field': field }, value === null || value === undefined || value === '' ? '—' : value),
  ]));
}

function orderLink(id) {
  return h('a', { href: `#/orders/${encodeURIComponent(id)}`, class: 'mono', title: id }, shortId(id));
}

// ---------------------------------------------------------------------------------------------
// Toasts: results and errors, never swallowed.

function toast(message, kind = 'error') {
  const box = $('#toasts');
  const close = h('button', { type: 'button', class: 'toast-close', 'aria-label': 'dismiss' }, '×');
  const item = h('div', { class: ['toast', `toast-${kind}`], role: kind === 'error' ? 'alert' : 'status' },
    h('span', { class: 'toast-text' }, message), close);
  close.addEventListener('click', () => item.remove());
  box.prepend(item);
  while (box.children.length > 5) box.lastElementChild.remove();
  setTimeout(() => item.remove(), kind === 'error' ? 12000 : 5000);
}

// ---------------------------------------------------------------------------------------------
// The admin API

class ApiError extends Error {
  constructor(status, message, detail) {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

const session = { token: null };

/** Calls the API with the admin token; throws an ApiError carrying the server's message. */
async function api(method, path, body, token = session.token) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, `${method} ${path}: the server cannot be reached (${errorMessage(e)})`, errorMessage(e));
  }
  const text = await response.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
  }
  if (!response.ok) {
    const detail = json && typeof json.message === 'string' ? json.message : (text || response.statusText);
    const error = new ApiError(response.status, `${method} ${path}: ${response.status} — ${detail}`, detail);
    if (response.status === 401 && token && token === session.token) {
      signOut('The server no longer accepts this admin token: sign in again.');
    }
    throw error;
  }
  return json;
}

const get = (path) => api('GET', path);

// ---------------------------------------------------------------------------------------------
// The live feed

const FEED_MAX = 200;
const feed = { events: [] }; // newest first

const live = {
  ws: null,
  lastSeq: null,
  backoff: 1000,
  timer: null,
  stopped: true,
  welcomed: false,
  lastError: null,
};

function setLiveStatus(isLive, detail) {
  const el = $('#live-status');
  el.textContent = isLive ? 'live' : 'reconnecting…';
  el.classList.toggle('is-live', isLive);
  el.title = detail || (isLive ? 'receiving events as they happen' : 'the live feed is reconnecting');
}

function liveConnect() {
  clearTimeout(live.timer);
  if (live.stopped) return;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  let ws;
  try {
    ws = new WebSocket(`${scheme}://${location.host}/api/admin/live`);
  } catch (e) {
    setLiveStatus(false, `cannot open the live feed: ${errorMessage(e)}`);
    liveReconnectLater();
    return;
  }
  live.ws = ws;
  ws.addEventListener('open', () => {
    ws.send(JSON.stringify({ token: session.token, after: live.lastSeq }));
  });
  ws.addEventListener('message', (m) => {
    let msg;
    try {
      msg = JSON.parse(m.data);
    } catch {
      return;
    }
    if (msg.type === 'welcome') {
      if (typeof msg.head === 'number' && live.lastSeq !== null && msg.head < live.lastSeq) {
        // The server's feed restarted (a new database): start again from its backlog.
        live.lastSeq = null;
        live.backoff = 1000;
        ws.close();
        return;
      }
      const reconnected = live.welcomed;
      live.welcomed = true;
      live.backoff = 1000;
      live.lastError = null;
      setLiveStatus(true);
      // After a gap, the board is re-read too (the backlog fills what the feed missed).
      if (reconnected) board.reload();
    } else if (msg.type === 'error') {
      const text = `Live feed: ${msg.message || 'refused'}`;
      if (text !== live.lastError) toast(text);
      live.lastError = text;
      setLiveStatus(false, text);
    } else if (msg.type === 'event') {
      if (typeof msg.seq === 'number') {
        if (live.lastSeq !== null && msg.seq <= live.lastSeq) return; // already seen
        live.lastSeq = msg.seq;
      }
      dispatch(msg);
    }
  });
  ws.addEventListener('close', () => {
    if (live.ws !== ws) return;
    live.ws = null;
    setLiveStatus(false, live.lastError || undefined);
    liveReconnectLater();
  });
}

function liveReconnectLater() {
  if (live.stopped) return;
  clearTimeout(live.timer);
  live.timer = setTimeout(liveConnect, live.backoff);
  live.backoff = Math.min(live.backoff * 2, 10000);
}

function liveStart() {
  live.stopped = false;
  live.backoff = 1000;
  setLiveStatus(false, 'connecting to the live feed');
  liveConnect();
}

function liveStop() {
  live.stopped = true;
  clearTimeout(live.timer);
  const ws = live.ws;
  live.ws = null;
  if (ws) ws.close();
  live.lastSeq = null;
  live.welcomed = false;
  live.lastError = null;
}

/** The feed's entries for a dead letter archived, replayed or discarded (recorded by the admin
 * module as it makes the change). */
const DEAD_LETTER_EVENT = 'admin.DeadLetterArchived';
const isDeadLetterEvent = (e) => ['admin.DeadLetterArchived', 'admin.DeadLetterReplayed', 'admin.DeadLetterDiscarded'].includes(e.name);

/** Every event: into the feed, the board, the names we know, and the view on screen. */
function dispatch(event) {
  feed.events.unshift(event);
  if (feed.events.length > FEED_MAX) feed.events.length = FEED_MAX;
  board.apply(event);
  if (isDeadLetterEvent(event)) deadLetterBadge.refresh();
  if (event.topic === 'customers.events.Customer' && event.data && event.data.id && event.data.name) {
    customers.names.set(event.data.id, event.data.name);
  }
  if (current && current.onEvent) {
    try {
      current.onEvent(event);
    } catch (e) {
      console.error(e);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Customers' names (for the board's cards)

const customers = {
  names: new Map(),
  pending: new Map(),
  /** The customer's name, fetched once; `onName` runs when it comes. */
  name(id, onName) {
    if (!id) return null;
    if (this.names.has(id)) return this.names.get(id);
    if (!this.pending.has(id)) {
      this.pending.set(id, []);
      api('GET', `/api/customers/${encodeURIComponent(id)}`)
        .then((c) => {
          if (c && c.name) this.names.set(id, c.name);
        })
        .catch(() => {
          // Not shown on the card: the short id stays, and the order's page shows the error.
        })
        .finally(() => {
          const callbacks = this.pending.get(id) || [];
          this.pending.delete(id);
          if (this.names.has(id)) callbacks.forEach((cb) => cb(this.names.get(id)));
        });
    }
    if (onName) this.pending.get(id).push(onName);
    return null;
  },
};

// ---------------------------------------------------------------------------------------------
// The order board's model: every order we know, moved forward by the live feed.

const STATUSES = ['pending', 'approved', 'ready', 'completed', 'rejected', 'canceled'];
const ACTIVE = ['pending', 'approved', 'ready'];
const FINISHED = ['completed', 'rejected', 'canceled'];
/** Orders move forward only: a late event must not move a card back. */
const RANK = { pending: 0, approved: 1, ready: 2, rejected: 3, canceled: 3, completed: 4 };
const ORDER_EVENT_STATUS = {
  Created: 'pending',
  Approved: 'approved',
  Readied: 'ready',
  Completed: 'completed',
  Rejected: 'rejected',
  Canceled: 'canceled',
};
/** How many finished orders each finished column keeps. */
const FINISHED_KEEP = 40;

function orderEventStatus(name) {
  const m = /^ordersapi\.Order(\w+)\.v\d+$/.exec(name || '');
  return m ? ORDER_EVENT_STATUS[m[1]] : undefined;
}

const board = {
  orders: new Map(),
  loaded: false,
  loading: null,
  error: null,
  listeners: new Set(),
  fetching: new Set(),

  reset() {
    this.orders.clear();
    this.loaded = false;
    this.loading = null;
    this.error = null;
    this.fetching.clear();
  },

  /** Merges what we learnt about an order; tells the listeners what changed. */
  upsert(o, live = false) {
    let order = this.orders.get(o.id);
    let moved = false;
    if (!order) {
      order = { id: o.id, status: o.status, customerId: null, customerName: null, total: null, items: null, createdAt: null };
      this.orders.set(o.id, order);
      moved = true;
    } else if (o.status && RANK[o.status] > RANK[order.status]) {
      order.status = o.status;
      moved = true;
    }
    for (const key of ['customerId', 'customerName', 'total', 'items', 'createdAt']) {
      if ((order[key] === null || order[key] === undefined) && o[key] !== null && o[key] !== undefined) order[key] = o[key];
    }
    if (moved) this.prune(order.status);
    this.listeners.forEach((l) => l(order, moved, live));
    return order;
  },

  /** Keeps the newest finished orders of a column (order ids are time-ordered UUIDv7). */
  prune(status) {
    if (!FINISHED.includes(status)) return;
    const ids = [...this.orders.values()].filter((o) => o.status === status).map((o) => o.id).sort();
    for (const id of ids.slice(0, Math.max(0, ids.length - FINISHED_KEEP))) {
      this.orders.delete(id);
      this.listeners.forEach((l) => l({ id, removed: true }, true, false));
    }
  },

  apply(event) {
    if (event.topic !== 'ordering.events.Order') return;
    const status = orderEventStatus(event.name);
    if (!status) return;
    const d = event.data || {};
    const id = d.id || event.key;
    if (!id) return;
    const update = { id, status, customerId: d.customer_id || null };
    if (status === 'pending') {
      update.createdAt = event.at || null;
      if (Array.isArray(d.items)) update.items = d.items.length;
      if (typeof d.total_cents === 'number') {
        update.total = d.total_cents / 100;
      } else if (Array.isArray(d.items)) {
        update.total = d.items.reduce((sum, i) => sum + (i.price_cents || 0) * (i.quantity || 0), 0) / 100;
      }
    }
    const known = this.orders.has(id);
    const order = this.upsert(update, true);
    // An order first seen by a later event: search fills in its customer, total and age.
    if (!known && status !== 'pending') this.fillIn(order.id);
  },

  fillIn(id) {
    if (this.fetching.has(id)) return;
    this.fetching.add(id);
    get(`/api/search/orders/${encodeURIComponent(id)}`)
      .then((o) => this.upsert(fromSearch(o), true))
      .catch(() => {
        // Search may not have it yet; the card shows what the feed said.
      })
      .finally(() => this.fetching.delete(id));
  },

  /** Active orders (all of them) and the newest finished ones, from search. */
  load() {
    if (this.loading) return this.loading;
    this.loading = (async () => {
      const found = [];
      const pages = async (filters, maxPages) => {
        let cursor = null;
        const orders = [];
        for (let i = 0; i < maxPages; i += 1) {
          const body = { ...filters, limit: 100 };
          if (cursor) body.cursor = cursor;
          const page = await api('POST', '/api/search/orders', body);
          orders.push(...(page.orders || []));
          cursor = page.next;
          if (!cursor) break;
        }
        return orders;
      };
      // The newest finished orders of a status: one page, newest first.
      const finished = async (status) => {
        const page = await api('POST', '/api/search/orders', { status, newestFirst: true, limit: FINISHED_KEEP });
        return page.orders || [];
      };
      const lists = await Promise.all([
        ...ACTIVE.map((status) => pages({ status }, 10)),
        ...FINISHED.map((status) => finished(status)),
      ]);
      lists.forEach((list) => found.push(...list));
      found.forEach((o) => this.upsert(fromSearch(o)));
      this.loaded = true;
      this.error = null;
    })()
      .catch((e) => {
        this.error = e;
        throw e;
      })
      .finally(() => {
        this.loading = null;
      });
    return this.loading;
  },

  reload() {
    if (!this.loaded) return;
    this.load().catch((e) => toast(`Refreshing the board failed: ${errorMessage(e)}`));
  },
};

function fromSearch(o) {
  return {
    id: o.id,
    status: o.status,
    customerId: o.customerId,
    customerName: o.customerName,
    total: o.total,
    items: Array.isArray(o.productIds) ? o.productIds.length : null,
    createdAt: o.createdAt,
  };
}

// ---------------------------------------------------------------------------------------------
// Views: one on screen at a time. A view gets a context whose timers end with it.

let current = null;

function makeContext(el) {
  const timers = [];
  const cleanups = [];
  return {
    el,
    alive: true,
    every(ms, fn) {
      timers.push(setInterval(() => this.alive && fn(), ms));
    },
    onDispose(fn) {
      cleanups.push(fn);
    },
    debounce(fn, ms) {
      const d = debounce(() => this.alive && fn(), ms);
      cleanups.push(d.cancel);
      return d;
    },
    dispose() {
      this.alive = false;
      timers.forEach(clearInterval);
      cleanups.forEach((fn) => fn());
    },
  };
}

const VIEWS = {
  board: { title: 'Order board', render: boardView },
  feed: { title: 'Live feed', render: feedView },
  orders: { title: 'Orders', render: ordersView },
  depot: { title: 'Depot', render: depotView },
  invoices: { title: 'Invoices', render: invoicesView },
  'dead-letters': { title: 'Dead letters', render: deadLettersView },
  analytics: { title: 'Analytics', render: analyticsView },
  stores: { title: 'Stores', render: storesView },
};

function route() {
  if (!session.token) return;
  const parts = (location.hash || '').replace(/^#\/?/, '').split('/');
  const name = VIEWS[parts[0]] ? parts[0] : 'board';
  if (!VIEWS[parts[0]]) {
    history.replaceState(null, '', '#/board');
  }
  const param = parts.slice(1).map(decodeURIComponent).join('/') || null;
  if (current) current.ctx.dispose();
  const el = $('#view');
  replace(el);
  const ctx = makeContext(el);
  current = { name, ctx, onEvent: null };
  document.title = `${VIEWS[name].title} · MallBots Admin`;
  document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', a.dataset.route === name));
  const view = VIEWS[name].render(ctx, param) || {};
  current.onEvent = view.onEvent || null;
}

function pageHeader(title, subtitle, ...actions) {
  return h('div', { class: 'page-header' },
    h('div', null, h('h1', null, title), subtitle ? h('p', { class: 'muted' }, subtitle) : null),
    h('div', { class: 'page-actions' }, actions));
}

/** A panel for an error inside a view (and its toast). */
function errorPanel(e, what) {
  return h('div', { class: 'notice notice-error', role: 'alert' }, `${what}: ${errorMessage(e)}`);
}

// ---------------------------------------------------------------------------------------------
// Board (#/board)

function boardView(ctx) {
  const columns = new Map();
  const cards = new Map();
  const counts = new Map();
  const status = h('p', { class: 'muted board-note' }, 'Loading orders…');
  ctx.el.append(
    pageHeader('Order board', 'Active orders and the newest finished ones, moved by the live feed as events happen.'),
    status,
  );
  const grid = h('div', { class: 'board' });
  for (const st of STATUSES) {
    const count = h('span', { class: 'count' }, '0');
    const list = h('div', { class: 'cards' });
    counts.set(st, count);
    columns.set(st, list);
    grid.append(h('section', { class: ['board-column', `column-${st}`], 'data-column': st },
      h('header', { class: 'column-header' }, h('span', { class: 'column-title' }, st), count), list));
  }
  ctx.el.append(grid);

  const updateCounts = () => {
    const n = Object.fromEntries(STATUSES.map((st) => [st, 0]));
    for (const o of board.orders.values()) n[o.status] += 1;
    for (const st of STATUSES) counts.get(st).textContent = String(n[st]);
    if (board.loaded) {
      const active = ACTIVE.reduce((sum, st) => sum + n[st], 0);
      status.textContent = board.orders.size
        ? `${active} active ${active === 1 ? 'order' : 'orders'}, ${board.orders.size - active} recently finished. Click a card for its details.`
        : 'No orders yet: they appear here as kiosks place them.';
    }
  };

  const fillCard = (card, order) => {
    const name = order.customerName || customers.name(order.customerId, () => {
      if (ctx.alive && cards.get(order.id) === card) fillCard(card, board.orders.get(order.id) || order);
    });
    replace(card, 
      h('div', { class: 'card-top' },
        h('span', { class: 'mono card-id', title: order.id }, shortId(order.id)),
        h('span', { class: 'card-total' }, fmtMoney(order.total))),
      h('div', { class: 'card-customer', title: order.customerId || '' },
        name || (order.customerId ? `customer ${shortId(order.customerId)}` : 'customer —')),
      h('div', { class: 'card-bottom' },
        h('span', { class: 'card-items' }, order.items === null || order.items === undefined ? '' : `${order.items} ${order.items === 1 ? 'item' : 'items'}`),
        h('span', { class: 'age', 'data-at': order.createdAt || '' }, order.createdAt ? `${ago(order.createdAt)} ago` : '')),
    );
  };

  /** Places a card in its column, newest (largest id) first. */
  const place = (card, order) => {
    const list = columns.get(order.status);
    let before = null;
    for (const other of list.children) {
      if (other !== card && other.dataset.orderId < order.id) {
        before = other;
        break;
      }
    }
    if (card.parentElement !== list || card.nextElementSibling !== before) list.insertBefore(card, before);
  };

  const show = (order, moved, live) => {
    if (order.removed) {
      const card = cards.get(order.id);
      if (card) card.remove();
      cards.delete(order.id);
      updateCounts();
      return;
    }
    let card = cards.get(order.id);
    if (!card) {
      card = h('a', { class: 'order-card', href: `#/orders/${encodeURIComponent(order.id)}`, 'data-order-id': order.id });
      cards.set(order.id, card);
    }
    card.dataset.status = order.status;
    fillCard(card, order);
    if (moved) {
      place(card, order);
      if (live) {
        // Highlight a card the live feed moved (restarting the animation).
        card.classList.remove('flash');
        void card.offsetWidth;
        card.classList.add('flash');
      }
      updateCounts();
    }
  };

  const renderAll = () => {
    const sorted = [...board.orders.values()].sort((a, b) => (a.id < b.id ? 1 : -1));
    for (const order of sorted) show(order, true, false);
    updateCounts();
  };

  board.listeners.add(show);
  ctx.onDispose(() => board.listeners.delete(show));
  renderAll();

  if (!board.loaded) {
    board.load().then(() => ctx.alive && updateCounts()).catch((e) => {
      if (!ctx.alive) return;
      status.replaceWith(errorPanel(e, 'Loading the orders failed'));
      toast(`Loading the board failed: ${errorMessage(e)}`);
    });
  }

  ctx.every(5000, () => {
    ctx.el.querySelectorAll('.age').forEach((el) => {
      if (el.dataset.at) el.textContent = `${ago(el.dataset.at)} ago`;
    });
  });
  return {};
}

// ---------------------------------------------------------------------------------------------
// Live feed (#/feed)

const MODULE_OF_TOPIC = (topic) => (topic || '').split('.')[0];

function feedView(ctx) {
  let paused = false;
  let filter = '';
  const list = h('div', { class: 'feed', role: 'list' });
  const count = h('span', { class: 'muted' });
  const filterInput = h('input', { type: 'search', placeholder: 'Filter by topic, name or key', class: 'filter', 'aria-label': 'filter' });
  const pauseButton = h('button', { type: 'button', class: 'ghost' }, 'Pause');
  ctx.el.append(
    pageHeader('Live feed', `The last ${FEED_MAX} events from the broker, newest first. Click an event for its payload.`,
      filterInput, pauseButton),
    h('div', { class: 'feed-head' }, h('span', null, 'Time'), h('span', null, 'Topic'), h('span', null, 'Event'), h('span', null, 'Key')),
    list,
    h('p', { class: 'feed-foot' }, count),
  );

  const matches = (e) => !filter || [e.topic, e.name, e.key].some((v) => (v || '').toLowerCase().includes(filter));

  const row = (e) => {
    const details = h('div', { class: 'feed-details' });
    const r = h('div', { class: ['feed-row', e.name === DEAD_LETTER_EVENT && 'dead-letter'], role: 'listitem', 'data-seq': e.seq, tabindex: 0 },
      h('div', { class: 'feed-line' },
        h('span', { class: 'feed-time', title: fmtDateTime(e.at) }, fmtTime(e.at)),
        h('span', { class: ['topic', `topic-${MODULE_OF_TOPIC(e.topic)}`] }, e.topic),
        h('span', { class: 'feed-name' }, e.name),
        h('span', { class: 'mono feed-key', title: e.key }, e.key)),
      details);
    const toggle = () => {
      if (details.firstChild) {
        replace(details);
        r.classList.remove('open');
      } else {
        details.append(
          h('div', { class: 'muted small' }, `seq ${e.seq} · ${fmtDateTime(e.at)}`),
          jsonBlock(e.data === undefined ? null : e.data));
        r.classList.add('open');
      }
    };
    r.addEventListener('click', (ev) => {
      if (!ev.target.closest('pre')) toggle();
    });
    r.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        ev.preventDefault();
        toggle();
      }
    });
    return r;
  };

  const updateCount = () => {
    count.textContent = feed.events.length
      ? `${list.children.length} of ${feed.events.length} events shown${paused ? ' · paused' : ''}`
      : 'No events yet: they appear as the mall works (is the live feed connected?).';
  };

  const renderAll = () => {
    replace(list, ...feed.events.filter(matches).map(row));
    updateCount();
  };
  renderAll();

  filterInput.addEventListener('input', () => {
    filter = filterInput.value.trim().toLowerCase();
    renderAll();
  });
  pauseButton.addEventListener('click', () => {
    paused = !paused;
    pauseButton.textContent = paused ? 'Resume' : 'Pause';
    pauseButton.classList.toggle('primary', paused);
    if (!paused) renderAll();
    else updateCount();
  });

  return {
    onEvent(e) {
      if (paused || !matches(e)) return updateCount();
      list.prepend(row(e));
      while (list.children.length > FEED_MAX) list.lastElementChild.remove();
      updateCount();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Orders (#/orders, #/orders/<id>)

const ordersSearch = { filters: {}, cursors: [null], page: 0, result: null };

function ordersView(ctx, id) {
  if (id) return orderDetailView(ctx, id);

  const input = (name, attrs) => h('input', { name, id: `f-${name}`, ...attrs });
  const f = ordersSearch.filters;
  const form = h('form', { class: 'search-form', id: 'order-search' },
    h('label', null, 'Customer id', input('customerId', { type: 'text', value: f.customerId, placeholder: 'any' })),
    h('label', null, 'Status', h('select', { name: 'status' },
      h('option', { value: '' }, 'any'),
      STATUSES.map((st) => h('option', { value: st, selected: f.status === st }, st)))),
    h('label', null, 'Created after', input('createdAfter', { type: 'datetime-local', step: 1, value: f.createdAfterLocal })),
    h('label', null, 'Created before', input('createdBefore', { type: 'datetime-local', step: 1, value: f.createdBeforeLocal })),
    h('label', null, 'Min total', input('minTotal', { type: 'number', min: 0, step: '0.01', value: f.minTotal, placeholder: '0.00' })),
    h('label', null, 'Max total', input('maxTotal', { type: 'number', min: 0, step: '0.01', value: f.maxTotal, placeholder: 'any' })),
    h('label', null, 'Order', h('select', { name: 'order' },
      h('option', { value: 'newest', selected: !f.oldestFirst }, 'newest first'),
      h('option', { value: 'oldest', selected: !!f.oldestFirst }, 'oldest first'))),
    h('div', { class: 'form-actions' },
      h('button', { type: 'submit', class: 'primary' }, 'Search'),
      h('button', { type: 'button', class: 'ghost', id: 'last-15-minutes', title: 'orders created in the last 15 minutes' }, 'Last 15 min'),
      h('button', { type: 'reset', class: 'ghost' }, 'Clear')));
  const results = h('div', { class: 'results' });
  ctx.el.append(pageHeader('Orders', 'Search every customer\'s orders; click one for its details.'), form, results);

  const run = async () => {
    replace(results, h('p', { class: 'muted' }, 'Searching…'));
    const fl = ordersSearch.filters;
    const body = { limit: 25, newestFirst: !fl.oldestFirst };
    if (fl.customerId) body.customerId = fl.customerId;
    if (fl.status) body.status = fl.status;
    if (fl.createdAfter) body.createdAfter = fl.createdAfter;
    if (fl.createdBefore) body.createdBefore = fl.createdBefore;
    if (fl.minTotal) body.minTotal = fl.minTotal;
    if (fl.maxTotal) body.maxTotal = fl.maxTotal;
    const cursor = ordersSearch.cursors[ordersSearch.page];
    if (cursor) body.cursor = cursor;
    try {
      const page = await api('POST', '/api/search/orders', body);
      if (!ctx.alive) return;
      ordersSearch.result = page;
      show(page);
    } catch (e) {
      if (!ctx.alive) return;
      replace(results, errorPanel(e, 'The search failed'));
    }
  };

  const show = (page) => {
    const orders = page.orders || [];
    const prev = h('button', { type: 'button', class: 'ghost', disabled: ordersSearch.page === 0 }, '← Previous');
    const next = h('button', { type: 'button', class: 'ghost', disabled: !page.next }, 'Next →');
    prev.addEventListener('click', () => {
      ordersSearch.page -= 1;
      run();
    });
    next.addEventListener('click', () => {
      ordersSearch.cursors[ordersSearch.page + 1] = page.next;
      ordersSearch.page += 1;
      run();
    });
    replace(results, 
      orders.length === 0
        ? h('p', { class: 'empty' }, 'No order matches.')
        : h('div', { class: 'table-wrap' }, h('table', { class: 'table clickable' },
          tableHead(['Order', 'Customer', 'Status', 'Total', 'Stores', 'Products', 'Created']),
          h('tbody', null, orders.map((o) => {
            const tr = h('tr', { class: 'order-row', 'data-order-id': o.id, tabindex: 0 },
              h('td', null, h('span', { class: 'mono', title: o.id }, shortId(o.id))),
              h('td', { title: o.customerId }, o.customerName || shortId(o.customerId)),
              h('td', null, statusBadge(o.status)),
              h('td', { class: 'num' }, fmtMoney(o.total)),
              h('td', { class: 'num' }, String((o.storeIds || []).length)),
              h('td', { class: 'num' }, String((o.productIds || []).length)),
              h('td', null, fmtDateTime(o.createdAt)));
            const open = () => {
              location.hash = `#/orders/${encodeURIComponent(o.id)}`;
            };
            tr.addEventListener('click', open);
            tr.addEventListener('keydown', (ev) => ev.key === 'Enter' && open());
            return tr;
          })))),
      h('div', { class: 'pager' }, prev, h('span', { class: 'muted' }, `page ${ordersSearch.page + 1}`), next),
    );
  };

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const text = (k) => String(data.get(k) || '').trim();
    const iso = (k) => {
      const v = text(k);
      if (!v) return null;
      const d = new Date(v);
      return Number.isNaN(d.getTime()) ? null : d.toISOString();
    };
    ordersSearch.filters = {
      customerId: text('customerId'),
      status: text('status'),
      createdAfter: iso('createdAfter'),
      createdAfterLocal: text('createdAfter'),
      createdBefore: iso('createdBefore'),
      createdBeforeLocal: text('createdBefore'),
      minTotal: text('minTotal'),
      maxTotal: text('maxTotal'),
      oldestFirst: text('order') === 'oldest',
    };
    ordersSearch.cursors = [null];
    ordersSearch.page = 0;
    run();
  });
  form.querySelector('#last-15-minutes').addEventListener('click', () => {
    // datetime-local wants local time without a zone.
    const local = new Date(Date.now() - 15 * 60000 - new Date().getTimezoneOffset() * 60000);
    form.querySelector('[name="createdAfter"]').value = local.toISOString().slice(0, 19);
    form.requestSubmit();
  });
  form.addEventListener('reset', (ev) => {
    // The fields' defaults are the previous filters: empty them instead.
    ev.preventDefault();
    form.querySelectorAll('input').forEach((i) => {
      i.value = '';
    });
    form.querySelector('[name="status"]').value = '';
    form.querySelector('[name="order"]').value = 'newest';
    ordersSearch.filters = {};
    ordersSearch.cursors = [null];
    ordersSearch.page = 0;
    run();
  });
  if (ordersSearch.result && ordersSearch.page >= 0) show(ordersSearch.result);
  run();
  return {};
}

function orderDetailView(ctx, id) {
  const body = h('div', { class: 'detail' }, h('p', { class: 'muted' }, 'Loading…'));
  const title = h('h1', null, 'Order ', h('span', { class: 'mono', title: id }, shortId(id)));
  ctx.el.append(
    h('div', { class: 'page-header' },
      h('div', null, h('a', { href: '#/orders', class: 'back' }, '← Orders'), title, h('p', { class: 'muted mono small' }, id)),
      h('div', { class: 'page-actions' })),
    body);

  const load = async () => {
    const settle = (p) => p.then((value) => ({ value }), (error) => ({ error }));
    const [order, summary, invoice] = await Promise.all([
      settle(get(`/api/ordering/${encodeURIComponent(id)}`)),
      settle(get(`/api/search/orders/${encodeURIComponent(id)}`)),
      settle(get(`/api/payments/invoices?orderId=${encodeURIComponent(id)}`)),
    ]);
    let shopping = null;
    if (order.value && order.value.shoppingId) {
      shopping = await settle(get(`/api/depot/shopping/${encodeURIComponent(order.value.shoppingId)}`));
    }
    if (!ctx.alive) return;
    render(order, summary, invoice, shopping);
  };

  const render = (order, summary, invoice, shopping) => {
    const o = order.value;
    const sm = summary.value;
    const parts = [];
    if (order.error) parts.push(errorPanel(order.error, 'The order could not be read'));
    if (o) {
      const status = o.status;
      replace(title, 'Order ', h('span', { class: 'mono' }, shortId(id)), ' ', statusBadge(status));
      parts.push(h('div', { class: 'grid-2' },
        h('section', { class: 'panel' }, h('h2', null, 'Order'), fields([
          ['Status', statusBadge(status), 'status'],
          ['Total', fmtMoney(o.total), 'total'],
          ['Customer', sm && sm.customerName ? `${sm.customerName} (${shortId(o.customerId)})` : o.customerId, 'customer'],
          ['Created', sm ? fmtDateTime(sm.createdAt) : null, 'created'],
          ['Payment', h('span', { class: 'mono' }, o.paymentId), 'payment'],
          ['Shopping list', o.shoppingId ? h('span', { class: 'mono' }, o.shoppingId) : null, 'shopping'],
          ['Invoice', o.invoiceId ? h('span', { class: 'mono' }, o.invoiceId) : null, 'invoice'],
        ])),
        h('section', { class: 'panel' }, h('h2', null, 'Invoice'), invoicePanel(invoice, load))));
      parts.push(h('section', { class: 'panel' }, h('h2', null, 'Items'),
        h('div', { class: 'table-wrap' }, h('table', { class: 'table' },
          tableHead(['Product', 'Store', 'Price', 'Quantity', 'Line total']),
          h('tbody', null, (o.items || []).map((i) => h('tr', null,
            h('td', null, i.productName),
            h('td', null, i.storeName),
            h('td', { class: 'num' }, fmtMoney(i.price)),
            h('td', { class: 'num' }, String(i.quantity)),
            h('td', { class: 'num' }, fmtMoney(Number(i.price) * Number(i.quantity))))))))));
    } else if (summary.error) {
      parts.push(errorPanel(summary.error, 'Search does not have it either'));
    }
    parts.push(h('section', { class: 'panel' }, h('h2', null, 'Shopping list'), shoppingPanel(o, shopping)));
    const events = feed.events.filter((e) => e.key === id || (e.data && (e.data.order_id === id || e.data.id === id)));
    parts.push(h('section', { class: 'panel' }, h('h2', null, 'Recent events'),
      events.length === 0
        ? h('p', { class: 'muted' }, 'None in the live feed\'s last events.')
        : h('ul', { class: 'timeline' }, events.slice().reverse().map((e) => h('li', null,
          h('span', { class: 'feed-time' }, fmtTime(e.at)), ' ',
          h('span', { class: ['topic', `topic-${MODULE_OF_TOPIC(e.topic)}`] }, e.topic), ' ',
          h('span', null, e.name))))));
    replace(body, ...parts);
  };

  load().catch((e) => replace(body, errorPanel(e, 'Loading the order failed')));
  const refresh = ctx.debounce(() => load().catch((e) => toast(errorMessage(e))), 400);
  return {
    onEvent(e) {
      if (e.key === id || (e.data && (e.data.order_id === id || e.data.id === id))) refresh();
    },
  };
}

function invoicePanel(invoice, reload) {
  if (invoice.error) {
    return invoice.error.status === 404
      ? h('p', { class: 'muted' }, 'No invoice yet (one is issued when the order is ready).')
      : errorPanel(invoice.error, 'The invoice could not be read');
  }
  const inv = invoice.value;
  const nodes = [fields([
    ['Invoice', h('span', { class: 'mono' }, inv.id), 'invoice-id'],
    ['Amount', fmtMoney(inv.amount), 'amount'],
    ['Status', statusBadge(inv.status), 'invoice-status'],
  ])];
  if (inv.status === 'pending') nodes.push(payButton(inv, reload));
  return nodes;
}

function payButton(inv, after) {
  const button = h('button', { type: 'button', class: 'primary pay', 'data-invoice-id': inv.id }, `Pay ${fmtMoney(inv.amount)}`);
  button.addEventListener('click', async (ev) => {
    ev.stopPropagation();
    button.disabled = true;
    button.textContent = 'Paying…';
    try {
      await api('PUT', `/api/payments/invoices/${encodeURIComponent(inv.id)}/pay`);
      toast(`Invoice ${shortId(inv.id)} paid (${fmtMoney(inv.amount)}): the order completes.`, 'ok');
      if (after) await after();
    } catch (e) {
      toast(`Paying invoice ${shortId(inv.id)} failed: ${errorMessage(e)}`);
      button.disabled = false;
      button.textContent = `Pay ${fmtMoney(inv.amount)}`;
    }
  });
  return button;
}

function stopsList(stops) {
  return h('ol', { class: 'stops' }, (stops || []).map((stop) => h('li', null,
    h('strong', null, stop.storeName), ' ',
    h('span', { class: 'muted' }, (stop.items || []).map((i) => `${i.quantity}× ${i.productName}`).join(', ')))));
}

function shoppingPanel(order, shopping) {
  if (!order || !order.shoppingId) return h('p', { class: 'muted' }, 'No shopping list (the order is not approved).');
  if (!shopping || shopping.error) return errorPanel(shopping && shopping.error, 'The shopping list could not be read');
  const l = shopping.value;
  return [
    fields([
      ['List', h('span', { class: 'mono' }, l.id)],
      ['Status', statusBadge(l.status)],
      ['Bot', l.botId],
    ]),
    stopsList(l.stops),
  ];
}

// ---------------------------------------------------------------------------------------------
// Depot (#/depot): shopping lists and bots

const depotState = { filter: 'open' };
const OPEN_LISTS = ['available', 'assigned', 'active'];

function depotView(ctx) {
  const tabs = h('div', { class: 'tabs', role: 'tablist' });
  const lists = h('div');
  const bots = h('div', { class: 'bots' }, h('p', { class: 'muted' }, 'Loading bots…'));
  const options = [['open', 'In progress'], ['pending', 'pending'], ['available', 'available'], ['assigned', 'assigned'],
    ['active', 'active'], ['completed', 'completed'], ['canceled', 'canceled']];
  for (const [value, label] of options) {
    const tab = h('button', { type: 'button', class: ['tab', depotState.filter === value && 'active'], 'data-filter': value }, label);
    tab.addEventListener('click', () => {
      depotState.filter = value;
      tabs.querySelectorAll('.tab').forEach((t) => t.classList.toggle('active', t === tab));
      loadLists();
    });
    tabs.append(tab);
  }
  ctx.el.append(
    pageHeader('Depot', 'Shopping lists the shopper bots pick, and the bots themselves.'),
    h('section', { class: 'panel' }, h('h2', null, 'Bots'), bots),
    h('section', { class: 'panel' }, h('h2', null, 'Shopping lists'), tabs, lists));

  const loadLists = async () => {
    const statuses = depotState.filter === 'open' ? OPEN_LISTS : [depotState.filter];
    try {
      const results = await Promise.all(statuses.map((st) => get(`/api/depot/shopping?status=${encodeURIComponent(st)}`)));
      if (!ctx.alive) return;
      const all = results.flat().sort((a, b) => (a.id < b.id ? 1 : -1));
      replace(lists, all.length === 0
        ? h('p', { class: 'empty' }, 'No shopping list here.')
        : h('div', { class: 'table-wrap' }, h('table', { class: 'table' },
          tableHead(['List', 'Order', 'Status', 'Bot', 'Stops']),
          h('tbody', null, all.map((l) => h('tr', { class: 'shopping-row', 'data-id': l.id },
            h('td', null, h('span', { class: 'mono', title: l.id }, shortId(l.id))),
            h('td', null, orderLink(l.orderId)),
            h('td', null, statusBadge(l.status)),
            h('td', { class: 'mono' }, l.botId || '—'),
            h('td', null, stopsList(l.stops))))))),
        all.length >= 500 ? h('p', { class: 'muted small' }, 'The server lists at most 500 lists (the oldest).') : null);
    } catch (e) {
      if (ctx.alive) replace(lists, errorPanel(e, 'Loading the shopping lists failed'));
    }
  };

  const loadBots = async () => {
    try {
      const all = await get('/api/depot/bots');
      if (!ctx.alive) return;
      replace(bots, !all || all.length === 0
        ? h('p', { class: 'empty' }, 'No bot has connected yet.')
        : h('div', { class: 'bot-grid' }, all.map((b) => h('div', { class: ['bot-card', `bot-${b.status}`], 'data-bot-id': b.id },
          h('div', { class: 'bot-top' }, h('span', { class: 'bot-dot', 'aria-hidden': 'true' }), h('strong', { class: 'mono' }, b.id)),
          h('div', null, statusBadge(b.status)),
          h('div', { class: 'small' }, b.shoppingId ? ['list ', h('span', { class: 'mono', title: b.shoppingId }, shortId(b.shoppingId))] : 'no list'),
          h('div', { class: 'small muted' }, b.lastSeen ? `seen ${ago(b.lastSeen)} ago` : '')))));
    } catch (e) {
      if (!ctx.alive) return;
      replace(bots, e.status === 404
        ? h('p', { class: 'muted' }, 'No bot information (this server does not report its bots).')
        : errorPanel(e, 'Loading the bots failed'));
    }
  };

  loadLists();
  loadBots();
  const refresh = ctx.debounce(() => {
    loadLists();
    loadBots();
  }, 600);
  ctx.every(10000, () => {
    loadLists();
    loadBots();
  });
  return {
    onEvent(e) {
      if (e.topic === 'depot.events.ShoppingList') refresh();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Invoices (#/invoices)

function invoicesView(ctx) {
  const open = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  const lookup = h('div', { class: 'lookup-result' });
  const orderInput = h('input', { type: 'text', name: 'orderId', placeholder: 'order id', required: true, 'aria-label': 'order id' });
  const form = h('form', { class: 'inline-form' }, orderInput, h('button', { type: 'submit', class: 'ghost' }, 'Find invoice'));
  ctx.el.append(
    pageHeader('Invoices', 'Invoices of ready orders wait here to be paid at the depot.'),
    h('section', { class: 'panel' }, h('h2', null, 'To pay'), open),
    h('section', { class: 'panel' }, h('h2', null, 'Find an order\'s invoice'), form, lookup));

  let shown = null;
  const load = async () => {
    try {
      const invoices = await get('/api/payments/open-invoices');
      if (!ctx.alive) return;
      const list = Array.isArray(invoices) ? invoices : (invoices && invoices.invoices) || [];
      // Re-drawn only when the list changed: a Pay button about to be clicked stays.
      const signature = JSON.stringify(list.map((inv) => [inv.id, inv.status]));
      if (signature === shown) return;
      shown = signature;
      replace(open, list.length >= 100 ? h('p', { class: 'muted small' }, 'The oldest 100 invoices to pay:') : null, list.length === 0
        ? h('p', { class: 'empty' }, 'Nothing to pay.')
        : h('div', { class: 'table-wrap' }, h('table', { class: 'table' },
          tableHead(['Invoice', 'Order', 'Amount', 'Status', '']),
          h('tbody', null, list.map((inv) => h('tr', { class: 'invoice-row', 'data-id': inv.id },
            h('td', null, h('span', { class: 'mono', title: inv.id }, shortId(inv.id))),
            h('td', null, orderLink(inv.orderId)),
            h('td', { class: 'num' }, fmtMoney(inv.amount)),
            h('td', null, statusBadge(inv.status)),
            h('td', { class: 'actions' }, inv.status === 'pending' || inv.status === undefined ? payButton(inv, load) : null)))))));
    } catch (e) {
      if (!ctx.alive) return;
      shown = null;
      replace(open, e.status === 404
        ? h('p', { class: 'muted' }, 'This server does not list open invoices (GET /api/payments/open-invoices answered 404): find one by its order below.')
        : errorPanel(e, 'Loading the invoices failed'));
    }
  };

  const find = async () => {
    const orderId = orderInput.value.trim();
    if (!orderId) return;
    replace(lookup, h('p', { class: 'muted' }, 'Looking…'));
    try {
      const inv = await get(`/api/payments/invoices?orderId=${encodeURIComponent(orderId)}`);
      if (!ctx.alive) return;
      replace(lookup, fields([
        ['Invoice', h('span', { class: 'mono' }, inv.id)],
        ['Order', orderLink(inv.orderId)],
        ['Amount', fmtMoney(inv.amount)],
        ['Status', statusBadge(inv.status)],
      ]), inv.status === 'pending' ? payButton(inv, () => { find(); load(); }) : null);
    } catch (e) {
      if (ctx.alive) replace(lookup, errorPanel(e, 'No invoice found'));
    }
  };
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    find();
  });

  load();
  const refresh = ctx.debounce(load, 600);
  ctx.every(10000, load);
  return {
    onEvent(e) {
      if (e.topic === 'payments.events.Invoice' || e.topic === 'ordering.events.Order') refresh();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Dead letters (#/dead-letters)

const deadLetterState = { status: 'pending', group: '', selected: null };

const deadLetterBadge = {
  timer: null,
  async refresh() {
    if (!session.token) return;
    const badge = $('#dead-letter-badge');
    try {
      const pending = await get('/api/admin/dead-letters?status=pending&limit=100');
      const n = Array.isArray(pending) ? pending.length : 0;
      badge.hidden = n === 0;
      badge.textContent = n >= 100 ? '100+' : String(n);
      badge.title = `${badge.textContent} pending dead letters`;
    } catch {
      badge.hidden = true;
    }
  },
  start() {
    this.stop();
    this.refresh();
    // Dead letters come and go on the live feed (dispatch refreshes at once); this is a
    // safety net for a feed that missed some (a reconnection past its backlog).
    this.timer = setInterval(() => this.refresh(), 60000);
  },
  stop() {
    clearInterval(this.timer);
    this.timer = null;
  },
};

function deadLettersView(ctx) {
  const statusSelect = h('select', { name: 'status', 'aria-label': 'status' },
    ['pending', 'replayed', 'discarded', 'all'].map((st) => h('option', { value: st, selected: deadLetterState.status === st }, st)));
  const groupInput = h('input', { type: 'search', name: 'group', placeholder: 'consumer group (all)', value: deadLetterState.group, 'aria-label': 'group' });
  const list = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  const detail = h('section', { class: 'panel detail-panel', id: 'dead-letter-detail' },
    h('p', { class: 'muted' }, 'Select a dead letter to see its message, replay or discard it.'));
  const result = h('div', { id: 'dead-letter-result', class: 'notice', hidden: true, role: 'status' });
  ctx.el.append(
    pageHeader('Dead letters', 'Messages a consumer gave up on: inspect, replay to the group that failed them, or discard.',
      statusSelect, groupInput),
    result,
    h('div', { class: 'split' }, h('section', { class: 'panel' }, list), detail));

  let letters = [];
  let more = false;
  let shown = null;

  const query = (after) => {
    const params = new URLSearchParams({ status: deadLetterState.status, limit: '100' });
    if (deadLetterState.group) params.set('group', deadLetterState.group);
    if (after) params.set('after', after);
    return `/api/admin/dead-letters?${params}`;
  };

  const load = async (append = false) => {
    try {
      const page = await get(query(append && letters.length ? letters[letters.length - 1].id : null));
      if (!ctx.alive) return;
      letters = append ? letters.concat(page) : page;
      more = page.length === 100;
      // Re-drawn only when something changed: a row being clicked stays where it is.
      const signature = JSON.stringify([more, letters.map((d) => [d.id, d.status])]);
      if (signature !== shown) renderList();
      shown = signature;
    } catch (e) {
      if (!ctx.alive) return;
      shown = null;
      replace(list, errorPanel(e, 'Loading the dead letters failed'));
    }
  };

  const renderList = () => {
    if (letters.length === 0) {
      replace(list, h('p', { class: 'empty' }, deadLetterState.status === 'pending' ? 'No pending dead letter: every consumer is keeping up.' : 'None.'));
      return;
    }
    const loadMore = h('button', { type: 'button', class: 'ghost' }, 'Load more');
    loadMore.addEventListener('click', () => load(true));
    replace(list, 
      h('div', { class: 'table-wrap' }, h('table', { class: 'table clickable' },
        tableHead(['When', 'Message and reason', 'Group', 'Tries', 'Status']),
        h('tbody', null, letters.map((d) => {
          const tr = h('tr', { class: ['dead-letter-row', deadLetterState.selected === d.id && 'selected'], 'data-id': d.id, 'data-status': d.status, tabindex: 0 },
            h('td', { class: 'nowrap', title: fmtDateTime(d.deadLetteredAt) }, fmtWhen(d.deadLetteredAt), h('div', { class: 'muted small' }, `${ago(d.deadLetteredAt)} ago`)),
            h('td', { class: 'dl-message' },
              h('div', { class: 'dl-name' }, d.message.name),
              h('div', { class: 'muted small dl-reason', title: d.reason }, d.reason)),
            h('td', { class: 'mono small' }, d.group),
            h('td', { class: 'num' }, String(d.attempts)),
            h('td', null, statusBadge(d.status)));
          const open = () => select(d.id);
          tr.addEventListener('click', open);
          tr.addEventListener('keydown', (ev) => ev.key === 'Enter' && open());
          return tr;
        })))),
      more ? h('div', { class: 'pager' }, loadMore) : null);
  };

  const select = async (id) => {
    deadLetterState.selected = id;
    list.querySelectorAll('.dead-letter-row').forEach((r) => r.classList.toggle('selected', r.dataset.id === id));
    await showDetail(id);
  };

  const showDetail = async (id) => {
    try {
      const d = await get(`/api/admin/dead-letters/${encodeURIComponent(id)}`);
      if (!ctx.alive || deadLetterState.selected !== id) return;
      const replay = h('button', { type: 'button', class: 'primary replay', disabled: d.status !== 'pending' }, 'Replay');
      const discard = h('button', { type: 'button', class: 'danger discard', disabled: d.status !== 'pending' }, 'Discard');
      replay.addEventListener('click', () => act(d, 'replay', replay, discard));
      discard.addEventListener('click', () => act(d, 'discard', replay, discard));
      detail.dataset.id = d.id;
      detail.dataset.status = d.status;
      replace(detail, 
        h('div', { class: 'detail-head' }, h('h2', null, d.message.name), statusBadge(d.status)),
        fields([
          ['Dead letter', h('span', { class: 'mono' }, d.id), 'id'],
          ['Status', statusBadge(d.status), 'status'],
          ['Group', h('span', { class: 'mono' }, d.group), 'group'],
          ['Attempts', String(d.attempts), 'attempts'],
          ['Dead-lettered', fmtDateTime(d.deadLetteredAt), 'dead-lettered-at'],
          d.resolvedAt ? ['Resolved', fmtDateTime(d.resolvedAt), 'resolved-at'] : null,
          d.replayId ? ['Replayed as', h('span', { class: 'mono' }, d.replayId), 'replay-id'] : null,
          ['Reason', h('span', { class: 'reason-full' }, d.reason), 'reason'],
          ['Message id', h('span', { class: 'mono' }, d.message.id), 'message-id'],
          ['Topic', d.message.topic, 'topic'],
          ['Key', h('span', { class: 'mono' }, d.message.key), 'key'],
        ]),
        h('h3', null, 'Payload'),
        jsonBlock(d.message.payload),
        h('div', { class: 'detail-actions' }, replay, discard));
    } catch (e) {
      if (ctx.alive) replace(detail, errorPanel(e, 'Loading the dead letter failed'));
    }
  };

  const act = async (d, action, ...buttons) => {
    buttons.forEach((b) => {
      b.disabled = true;
    });
    try {
      const answer = await api('POST', `/api/admin/dead-letters/${encodeURIComponent(d.id)}/${action}`);
      const text = action === 'replay'
        ? `Dead letter ${shortId(d.id)} replayed to ${d.group} as message ${answer && answer.replayId ? answer.replayId : ''}.`
        : `Dead letter ${shortId(d.id)} discarded.`;
      result.textContent = text;
      result.className = 'notice notice-ok';
      result.dataset.action = action;
      result.hidden = false;
      toast(text, 'ok');
    } catch (e) {
      result.textContent = `${action === 'replay' ? 'Replaying' : 'Discarding'} failed: ${errorMessage(e)}`;
      result.className = 'notice notice-error';
      result.hidden = false;
      toast(result.textContent);
    }
    await Promise.all([load(), showDetail(d.id)]);
    deadLetterBadge.refresh();
  };

  statusSelect.addEventListener('change', () => {
    deadLetterState.status = statusSelect.value;
    load();
  });
  groupInput.addEventListener('change', () => {
    deadLetterState.group = groupInput.value.trim();
    load();
  });

  load();
  if (deadLetterState.selected) showDetail(deadLetterState.selected);
  // Dead letters come and go on the live feed; the poll is a safety net.
  ctx.every(60000, () => load());
  return {
    onEvent(e) {
      if (isDeadLetterEvent(e)) load();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Charts: SVG, drawn here. Data marks are rect.bar and path.line (the tests count them).

/** An axis from 0 past `value`: at most 5 steps of 1, 2 or 5 × 10^k (whole steps for counts). */
function axis(value, whole = true) {
  if (!(value > 0)) return { max: whole ? 4 : 1, step: whole ? 1 : 0.25, ticks: 4 };
  let exp = 10 ** Math.floor(Math.log10(value / 5));
  if (whole) exp = Math.max(1, exp);
  for (;;) {
    for (const m of [1, 2, 5]) {
      const step = m * exp;
      const ticks = Math.ceil(value / step - 1e-9);
      if (ticks <= 5) return { max: step * ticks, step, ticks: Math.max(1, ticks) };
    }
    exp *= 10;
  }
}

function fmtTick(v, money) {
  if (money) {
    if (v >= 1000) return `$${(v / 1000).toFixed(v >= 10000 ? 0 : 1)}k`;
    return v >= 10 || v === 0 ? `$${Math.round(v)}` : `$${v.toFixed(2)}`;
  }
  return v >= 1000 ? `${(v / 1000).toFixed(1)}k` : String(Math.round(v * 100) / 100);
}

function chartFrame(name, width, height) {
  return s('svg', {
    class: 'chart', 'data-chart': name, viewBox: `0 0 ${width} ${height}`, role: 'img',
    preserveAspectRatio: 'xMidYMid meet',
  });
}

/** Vertical bars: [{label, value, cls}]. */
function barChart(name, data, { money = false } = {}) {
  const W = 480;
  const H = 220;
  const pad = { l: 48, r: 12, t: 18, b: 30 };
  const svg = chartFrame(name, W, H);
  const { max, step, ticks } = axis(Math.max(0, ...data.map((d) => d.value)), !money);
  const ih = H - pad.t - pad.b;
  const iw = W - pad.l - pad.r;
  for (let i = 0; i <= ticks; i += 1) {
    const v = step * i;
    const y = pad.t + ih - (ih * v) / max;
    svg.append(s('line', { class: 'grid', x1: pad.l, x2: W - pad.r, y1: y, y2: y }),
      s('text', { class: 'tick', x: pad.l - 6, y: y + 4, 'text-anchor': 'end' }, fmtTick(v, money)));
  }
  const slot = iw / Math.max(1, data.length);
  const bw = Math.min(56, slot * 0.6);
  data.forEach((d, i) => {
    const bh = (ih * d.value) / max;
    const x = pad.l + slot * i + (slot - bw) / 2;
    const y = pad.t + ih - bh;
    svg.append(
      s('rect', { class: ['bar', d.cls], x, y, width: bw, height: Math.max(0, bh), rx: 3, 'data-label': d.label, 'data-value': d.value },
        s('title', null, `${d.label}: ${money ? fmtMoney(d.value) : d.value}`)),
      s('text', { class: 'value', x: x + bw / 2, y: y - 5, 'text-anchor': 'middle' }, money ? fmtMoney(d.value) : String(d.value)),
      s('text', { class: 'label', x: x + bw / 2, y: H - pad.b + 17, 'text-anchor': 'middle' }, d.label));
  });
  svg.append(s('line', { class: 'axis', x1: pad.l, x2: W - pad.r, y1: pad.t + ih, y2: pad.t + ih }));
  return svg;
}

/** Horizontal bars: [{label, value, note}]. */
function hbarChart(name, data) {
  const W = 480;
  const row = 34;
  const pad = { l: 150, r: 60, t: 8, b: 8 };
  const H = pad.t + pad.b + row * Math.max(1, data.length);
  const svg = chartFrame(name, W, H);
  const { max } = axis(Math.max(0, ...data.map((d) => d.value)));
  const iw = W - pad.l - pad.r;
  data.forEach((d, i) => {
    const y = pad.t + row * i;
    const bw = (iw * d.value) / max;
    const label = d.label.length > 22 ? `${d.label.slice(0, 21)}…` : d.label;
    svg.append(
      s('text', { class: 'label', x: pad.l - 8, y: y + row / 2 + 4, 'text-anchor': 'end' }, label, s('title', null, d.label)),
      s('rect', { class: ['bar', `rank-${i}`], x: pad.l, y: y + 6, width: Math.max(0, bw), height: row - 12, rx: 3, 'data-label': d.label, 'data-value': d.value },
        s('title', null, `${d.label}: ${d.note}`)),
      s('text', { class: 'value', x: pad.l + bw + 6, y: y + row / 2 + 4 }, String(d.value)));
  });
  return svg;
}

/** A line over time: [{t: Date, v}]. */
function lineChart(name, points, { money = true } = {}) {
  const W = 1200;
  const H = 280;
  const pad = { l: 56, r: 16, t: 16, b: 32 };
  const svg = chartFrame(name, W, H);
  const ih = H - pad.t - pad.b;
  const iw = W - pad.l - pad.r;
  const pts = points.slice().sort((a, b) => a.t - b.t);
  if (pts.length === 1) pts.unshift({ t: new Date(pts[0].t.getTime() - 60000), v: pts[0].v });
  const t0 = pts.length ? pts[0].t.getTime() : Date.now() - 60000;
  const t1 = pts.length ? Math.max(pts[pts.length - 1].t.getTime(), t0 + 1000) : Date.now();
  const { max, step, ticks } = axis(Math.max(0, ...pts.map((p) => p.v)), false);
  const x = (t) => pad.l + (iw * (t.getTime() - t0)) / (t1 - t0);
  const y = (v) => pad.t + ih - (ih * v) / max;
  for (let i = 0; i <= ticks; i += 1) {
    const v = step * i;
    svg.append(s('line', { class: 'grid', x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v) }),
      s('text', { class: 'tick', x: pad.l - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtTick(v, money)));
  }
  for (let i = 0; i <= 4; i += 1) {
    const t = new Date(t0 + ((t1 - t0) * i) / 4);
    svg.append(s('text', { class: 'tick', x: x(t), y: H - 10, 'text-anchor': i === 0 ? 'start' : i === 4 ? 'end' : 'middle' },
      t.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })));
  }
  svg.append(s('line', { class: 'axis', x1: pad.l, x2: W - pad.r, y1: pad.t + ih, y2: pad.t + ih }));
  if (pts.length) {
    const d = pts.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ');
    const area = `${d} L${x(pts[pts.length - 1].t).toFixed(1)},${pad.t + ih} L${x(pts[0].t).toFixed(1)},${pad.t + ih} Z`;
    svg.append(s('path', { class: 'area', d: area }), s('path', { class: 'line', d }));
    for (const p of pts.slice(-120)) {
      svg.append(s('circle', { class: 'dot', cx: x(p.t), cy: y(p.v), r: 3 },
        s('title', null, `${p.t.toLocaleString()}: ${money ? fmtMoney(p.v) : p.v}`)));
    }
  }
  return svg;
}

/** Bars over time, one a minute: [{t: Date, v}]. */
function timeBarChart(name, points) {
  const W = 480;
  const H = 220;
  const pad = { l: 40, r: 8, t: 18, b: 30 };
  const svg = chartFrame(name, W, H);
  const ih = H - pad.t - pad.b;
  const iw = W - pad.l - pad.r;
  const { max, step, ticks } = axis(Math.max(0, ...points.map((p) => p.v)));
  const y = (v) => pad.t + ih - (ih * v) / max;
  for (let i = 0; i <= ticks; i += 1) {
    const v = step * i;
    svg.append(s('line', { class: 'grid', x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v) }),
      s('text', { class: 'tick', x: pad.l - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtTick(v, false)));
  }
  const slot = iw / Math.max(1, points.length);
  const bw = Math.max(1, Math.min(28, slot * 0.75));
  const every = Math.max(1, Math.ceil(points.length / 6));
  points.forEach((p, i) => {
    const x = pad.l + slot * i + (slot - bw) / 2;
    svg.append(s('rect', { class: 'bar', x, y: y(p.v), width: bw, height: Math.max(0, pad.t + ih - y(p.v)), rx: 2, 'data-value': p.v },
      s('title', null, `${p.t.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}: ${p.v}`)));
    if (i % every === 0) {
      svg.append(s('text', { class: 'tick', x: x + bw / 2, y: H - 10, 'text-anchor': 'middle' },
        p.t.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })));
    }
  });
  svg.append(s('line', { class: 'axis', x1: pad.l, x2: W - pad.r, y1: pad.t + ih, y2: pad.t + ih }));
  return svg;
}

/** Per-minute figures with the minutes that had none filled in as 0, at most the last `span`. */
function fillMinutes(list, span) {
  const byMinute = new Map();
  for (const m of list) {
    const t = new Date(m.minute).getTime();
    if (!Number.isNaN(t)) byMinute.set(Math.floor(t / 60000), m);
  }
  if (byMinute.size === 0) return [];
  const keys = [...byMinute.keys()];
  const last = Math.max(...keys, Math.floor(Date.now() / 60000));
  const first = Math.max(Math.min(...keys), last - span + 1);
  const out = [];
  for (let k = first; k <= last; k += 1) {
    const m = byMinute.get(k);
    out.push({ t: new Date(k * 60000), revenue: m ? Number(m.revenue) || 0 : 0, orders: m ? Number(m.orders) || 0 : 0 });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Analytics (#/analytics)

const analyticsState = { samples: [] };

function analyticsView(ctx) {
  const kpis = h('div', { class: 'kpis' });
  const projection = h('span', { class: 'muted small' });
  const byStatus = h('div', { class: 'chart-body' });
  const revenue = h('div', { class: 'chart-body' });
  const revenueNote = h('p', { class: 'muted small' });
  const top = h('div', { class: 'chart-body' });
  const topCard = h('section', { class: 'panel chart-card' }, h('h2', null, 'Top products (quantity ordered)'), top);
  const perMinute = h('div', { class: 'chart-body' });
  const perMinuteCard = h('section', { class: 'panel chart-card', hidden: true }, h('h2', null, 'Orders completed per minute'), perMinute);
  const saga = h('div', { class: 'chart-body' });
  const error = h('div');
  const card = (title, body, ...extra) => h('section', { class: 'panel chart-card' }, h('h2', null, title), body, extra);
  ctx.el.append(
    pageHeader('Analytics', 'Business figures from the analytics read model, refreshed as orders move.', projection),
    error,
    kpis,
    h('div', { class: 'charts' },
      card('Orders by status', byStatus),
      card('Saga outcomes', saga),
      h('section', { class: 'panel chart-card wide' }, h('h2', null, 'Revenue over time'), revenue, revenueNote),
      perMinuteCard,
      topCard));

  const kpi = (label, value, cls) => h('div', { class: ['kpi', cls] }, h('div', { class: 'kpi-value' }, value), h('div', { class: 'kpi-label' }, label));

  const load = async () => {
    let summary;
    try {
      summary = await get('/api/analytics/summary');
    } catch (e) {
      if (ctx.alive) replace(error, errorPanel(e, 'Loading the figures failed'));
      return;
    }
    if (!ctx.alive) return;
    replace(error);
    const counts = summary.ordersByStatus || {};
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    const outcomes = summary.sagaOutcomes;
    replace(kpis, 
      kpi('orders', String(total)),
      kpi('revenue (completed)', fmtMoney(summary.revenue), 'kpi-money'),
      kpi('in progress', String((counts.pending || 0) + (counts.approved || 0) + (counts.ready || 0))),
      kpi('completed', String(counts.completed || 0), 'kpi-ok'),
      kpi('rejected', String(counts.rejected || 0), 'kpi-bad'));

    replace(byStatus, barChart('orders-by-status', STATUSES.map((st) => ({ label: st, value: counts[st] || 0, cls: `status-${st}` }))));

    if (outcomes && typeof outcomes === 'object') {
      const approved = outcomes.approved || 0;
      const rejected = outcomes.rejected || 0;
      const all = approved + rejected;
      replace(saga, 
        barChart('saga-outcomes', [
          { label: 'approved', value: approved, cls: 'status-completed' },
          { label: 'rejected', value: rejected, cls: 'status-rejected' },
        ]),
        h('p', { class: 'muted small' }, all ? `${((100 * approved) / all).toFixed(1)}% of the orders the saga decided were approved.` : 'The saga has decided no order yet.'));
    } else {
      replace(saga, h('p', { class: 'muted' }, 'This server does not report saga outcomes.'));
    }

    let points;
    if (Array.isArray(summary.revenueByMinute)) {
      const minutes = fillMinutes(summary.revenueByMinute, 120);
      points = minutes.map((m) => ({ t: m.t, v: m.revenue }));
      revenueNote.textContent = 'Revenue of the orders completed each minute (the last two hours at most).';
      perMinuteCard.hidden = false;
      topCard.classList.remove('wide');
      replace(perMinute, minutes.length
        ? timeBarChart('orders-per-minute', minutes.map((m) => ({ t: m.t, v: m.orders })))
        : h('p', { class: 'empty' }, 'No order completed yet.'));
    } else {
      perMinuteCard.hidden = true;
      topCard.classList.add('wide');
      analyticsState.samples.push({ t: new Date(), v: Number(summary.revenue) || 0 });
      if (analyticsState.samples.length > 720) analyticsState.samples.shift();
      points = analyticsState.samples;
      revenueNote.textContent = 'Total revenue of completed orders, sampled while this page is open (the server does not report revenue by minute).';
    }
    replace(revenue, points.length
      ? lineChart('revenue', points)
      : h('p', { class: 'empty' }, 'No revenue yet.'));

    const products = summary.topProducts || [];
    replace(top, products.length
      ? hbarChart('top-products', products.map((p) => ({ label: p.productName, value: p.quantity, note: `${p.quantity} ordered in ${p.orders} orders, ${fmtMoney(p.orderedValue)}` })))
      : h('p', { class: 'empty' }, 'No product ordered yet.'));

    get('/api/analytics/projection').then((p) => {
      if (!ctx.alive) return;
      projection.textContent = `projection ${p.name}: ${p.phase}, ${p.eventsBehind} ${p.eventsBehind === 1 ? 'event' : 'events'} behind`;
    }).catch(() => {
      projection.textContent = '';
    });
  };

  load();
  ctx.every(5000, load);
  const refresh = ctx.debounce(load, 1200);
  return {
    onEvent(e) {
      if (e.topic === 'ordering.events.Order') refresh();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Stores (#/stores)

function storesView(ctx, selectedId) {
  const stores = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  const products = h('section', { class: 'panel', id: 'store-products' }, h('p', { class: 'muted' }, 'Select a store to see its products.'));
  ctx.el.append(pageHeader('Stores', 'The mall\'s stores and their catalogs.'), h('div', { class: 'split' }, h('section', { class: 'panel' }, stores), products));

  const showProducts = async (store) => {
    replace(products, h('h2', null, store.name), h('p', { class: 'muted' }, 'Loading…'));
    try {
      const list = await get(`/api/stores/${encodeURIComponent(store.id)}/products`);
      if (!ctx.alive) return;
      replace(products, 
        h('h2', null, store.name),
        h('p', { class: 'muted small' }, `${store.location} · `, h('span', { class: 'mono' }, store.id)),
        list.length === 0
          ? h('p', { class: 'empty' }, 'No product.')
          : h('div', { class: 'table-wrap' }, h('table', { class: 'table' },
            tableHead(['Product', 'SKU', 'Price', 'Description']),
            h('tbody', null, list.map((p) => h('tr', { class: 'product-row', 'data-id': p.id },
              h('td', null, p.name),
              h('td', { class: 'mono' }, p.sku || '—'),
              h('td', { class: 'num' }, fmtMoney(p.price)),
              h('td', { class: 'muted' }, p.description || '')))))));
    } catch (e) {
      if (ctx.alive) replace(products, h('h2', null, store.name), errorPanel(e, 'Loading the products failed'));
    }
  };

  const load = async () => {
    try {
      const list = await get('/api/stores');
      if (!ctx.alive) return;
      replace(stores, list.length === 0
        ? h('p', { class: 'empty' }, 'No store yet.')
        : h('div', { class: 'table-wrap' }, h('table', { class: 'table clickable' },
          tableHead(['Store', 'Location', 'Participating']),
          h('tbody', null, list.map((st) => {
            const tr = h('tr', { class: ['store-row', selectedId === st.id && 'selected'], 'data-id': st.id, tabindex: 0 },
              h('td', null, st.name),
              h('td', null, st.location),
              h('td', null, h('span', { class: ['pill', st.participating ? 'pill-yes' : 'pill-no'] }, st.participating ? 'yes' : 'no')));
            const open = () => {
              selectedId = st.id;
              stores.querySelectorAll('.store-row').forEach((r) => r.classList.toggle('selected', r === tr));
              showProducts(st);
            };
            tr.addEventListener('click', open);
            tr.addEventListener('keydown', (ev) => ev.key === 'Enter' && open());
            if (selectedId === st.id) showProducts(st);
            return tr;
          })))));
    } catch (e) {
      if (ctx.alive) replace(stores, errorPanel(e, 'Loading the stores failed'));
    }
  };
  load();
  const refresh = ctx.debounce(load, 800);
  return {
    onEvent(e) {
      if (e.topic === 'stores.events.Store') refresh();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Signing in and out

/** Whether the server takes this token (401: no; other failures are shown as they are). */
async function checkToken(token) {
  try {
    await api('GET', '/api/admin/dead-letters?limit=1', undefined, token);
    return true;
  } catch (e) {
    if (e.status === 401) return false;
    throw e;
  }
}

function showSignIn(message) {
  $('#app').hidden = true;
  $('#sign-in-screen').hidden = false;
  const error = $('#sign-in-error');
  error.textContent = message || '';
  error.hidden = !message;
  const input = $('#token');
  input.value = '';
  input.focus();
}

function start(token) {
  session.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('#sign-in-screen').hidden = true;
  $('#app').hidden = false;
  $('#sign-in-error').hidden = true;
  board.reset();
  feed.events = [];
  liveStart();
  deadLetterBadge.start();
  if (!location.hash || location.hash === '#' || location.hash === '#/') history.replaceState(null, '', '#/board');
  route();
}

function signOut(message) {
  session.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  liveStop();
  deadLetterBadge.stop();
  if (current) current.ctx.dispose();
  current = null;
  $('#view').replaceChildren();
  board.reset();
  feed.events = [];
  showSignIn(message);
}

function init() {
  $('#sign-in-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const button = $('#sign-in');
    const error = $('#sign-in-error');
    const token = $('#token').value.trim();
    if (!token) return;
    button.disabled = true;
    button.textContent = 'Signing in…';
    error.hidden = true;
    try {
      if (await checkToken(token)) {
        start(token);
      } else {
        error.textContent = 'Wrong token: the server refused it.';
        error.hidden = false;
        $('#token').select();
      }
    } catch (e) {
      error.textContent = `Cannot sign in: ${errorMessage(e)}`;
      error.hidden = false;
    } finally {
      button.disabled = false;
      button.textContent = 'Sign in';
    }
  });
  $('#sign-out').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', route);

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (!saved) {
    showSignIn();
    return;
  }
  checkToken(saved)
    .then((ok) => (ok ? start(saved) : showSignIn('The saved token is no longer accepted: sign in again.')))
    .catch((e) => {
      showSignIn(`Cannot reach the server: ${errorMessage(e)}`);
    });
}

document.addEventListener('DOMContentLoaded', init);
