// reduct-appliance web console: a plain-JavaScript client of the server's public HTTP API.
// Nothing is loaded from elsewhere; the API token lives in sessionStorage (this tab only).
"use strict";

const BASE = location.pathname.replace(/ui(\/.*)?$/, "");
const API = BASE + "api/v1";
const TOKEN_KEY = "reduct-console-token";
const DISABLED = "AUTHENTICATION-DISABLED";
const MAX_RECORDS = 500; // records listed per search (a `$limit` in the query)
const PREVIEW_BYTES = 1024 * 1024;

const state = { me: null, info: null };

// --- small helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// Sizes as the server's settings write them: exact units when they fit (10MB, 16MiB), else
// one decimal in powers of 10, like ReductStore's own console.
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const v = Number(n);
  const exact = [["TB", 1e12], ["TiB", 1024 ** 4], ["GB", 1e9], ["GiB", 1024 ** 3], ["MB", 1e6],
    ["MiB", 1024 ** 2], ["KB", 1e3], ["KiB", 1024]];
  for (const [unit, f] of exact) if (v >= f && v % f === 0) return `${v / f} ${unit}`;
  for (const [unit, f] of [["TB", 1e12], ["GB", 1e9], ["MB", 1e6], ["KB", 1e3]]) {
    if (v >= f) return `${(v / f).toFixed(1)} ${unit}`;
  }
  return `${v} B`;
}

function parseSize(text) {
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$/.exec(text || "");
  if (!m) throw new Error(`not a size: ${text}`);
  const units = { "": 1, b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
    kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4 };
  const factor = units[m[2].toLowerCase()];
  if (factor === undefined) throw new Error(`unknown unit ${m[2]}`);
  return Math.round(Number(m[1]) * factor);
}

function fmtTs(us) {
  if (us === null || us === undefined || us === 0 || us >= 2 ** 63) return "–";
  const ms = Math.floor(Number(us) / 1000);
  const micros = String(Number(us) % 1000).padStart(3, "0");
  return new Date(ms).toISOString().replace("Z", micros + "Z");
}

