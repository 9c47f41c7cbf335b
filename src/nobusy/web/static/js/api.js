// Talking to nobusy: keys kept in browser storage, JSON calls, and streamed chat answers.
// Secrets only ever travel in the Authorization header: never in a URL, the page or a log.

import { createParser } from "../vendor/eventsource-parser/index.js";

// The API key lives in localStorage (entered once, kept); the admin key only in
// sessionStorage, because it can create and revoke keys: it goes when the tab closes.
export const keys = {
  get api() {
    return localStorage.getItem("nobusy.apiKey") || "";
  },
  set api(value) {
    store(localStorage, "nobusy.apiKey", value);
  },
  get admin() {
    return sessionStorage.getItem("nobusy.adminKey") || "";
  },
  set admin(value) {
    store(sessionStorage, "nobusy.adminKey", value);
  },
  // Whether this browser holds a console session (the cookie itself is HttpOnly): a hint for
  // pages that act as the admin or as a key (knowledge.js), kept by signin below.
  get signedIn() {
    return localStorage.getItem("nobusy.signedIn") === "1";
  },
  set signedIn(value) {
    store(localStorage, "nobusy.signedIn", value ? "1" : "");
  },
};

function store(storage, name, value) {
  if (value) storage.setItem(name, value);
  else storage.removeItem(name);
}

/** An error nobusy answered with, in OpenAI's shape. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = body?.error ?? {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code ?? null;
    this.type = error.type ?? null;
  }
}

function headers(admin, json) {
  const out = {};
  const secret = admin ? keys.admin : keys.api;
  if (secret) out.Authorization = `Bearer ${secret}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

/** The Authorization header alone (the admin key's when `admin`), for uploads and raw bodies. */
export function authHeaders(admin = false) {
  return headers(admin, false);
}

