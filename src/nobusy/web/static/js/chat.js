// The chat view: conversations (kept in localStorage), the model picker, streaming answers,
// stop (button or Escape), regenerate (with any model, every answer kept and switchable),
// editing a sent message to re-run from there; options, files and shortcuts: chattools.js.

import { AnswerView, streamInto } from "./answer.js";
import { call } from "./api.js";
import {
  initAttachments,
  initShortcuts,
  intoStore,
  matches,
  readOptions,
  showOptions,
  storeAttachments,
  takeAttachments,
} from "./chattools.js";
import { t } from "./i18n.js";
import { handleCopyButtons } from "./markdown.js";
import * as store from "./store.js";
import { models } from "./models.js";
import { openSettings } from "./settings.js";

const $ = (id) => document.getElementById(id);
const TITLE_LENGTH = 40;

let current = null; // the conversation on screen (null: a new one, not saved yet)
let running = null; // AbortController of the answer being streamed

export function initChat() {
  const prompt = $("prompt");
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  prompt.addEventListener("keydown", (event) => {
    // isComposing: Enter also confirms a Chinese input method's candidate; never send then.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  initShortcuts({
    newChat: () => $("conv-new").click(),
    search: () => $("conv-search").focus(),
    stop: () => Boolean(running) && (stop(), true),
  });
  initAttachments();
  $("conv-search").addEventListener("input", renderList);
  for (const id of ["opt-system", "opt-temperature", "opt-top-p", "opt-max-tokens"]) {
    $(id).addEventListener("change", () => {
      if (!current) return; // a new conversation takes the panel's options when it starts
      Object.assign(current, readOptions());
      store.save(current);
    });
  }
  $("stop").addEventListener("click", stop);
  $("regenerate").addEventListener("click", regenerate);
  $("conv-new").addEventListener("click", () => {
    open(null);
    prompt.focus();
  });
  $("conv-export").addEventListener("click", exportMarkdown);
  $("model").addEventListener("change", () => {
    localStorage.setItem("nobusy.model", $("model").value);
    if (current) {
      current.model = $("model").value;
      store.save(current);
    }
  });
  handleCopyButtons($("messages"));
  document.addEventListener("nobusy:language", () => {
    renderList();
    if (!running) open(current?.id ?? null);
  });
  document.addEventListener("nobusy:models", fillModels);
  const latest = store.list()[0];
  open(latest ? latest.id : null);
}

function fillModels() {
  const select = $("model");
  const { ids, error } = models;
  select.replaceChildren();
  if (!ids.length) {
    select.append(new Option(error === 401 ? t("modelsNeedKey") : t("noModels"), ""));
    return;
  }
  for (const id of ids) select.append(new Option(id, id));
  const wanted = current?.model || localStorage.getItem("nobusy.model");
  select.value = ids.includes(wanted) ? wanted : ids[0];
}

/** Show conversation `id` (null for a fresh one). */
function open(id) {
  current = id ? store.get(id) : null;
  const messages = $("messages");
  messages.replaceChildren();
  for (const [index, message] of (current?.messages ?? []).entries()) {
    if (message.role === "user") showUser(message, index);
    else showAnswer(message);
  }
  if (current?.model && models.ids.includes(current.model)) $("model").value = current.model;
  showOptions(current);
  renderList();
  updateControls();
}

function showUser(message, index) {
  const article = document.createElement("article");
  article.className = "msg msg-user";
  article.setAttribute("aria-label", t("you"));
  const body = document.createElement("div");
  body.className = "msg-text";
  body.textContent = message.display ?? message.content; // as typed, never as HTML
  article.append(body);
  if (message.files?.length) {
    const files = document.createElement("p");
    files.className = "msg-files";
    const names = (stored) => message.files.filter((f) => Boolean(f.stored) === stored).map((f) => f.name).join(", ");
    files.textContent = [
      names(false) && `📎 ${names(false)}`,
      names(true) && `📚 ${t("storedFiles", { names: names(true) })}`,
    ].filter(Boolean).join(" · ");
    article.append(files);
  }
  // The edit button sits beside the message, not in it: the message reads as it was sent.
  const row = document.createElement("div");
  row.className = "msg-user-row";
  const edit = button(t("edit"), "ghost msg-edit", () => startEdit(article, index));
  edit.setAttribute("aria-label", t("editMessage"));
  row.append(edit, article);
  $("messages").append(row);
  article.scrollIntoView({ block: "end" });
}

