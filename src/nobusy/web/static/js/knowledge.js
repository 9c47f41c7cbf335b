// The knowledge page: vector stores (create, delete, status), files uploaded by drag and drop
// or the picker with a progress bar each, a retrieval test with the matched words marked, and
// which model aliases answer from a store: the admin attaches or detaches it live, an API key
// gets the YAML that attaches it in the config file.
// It speaks the OpenAI Files and Vector Stores API, with the admin key when one is entered
// (it sees every store) and the API key otherwise (the stores that key may see).

import { ApiError, authHeaders, call, keys } from "./api.js";
import { t } from "./i18n.js";
import { copyText, flash } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 400;
const REFRESH_MS = 2000;
const names = new Map(); // file id -> filename, asked once per file

let shown = false;
let selected = null; // the store on screen (its id)
let stores = [];
let aliases = []; // [{id, routes, stores, topK}]: listAliases
let refresh = 0; // the timer that reloads while a store is indexing

const asAdmin = () => Boolean(keys.admin) || keys.signedIn; // the key, or a sign-in
const kbCall = (path, options = {}) => call(path, { ...options, admin: asAdmin() });

export function initKnowledge() {
  $("kb-create").addEventListener("submit", (event) => {
    event.preventDefault();
    createStore();
  });
  $("kb-delete").addEventListener("click", deleteStore);
  $("kb-pick").addEventListener("change", () => {
    uploadAll([...$("kb-pick").files]);
    $("kb-pick").value = "";
  });
  const drop = $("kb-drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    uploadAll([...(event.dataTransfer?.files ?? [])]);
  });
  $("kb-search").addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  $("kb-alias").addEventListener("change", () => {
    $("kb-attach-status").textContent = "";
    $("kb-attach-error").textContent = "";
    showAlias();
  });
  $("kb-attach").addEventListener("click", () => setAttached(true));
  $("kb-detach").addEventListener("click", () => setAttached(false));
  $("kb-yaml-copy").addEventListener("click", async () => {
    await copyText($("kb-yaml").textContent);
    flash($("kb-yaml-copy"));
  });
  document.addEventListener("nobusy:keys", () => shown && load());
}

/** Called on every navigation: load when the page is shown. */
export function showKnowledge(visible) {
  shown = visible;
  if (visible) load();
  else clearTimeout(refresh);
}

async function load() {
  try {
    const [list, found] = await Promise.all([kbCall("/v1/vector_stores?limit=100"), listAliases()]);
    stores = list.data;
    aliases = found;
    $("kb-auth").hidden = true;
    $("kb-body").hidden = false;
  } catch (error) {
    $("kb-auth").textContent = error.status === 401 ? t("kbNeedKey") : t("errorPrefix", { message: error.message });
    $("kb-auth").hidden = false;
    $("kb-body").hidden = true;
    return;
  }
  if (selected && !stores.some((s) => s.id === selected)) selected = null;
  selected ??= stores[0]?.id ?? null;
  renderStores();
  await renderDetail();
  // Files added elsewhere (the CLI, the SDK) are indexing: follow them until they are done.
  clearTimeout(refresh);
  if (shown && stores.some((s) => s.status === "in_progress")) refresh = setTimeout(load, REFRESH_MS);
}

/** [{id, routes, stores, topK}]: the admin's from the admin API (/v1/models wants an API key
 * once keys exist), an API key's from /v1/models; none when neither may list them. */
async function listAliases() {
  if (asAdmin()) {
    const listed = await call("/v1/nobusy/aliases", { admin: true }).catch(() => ({ data: [] }));
    return listed.data
      .filter((a) => a.enabled)
      .map((a) => aliasOf(a.name, a.routes.flat(), a.knowledge));
  }
  const models = await call("/v1/models").catch(() => ({ data: [] }));
  return models.data.map((m) => aliasOf(m.id, m.routes ?? [], m.nobusy?.knowledge));
}

function aliasOf(id, routes, knowledge) {
  return { id, routes, stores: knowledge?.stores ?? [], topK: knowledge?.top_k };
}

function renderStores() {
  const list = $("kb-list");
  list.replaceChildren();
  if (!stores.length) list.append(el("li", "hint", t("kbNone")));
  for (const store of stores) {
    const item = el("li", "kb-store");
    const open = el("button", "kb-open");
    open.type = "button";
    open.append(el("strong", "", store.name || store.id), el("span", "hint", storeLine(store)));
    if (isLocalOnly(store)) open.append(el("span", "pill", t("kbLocalPill")));
    if (store.id === selected) open.setAttribute("aria-current", "true");
    open.addEventListener("click", () => {
      selected = store.id;
      $("kb-attach-status").textContent = "";
      $("kb-attach-error").textContent = "";
      renderStores();
      renderDetail();
    });
    item.append(open);
    list.append(item);
  }
}

