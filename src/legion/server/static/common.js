// Helpers shared by the dashboard pages. Data is only ever inserted as text (never as HTML).

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function setText(id, text) {
  const node = document.getElementById(id);
  if (node && node.textContent !== text) node.textContent = text;
}

export function replaceRows(tbody, rows, columns, emptyText) {
  if (rows.length === 0) {
    tbody.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: String(columns) }, emptyText)));
  } else {
    tbody.replaceChildren(...rows);
  }
}

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export function fmtInt(n) {
  return n === null || n === undefined ? "–" : integer.format(n);
}

export function fmtRate(n) {
  if (n === null || n === undefined) return "–";
  return n >= 100 ? integer.format(n) : n.toFixed(1);
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms`;
  if (s < 120) return `${s.toFixed(2)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function fmtUsd(n) {
  if (n === null || n === undefined) return "–";
  return n < 1 ? `$${n.toFixed(4)}` : `$${n.toFixed(2)}`;
}

export function fmtTime(epoch) {
  return epoch === null || epoch === undefined ? "–" : new Date(epoch * 1000).toLocaleString();
}

// A URL of this server without the page's own user and password: a page opened as
// http://user:key@host/ has them in its URL, and fetch() refuses a relative URL there
// (the browser still sends the credentials it was given, by origin).
export function here(path) {
  return new URL(path, window.location.origin);
}

// fetch() of one of this server's routes.
export function api(path, init) {
  return fetch(here(path), init);
}

// An EventSource whose state is shown in the badge with id "connection". A browser opens
// a stream again by itself after a lost connection, but not after an answer that is not
// a stream (a 503 while the store is down): then it is opened again here, after a pause
// that grows to 30 s. Handlers get (data, stream, show); stream.close() ends it for good.
export function subscribe(url, handlers) {
  const badge = document.getElementById("connection");
  const show = (text, cls) => {
    if (badge) { badge.textContent = text; badge.className = `badge ${cls}`; }
  };
  let source = null;
  let ended = false;
  let pause = 2000;
  const stream = { close: () => { ended = true; if (source) source.close(); } };
  const open = () => {
    if (ended) return;
    source = new EventSource(here(url));
    source.onopen = () => { pause = 2000; show("live", "live"); };
    source.onerror = (e) => {
      // The server's own `error` event (a revoked key) carries why; a lost connection none.
      const detail = e.data ? (JSON.parse(e.data).detail ?? "") : "";
      if (detail) {
        stream.close();
        show(`closed: ${detail} (sign in again with another key)`, "down");
        return;
      }
      if (source.readyState !== EventSource.CLOSED) {
        show("reconnecting", "down");
        return;
      }
      if (ended) return;
      show(`reconnecting in ${Math.round(pause / 1000)} s`, "down");
      setTimeout(open, pause);
      pause = Math.min(pause * 2, 30000);
    };
    for (const [event, handle] of Object.entries(handlers)) {
      source.addEventListener(event, (e) => handle(JSON.parse(e.data), stream, show));
    }
  };
  open();
  return stream;
}