/** An answer on screen; with several (regenerated) answers, a switcher between them. */
function showAnswer(message, before = null) {
  const view = new AnswerView($("messages"));
  if (before) before.replaceWith(view.root);
  view.show(message);
  const variants = message.variants ?? [];
  if (variants.length < 2) return view;
  const at = message.current ?? variants.length - 1;
  const switcher = document.createElement("span");
  switcher.className = "variants";
  switcher.setAttribute("role", "group");
  switcher.setAttribute("aria-label", t("answers"));
  const go = (step) => () => {
    if (running) return;
    const next = (at + step + variants.length) % variants.length;
    Object.assign(message, variants[next], { current: next });
    store.save(current);
    showAnswer(message, view.root);
  };
  const prev = button("‹", "icon", go(-1));
  prev.setAttribute("aria-label", t("previousAnswer"));
  const next = button("›", "icon", go(1));
  next.setAttribute("aria-label", t("nextAnswer"));
  const label = document.createElement("span");
  label.className = "variant-label";
  label.textContent = t("answerOf", { n: at + 1, total: variants.length, model: variants[at].meta?.model ?? "" });
  switcher.append(prev, label, next);
  view.footer.prepend(switcher);
  return view;
}

function startEdit(article, index) {
  if (running) return;
  const message = current.messages[index];
  const area = document.createElement("textarea");
  area.className = "msg-edit-text";
  area.value = message.display ?? message.content;
  area.setAttribute("aria-label", t("editMessage"));
  const save = button(t("saveAndRun"), "primary", () => {
    const text = area.value.trim();
    if (!text || running) return;
    // The files attached to the message go with it: the edit changes the words only.
    const attached = message.content.slice((message.display ?? message.content).length);
    current.messages = current.messages.slice(0, index);
    current.messages.push({ ...message, display: text, content: text + attached });
    store.save(current);
    open(current.id);
    answer();
  });
  const cancel = button(t("cancel"), "ghost", () => open(current.id));
  const actions = document.createElement("div");
  actions.className = "composer-actions";
  actions.append(save, cancel);
  article.replaceChildren(area, actions);
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      save.click();
    }
    if (event.key === "Escape") cancel.click();
  });
  area.focus();
}

async function send() {
  const prompt = $("prompt");
  const text = prompt.value.trim();
  if (!text || running) return;
  const model = $("model").value;
  if (!current) current = { ...store.create(model, text.slice(0, TITLE_LENGTH)), ...readOptions() };
  current.model = model;
  const message = { role: "user", content: text, display: text };
  if (intoStore()) {
    // The files go to the conversation's vector store; the server searches it for each answer.
    running = new AbortController();
    updateControls();
    const stored = await storeAttachments(current);
    running = null;
    if (stored.files.length) message.files = stored.files;
  } else {
    const attached = takeAttachments();
    if (attached.files.length) {
      message.content = `${text}\n\n${attached.text}`;
      message.files = attached.files;
    }
  }
  current.messages.push(message);
  store.save(current);
  prompt.value = "";
  showUser(message, current.messages.length - 1);
  renderList();
  await answer();
}

// The model picked now answers again; the earlier answers stay, one switch away.
async function regenerate() {
  if (running || !current?.messages.length) return;
  const previous = current.messages.at(-1).role === "assistant" ? current.messages.pop() : null;
  // The answer on screen goes too, kept or not (a failed one is shown but never stored).
  const last = $("messages").lastElementChild;
  if (last?.classList.contains("msg-assistant")) last.remove();
  await answer(previous);
}

