// The model aliases from GET /v1/models, shared by chat and compare.

import { call } from "./api.js";

/** `ids`: the aliases; `error`: the HTTP status when they could not be listed. */
export const models = { ids: [], error: null };

/** (Re)load the aliases, then tell the views (`nobusy:models`). */
export async function loadModels() {
  try {
    const data = await call("/v1/models");
    models.ids = data.data.map((m) => m.id);
    models.error = null;
  } catch (error) {
    models.ids = [];
    models.error = error.status ?? 0;
  }
  document.dispatchEvent(new Event("nobusy:models"));
}
