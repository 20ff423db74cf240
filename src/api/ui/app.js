// Hive's dashboard: the fleet, live, over the same API and key as every other client.
// The key stays in sessionStorage and goes only in the Authorization header. Everything
// shown is put in with textContent, never as HTML: names and messages are the clients'.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "hive.key";
const state = {
  key: null,
  who: null,
  agents: new Map(),
  version: null,
  sort: { col: "name", dir: 1 },
  selector: "",
  phase: "",
  watch: null,
  logs: null,
  shown: null,
  dryRunText: null,
};

class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.error ? body.error : {};
    let message = detail.message || `HTTP ${status}`;
    if (detail.documents) {
      message += "\n" + detail.documents.map((d) => `  document ${d.index}: ${d.message}`).join("\n");
    }
    super(message);
    this.status = status;
  }
}

async function api(method, path, body, contentType) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (body !== undefined) headers["Content-Type"] = contentType || "application/json";
  const r = await fetch(path, { method, headers, body, cache: "no-store" });
  if (!r.ok) {
    let parsed = null;
    try { parsed = await r.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, parsed);
  }
  return r;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

const canWrite = () => state.who && state.who.role !== "viewer";

// --- sign-in

async function signIn(key) {
  state.key = key;
  try {
    state.who = await (await api("GET", "/v1/whoami")).json();
  } catch (e) {
    state.key = null;
    sessionStorage.removeItem(KEY);
    $("signin-error").textContent =
      e.status === 401 ? `This key was refused: ${e.message}` : `Hive could not be reached: ${e.message}`;
    return;
  }
  sessionStorage.setItem(KEY, key);
  $("key").value = "";
  $("signin-error").textContent = "";
  $("signin").hidden = true;
  $("fleet").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = `key ${state.who.keyId} · owner ${state.who.owner} · ${state.who.role}`;
  for (const w of document.querySelectorAll(".writer")) w.hidden = !canWrite();
  await relist();
  overview();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  location.reload();
}

// --- the fleet, live

async function relist() {
  if (state.watch) state.watch.abort();
  state.watch = null;
  const q = state.selector ? `?label=${encodeURIComponent(state.selector)}` : "";
  try {
    const list = await (await api("GET", `/v1/agents${q}`)).json();
    state.agents = new Map(list.items.map((a) => [a.metadata.name, a]));
    state.version = list.metadata.resourceVersion;
    $("fleet-error").textContent = "";
  } catch (e) {
    $("fleet-error").textContent = e.message;
    if (refused(e)) return;
    $("stream-state").textContent = "offline; trying again";
    setTimeout(relist, backoff());
    return;
  }
  state.failures = 0;
  render();
  watch();
}

// A key that is refused now (revoked, or its role changed) ends the session.
function refused(e) {
  if (e.status !== 401 && e.status !== 403) return false;
  sessionStorage.removeItem(KEY);
  state.key = null;
  if (state.watch) state.watch.abort();
  $("fleet").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = `Signed out: ${e.message}`;
  return true;
}

// 1 s doubling to 30 s, with jitter, while the server keeps failing.
function backoff() {
  state.failures = (state.failures || 0) + 1;
  const base = Math.min(30000, 1000 * 2 ** (state.failures - 1));
  return base / 2 + Math.random() * base / 2;
}

function watch() {
  if (state.watch) state.watch.abort();
  const ctl = new AbortController();
  state.watch = ctl;
  let q = `?watch=true&resourceVersion=${encodeURIComponent(state.version)}`;
  if (state.selector) q += `&label=${encodeURIComponent(state.selector)}`;
  $("stream-state").textContent = "live";
  (async () => {
    try {
      const r = await fetch(`/v1/agents${q}`, {
        headers: { Authorization: `Bearer ${state.key}` },
        signal: ctl.signal,
        cache: "no-store",
      });
      if (r.status === 410) return relist();
      if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
      state.failures = 0;
      const reader = r.body.getReader();
      const text = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += text.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          if (line.trim()) onChange(JSON.parse(line));
          if (state.watch !== ctl) return;
        }
      }
      throw new Error("the stream ended");
    } catch (e) {
      if (ctl.signal.aborted || refused(e)) return;
      $("stream-state").textContent = `reconnecting (${e.message})`;
      setTimeout(() => { if (state.watch === ctl) watch(); }, backoff());
    }
  })();
}

function onChange(event) {
  if (event.type === "ERROR") {
    // Too far behind: list again, then watch from the list.
    relist();
    return;
  }
  const a = event.object;
  state.version = a.metadata.resourceVersion;
  if (event.type === "DELETED") state.agents.delete(a.metadata.name);
  else state.agents.set(a.metadata.name, a);
  state.changed = a.metadata.name;
  if (!state.frame) {
    state.frame = requestAnimationFrame(() => { state.frame = null; render(state.changed); });
  }
  if (state.shown === a.metadata.name && event.type !== "DELETED") showSpec(a);
}