function storeLine(store) {
  const counts = store.file_counts;
  const status = t(store.status === "completed" ? "kbReady" : "kbIndexing");
  const failed = counts.failed ? ` · ${t("kbFailedCount", { n: counts.failed })}` : "";
  const files = t(counts.total === 1 ? "kbFileCountOne" : "kbFileCount", { n: counts.total });
  return `${status} · ${files}${failed}`;
}

function isLocalOnly(store) {
  return ["true", "1", "yes"].includes(String(store.metadata?.local_only ?? "").toLowerCase());
}

async function renderDetail() {
  const store = stores.find((s) => s.id === selected);
  $("kb-detail").hidden = !store;
  if (!store) return;
  $("kb-store-name").textContent = store.name || store.id;
  const facts = [
    store.id,
    t("kbModel", { model: store.nobusy?.embedding_model ?? "?" }),
    t("kbChunks", { n: store.nobusy?.chunks ?? 0 }),
    isLocalOnly(store) ? t("kbLocalPill") : t("kbRemoteOk"),
  ];
  $("kb-store-facts").textContent = facts.join(" · ");
  renderAliases(store);
  await renderFiles(store);
}

async function renderFiles(store) {
  const body = $("kb-files").tBodies[0];
  let files;
  try {
    files = (await kbCall(`/v1/vector_stores/${store.id}/files?limit=100`)).data;
  } catch (error) {
    body.replaceChildren(row([t("errorPrefix", { message: error.message })]));
    return;
  }
  await Promise.all(files.map((f) => filename(f.id)));
  if (store.id !== selected) return;
  body.replaceChildren();
  if (!files.length) body.append(row([t("kbNoFiles")]));
  for (const file of files) {
    const state = el("span", `file-${file.status}`, statusText(file));
    const cells = [names.get(file.id) ?? file.id, state, formatBytes(file.usage_bytes), removeButton(store, file)];
    const tr = row(cells);
    tr.cells[2].className = "num";
    if (file.last_error) {
      tr.cells[1].append(el("div", "last-error", file.last_error.message));
    }
    body.append(tr);
  }
}

function statusText(file) {
  const progress = file.nobusy?.progress;
  if (file.status === "in_progress" && progress) return t("kbEmbedding", progress);
  return t(`kbStatus_${file.status}`);
}

function removeButton(store, file) {
  const button = el("button", "ghost danger", t("kbRemove"));
  button.type = "button";
  button.setAttribute("aria-label", `${t("kbRemove")}: ${names.get(file.id) ?? file.id}`);
  button.addEventListener("click", async () => {
    if (!confirm(t("kbRemoveConfirm", { name: names.get(file.id) ?? file.id }))) return;
    // Out of this store only: the uploaded file may be in other stores too.
    await kbCall(`/v1/vector_stores/${store.id}/files/${file.id}`, { method: "DELETE" }).catch(() => {});
    await load();
  });
  return button;
}

async function filename(id) {
  if (names.has(id)) return;
  try {
    names.set(id, (await kbCall(`/v1/files/${id}`)).filename);
  } catch {
    names.set(id, id); // deleted or not ours to see: the id still says which one
  }
}

async function createStore() {
  const name = $("kb-name").value.trim();
  if (!name) return;
  const body = { name };
  if ($("kb-local").checked) body.metadata = { local_only: "true" };
  try {
    const store = await kbCall("/v1/vector_stores", { method: "POST", body });
    selected = store.id;
    $("kb-name").value = "";
    $("kb-local").checked = false;
    $("kb-create-error").textContent = "";
    await load();
  } catch (error) {
    $("kb-create-error").textContent = error.message;
  }
}

async function deleteStore() {
  const store = stores.find((s) => s.id === selected);
  if (!store || !confirm(t("kbDeleteConfirm", { name: store.name || store.id }))) return;
  await kbCall(`/v1/vector_stores/${store.id}`, { method: "DELETE" });
  selected = null;
  await load();
}

// ---- Uploads: one line per file, a bar for the upload and then for the indexing ----

