// One task: its facts, input, output or error, a timeline of its steps and the history of
// its attempts (running time and time waiting for capacity drawn apart), live.
import { api, el, fmtInt, fmtSeconds, fmtTime, fmtUsd, replaceRows, setText, subscribe } from "/static/common.js";

const SVG = "http://www.w3.org/2000/svg";
const LANE = 24;
const AXIS = 22;
const taskId = Number(window.location.pathname.split("/").pop());
const steps = new Map();
let task = null;

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// Steps that overlap in time go to different lanes: parallel steps sit side by side.
function lanes(sorted) {
  const ends = [];
  return sorted.map((s) => {
    let lane = ends.findIndex((end) => end <= s.started_at);
    if (lane === -1) { lane = ends.length; ends.push(0); }
    ends[lane] = s.finished_at;
    return lane;
  });
}

function renderTimeline() {
  const box = document.getElementById("timeline");
  const sorted = [...steps.values()].sort((a, b) => a.started_at - b.started_at || (a.key < b.key ? -1 : 1));
  setText("step-count", sorted.length ? `(${sorted.length})` : "");
  if (sorted.length === 0) {
    box.replaceChildren(document.createTextNode("no step recorded yet"));
    return;
  }
  const laneOf = lanes(sorted);
  const starts = sorted.map((s) => s.started_at);
  if (task && task.started_at) starts.push(task.started_at);
  // (loops, not Math.min(...list): a spread of thousands of steps overflows the stack)
  const t0 = starts.reduce((a, b) => Math.min(a, b));
  const end = task && task.finished_at ? task.finished_at : sorted.reduce((a, s) => Math.max(a, s.finished_at), t0);
  const span = Math.max(end - t0, 1e-3);
  const width = Math.max(box.clientWidth - 20, 600);
  const height = AXIS + LANE * (laneOf.reduce((a, b) => Math.max(a, b), 0) + 1);
  const x = (t) => ((t - t0) / span) * (width - 2);
  const root = svg("svg", { width, height, role: "img", "aria-label": "step timeline" });
  for (let i = 0; i <= 4; i++) {
    const at = (span * i) / 4;
    const px = Math.min(x(t0 + at), width - 40);
    root.append(svg("line", { class: "axis", x1: px, x2: px, y1: 0, y2: height }));
    root.append(svg("text", { class: "tick", x: px + 3, y: 12 }, `+${fmtSeconds(at)}`));
  }
  const attempt = task ? task.attempts : 0;
  sorted.forEach((s, i) => {
    const y = AXIS + laneOf[i] * LANE;
    const left = x(s.started_at);
    const barWidth = Math.max(x(s.finished_at) - left, 2);
    const earlier = s.attempt < attempt;
    const group = svg("g", { class: "step", "data-key": s.key, "data-lane": laneOf[i] });
    group.append(svg("title", {}, `${s.key}: ${fmtSeconds(s.finished_at - s.started_at)} (attempt ${s.attempt})`));
    group.append(svg("rect", { class: earlier ? "bar replayed" : "bar", x: left, y: y + 2, width: barWidth, height: LANE - 6, rx: 3 }));
    group.append(svg("text", { x: Math.min(left + 4, width - 120), y: y + LANE / 2 + 2 }, `${s.key} · ${fmtSeconds(s.finished_at - s.started_at)}`));
    group.addEventListener("click", () => showStep(s.key));
    root.append(group);
  });
  box.replaceChildren(root);
}

// What a step recorded (an LLM call's answer, a search's hits), for the step clicked.
function showStep(key) {
  const s = steps.get(key);
  if (!s) return;
  setText("step-chosen", `${s.key}, attempt ${s.attempt}, ${fmtSeconds(s.finished_at - s.started_at)}:`);
  const out = document.getElementById("step-output");
  out.hidden = false;
  out.textContent = JSON.stringify(s.output, null, 2) ?? "null";
}

// Drawn once a frame however many steps arrive: each step event drew the whole timeline
// again, and a task of a thousand steps took a minute to show.
let drawing = false;
function redraw() {
  if (drawing) return;
  drawing = true;
  requestAnimationFrame(() => { drawing = false; renderTimeline(); });
}