async function answer(previous = null) {
  const conversation = current;
  running = new AbortController();
  updateControls();
  const view = new AnswerView($("messages"));
  view.root.scrollIntoView({ block: "end" });
  // Only role and content go back: reasoning is not part of the conversation for the model.
  const history = conversation.messages.map(({ role, content }) => ({ role, content }));
  if (conversation.system) history.unshift({ role: "system", content: conversation.system });
  const message = await streamInto(view, {
    model: $("model").value,
    messages: history,
    signal: running.signal,
    params: conversation.params ?? {},
    stores: conversation.stores ?? [],
  });
  running = null;
  const kept = message.content || message.reasoning;
  if (previous) {
    // Every answer to this message stays; the newest is shown (a failed one is not kept).
    const variants = previous.variants ?? [variant(previous)];
    if (kept) variants.push(variant(message));
    const shown = kept ? variants.length - 1 : (previous.current ?? variants.length - 1);
    const merged = { ...previous, ...variants[shown], variants, current: shown };
    conversation.messages.push(merged);
    store.save(conversation);
    if (conversation === current) showAnswer(merged, kept ? view.root : null);
  } else if (kept) {
    conversation.messages.push(message);
    store.save(conversation);
  }
  if (!kept && message.meta.status === 401) {
    view.addNote(t("needKey"));
    openSettings();
  }
  updateControls();
  if (conversation === current) $("prompt").focus();
}

function variant({ content, reasoning, meta }) {
  return { content, reasoning, meta };
}

function stop() {
  running?.abort();
}

function updateControls() {
  const busy = running !== null;
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("regenerate").hidden = busy || !current?.messages.length;
  $("chat-empty").hidden = Boolean(current?.messages.length) || busy;
  $("conv-export").disabled = !current?.messages.length;
}

function renderList() {
  const list = $("conv-list");
  list.replaceChildren();
  const query = $("conv-search").value.trim();
  for (const conversation of store.list()) {
    if (!matches(conversation, query)) continue;
    const item = document.createElement("li");
    const title = button(conversation.title || t("untitled"), "conv-open", () => {
      if (!running) open(conversation.id);
    });
    if (conversation.id === current?.id) title.setAttribute("aria-current", "true");
    const rename = button("✎", "icon", () => startRename(item, conversation));
    rename.setAttribute("aria-label", `${t("rename")}: ${conversation.title}`);
    rename.title = t("rename");
    const remove = button("✕", "icon", () => {
      if (running || !confirm(t("deleteConfirm", { title: conversation.title }))) return;
      store.remove(conversation.id);
      // Its own knowledge base goes with it (best effort: the files stay under /v1/files).
      for (const id of conversation.stores ?? []) call(`/v1/vector_stores/${id}`, { method: "DELETE" }).catch(() => {});
      open(current?.id === conversation.id ? null : current?.id ?? null);
    });
    remove.setAttribute("aria-label", `${t("delete")}: ${conversation.title}`);
    remove.title = t("delete");
    item.append(title, rename, remove);
    list.append(item);
  }
}

function startRename(item, conversation) {
  const input = document.createElement("input");
  input.value = conversation.title;
  input.className = "conv-rename";
  input.setAttribute("aria-label", t("renameTo", { title: conversation.title }));
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (keep && title) {
      const saved = store.get(conversation.id);
      saved.title = title;
      store.save(saved);
      if (current?.id === saved.id) current.title = title;
    }
    renderList();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") {
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

function exportMarkdown() {
  if (!current) return;
  const text = store.toMarkdown(current, {
    you: t("you"),
    assistant: t("assistant"),
    reasoning: t("reasoning"),
  });
  const url = URL.createObjectURL(new Blob([text], { type: "text/markdown" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = `${current.title.replace(/[\\/:*?"<>|]+/g, "_").slice(0, 60) || "chat"}.md`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function button(text, className, onClick) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = className;
  node.textContent = text;
  node.addEventListener("click", onClick);
  return node;
}
