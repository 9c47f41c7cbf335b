// The settings dialog: the API key and the admin key, kept in browser storage only.

import { keys } from "./api.js";

const $ = (id) => document.getElementById(id);

export function initSettings() {
  const dialog = $("settings");
  $("settings-open").addEventListener("click", openSettings);
  dialog.addEventListener("close", () => {
    const action = dialog.returnValue;
    if (action === "save") {
      keys.api = $("api-key").value.trim();
      keys.admin = $("admin-key").value.trim();
    } else if (action === "forget") {
      keys.api = "";
      keys.admin = "";
    }
    // Clear the fields: a key should not sit in the DOM longer than it is being edited.
    $("api-key").value = "";
    $("admin-key").value = "";
    if (action === "save" || action === "forget") {
      document.dispatchEvent(new Event("nobusy:keys"));
    }
  });
}

export function openSettings() {
  const dialog = $("settings");
  if (dialog.open) return;
  $("api-key").value = keys.api;
  $("admin-key").value = keys.admin;
  dialog.returnValue = ""; // Escape closes without setting it: it must not keep the last one
  dialog.showModal();
  $("api-key").focus();
}