// One row per ended attempt, oldest first, each with a bar split into running and waiting.
function renderAttempts(attempts) {
  setText("attempt-count", attempts.length ? `(${attempts.length})` : "");
  const longest = Math.max(1e-6, ...attempts.map((a) => a.running_seconds + a.waiting_seconds));
  const rows = attempts.map((a, i) => {
    const bar = el("div", { class: "attempt-bar", title: `running ${fmtSeconds(a.running_seconds)} · waiting ${fmtSeconds(a.waiting_seconds)}` });
    const running = el("span", { class: "running-part" });
    const waiting = el("span", { class: "waiting-part" });
    running.style.width = `${(100 * a.running_seconds) / longest}%`;
    waiting.style.width = `${(100 * a.waiting_seconds) / longest}%`;
    bar.append(running, waiting);
    return el("tr", { "data-attempt": String(a.attempt), "data-outcome": a.outcome, "data-index": String(i) },
      el("td", {}, a.attempt),
      el("td", {}, el("span", { class: `badge ${a.outcome}` }, a.outcome)),
      el("td", { title: a.worker }, a.worker.split(":").pop()),
      el("td", {}, fmtTime(a.started_at)),
      el("td", {}, fmtTime(a.finished_at)),
      el("td", {}, bar),
      el("td", { class: "running" }, fmtSeconds(a.running_seconds)),
      el("td", { class: "waiting" }, fmtSeconds(a.waiting_seconds)),
      el("td", { class: "error" }, a.error ? `${a.error.type}: ${a.error.message}` : "–"));
  });
  replaceRows(document.getElementById("attempts-table"), rows, 9, "no attempt has ended yet");
}

let attemptsShown = null;

async function loadAttempts(t) {
  // Read again only when the task changed in a way an ended attempt changes it.
  const mark = `${t.status}/${t.attempts}/${t.finished_at}`;
  if (mark === attemptsShown) return;
  attemptsShown = mark;
  try {
    const response = await api(`/v1/tasks/${taskId}/attempts`);
    if (response.ok) renderAttempts((await response.json()).attempts);
  } catch {
    attemptsShown = null;  // read again at the next change
  }
}

function renderTask(t) {
  task = t;
  setText("task-id", `#${t.id}`);
  const badge = document.getElementById("status");
  badge.textContent = t.status;
  badge.className = `badge ${t.status}`;
  setText("agent", t.agent);
  setText("key", t.key ?? "–");
  setText("attempts", `${t.attempts} of ${t.max_attempts}`);
  setText("created", fmtTime(t.created_at));
  setText("started", fmtTime(t.started_at));
  setText("finished", fmtTime(t.finished_at));
  setText("latency", t.started_at && t.finished_at ? fmtSeconds(t.finished_at - t.started_at) : "–");
  const u = t.usage;
  setText("usage", u ? `${fmtInt(u.llm_calls)} LLM calls · ${fmtInt(u.prompt_tokens)} in · ${fmtInt(u.completion_tokens)} out · ${fmtUsd(u.cost_usd)}` : "–");
  // A task that succeeded after a failed attempt has no error: that one is history (in
  // the attempts above), not the task's state.
  const failing = t.error && t.status !== "succeeded";
  document.getElementById("error-section").hidden = !failing;
  if (failing) {
    // The traceback comes with the task's detail; a change of status alone (an event)
    // keeps it when it is still the same error's.
    const line = `${t.error.type}: ${t.error.message}`;
    const shown = document.getElementById("error").textContent.trimEnd();
    setText("error", t.error.traceback || (shown.endsWith(line) ? shown : line));
  }
  loadAttempts(t);
  document.title = `legion · task ${t.id} · ${t.status}`;
}

function renderDetail(d) {
  renderTask(d);
  setText("input", JSON.stringify(d.input, null, 2));
  setText("output", d.output === null ? "–" : JSON.stringify(d.output, null, 2));
  for (const s of d.steps) steps.set(s.key, s);
  redraw();
}

async function start() {
  if (!Number.isInteger(taskId) || taskId < 1) {
    setText("status", "no such task");
    return;
  }
  const response = await api(`/v1/tasks/${taskId}`);
  if (!response.ok) {
    setText("status", response.status === 404 ? "no such task" : `error ${response.status}`);
    setText("connection", "");
    return;
  }
  renderDetail(await response.json());
  subscribe(`/v1/tasks/${taskId}/events`, {
    task: (t) => { renderTask(t); redraw(); },
    step: (s) => { steps.set(s.key, s); redraw(); },
    end: (d, source, show) => { renderDetail(d); source.close(); show("finished", "ok"); },
  });
  new ResizeObserver(redraw).observe(document.getElementById("timeline"));
}

start();