function fmtDuration(s) {
  s = Math.floor(Number(s) || 0);
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), mm = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hh}h ${mm}m`;
  if (hh) return `${hh}h ${mm}m`;
  return mm ? `${mm}m ${s % 60}s` : `${s}s`;
}

function toUs(localValue) {
  // <input type=datetime-local> is local time; the API wants µs since the epoch (UTC).
  return localValue ? Math.round(new Date(localValue).getTime()) * 1000 : null;
}

function stat(label, value, cls) {
  return h("div", { class: "card stat" }, h("div", { class: "label" }, label),
    h("div", { class: "value " + (cls || "") }, value));
}

function badge(text, cls) { return h("span", { class: "badge " + (cls || "") }, text); }

// --- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, { json, body, headers, raw } = {}) {
  const init = { method, headers: Object.assign({}, headers || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) init.headers.Authorization = "Bearer " + token;
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch (exc) {
    throw new ApiError(0, `the server did not answer (${exc.message})`);
  }
  if (!response.ok) {
    const reason = response.headers.get("x-reduct-error") || response.statusText || "request failed";
    throw new ApiError(response.status, `${response.status}: ${reason}`);
  }
  if (raw) return response;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// An endpoint another version of the server may not have: null instead of an error.
async function optional(path) {
  try {
    return await api("GET", path);
  } catch (exc) {
    if (exc.status === 404 || exc.status === 405 || exc.status === 501) return null;
    throw exc;
  }
}

// --- batch v1 header values: "<size>,<content type>[,k=v]*", values may be "quoted, with commas"

function parseRecordHeader(value) {
  const first = value.indexOf(",");
  const size = Number(value.slice(0, first));
  let rest = value.slice(first + 1);
  const second = rest.indexOf(",");
  const contentType = (second < 0 ? rest : rest.slice(0, second)).trim() || "application/octet-stream";
  rest = second < 0 ? "" : rest.slice(second + 1);
  const labels = {};
  while (rest.length) {
    const eq = rest.indexOf("=");
    if (eq < 0) break;
    const key = rest.slice(0, eq).trim();
    rest = rest.slice(eq + 1).trimStart();
    let val;
    if (rest.startsWith('"')) {
      const end = rest.indexOf('"', 1);
      val = rest.slice(1, end < 0 ? undefined : end);
      rest = end < 0 ? "" : rest.slice(end + 1);
      const comma = rest.indexOf(",");
      rest = comma < 0 ? "" : rest.slice(comma + 1);
    } else {
      const comma = rest.indexOf(",");
      val = (comma < 0 ? rest : rest.slice(0, comma)).trim();
      rest = comma < 0 ? "" : rest.slice(comma + 1);
    }
    labels[key] = val;
  }
  return { size, contentType, labels };
}

// --- dialogs ------------------------------------------------------------------------------------

// Show a dialog; `onOk` may throw to keep it open with the message shown.
function dialog(title, body, { ok = "OK", danger = false, onOk, canOk } = {}) {
  const dlg = $("dialog");
  $("dialog-title").textContent = title;
  $("dialog-body").replaceChildren(...[].concat(body));
  $("dialog-error").textContent = "";
  const okButton = $("dialog-ok");
  okButton.textContent = ok;
  okButton.className = danger ? "danger" : "primary";
  okButton.hidden = ok === null;
  const refresh = () => { okButton.disabled = canOk ? !canOk() : false; };
  dlg.oninput = refresh;
  refresh();
  return new Promise((resolve) => {
    okButton.onclick = async (event) => {
      event.preventDefault();
      if (!onOk) { dlg.close(); resolve(true); return; }
      okButton.disabled = true;
      try {
        await onOk();
        dlg.close();
        resolve(true);
      } catch (exc) {
        $("dialog-error").textContent = exc.message;
        refresh();
      }
    };
    $("dialog-cancel").onclick = () => { dlg.close(); resolve(false); };
    dlg.showModal();
  });
}

function typedConfirm(what, name, action) {
  const input = h("input", { id: "confirm-name", autocomplete: "off" });
  return dialog(`Remove ${what} ${name}?`, [
    h("p", {}, `This removes ${what} `, h("b", {}, name), " and everything in it. It cannot be undone."),
    h("label", {}, `Type ${name} to confirm`, input),
  ], { ok: "Remove", danger: true, canOk: () => input.value === name, onOk: action });
}

function field(label, attrs) {
  return h("label", {}, label, h("input", attrs));
}

// --- views --------------------------------------------------------------------------------------

async function viewDashboard(main) {
  const info = await api("GET", "/info");
  state.info = info;
  $("instance").textContent = `${info.instance_name} · ${info.version}`;
  const role = info.role || {};
  const prov = info.provisioning || null;
  const storage = info.storage || null;
  const lease = [role.state || "–"];
  if (role.generation) lease.push(`generation ${role.generation}`);
  const roleCards = [
    stat("Role", info.instance_role || "STANDALONE"),
    stat("State", lease.join(", "), role.ready === false ? "warn" : "ok"),
  ];
  if (role.owner) roleCards.push(stat("Lease holder", role.owner));
  if (role.renewal_age_s !== null && role.renewal_age_s !== undefined) {
    roleCards.push(stat("Last renewal", `${role.renewal_age_s.toFixed(1)} s ago`));
  }
  if (role.detail) roleCards.push(stat("Detail", role.detail));
  let backend = "local folder";
  if (storage) {
    backend = !storage.backend || storage.backend === "folder" ? "local folder" : storage.backend;
    if (storage.unsynced_bytes !== undefined) backend += ` · ${fmtBytes(storage.unsynced_bytes)} unsynced`;
  }
  main.replaceChildren(
    h("h1", {}, "Dashboard"),
    h("div", { class: "grid" },
      stat("Instance", info.instance_name),
      stat("Version", info.version),
      stat("Uptime", fmtDuration(info.uptime)),
      stat("Usage", fmtBytes(info.usage)),
      stat("Buckets", info.bucket_count),
      stat("Oldest record", fmtTs(info.oldest_record)),
      stat("Latest record", fmtTs(info.latest_record)),
      stat("Storage", backend),
      ...roleCards),
    h("h2", {}, "Provisioning"),
    prov ? h("div", { class: "grid" },
      stat("Status", prov.ok ? "ok" : "problem", prov.ok ? "ok" : "error"),
      stat("Source", prov.source || "none"),
      stat("Last reload", prov.last_reload || "–"),
      stat("Last error", prov.last_error ? `${prov.last_error} (${prov.last_error_at || ""})` : "none",
        prov.last_error ? "error" : ""))
      : h("p", { class: "muted" }, "This server does not report provisioning."),
  );
}

async function bucketRows() {
  const list = (await api("GET", "/list")).buckets || [];
  const detailed = await Promise.all(list.slice(0, 100).map(async (b) => {
    try {
      const full = await api("GET", `/b/${enc(b.name)}`);
      const records = (full.entries || []).reduce((n, e) => n + (e.record_count || 0), 0);
      return Object.assign({}, b, { settings: full.settings, records });
    }
    catch (exc) { return b; }
  }));
  return detailed.concat(list.slice(100));
}

function quotaText(settings) {
  if (!settings) return "–";
  if (!settings.quota_type || settings.quota_type === "NONE") return "none";
  return `${settings.quota_type} ${fmtBytes(settings.quota_size)}`;
}

function bucketSettingsFields(current) {
  const s = current || {};
  const quota = h("select", { name: "quota_type" },
    ...["NONE", "FIFO", "HARD"].map((t) => h("option", { value: t, selected: s.quota_type === t }, t)));
  return [
    h("label", {}, "Quota type", quota),
    field("Quota size (e.g. 10GB)", { name: "quota_size", value: s.quota_size ? String(s.quota_size) : "" }),
    field("Max block size", { name: "max_block_size", value: s.max_block_size ? String(s.max_block_size) : "" }),
    field("Max block records", { name: "max_block_records", type: "number", min: "1",
      value: s.max_block_records ? String(s.max_block_records) : "" }),
  ];
}

function readBucketSettings(root) {
  const out = {};
  const get = (name) => root.querySelector(`[name=${name}]`).value.trim();
  out.quota_type = get("quota_type");
  if (get("quota_size")) out.quota_size = parseSize(get("quota_size"));
  if (get("max_block_size")) out.max_block_size = parseSize(get("max_block_size"));
  if (get("max_block_records")) out.max_block_records = Number(get("max_block_records"));
  return out;
}

async function viewBuckets(main) {
  const rows = await bucketRows();
  const nameInput = h("input", { id: "new-bucket-name", name: "name", required: true, autocomplete: "off",
    pattern: "[A-Za-z0-9_\\-]+", title: "letters, digits, _ and -" });
  const settings = h("div", { class: "inline" }, ...bucketSettingsFields({ quota_type: "NONE" }));
  const createForm = h("form", { class: "inline", id: "create-bucket", onsubmit: async (e) => {
    e.preventDefault();
    const error = createForm.querySelector(".error");
    try {
      await api("POST", `/b/${enc(nameInput.value.trim())}`, { json: readBucketSettings(createForm) });
      location.hash = `#/b/${enc(nameInput.value.trim())}`;
    } catch (exc) { error.textContent = exc.message; }
  } }, h("label", {}, "Name", nameInput), settings,
    h("button", { class: "primary", type: "submit", id: "create-bucket-button" }, "Create bucket"),
    h("p", { class: "error" }));
  const table = h("table", { id: "buckets" },
    h("thead", {}, h("tr", {}, ["Name", "Entries", "Records", "Size", "Oldest", "Latest", "Quota", ""].map(
      (t, i) => h("th", { class: i >= 1 && i <= 3 ? "num" : "" }, t)))),
    h("tbody", {}, rows.map((b) => h("tr", { "data-bucket": b.name },
      h("td", {}, h("a", { href: `#/b/${enc(b.name)}` }, b.name), b.is_provisioned ? badge("provisioned", "prov") : null),
      h("td", { class: "num" }, b.entry_count),
      h("td", { class: "num" }, b.records ?? "–"),
      h("td", { class: "num" }, fmtBytes(b.size)),
      h("td", {}, fmtTs(b.oldest_record)),
      h("td", {}, fmtTs(b.latest_record)),
      h("td", {}, quotaText(b.settings)),
      h("td", { class: "actions" }, b.is_provisioned ? h("span", { class: "muted" }, "read-only")
        : h("button", { class: "danger", "data-remove": b.name, onclick: () => removeBucket(b.name) }, "Remove"))))));
  main.replaceChildren(h("h1", {}, "Buckets"),
    rows.length ? table : h("p", { class: "muted" }, "No buckets yet."),
    h("h2", {}, "New bucket"), h("div", { class: "card" }, createForm));
}