function uploadAll(files) {
  const storeId = selected;
  if (!storeId) return;
  for (const file of files) upload(storeId, file);
}

async function upload(storeId, file) {
  const line = el("li", "kb-upload");
  const label = el("span", "kb-upload-name", file.name);
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = 0;
  bar.setAttribute("aria-label", file.name);
  const state = el("span", "kb-upload-state", t("kbUploading", { percent: 0 }));
  line.append(label, bar, state);
  $("kb-uploads").prepend(line);
  const fail = (message) => {
    line.classList.add("failed");
    bar.value = 100;
    state.textContent = t("kbFailed", { reason: message });
  };
  let uploaded;
  try {
    uploaded = await sendFile(file, (percent) => {
      bar.value = percent / 2; // the first half of the bar: bytes sent; the second: indexing
      state.textContent = t("kbUploading", { percent });
    });
    names.set(uploaded.id, uploaded.filename);
    await kbCall(`/v1/vector_stores/${storeId}/files`, { method: "POST", body: { file_id: uploaded.id } });
  } catch (error) {
    fail(error.message);
    return;
  }
  state.textContent = t("kbStatus_in_progress");
  if (storeId === selected) load();
  for (;;) {
    let placed;
    try {
      placed = await kbCall(`/v1/vector_stores/${storeId}/files/${uploaded.id}`);
    } catch (error) {
      fail(error.message);
      return;
    }
    const progress = placed.nobusy?.progress;
    if (progress?.total) bar.value = 50 + (50 * progress.done) / progress.total;
    if (placed.status === "completed") {
      bar.value = 100;
      line.classList.add("done");
      state.textContent = t("kbStatus_completed");
      break;
    }
    if (placed.status !== "in_progress") {
      fail(placed.last_error?.message ?? t(`kbStatus_${placed.status}`));
      break;
    }
    state.textContent = statusText(placed);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  if (shown) load();
}

// fetch() cannot report upload progress; XMLHttpRequest can.
function sendFile(file, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("purpose", "assistants");
    form.append("file", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/files");
    for (const [name, value] of Object.entries(authHeaders(asAdmin()))) request.setRequestHeader(name, value);
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(Math.round((100 * event.loaded) / event.total));
    });
    request.addEventListener("load", () => {
      let data = null;
      try {
        data = JSON.parse(request.responseText);
      } catch {
        // not JSON (a proxy's page): the status says enough
      }
      if (request.status >= 200 && request.status < 300) resolve(data);
      else reject(new ApiError(request.status, data));
    });
    request.addEventListener("error", () => reject(new Error(t("kbNetwork"))));
    request.send(form);
  });
}

// ---- Retrieval test ----

async function search() {
  const query = $("kb-query").value.trim();
  const storeId = selected;
  if (!query || !storeId) return;
  const k = Math.min(50, Math.max(1, Number($("kb-k").value) || 5));
  const results = $("kb-results");
  results.replaceChildren();
  $("kb-search-note").textContent = t("kbSearching");
  let page;
  try {
    page = await kbCall(`/v1/vector_stores/${storeId}/search`, {
      method: "POST",
      body: { query, max_num_results: k },
    });
  } catch (error) {
    $("kb-search-note").textContent = t("errorPrefix", { message: error.message });
    return;
  }
  const partial = page.nobusy?.vector_store_status === "in_progress" ? ` ${t("kbPartial")}` : "";
  $("kb-search-note").textContent = t("kbFound", { n: page.data.length }) + partial;
  const words = queryWords(query);
  for (const hit of page.data) {
    const item = el("li", "kb-hit");
    const head = el("div", "kb-hit-head");
    head.append(el("span", "pill kb-score", t("kbScore", { score: hit.score.toFixed(3) })), el("span", "hint", hit.filename));
    const text = el("p", "kb-hit-text");
    highlight(text, hit.content.map((c) => c.text).join("\n"), words);
    item.append(head, text);
    results.append(item);
  }
}

/** The query's words, as the browser segments them (Intl.Segmenter knows Chinese words). */
export function queryWords(query) {
  const words = new Set();
  const segmenter = new Intl.Segmenter(["zh", "en"], { granularity: "word" });
  for (const { segment, isWordLike } of segmenter.segment(query)) {
    if (!isWordLike) continue;
    // One Latin letter or digit marks noise; one Han character is a word only when alone.
    const han = /\p{Script=Han}/u.test(segment);
    if (segment.length >= 2 || (han && query.trim().length === 1)) words.add(segment.toLowerCase());
  }
  return [...words].sort((a, b) => b.length - a.length);
}