function ready(a) {
  const c = (a.status.conditions || []).find((c) => c.type === "Ready");
  return c ? c.status : "-";
}

function age(a) {
  const t = Date.parse(a.metadata.creationTimestamp);
  if (!t) return "-";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

const next = (a) => a.status.stopsAt || a.status.expiresAt || "";

const sortKeys = {
  name: (a) => a.metadata.name,
  owner: (a) => a.metadata.owner || "",
  phase: (a) => a.status.phase,
  ready: (a) => ready(a),
  image: (a) => a.spec.image,
  restarts: (a) => a.status.restartCount || 0,
  age: (a) => -(Date.parse(a.metadata.creationTimestamp) || 0),
  next: (a) => next(a),
};

function render(changed) {
  const key = sortKeys[state.sort.col];
  const rows = [...state.agents.values()]
    .filter((a) => !state.phase || a.status.phase === state.phase)
    .sort((x, y) => {
      const a = key(x), b = key(y);
      return (a < b ? -1 : a > b ? 1 : 0) * state.sort.dir;
    });
  const body = $("agents").tBodies[0];
  body.replaceChildren(...rows.map((a) => row(a, a.metadata.name === changed)));
  const counts = {};
  for (const a of state.agents.values()) counts[a.status.phase] = (counts[a.status.phase] || 0) + 1;
  const parts = Object.entries(counts).sort().map(([p, n]) => el("span", { class: `phase-${p}` }, `${p}: ${n}`));
  $("overview").querySelectorAll(".count").forEach((n) => n.remove());
  const box = el("span", { class: "count" }, `${state.agents.size} agents`);
  $("overview").prepend(box, ...parts.map((p) => { p.classList.add("count"); return p; }));
}

function row(a, changed) {
  const name = a.metadata.name;
  const tr = el("tr", { "data-name": name, class: changed ? "changed" : "" },
    el("td", {}, el("button", { type: "button", onclick: () => show(name), title: `Details of ${name}` }, name)),
    el("td", {}, a.metadata.owner || ""),
    el("td", {}, el("span", { class: `phase phase-${a.status.phase}`, "data-phase": a.status.phase }, a.status.phase)),
    el("td", {}, ready(a)),
    el("td", {}, a.spec.image),
    el("td", {}, a.status.restartCount || 0),
    el("td", {}, age(a)),
    el("td", {}, a.status.stopsAt ? `stops ${a.status.stopsAt}` : a.status.expiresAt ? `deleted ${a.status.expiresAt}` : "-"),
    el("td", { class: "message" }, a.status.message || ""),
  );
  if (canWrite()) {
    const act = (verb) => el("button", { type: "button", onclick: () => action(name, verb), "data-action": verb,
      ariaLabel: `${verb} ${name}` }, verb);
    tr.append(el("td", {}, act("start"), " ", act("stop"), " ", act("restart"), " ", act("touch"), " ",
      el("button", { type: "button", onclick: () => remove(name), "data-action": "delete", ariaLabel: `delete ${name}` }, "delete")));
  }
  return tr;
}

async function action(name, verb) {
  try {
    await api("POST", `/v1/agents/${encodeURIComponent(name)}/action`, JSON.stringify({ action: verb }));
    $("fleet-error").textContent = "";
  } catch (e) {
    $("fleet-error").textContent = `${verb} ${name}: ${e.message}`;
  }
}

async function remove(name) {
  if (!confirm(`Delete agent ${name}? Its container goes, and its volumes unless retained.`)) return;
  try {
    await api("DELETE", `/v1/agents/${encodeURIComponent(name)}`);
    $("fleet-error").textContent = "";
  } catch (e) {
    $("fleet-error").textContent = `delete ${name}: ${e.message}`;
  }
}

async function overview() {
  const box = $("overview");
  box.querySelectorAll(".health").forEach((n) => n.remove());
  setTimeout(() => { if (state.key) overview(); }, 15000);
  let readyText;
  try {
    const readyz = await fetch("/readyz", { cache: "no-store" });
    readyText = readyz.ok ? "engine: ready" : `engine: not ready (${((await readyz.json().catch(() => ({}))).error || {}).message || readyz.status})`;
  } catch (e) {
    readyText = `Hive unreachable (${e.message})`;
  }
  box.append(el("span", { class: "health" }, readyText));
  if (state.who.role === "admin") {
    try {
      const sync = await (await api("GET", "/v1/sync")).json();
      const files = Object.keys(sync.files || {}).length;
      box.append(el("span", { class: "health" }, `GitOps: ${files} files, last scan ${sync.lastScan || "-"}`));
    } catch (e) {
      box.append(el("span", { class: "health" }, `GitOps: ${e.status === 404 ? "no manifests directory" : e.message}`));
    }
  }
}

// --- one agent

function toYaml(v, indent = "") {
  if (v === null || v === undefined) return "null";
  if (Array.isArray(v)) {
    if (!v.length) return "[]";
    return v.map((x) => `\n${indent}- ${toYaml(x, indent + "  ").replace(/^\n\s*/, "")}`).join("");
  }
  if (typeof v === "object") {
    const keys = Object.keys(v);
    if (!keys.length) return "{}";
    return keys.map((k) => {
      const inner = toYaml(v[k], indent + "  ");
      return `\n${indent}${k}:${inner.startsWith("\n") ? inner : " " + inner}`;
    }).join("");
  }
  return typeof v === "string" ? JSON.stringify(v) : String(v);
}

function showSpec(a) {
  $("detail-spec").textContent = toYaml({ metadata: { name: a.metadata.name, labels: a.metadata.labels || {} }, spec: a.spec }).trim();
  $("detail-conditions").replaceChildren(...(a.status.conditions || []).map((c) =>
    el("li", {}, `${c.type}: ${c.status} (${c.reason}${c.message ? ": " + c.message : ""})`)));
}

async function show(name) {
  const a = state.agents.get(name);
  if (!a) return;
  state.shown = name;
  $("detail").hidden = false;
  $("detail-title").textContent = `Agent ${name}`;
  showSpec(a);
  if (state.logs) state.logs.abort();
  try {
    const events = await (await api("GET", `/v1/agents/${encodeURIComponent(name)}/events`)).json();
    if (state.shown !== name) return;
    $("detail-events").replaceChildren(...events.items.map((e) =>
      el("li", {}, `${e.lastTime} ${e.reason}: ${e.message}${e.count > 1 ? ` (x${e.count})` : ""}`)));
  } catch (e) {
    $("detail-events").replaceChildren(el("li", { class: "error" }, e.message));
  }
  if (state.shown !== name) return;
  followLogs(name);
  $("detail-title").scrollIntoView();
}

async function followLogs(name) {
  if (state.logs) state.logs.abort();
  const ctl = new AbortController();
  state.logs = ctl;
  const out = $("detail-logs");
  out.textContent = "";
  try {
    const r = await fetch(`/v1/agents/${encodeURIComponent(name)}/logs?tail=200&follow=true`, {
      headers: { Authorization: `Bearer ${state.key}` }, signal: ctl.signal, cache: "no-store",
    });
    if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
    const reader = r.body.getReader();
    const text = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      out.append(document.createTextNode(text.decode(value, { stream: true })));
      while (out.childNodes.length > 2000) out.firstChild.remove();
    }
  } catch (e) {
    if (!ctl.signal.aborted) out.textContent += `\n[${e.message}]`;
  }
}