async function removeBucket(name) {
  const done = await typedConfirm("bucket", name, () => api("DELETE", `/b/${enc(name)}`));
  if (done) { location.hash = "#/buckets"; route(); }
}

async function viewBucket(main, bucket) {
  const data = await api("GET", `/b/${enc(bucket)}`);
  const info = data.info || {};
  const provisioned = !!info.is_provisioned;
  const settingsBox = h("div", { class: "inline" }, ...bucketSettingsFields(data.settings));
  const form = h("form", { class: "inline", id: "bucket-settings", onsubmit: async (e) => {
    e.preventDefault();
    const msg = form.querySelector(".msg");
    try {
      await api("PUT", `/b/${enc(bucket)}`, { json: readBucketSettings(form) });
      msg.className = "msg ok"; msg.textContent = "saved";
    } catch (exc) { msg.className = "msg error"; msg.textContent = exc.message; }
  } }, settingsBox,
    provisioned ? null : h("button", { type: "submit", class: "primary" }, "Save settings"),
    provisioned ? null : h("button", { type: "button", class: "danger", onclick: () => removeBucket(bucket) }, "Remove bucket"),
    h("span", { class: "msg" }));
  if (provisioned) form.querySelectorAll("input, select").forEach((el) => { el.disabled = true; });
  const entries = data.entries || [];
  main.replaceChildren(
    h("div", { class: "crumbs" }, h("a", { href: "#/buckets" }, "Buckets"), " / ", bucket),
    h("h1", {}, bucket, provisioned ? badge("provisioned: read-only", "prov") : null),
    h("div", { class: "grid" }, stat("Size", fmtBytes(info.size)), stat("Entries", info.entry_count),
      stat("Oldest", fmtTs(info.oldest_record)), stat("Latest", fmtTs(info.latest_record))),
    h("h2", {}, "Settings"), h("div", { class: "card" }, form),
    h("h2", {}, "Entries"),
    entries.length ? h("table", { id: "entries" },
      h("thead", {}, h("tr", {}, ["Entry", "Records", "Blocks", "Size", "Oldest", "Latest"].map((t) => h("th", {}, t)))),
      h("tbody", {}, entries.map((e) => h("tr", { "data-entry": e.name },
        h("td", {}, h("a", { href: `#/b/${enc(bucket)}/e/${enc(e.name)}` }, e.name)),
        h("td", { class: "num" }, e.record_count), h("td", { class: "num" }, e.block_count),
        h("td", { class: "num" }, fmtBytes(e.size)), h("td", {}, fmtTs(e.oldest_record)),
        h("td", {}, fmtTs(e.latest_record))))))
      : h("p", { class: "muted" }, "No entries yet."));
}

