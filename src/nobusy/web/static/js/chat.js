// The chat view: conversations (kept in localStorage), the model picker, streaming answers,
// stop (button or Escape) and regenerate.

import { AnswerView, streamInto } from "./answer.js";
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
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && running) stop();
  });
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
  for (const message of current?.messages ?? []) {
    if (message.role === "user") showUser(message.content);
    else new AnswerView(messages).show(message);
  }
  if (current?.model && models.ids.includes(current.model)) $("model").value = current.model;
  renderList();
  updateControls();
}

function showUser(text) {
  const article = document.createElement("article");
  article.className = "msg msg-user";
  article.setAttribute("aria-label", t("you"));
  const body = document.createElement("div");
  body.className = "msg-text";
  body.textContent = text; // the user's own text is shown as typed, never as HTML
  article.append(body);
  $("messages").append(article);
  article.scrollIntoView({ block: "end" });
}

async function send() {
  const prompt = $("prompt");
  const text = prompt.value.trim();
  if (!text || running) return;
  const model = $("model").value;
  if (!current) current = store.create(model, text.slice(0, TITLE_LENGTH));
  current.model = model;
  current.messages.push({ role: "user", content: text });
  store.save(current);
  prompt.value = "";
  showUser(text);
  renderList();
  await answer();
}

async function regenerate() {
  if (running || !current?.messages.length) return;
  if (current.messages.at(-1).role === "assistant") current.messages.pop();
  // The answer on screen goes too, kept or not (a failed one is shown but never stored).
  const last = $("messages").lastElementChild;
  if (last?.classList.contains("msg-assistant")) last.remove();
  await answer();
}

async function answer() {
  const conversation = current;
  running = new AbortController();
  updateControls();
  const view = new AnswerView($("messages"));
  view.root.scrollIntoView({ block: "end" });
  // Only role and content go back: reasoning is not part of the conversation for the model.
  const history = conversation.messages.map(({ role, content }) => ({ role, content }));
  const message = await streamInto(view, {
    model: $("model").value,
    messages: history,
    signal: running.signal,
  });
  running = null;
  if (message.content || message.reasoning) {
    conversation.messages.push(message);
    store.save(conversation);
  } else if (message.meta.status === 401) {
    view.addNote(t("needKey"));
    openSettings();
  }
  updateControls();
  if (conversation === current) $("prompt").focus();
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
  for (const conversation of store.list()) {
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
