// The console's entry point: language, navigation between the four views, settings.

import { initChat } from "./chat.js";
import { initCompare } from "./compare.js";
import { otherLanguage, setLanguage, t, translate } from "./i18n.js";
import { initKeys, showKeys } from "./keys.js";
import { initKnowledge, showKnowledge } from "./knowledge.js";
import { loadModels } from "./models.js";
import { initRequests, showRequests } from "./requests.js";
import { initSettings } from "./settings.js";
import { initSignin } from "./signin.js";
import { initStatus, showStatus } from "./status.js";
import { initUpstreams, showUpstreams } from "./upstreams.js";
import { initUsage, showUsage } from "./usage.js";

const VIEWS = ["chat", "compare", "status", "keys", "knowledge", "usage", "requests", "upstreams"];
const $ = (id) => document.getElementById(id);

// Also called on a language change: the view shown is redrawn (status and keys reload).
function route() {
  // Views live in the hash (#/status) so a reload or a bookmark returns to the same one.
  const wanted = location.hash.startsWith("#/") ? location.hash.slice(2) : "chat";
  const view = VIEWS.includes(wanted) ? wanted : "chat";
  for (const name of VIEWS) $(`view-${name}`).hidden = name !== view;
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${t(`nav${view[0].toUpperCase()}${view.slice(1)}`)} · nobusy`;
  showStatus(view === "status");
  showKeys(view === "keys");
  showUsage(view === "usage");
  showRequests(view === "requests");
  showKnowledge(view === "knowledge");
  showUpstreams(view === "upstreams");
  $("skip-link").hidden = view !== "chat";
}

function labelLanguageButton() {
  const button = $("lang-toggle");
  button.textContent = t("languageButton");
  button.setAttribute("aria-label", t("switchLanguage"));
  button.lang = otherLanguage() === "zh" ? "zh-CN" : "en";
}

translate();
labelLanguageButton();
initSettings();
initChat();
initCompare();
initStatus();
initKeys();
initUsage();
initRequests();
initSignin();
initKnowledge();
initUpstreams();
$("lang-toggle").addEventListener("click", () => {
  setLanguage(otherLanguage());
  labelLanguageButton();
  route();
});
// The skip link moves focus itself: following it as a link would change the view's hash.
$("skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  $("prompt").focus();
});
document.addEventListener("nobusy:keys", loadModels);
window.addEventListener("hashchange", route);
route();
loadModels();