async function listRecords(bucket, entry, start, stop) {
  const query = { query_type: "QUERY", only_metadata: true, ttl: 60, when: { $limit: MAX_RECORDS } };
  if (start !== null) query.start = start;
  if (stop !== null) query.stop = stop;
  const { id } = await api("POST", `/b/${enc(bucket)}/${entry.split("/").map(enc).join("/")}/q`, { json: query });
  const records = [];
  for (let round = 0; round < 100 && records.length < MAX_RECORDS; round++) {
    const response = await api("GET", `/b/${enc(bucket)}/${entryPath(entry)}/batch?q=${id}`, { raw: true });
    if (response.status === 204) break;
    response.headers.forEach((value, name) => {
      if (name.startsWith("x-reduct-time-")) {
        records.push(Object.assign({ ts: name.slice("x-reduct-time-".length) }, parseRecordHeader(value)));
      }
    });
    if (response.headers.get("x-reduct-last") === "true") break;
  }
  records.sort((a, b) => (BigInt(a.ts) < BigInt(b.ts) ? -1 : 1));
  return records;
}

function entryPath(entry) { return entry.split("/").map(enc).join("/"); }

async function fetchRecord(bucket, entry, ts) {
  const response = await api("GET", `/b/${enc(bucket)}/${entryPath(entry)}?ts=${ts}`, { raw: true });
  return { blob: await response.blob(), contentType: response.headers.get("content-type") || "" };
}

const EXTENSIONS = { "application/json": "json", "text/plain": "txt", "text/csv": "csv",
  "image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp", "image/svg+xml": "svg" };

