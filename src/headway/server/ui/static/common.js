// Headway web UI: what every page shares. No framework, no build step.
// - Headway.stream(params, handlers): the page's server-sent events, with the "live" badge;
//   a refused stream (signed out, session expired) sends the browser to the sign-in page.
// - Buttons with data-action open the confirmation dialog, then POST to data-url with the
//   CSRF token; the server records the action in the audit log under the session's name.
"use strict";

const Headway = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setLive(state) {
    const badge = document.getElementById("live-badge");
    if (badge) badge.dataset.state = state;
  }

  function toSignin() {
    const next = location.pathname + location.search;
    location.assign("/ui/signin?next=" + encodeURIComponent(next));
  }

  // Open the page's event stream; handlers: {eventName: (data) => ...}.
  function stream(params, handlers) {
    const url = "/ui/events/stream?" + new URLSearchParams(params).toString();
    let source = null;
    const open = () => {
      source = new EventSource(url);
      source.onopen = () => setLive("on");
      source.addEventListener("signedout", () => { source.close(); toSignin(); });
      for (const [name, handler] of Object.entries(handlers)) {
        source.addEventListener(name, (ev) => handler(JSON.parse(ev.data)));
      }
      source.onerror = async () => {
        setLive("error");
        if (source.readyState !== EventSource.CLOSED) return; // the browser retries by itself
        // Refused (not a network error): signed out, or the page's subject is gone.
        try {
          const probe = await fetch(location.href, { redirect: "manual", credentials: "same-origin" });
          if (probe.type === "opaqueredirect" || probe.status === 401) { toSignin(); return; }
        } catch (_) { /* server down: try again below */ }
        setTimeout(open, 3000);
      };
    };
    open();
    window.addEventListener("pagehide", () => source && source.close());
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (_) { data = { message: response.statusText }; }
    if (response.status === 401) toSignin();
    return { ok: response.ok, data };
  }

  // Times: the server writes UTC; show local time, keep UTC in the tooltip.
  function localTimes(root) {
    const today = new Date().toDateString();
    for (const node of (root || document).querySelectorAll("time[data-ts]")) {
      if (node.dataset.local) continue;
      const t = new Date(parseFloat(node.dataset.ts) * 1000);
      if (isNaN(t)) continue;
      node.title = node.textContent;
      node.textContent = t.toDateString() === today ? t.toLocaleTimeString() : t.toLocaleString();
      node.dataset.local = "1";
    }
  }

  // The confirmation dialog behind every action button.
  function setupActions() {
    const dialog = document.getElementById("confirm");
    if (!dialog) return;
    const title = document.getElementById("confirm-title");
    const text = document.getElementById("confirm-text");
    const reason = document.getElementById("confirm-reason");
    const error = document.getElementById("confirm-error");
    const ok = document.getElementById("confirm-ok");
    let pending = null;
    document.addEventListener("click", (ev) => {
      const button = ev.target.closest("button[data-action]");
      if (!button || button.disabled) return;
      pending = { url: button.dataset.url, go: button.dataset.go || "", action: button.dataset.action };
      title.textContent = button.dataset.title || "Are you sure?";
      text.textContent = button.dataset.text || "";
      ok.textContent = button.textContent.trim() || "Confirm";
      reason.value = "";
      error.hidden = true;
      ok.disabled = false;
      dialog.showModal();
    });
    document.getElementById("confirm-cancel").addEventListener("click", () => dialog.close("cancel"));
    document.getElementById("confirm-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (!pending) return;
      ok.disabled = true;
      const result = await post(pending.url, { reason: reason.value });
      ok.disabled = false;
      if (!result.ok) {
        error.textContent = [result.data.message, result.data.hint].filter(Boolean).join(" — ");
        error.hidden = false;
        return;
      }
      dialog.close("done");
      document.dispatchEvent(new CustomEvent("headway:acted", { detail: { ...pending, result: result.data } }));
      if (pending.go === "rollout" && result.data.rollout) {
        location.assign("/ui/rollouts/" + encodeURIComponent(result.data.rollout));
      }
      pending = null;
    });
  }

  document.addEventListener("DOMContentLoaded", () => { setupActions(); localTimes(); });
  return { el, stream, post, localTimes, csrf };
})();
window.Headway = Headway;