function closeDetail() {
  if (state.logs) state.logs.abort();
  state.shown = null;
  $("detail").hidden = true;
}

// --- apply YAML, with the dry run's diff first

async function dryRun() {
  const text = $("apply-text").value;
  try {
    const answer = await (await api("POST", "/v1/apply?dryRun=true", text, "application/yaml")).json();
    $("apply-out").textContent = answer.items.map((i) => `agent/${i.name} ${i.result}${i.diff ? "\n" + i.diff : ""}`).join("\n");
    state.dryRunText = text;
    $("apply-go").disabled = false;
  } catch (e) {
    $("apply-out").textContent = e.message;
    $("apply-go").disabled = true;
  }
}

async function applyForReal() {
  const text = $("apply-text").value;
  if (text !== state.dryRunText) {
    $("apply-out").textContent = "The text changed since its dry run: show what would change first.";
    $("apply-go").disabled = true;
    return;
  }
  try {
    const answer = await (await api("POST", "/v1/apply", text, "application/yaml")).json();
    $("apply-out").textContent = answer.items.map((i) => `agent/${i.name} ${i.result}`).join("\n");
  } catch (e) {
    $("apply-out").textContent = e.message;
  }
  $("apply-go").disabled = true;
}

// --- wiring

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("key").value.trim()); });
  $("signout").addEventListener("click", signOut);
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    state.selector = $("selector").value.trim();
    state.phase = $("phase-filter").value;
    relist();
  });
  $("phase-filter").addEventListener("change", () => { state.phase = $("phase-filter").value; render(); });
  for (const b of document.querySelectorAll("th button[data-sort]")) {
    b.addEventListener("click", () => {
      const col = b.getAttribute("data-sort");
      state.sort = { col, dir: state.sort.col === col ? -state.sort.dir : 1 };
      render();
    });
  }
  $("detail-close").addEventListener("click", closeDetail);
  $("apply-dry").addEventListener("click", dryRun);
  $("apply-go").addEventListener("click", applyForReal);
  const saved = sessionStorage.getItem(KEY);
  if (saved) signIn(saved);
});