async function downloadRecord(bucket, entry, record) {
  const { blob, contentType } = await fetchRecord(bucket, entry, record.ts);
  const ext = EXTENSIONS[contentType.split(";")[0].trim()] || "bin";
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: `${bucket}-${entry.replaceAll("/", "_")}-${record.ts}.${ext}` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function previewable(contentType) {
  const ct = contentType.split(";")[0].trim();
  if (ct.startsWith("image/") && ct !== "image/svg+xml") return "image";
  if (ct.startsWith("text/") || ct === "application/json" || ct.endsWith("+json") || ct.endsWith("xml")) return "text";
  return null;
}

async function previewRecord(bucket, entry, record, box) {
  const kind = previewable(record.contentType);
  if (!kind) { box.replaceChildren(h("p", { class: "muted" }, `No preview for ${record.contentType}.`)); return; }
  if (record.size > PREVIEW_BYTES) { box.replaceChildren(h("p", { class: "muted" }, "Too large to preview; download it.")); return; }
  const { blob } = await fetchRecord(bucket, entry, record.ts);
  if (kind === "image") {
    box.replaceChildren(h("img", { class: "preview", src: URL.createObjectURL(blob), alt: `record ${record.ts}` }));
    return;
  }
  let text = await blob.text();
  if (record.contentType.includes("json")) {
    try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (exc) { /* shown as stored */ }
  }
  box.replaceChildren(h("pre", { class: "preview", id: "preview-text" }, text));
}

async function viewEntry(main, bucket, entry, params) {
  const start = h("input", { type: "datetime-local", step: "1", name: "start", value: params.get("start") || "" });
  const stop = h("input", { type: "datetime-local", step: "1", name: "stop", value: params.get("stop") || "" });
  const results = h("div", { id: "records-box" });
  const preview = h("div", { id: "preview", class: "card", hidden: true });
  const search = async () => {
    results.replaceChildren(h("p", { class: "muted" }, "Searching…"));
    try {
      const records = await listRecords(bucket, entry, toUs(start.value), toUs(stop.value));
      if (!records.length) { results.replaceChildren(h("p", { class: "muted" }, "No records in this range.")); return; }
      results.replaceChildren(
        h("p", { class: "muted" }, records.length >= MAX_RECORDS ? `First ${MAX_RECORDS} records.` : `${records.length} record(s).`),
        h("table", { id: "records" },
          h("thead", {}, h("tr", {}, ["Timestamp (µs)", "Time (UTC)", "Size", "Content type", "Labels", ""].map((t) => h("th", {}, t)))),
          h("tbody", {}, records.map((r) => h("tr", { "data-ts": r.ts },
            h("td", {}, r.ts), h("td", {}, fmtTs(Number(r.ts))),
            h("td", { class: "num" }, fmtBytes(r.size)), h("td", {}, r.contentType),
            h("td", { class: "labels" }, Object.entries(r.labels).map(([k, v]) => h("code", {}, `${k}=${v}`))),
            h("td", { class: "actions" },
              h("button", { "data-download": r.ts, onclick: () => downloadRecord(bucket, entry, r).catch(showError) }, "Download"),
              previewable(r.contentType) ? h("button", { "data-preview": r.ts, onclick: () => {
                preview.hidden = false;
                previewRecord(bucket, entry, r, preview).catch(showError);
              } }, "Preview") : null))))));
    } catch (exc) { results.replaceChildren(h("p", { class: "error" }, exc.message)); }
  };
  main.replaceChildren(
    h("div", { class: "crumbs" }, h("a", { href: "#/buckets" }, "Buckets"), " / ",
      h("a", { href: `#/b/${enc(bucket)}` }, bucket), " / ", entry),
    h("h1", {}, entry),
    h("div", { class: "card" }, h("form", { class: "inline", id: "range", onsubmit: (e) => { e.preventDefault(); search(); } },
      h("label", {}, "From (local time)", start), h("label", {}, "To (local time)", stop),
      h("button", { class: "primary", type: "submit" }, "Show records"))),
    results, preview);
  await search();
}

async function viewTokens(main) {
  if (state.me && state.me.name === DISABLED) {
    main.replaceChildren(h("h1", {}, "Tokens"), h("p", { class: "muted" },
      "Authentication is disabled on this server (RS_DISABLE_AUTH=true): there are no tokens."));
    return;
  }
  const tokens = (await api("GET", "/tokens")).tokens || [];
  const detailed = await Promise.all(tokens.map(async (t) => {
    if (t.permissions) return t;
    try { return await api("GET", `/tokens/${enc(t.name)}`); } catch (exc) { return t; }
  }));
  const perms = (p) => {
    if (!p) return "–";
    if (p.full_access) return "full access";
    const parts = [];
    if (p.read && p.read.length) parts.push("read: " + p.read.join(", "));
    if (p.write && p.write.length) parts.push("write: " + p.write.join(", "));
    return parts.join("; ") || "none";
  };
  const name = h("input", { name: "name", id: "new-token-name", required: true, autocomplete: "off" });
  const full = h("input", { type: "checkbox", name: "full_access" });
  const read = h("input", { name: "read", placeholder: "bucket-a, sensor-*" });
  const write = h("input", { name: "write", placeholder: "bucket-a" });
  const list = (input) => input.value.split(",").map((s) => s.trim()).filter(Boolean);
  const form = h("form", { class: "inline", id: "create-token", onsubmit: async (e) => {
    e.preventDefault();
    const error = form.querySelector(".error");
    try {
      const created = await api("POST", `/tokens/${enc(name.value.trim())}`,
        { json: { full_access: full.checked, read: list(read), write: list(write) } });
      await dialog(`Token ${name.value.trim()} created`, [
        h("p", {}, "Copy the value now: it is shown only this once and cannot be read back."),
        h("div", { class: "secret", id: "token-value" }, created.value)], { ok: "I have saved it" });
      route();
    } catch (exc) { error.textContent = exc.message; }
  } }, h("label", {}, "Name", name), h("label", {}, "Full access", full),
    h("label", {}, "Read buckets", read), h("label", {}, "Write buckets", write),
    h("button", { class: "primary", type: "submit" }, "Create token"), h("p", { class: "error" }));
  main.replaceChildren(h("h1", {}, "Tokens"),
    h("table", { id: "tokens" },
      h("thead", {}, h("tr", {}, ["Name", "Permissions", "Created", "Last access", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, detailed.map((t) => h("tr", { "data-token": t.name },
        h("td", {}, t.name, t.is_provisioned ? badge("provisioned", "prov") : null, t.is_expired ? badge("expired") : null),
        h("td", {}, perms(t.permissions)), h("td", {}, t.created_at || "–"), h("td", {}, t.last_access || "–"),
        h("td", {}, t.is_provisioned ? h("span", { class: "muted" }, "read-only") : h("button", { class: "danger", onclick: async () => {
          const done = await dialog(`Remove token ${t.name}?`, h("p", {}, "Clients using it will be refused at once."),
            { ok: "Remove", danger: true, onOk: () => api("DELETE", `/tokens/${enc(t.name)}`) });
          if (done) route();
        } }, "Remove")))))),
    h("h2", {}, "New token"), h("div", { class: "card" }, form));
}

function replicationForm(current) {
  const s = current || {};
  const f = (label, name, value, attrs) => field(label, Object.assign({ name, value: value || "" }, attrs || {}));
  const mode = h("select", { name: "mode" }, ...["enabled", "paused", "disabled"].map(
    (m) => h("option", { value: m, selected: (s.mode || "enabled") === m }, m)));
  return h("div", { class: "inline" },
    f("Source bucket", "src_bucket", s.src_bucket, { required: true }),
    f("Destination URL", "dst_host", s.dst_host, { required: true, placeholder: "https://other:8383" }),
    f("Destination bucket", "dst_bucket", s.dst_bucket, { required: true }),
    f("Destination token", "dst_token", "", { type: "password", placeholder: current ? "(unchanged)" : "" }),
    f("Entries (comma list, empty: all)", "entries", (s.entries || []).join(", ")),
    h("label", {}, "Mode", mode));
}

function readReplicationForm(root) {
  const get = (name) => root.querySelector(`[name=${name}]`).value.trim();
  const out = { src_bucket: get("src_bucket"), dst_bucket: get("dst_bucket"), dst_host: get("dst_host"),
    entries: get("entries").split(",").map((s) => s.trim()).filter(Boolean), mode: get("mode") };
  out.dst_token = get("dst_token") || null;
  return out;
}

async function viewReplications(main) {
  const data = await optional("/replications");
  if (data === null) {
    main.replaceChildren(h("h1", {}, "Replication"), h("p", { class: "muted", id: "replications-absent" },
      "Replication is not available on this server."));
    return;
  }
  const tasks = data.replications || [];
  const details = await Promise.all(tasks.map((t) => optional(`/replications/${enc(t.name)}`).catch(() => null)));
  const nameInput = h("input", { name: "name", required: true, autocomplete: "off" });
  const fields = replicationForm(null);
  const form = h("form", { class: "inline", id: "create-replication", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await api("POST", `/replications/${enc(nameInput.value.trim())}`, { json: readReplicationForm(form) });
      route();
    } catch (exc) { form.querySelector(".error").textContent = exc.message; }
  } }, h("label", {}, "Name", nameInput), fields, h("button", { class: "primary", type: "submit" }, "Create task"),
    h("p", { class: "error" }));
  const rows = tasks.map((t, i) => {
    const d = details[i] || {};
    const hourly = (d.diagnostics && d.diagnostics.hourly) || null;
    const errors = hourly && hourly.errors ? Object.entries(hourly.errors).map(
      ([code, e]) => h("div", { class: "error" }, `${code}: ${e.count}× ${e.last_message}`)) : [];
    const mode = t.mode || (d.settings && d.settings.mode) || "enabled";
    const setMode = (m) => api("PATCH", `/replications/${enc(t.name)}/mode`, { json: { mode: m } }).then(route, showError);
    const s = d.settings || {};
    return h("tr", { "data-replication": t.name },
      h("td", {}, t.name, t.is_provisioned ? badge("provisioned", "prov") : null),
      h("td", { class: "route" }, s.src_bucket ? `${s.src_bucket} → ${s.dst_host} ${s.dst_bucket}` : "–"),
      h("td", {}, mode, t.is_active ? badge("active") : badge("inactive")),
      h("td", { class: "num" }, t.pending_records ?? "–"),
      h("td", {}, hourly ? `${hourly.ok} ok, ${hourly.errored} errored` : "–", errors),
      h("td", { class: "actions" },
        mode === "enabled" ? h("button", { onclick: () => setMode("paused") }, "Pause") : h("button", { onclick: () => setMode("enabled") }, "Resume"),
        t.is_provisioned ? null : h("button", { onclick: () => editReplication(t.name, d.settings) }, "Edit"),
        t.is_provisioned ? null : h("button", { class: "danger", onclick: async () => {
          const done = await dialog(`Remove replication ${t.name}?`, h("p", {}, "Records already sent stay at the destination."),
            { ok: "Remove", danger: true, onOk: () => api("DELETE", `/replications/${enc(t.name)}`) });
          if (done) route();
        } }, "Remove")));
  });
  main.replaceChildren(h("h1", {}, "Replication"),
    tasks.length ? h("table", { id: "replications" },
      h("thead", {}, h("tr", {}, ["Task", "Source → destination", "Mode", "Pending records", "Last hour (extrapolated)", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)) : h("p", { class: "muted", id: "replications-empty" }, "No replication tasks."),
    h("h2", {}, "New task"), h("div", { class: "card" }, form));
}

async function editReplication(name, settings) {
  const fields = replicationForm(settings);
  const done = await dialog(`Edit replication ${name}`, fields, { ok: "Save", onOk: () =>
    api("PUT", `/replications/${enc(name)}`, { json: readReplicationForm(fields) }) });
  if (done) route();
}

async function viewBackups(main) {
  const data = await optional("/backups").catch((exc) => ({ error: exc.message }));
  if (data === null) {
    main.replaceChildren(h("h1", {}, "Backups"), h("p", { class: "muted", id: "backups-absent" },
      "Backups are not available on this server."));
    return;
  }
  const result = h("div", { id: "backup-result" });
  const create = h("button", { class: "primary", id: "create-backup", onclick: async () => {
    create.disabled = true;
    result.replaceChildren(h("p", { class: "muted" }, "Backing up…"));
    try {
      const made = await api("POST", "/backups", { json: {} });
      result.replaceChildren(h("p", { class: "ok" }, `Backup ${made.id || ""} made: ${fmtBytes(made.bytes)}.`));
      setTimeout(route, 1500);
    } catch (exc) { result.replaceChildren(h("p", { class: "error" }, exc.message)); }
    create.disabled = false;
  } }, "Back up now");
  const backups = data.backups || [];
  const info = await api("GET", "/info").catch(() => null);  // fresh: the target may have changed
  const target = info && info.backup ? info.backup.target : null;
  // replaceChildren would print a null as "null": the optional parts go through h()
  main.replaceChildren(h("h1", {}, "Backups"),
    h("p", { class: "muted", id: "backup-target" }, target ? `Target: ${target}` : "No RS_BACKUP_TARGET set on the server."),
    h("div", {}, data.error ? h("p", { class: "error" }, data.error) : null),
    h("div", { class: "actions" }, create), result,
    backups.length ? h("table", { id: "backups" },
      h("thead", {}, h("tr", {}, ["Backup", "Time", "Complete", "Size", "New", "Buckets", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, backups.map((b) => h("tr", { "data-backup": b.id },
        h("td", {}, b.id), h("td", {}, b.time || "–"),
        h("td", {}, b.complete ? "yes" : h("span", { class: "error" }, b.problem || "no")),
        h("td", { class: "num" }, fmtBytes(b.bytes)), h("td", { class: "num" }, fmtBytes(b.new_bytes)),
        h("td", {}, b.buckets ? b.buckets.join(", ") : "all"),
        h("td", { class: "actions" },
          h("button", { onclick: async () => {
            result.replaceChildren(h("p", { class: "muted" }, `Verifying ${b.id}…`));
            try {
              const r = await api("POST", `/backups/${enc(b.id)}/verify`);
              result.replaceChildren(h("div", { class: r.ok ? "ok" : "error" },
                `${b.id}: ${r.ok ? "sound" : "DAMAGED"}: ${r.files} files, ${r.records} records checked`,
                ...(r.problems || []).map((p) => h("div", {}, p))));
            } catch (exc) { result.replaceChildren(h("p", { class: "error" }, exc.message)); }
          } }, "Verify"),
          h("button", { class: "danger", onclick: async () => {
            const done = await dialog(`Delete backup ${b.id}?`, h("p", {}, "Other backups keep the files they share with it."),
              { ok: "Delete", danger: true, onOk: () => api("DELETE", `/backups/${enc(b.id)}`) });
            if (done) route();
          } }, "Delete"))))))
      : h("p", { class: "muted", id: "backups-empty" }, data.error ? "" : "No backups yet."));
}

// --- routing and sign-in ------------------------------------------------------------------------

function showError(exc) {
  if (exc instanceof ApiError && exc.status === 401) { signOut(exc.message); return; }
  $("main").append(h("p", { class: "error" }, exc.message));
}

async function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = (path || "/").split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  const main = $("main");
  let view = "dashboard";
  let run = () => viewDashboard(main);
  if (parts[0] === "buckets") { view = "buckets"; run = () => viewBuckets(main); }
  else if (parts[0] === "b" && parts.length >= 4 && parts[2] === "e") {
    view = "buckets"; run = () => viewEntry(main, parts[1], parts.slice(3).join("/"), params);
  } else if (parts[0] === "b" && parts[1]) { view = "buckets"; run = () => viewBucket(main, parts[1]); }
  else if (parts[0] === "tokens") { view = "tokens"; run = () => viewTokens(main); }
  else if (parts[0] === "replications") { view = "replications"; run = () => viewReplications(main); }
  else if (parts[0] === "backups") { view = "backups"; run = () => viewBackups(main); }
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === view));
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try { await run(); } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) { signOut(exc.message); return; }
    main.replaceChildren(h("p", { class: "error", id: "view-error" }, exc.message));
  }
}

function showSignIn(message) {
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("token").focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  showSignIn(message);
}

async function start() {
  try {
    state.me = await api("GET", "/me");
  } catch (exc) {
    if (exc.status === 401) {
      const had = sessionStorage.getItem(TOKEN_KEY);
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(had ? exc.message : "");
      return;
    }
    $("sign-in").hidden = true;
    $("app").hidden = false;
    $("main").replaceChildren(h("p", { class: "error" }, `${exc.message} (retrying)`));
    setTimeout(start, 2000);
    return;
  }
  $("sign-in").hidden = true;
  $("app").hidden = false;
  const disabled = state.me.name === DISABLED;
  $("who").textContent = disabled ? "authentication off" : `token: ${state.me.name}`;
  $("sign-out").hidden = disabled;
  try {
    const info = await api("GET", "/info");
    $("instance").textContent = `${info.instance_name} · ${info.version}`;
  } catch (exc) { /* the dashboard shows it */ }
  route();
}

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  start();
});
$("sign-out").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", () => { if (!$("app").hidden) route(); });
start();