/** Call a JSON endpoint; `admin` sends the admin key instead of the API key. */
export async function call(path, { method = "GET", body, admin = false, signal } = {}) {
  const response = await fetch(path, {
    method,
    headers: headers(admin, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// nobusy's own SSE comments (see api/chat.py and routing/answer.py): what it is doing for the
// client. OpenAI SDKs ignore comments; the console shows them.
const NOTES = [
  [/^nobusy: queued, position (\d+), about (\d+)s$/, (m) => ({ kind: "queued", position: +m[1], eta: +m[2] })],
  [/^nobusy: answering from (.+)$/, (m) => ({ kind: "answering", upstream: m[1] })],
  [
    /^nobusy: (.+) failed mid-answer \((.*)\); continuing on (.+?)(?:: (.+))?$/,
    (m) => ({ kind: "failover", upstream: m[1], code: m[2], route: m[3], ...continuation(m[4]) }),
  ],
  [/^nobusy: reasoning restarted on (.+)$/, (m) => ({ kind: "reasoningRestarted", route: m[1] })],
];

// How the answer was continued, as the server worded it (continuation.Method.how): the
// console claims a seamless continuation only when the server checked the method.
const HOW = [
  [/^from the cut with (.+), checked on this upstream$/, "checked"],
  [/^with (.+) as configured, not checked/, "unchecked"],
  [/^asked in words/, "asked"],
  [/^restarting the answer/, "restarted"],
];

function continuation(how) {
  for (const [pattern, variant] of HOW) {
    const match = pattern.exec(how ?? "");
    if (match) return { variant, method: match[1] ?? "" };
  }
  return { variant: "", method: "" };
}

/** A nobusy SSE comment as a note object; null for others (keep-alives). */
export function parseNote(comment) {
  const text = comment.trim();
  if (!text.startsWith("nobusy:")) return null;
  for (const [pattern, build] of NOTES) {
    const match = pattern.exec(text);
    if (match) return build(match);
  }
  return { kind: "other", text: text.slice("nobusy:".length).trim() };
}

/**
 * Stream one chat completion. Calls `on.open({upstream})` when the headers arrive,
 * `on.delta({content, reasoning})` per chunk, `on.note(note)` per nobusy comment and
 * `on.usage(usage)` for the usage chunk; resolves when the stream ends, rejects with an
 * ApiError (including an error event inside the stream) or an AbortError. `params`
 * (temperature, top_p, max_tokens) go into the request; `on.citations(nobusy)` gets the final
 * chunk's `nobusy.citations` of an alias that answers from a knowledge base, or of the
 * conversation's `stores` (sent in `x-nobusy-knowledge`).
 */
export async function streamChat({ model, messages, signal, params = {}, stores = [] }, on) {
  // A conversation's own knowledge base: searched by the server for every answer in it.
  const knowledge = stores.length ? { "x-nobusy-knowledge": stores.join(",") } : {};
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { ...headers(false, true), ...knowledge },
    body: JSON.stringify({ ...params, model, messages, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) {
    throw new ApiError(response.status, await response.json().catch(() => null));
  }
  on.open?.({ upstream: response.headers.get("x-nobusy-upstream") });

  let failure = null;
  const parser = createParser({
    onComment(comment) {
      const note = parseNote(comment);
      if (note) on.note?.(note);
    },
    onEvent(event) {
      if (event.data === "[DONE]") return;
      const chunk = JSON.parse(event.data);
      if (chunk.error) {
        failure = new ApiError(500, chunk);
        return;
      }
      if (chunk.usage) on.usage?.(chunk.usage);
      if (chunk.nobusy?.citations) on.citations?.(chunk.nobusy);
      for (const choice of chunk.choices ?? []) {
        const delta = choice.delta ?? {};
        if (delta.content || delta.reasoning_content) {
          on.delta?.({ content: delta.content || "", reasoning: delta.reasoning_content || "" });
        }
      }
    },
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parser.feed(value);
    if (failure) {
      await reader.cancel();
      throw failure;
    }
  }
}

/**
 * Stream a cross-check (POST /v1/nobusy/crosscheck with `stream: true`, docs/crosscheck.md).
 * Calls `on.source(source)` for each answer as it arrives and `on.analysis(report)` once at
 * the end; rejects with an ApiError (a refusal, or an error event inside the stream) or an
 * AbortError.
 */
export async function streamCrosscheck({ models, messages, language, signal }, on) {
  const response = await fetch("/v1/nobusy/crosscheck", {
    method: "POST",
    headers: headers(false, true),
    body: JSON.stringify({ models, messages, language, stream: true }),
    signal,
  });
  if (!response.ok) {
    throw new ApiError(response.status, await response.json().catch(() => null));
  }
  let failure = null;
  const parser = createParser({
    onEvent(event) {
      if (event.data === "[DONE]") return;
      const data = JSON.parse(event.data);
      if (event.event === "error") failure = new ApiError(500, data);
      else if (event.event === "source") on.source?.(data);
      else if (event.event === "analysis") on.analysis?.(data);
    },
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parser.feed(value);
    if (failure) {
      await reader.cancel();
      throw failure;
    }
  }
}

// The console's sign-in (web/session.py): the admin key is exchanged once for an HttpOnly,
// SameSite=Strict cookie, which the browser then sends with every admin call on its own; the
// key itself is kept nowhere in the page. Legacy callers that set keys.admin still send it.

/** Sign in with the admin key; rejects with an ApiError (401 wrong key, 429 too many). */
export async function signIn(adminKey) {
  const state = await call("/console/session", { method: "POST", body: { admin_key: adminKey } });
  keys.signedIn = true;
  document.dispatchEvent(new Event("nobusy:session"));
  return state;
}

/** Sign out: the session ends on the server too. */
export async function signOut() {
  const state = await call("/console/session", { method: "DELETE" });
  keys.signedIn = false;
  document.dispatchEvent(new Event("nobusy:session"));
  return state;
}

/** {signed_in, needed}: whether this browser is signed in, and whether it has to be. */
export async function sessionState() {
  const state = await call("/console/session");
  keys.signedIn = state.signed_in;
  return state;
}
