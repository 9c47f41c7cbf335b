// The sign-in button and dialog: the admin key exchanged for a session cookie (api.signIn).

import { sessionState, signIn, signOut } from "./api.js";
import { t } from "./i18n.js";

const $ = (id) => document.getElementById(id);
let signedIn = false;

export function initSignin() {
  $("signin-open").addEventListener("click", async () => {
    if (signedIn) {
      await signOut().catch(() => {});
      document.dispatchEvent(new Event("nobusy:keys"));
    } else {
      openSignin();
    }
  });
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (event.submitter?.value === "cancel") {
      $("signin").close();
      return;
    }
    const key = $("signin-key").value;
    $("signin-error").textContent = "";
    try {
      await signIn(key);
      $("signin-key").value = "";
      $("signin").close();
      document.dispatchEvent(new Event("nobusy:keys")); // the admin pages reload
    } catch (error) {
      $("signin-error").textContent = t("errorPrefix", { message: error.message });
    }
  });
  $("signin").addEventListener("close", () => {
    $("signin-key").value = ""; // never left in the DOM
  });
  document.addEventListener("nobusy:session", refreshButton);
  document.addEventListener("nobusy:language", refreshButton);
  refreshButton();
}

export function openSignin() {
  if ($("signin").open) return;
  $("signin-error").textContent = "";
  $("signin").showModal();
  $("signin-key").focus();
}

async function refreshButton() {
  const state = await sessionState().catch(() => ({ signed_in: false, needed: true }));
  signedIn = state.signed_in;
  const button = $("signin-open");
  button.hidden = !state.needed;
  button.textContent = t(signedIn ? "signOut" : "signIn");
}
