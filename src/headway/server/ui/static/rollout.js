// The rollout page: the server sends rendered fragments over the event stream;
// "swap" replaces a section, "append" puts new timeline lines on top.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("rollout");
  if (!root) return;
  const MAX_LINES = 600;
  const hideHosts = document.getElementById("hide-hosts");
  const timeline = document.getElementById("timeline");
  hideHosts.addEventListener("change", () => timeline.classList.toggle("hide-hosts", hideHosts.checked));

  Headway.stream(
    { view: "rollout", id: root.dataset.rollout, after: root.dataset.after || "0" },
    {
      swap: (msg) => {
        const target = document.getElementById(msg.target);
        if (!target) return;
        target.innerHTML = msg.html; // rendered and escaped by the server's templates
        Headway.localTimes(target);
      },
      append: (msg) => {
        const target = document.getElementById(msg.target);
        if (!target) return;
        target.insertAdjacentHTML("afterbegin", msg.html);
        while (target.children.length > MAX_LINES) target.lastElementChild.remove();
        root.dataset.after = String(msg.last);
        Headway.localTimes(target);
      },
      problem: (msg) => console.warn("rollout stream:", msg.message),
    },
  );
});