/** Fill `node` with `text`, every occurrence of `words` in a <mark> (no HTML is parsed). */
export function highlight(node, text, words) {
  node.replaceChildren();
  if (!words.length) {
    node.textContent = text;
    return;
  }
  const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const pattern = new RegExp(`(${escaped.join("|")})`, "giu");
  for (const [i, part] of text.split(pattern).entries()) {
    if (!part) continue;
    node.append(i % 2 ? el("mark", "", part) : document.createTextNode(part));
  }
}

// ---- Aliases: who answers from this store; the admin attaches or detaches it live ----
// (PATCH /v1/nobusy/aliases/{name}: the managed overlay, applied by a reload, audited), and an
// API key, which cannot edit aliases, gets the YAML that attaches it in the config file.

const TOP_K = 6; // AliasKnowledge.top_k's default, for an alias that had no stores yet

function renderAliases(store) {
  const using = aliases.filter((a) => a.stores.includes(store.id)).map((a) => a.id);
  $("kb-aliases").textContent = using.length ? t("kbUsedBy", { aliases: using.join(", ") }) : t("kbUnused");
  const admin = asAdmin();
  $("kb-attach-actions").hidden = !admin;
  $("kb-yaml-box").hidden = admin;
  const select = $("kb-alias");
  const before = select.value;
  select.replaceChildren();
  for (const alias of aliases) select.append(new Option(alias.id, alias.id));
  if (!admin) select.append(new Option(t("kbNewAlias"), "")); // a new alias: the Upstreams page's
  const fallback = aliases.find((a) => !using.includes(a.id))?.id ?? (admin ? (aliases[0]?.id ?? "") : "");
  select.value = aliases.some((a) => a.id === before) ? before : fallback;
  showAlias();
}

function showAlias() {
  const store = stores.find((s) => s.id === selected);
  if (!store) return;
  const alias = aliases.find((a) => a.id === $("kb-alias").value);
  const attached = Boolean(alias?.stores.includes(store.id));
  $("kb-attach").disabled = !alias || attached;
  $("kb-detach").disabled = !attached;
  showYaml(store, alias);
}

function showYaml(store, alias) {
  const name = alias?.id ?? "kb-bot";
  const routes = alias?.routes.length ? alias.routes : ["UPSTREAM/MODEL"];
  const attached = [...new Set([...(alias?.stores ?? []), store.id])];
  $("kb-yaml").textContent = [
    "models:",
    `  ${name}:`,
    `    routes: [${routes.join(", ")}]`,
    `    knowledge: {stores: [${attached.join(", ")}], top_k: ${alias?.topK ?? TOP_K}}`,
    "",
  ].join("\n");
}

/** Attach (`attach`) or detach the store on screen to the chosen alias, its other stores and
 * top_k kept; with no store left the alias loses `knowledge` (it needs at least one store). */
async function setAttached(attach) {
  const storeId = selected;
  const alias = aliases.find((a) => a.id === $("kb-alias").value);
  if (!storeId || !alias) return;
  const left = alias.stores.filter((s) => s !== storeId);
  const wanted = attach ? [...left, storeId] : left;
  const knowledge = wanted.length ? { stores: wanted, top_k: alias.topK ?? TOP_K } : null;
  const status = $("kb-attach-status");
  const error = $("kb-attach-error");
  status.textContent = t("kbApplying");
  error.textContent = "";
  $("kb-attach").disabled = $("kb-detach").disabled = true;
  try {
    const done = await call(`/v1/nobusy/aliases/${encodeURIComponent(alias.id)}`, {
      method: "PATCH",
      body: { knowledge },
      admin: true,
    });
    // null puts the config file's value back: the file may attach this store itself.
    if (!attach && done.after?.knowledge?.stores?.includes(storeId)) {
      status.textContent = "";
      error.textContent = t("kbStillAttached", { alias: alias.id });
    } else {
      status.textContent = t(attach ? "kbAttached" : "kbDetached", { alias: alias.id });
    }
  } catch (failure) {
    status.textContent = "";
    error.textContent = t("errorPrefix", { message: failure.message });
  }
  await load();
}

// ---- small DOM helpers ----

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell;
    tr.append(td);
  }
  if (cells.length === 1) tr.cells[0].colSpan = 4;
  return tr;
}

function formatBytes(bytes) {
  if (bytes == null) return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
