// The service page: when the service changes (a rollout moves, a release is created), fetch
// the page again and swap its content in place, without a reload.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("service");
  if (!root) return;
  let busy = false;
  const refresh = async () => {
    if (busy) return;
    busy = true;
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (response.redirected) { location.assign(response.url); return; }
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("service");
      if (fresh) {
        root.innerHTML = fresh.innerHTML;
        Headway.localTimes(root);
      }
    } finally {
      busy = false;
    }
  };
  Headway.stream({ view: "service", name: root.dataset.service }, { changed: refresh });
  document.addEventListener("headway:acted", refresh);
});
