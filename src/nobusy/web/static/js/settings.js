// The settings dialog: the API key (kept in browser storage) and the admin key, which is
// exchanged for a sign-in session (signin.js) and kept nowhere.

import { keys, signIn, signOut } from "./api.js";

const $ = (id) => document.getElementById(id);

export function initSettings() {
  const dialog = $("settings");
  $("settings-open").addEventListener("click", openSettings);
  dialog.addEventListener("close", async () => {
    const action = dialog.returnValue;
    const admin = $("admin-key").value.trim();
    if (action === "save") {
      keys.api = $("api-key").value.trim();
    } else if (action === "forget") {
      keys.api = "";
      keys.admin = "";
    }
    // Clear the fields: a key should not sit in the DOM longer than it is being edited.
    $("api-key").value = "";
    $("admin-key").value = "";
    if (action === "save" && admin) {
      keys.admin = "";
      // A wrong key leaves the pages asking for it (their notice says so); nothing is kept.
      await signIn(admin).catch(() => {});
    } else if (action === "forget") {
      await signOut().catch(() => {});
    }
    if (action === "save" || action === "forget") {
      document.dispatchEvent(new Event("nobusy:keys"));
    }
  });
}

export function openSettings() {
  const dialog = $("settings");
  if (dialog.open) return;
  $("api-key").value = keys.api;
  $("admin-key").value = "";
  dialog.returnValue = ""; // Escape closes without setting it: it must not keep the last one
  dialog.showModal();
  $("api-key").focus();
}
