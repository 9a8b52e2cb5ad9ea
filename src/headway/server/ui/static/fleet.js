// The fleet page: every host as a cell on one <canvas>, grouped by service, then zone and
// pool. The server sends a columnar snapshot, then deltas ([index, release, desired, health,
// connected, phase]); only changed cells are redrawn. Nothing per host lives in the DOM.
//
// Test and benchmark hook: window.headwayFleet (version, host(name), pixel(name),
// colour(release), stamps[name] = Date.now() when a change of that host was drawn), the
// canvas's data-version / data-hosts attributes, and the performance marks
// "fleet-first-data" (the first snapshot arrived, parsed), "fleet-first-render" (drawn)
// and "fleet-update".
"use strict";

(() => {
  const canvas = document.getElementById("fleet");
  if (!canvas) return;
  const wrap = document.getElementById("fleet-wrap");
  const tip = document.getElementById("tip");
  const panel = document.getElementById("host-panel");
  const details = document.getElementById("host-details");
  const summary = document.getElementById("fleet-summary");
  const legend = document.getElementById("legend");
  const servicesBody = document.querySelector("#services tbody");
  const find = document.getElementById("find");
  const el = Headway.el;

  const css = getComputedStyle(document.documentElement);
  const v = (name) => css.getPropertyValue(name).trim();
  const PALETTE = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => v(`--rel-${i}`));
  const COLOUR = {
    none: v("--rel-none"), failed: v("--failed"), unhealthy: v("--unhealthy"),
    offline: v("--offline"), changing: v("--changing"), card: v("--card"), ink: v("--ink"),
    muted: v("--muted"), line: v("--line"), accent: v("--accent"),
  };
  const IN_FLIGHT = new Set([
    "draining", "updating", "admitting", "verifying", "reverting", "revert_draining", "revert_admitting",
  ]);
  const HEAD = 30; // service heading height
  const LABEL = 18; // group label height
  const GAP_AFTER = 10;
  const FONT = "13px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

  let snap = null; // the current snapshot, deltas applied
  let layout = null;
  let names = null; // name -> index
  let query = "";
  let pinned = -1;
  let firstDrawn = false;
  const stamps = {};
  const g = canvas.getContext("2d", { alpha: false });

  const releaseColour = (r) => (r ? PALETTE[(r - 1) % PALETTE.length] : COLOUR.none);

  function hostAt(i) {
    const H = snap.hosts;
    const group = snap.groups[findGroup(i)];
    const service = snap.services[group.service];
    return {
      index: i, name: H.n[i], address: H.a[i], service: service.name, group: group.label,
      release: H.r[i] || null, desired: H.d[i] || null, health: snap.health[H.h[i]],
      connected: !!H.c[i], phase: snap.phases[H.p[i]] || "", rollout: service.rollout,
    };
  }

  function findGroup(i) {
    let lo = 0, hi = snap.groups.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (snap.groups[mid].start <= i) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  // ------------------------------------------------------------------ layout

  function computeLayout() {
    const width = Math.max(200, wrap.clientWidth - 20);
    const n = Math.max(1, snap.hosts.n.length);
    let cell = Math.floor(Math.sqrt((width * 620) / n)) - 1;
    cell = Math.max(3, Math.min(26, cell));
    const gap = cell >= 10 ? 3 : cell >= 6 ? 2 : 1;
    const pitch = cell + gap;
    const cols = Math.max(1, Math.floor((width + gap) / pitch));
    const blocks = [];
    const heads = [];
    let y = 0;
    let lastService = -1;
    snap.groups.forEach((group, gi) => {
      if (group.service !== lastService) {
        if (lastService !== -1) y += GAP_AFTER;
        heads.push({ service: group.service, y });
        y += HEAD;
        lastService = group.service;
      }
      let labelY = null;
      if (group.label) { labelY = y; y += LABEL; }
      const rows = Math.ceil(group.count / cols);
      blocks.push({ group: gi, y, rows, start: group.start, count: group.count, labelY });
      y += rows * pitch + 6;
    });
    layout = { width, cell, gap, pitch, cols, blocks, heads, height: Math.max(y, 40) };
  }

  function position(i) {
    const block = layout.blocks[findGroup(i)];
    const k = i - block.start;
    return [(k % layout.cols) * layout.pitch, block.y + Math.floor(k / layout.cols) * layout.pitch];
  }

  // ------------------------------------------------------------------ drawing

  function matches(i) {
    return query && (snap.hosts.n[i].includes(query) || snap.hosts.a[i].includes(query));
  }

  function drawCell(i) {
    const H = snap.hosts;
    const [x, y] = position(i);
    const s = layout.cell;
    const health = snap.health[H.h[i]];
    const connected = H.c[i] === 1;
    g.fillStyle = COLOUR.card;
    g.fillRect(x - 1, y - 1, s + 2, s + 2);
    let fill = releaseColour(H.r[i]);
    if (!connected) fill = COLOUR.offline;
    else if (health === "failed") fill = COLOUR.failed;
    g.globalAlpha = connected && (health === "starting" || health === "unknown") ? 0.4 : 1;
    g.fillStyle = fill;
    g.fillRect(x, y, s, s);
    g.globalAlpha = 1;
    if (connected && health === "unhealthy") {
      const w = Math.max(1, Math.round(s / 5));
      g.strokeStyle = COLOUR.unhealthy;
      g.lineWidth = w;
      g.strokeRect(x + w / 2, y + w / 2, s - w, s - w);
    }
    if (IN_FLIGHT.has(snap.phases[H.p[i]]) && s >= 5) {
      const d = Math.max(2, Math.round(s / 3));
      g.fillStyle = COLOUR.changing;
      g.fillRect(x + Math.floor((s - d) / 2), y + Math.floor((s - d) / 2), d, d);
    }
    if (matches(i) || i === pinned) {
      g.strokeStyle = COLOUR.ink;
      g.lineWidth = 1.5;
      g.strokeRect(x - 0.5, y - 0.5, s + 1, s + 1);
    }
  }

  function serviceHeading(service) {
    const parts = [`${service.hosts} host${service.hosts === 1 ? "" : "s"}`, `${service.healthy} healthy`];
    if (service.current) parts.push(`current v${service.current}`);
    if (service.rollout) parts.push(`rollout ${service.status}: v${service.from ?? "–"} → v${service.to}`);
    return parts.join(" · ");
  }

  function drawAll() {
    const dpr = window.devicePixelRatio || 1;
    canvas.style.height = layout.height + "px";
    canvas.width = Math.round(layout.width * dpr);
    canvas.height = Math.round(layout.height * dpr);
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.fillStyle = COLOUR.card;
    g.fillRect(0, 0, layout.width, layout.height);
    g.textBaseline = "middle";
    for (const head of layout.heads) {
      const service = snap.services[head.service];
      g.font = "600 15px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
      g.fillStyle = COLOUR.accent;
      g.fillText(service.name, 0, head.y + 13);
      const w = g.measureText(service.name).width;
      head.x1 = w;
      g.font = FONT;
      g.fillStyle = COLOUR.muted;
      g.fillText(serviceHeading(service), w + 12, head.y + 13);
    }
    g.font = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
    for (const block of layout.blocks) {
      if (block.labelY === null) continue;
      const group = snap.groups[block.group];
      g.fillStyle = COLOUR.muted;
      g.fillText(`${group.label}  (${group.count})`, 0, block.labelY + 8);
    }
    const n = snap.hosts.n.length;
    for (let i = 0; i < n; i++) drawCell(i);
    canvas.dataset.version = String(snap.v);
    canvas.dataset.hosts = String(n);
  }

  // ------------------------------------------------------------ text around it

  function renderSummary() {
    const H = snap.hosts;
    const health = {};
    const releases = {};
    let offline = 0;
    for (let i = 0; i < H.n.length; i++) {
      if (!H.c[i]) offline++;
      else health[snap.health[H.h[i]]] = (health[snap.health[H.h[i]]] || 0) + 1;
      releases[H.r[i]] = (releases[H.r[i]] || 0) + 1;
    }
    const bits = [el("b", { text: H.n.length.toLocaleString() }), ` host${H.n.length === 1 ? "" : "s"}`];
    for (const name of ["healthy", "starting", "unhealthy", "failed", "unknown"]) {
      if (health[name]) bits.push(" · ", el("b", { text: health[name].toLocaleString() }), ` ${name}`);
    }
    if (offline) bits.push(" · ", el("b", { text: offline.toLocaleString() }), " disconnected");
    summary.replaceChildren(...bits);
    const items = Object.keys(releases).map(Number).sort((a, b) => a - b).map((r) => {
      const swatch = el("i", { class: "swatch" });
      swatch.style.background = releaseColour(r);
      return el("span", { "data-release": r }, swatch, r ? `v${r}` : "no release", el("span", { class: "muted", text: ` ${releases[r].toLocaleString()}` }));
    });
    legend.replaceChildren(...items);
  }

  function renderServices() {
    const rows = snap.services.map((s) => el("tr", {},
      el("td", {}, el("a", { href: `/ui/services/${encodeURIComponent(s.name)}`, text: s.name })),
      el("td", { text: s.hosts.toLocaleString() }),
      el("td", { text: s.healthy.toLocaleString() }),
      el("td", {}, s.current ? el("span", { class: `rel rel-${(s.current - 1) % 8}`, text: `v${s.current}` }) : el("span", { class: "muted", text: "—" })),
      el("td", {}, s.rollout
        ? el("a", { href: `/ui/rollouts/${encodeURIComponent(s.rollout)}` },
          el("span", { class: `badge st-${s.status}`, text: s.status.replace("_", " ") }), ` v${s.from ?? "–"} → v${s.to}`)
        : el("span", { class: "muted", text: "none" })),
    ));
    servicesBody.replaceChildren(...rows);
  }

  function describe(host) {
    const rows = [
      ["Host", host.name], ["Address", host.address], ["Service", host.service],
      ["Group", host.group || "—"],
      ["Release", host.release ? `v${host.release}` : "none"],
      ["Desired", host.desired ? `v${host.desired}` : "none"],
      ["Health", host.connected ? host.health : `${host.health} (disconnected)`],
      ["Phase", host.phase ? host.phase : host.rollout ? "not in this rollout yet" : "no rollout"],
    ];
    return rows;
  }

  function showPanel(i) {
    pinned = i;
    if (i < 0) { panel.hidden = true; return; }
    const host = hostAt(i);
    const items = [];
    for (const [k, val] of describe(host)) items.push(el("dt", { text: k }), el("dd", { text: val }));
    if (host.rollout) {
      items.push(el("dt", { text: "Rollout" }), el("dd", {}, el("a", { href: `/ui/rollouts/${encodeURIComponent(host.rollout)}`, text: host.rollout })));
    }
    details.replaceChildren(...items);
    panel.hidden = false;
  }

  // ------------------------------------------------------------ messages

  function indexNames() {
    names = new Map();
    snap.hosts.n.forEach((name, i) => names.set(name, i));
  }

  function onSnapshot(msg) {
    if (!firstDrawn) performance.mark("fleet-first-data");
    snap = msg;
    indexNames();
    pinned = pinned >= 0 && pinned < snap.hosts.n.length ? pinned : -1;
    computeLayout();
    drawAll();
    renderSummary();
    renderServices();
    const now = Date.now();
    for (const name of snap.hosts.n) stamps[name] = now;
    if (!firstDrawn) {
      firstDrawn = true;
      performance.mark("fleet-first-render");
      canvas.dataset.firstRender = String(performance.now());
    }
  }

  function onDelta(msg) {
    if (!snap || msg.base !== snap.v) return; // out of step: the server sends a snapshot next
    const H = snap.hosts;
    const servicesChanged = JSON.stringify(msg.services) !== JSON.stringify(snap.services);
    snap.v = msg.v;
    snap.services = msg.services;
    snap.groups = msg.groups;
    for (const [i, r, d, h, c, p] of msg.ch) {
      H.r[i] = r; H.d[i] = d; H.h[i] = h; H.c[i] = c; H.p[i] = p;
    }
    if (servicesChanged) drawAll();
    else {
      for (const change of msg.ch) drawCell(change[0]);
      canvas.dataset.version = String(snap.v);
    }
    const now = Date.now();
    for (const change of msg.ch) stamps[H.n[change[0]]] = now;
    renderSummary();
    if (servicesChanged) renderServices();
    if (pinned >= 0) showPanel(pinned);
    performance.mark("fleet-update");
  }

  // ------------------------------------------------------------ pointer

  function hit(ev) {
    if (!layout) return { i: -1, head: null };
    const rect = canvas.getBoundingClientRect();
    const x = ev.clientX - rect.left;
    const y = ev.clientY - rect.top;
    for (const head of layout.heads) {
      if (y >= head.y && y < head.y + HEAD - 6 && x <= (head.x1 || 0)) return { i: -1, head };
    }
    for (const block of layout.blocks) {
      if (y < block.y || y >= block.y + block.rows * layout.pitch) continue;
      const col = Math.floor(x / layout.pitch);
      const row = Math.floor((y - block.y) / layout.pitch);
      if (col >= layout.cols || x - col * layout.pitch > layout.cell) return { i: -1, head: null };
      const k = row * layout.cols + col;
      return { i: k < block.count ? block.start + k : -1, head: null, x, y };
    }
    return { i: -1, head: null };
  }

  canvas.addEventListener("mousemove", (ev) => {
    const { i, head, x, y } = hit(ev);
    canvas.style.cursor = i >= 0 || head ? "pointer" : "default";
    if (i < 0) { tip.hidden = true; return; }
    const host = hostAt(i);
    const lines = describe(host).slice(1).map(([k, val]) => el("div", {}, `${k}: `, el("b", { text: val })));
    tip.replaceChildren(el("div", {}, el("b", { text: host.name })), ...lines);
    tip.hidden = false;
    const left = x + 18 + tip.offsetWidth > wrap.clientWidth ? x - tip.offsetWidth - 8 : x + 18;
    tip.style.left = `${Math.max(0, left) + 10}px`;
    tip.style.top = `${y + 14}px`;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("click", (ev) => {
    const { i, head } = hit(ev);
    if (head) { location.assign(`/ui/services/${encodeURIComponent(snap.services[head.service].name)}`); return; }
    const before = pinned;
    showPanel(i);
    if (before >= 0) drawCell(before);
    if (i >= 0) drawCell(i);
  });
  document.getElementById("host-close").addEventListener("click", () => {
    const before = pinned;
    showPanel(-1);
    if (before >= 0) drawCell(before);
  });
  find.addEventListener("input", () => {
    query = find.value.trim();
    if (!snap) return;
    drawAll();
    if (query && names.has(query)) showPanel(names.get(query));
  });

  let resizeQueued = false;
  new ResizeObserver(() => {
    if (!snap || resizeQueued) return;
    resizeQueued = true;
    requestAnimationFrame(() => {
      resizeQueued = false;
      if (Math.abs(wrap.clientWidth - 20 - layout.width) < 1) return;
      computeLayout();
      drawAll();
    });
  }).observe(wrap);

  Headway.stream({ view: "fleet" }, {
    fleet: (msg) => (msg.type === "snapshot" ? onSnapshot(msg) : onDelta(msg)),
  });

  window.headwayFleet = {
    get version() { return snap ? snap.v : 0; },
    stamps,
    host(name) { return snap && names.has(name) ? hostAt(names.get(name)) : null; },
    colour(release) { return releaseColour(release); },
    // The fill colour drawn in a host's cell (between its rim and its "changing" mark).
    pixel(name) {
      if (!snap || !names.has(name)) return null;
      const [x, y] = position(names.get(name));
      const dpr = window.devicePixelRatio || 1;
      const c = Math.min(Math.round(layout.cell / 5) + 1, Math.floor(layout.cell / 2));
      const [r, gr, b] = g.getImageData(Math.floor((x + c) * dpr), Math.floor((y + c) * dpr), 1, 1).data;
      return "#" + [r, gr, b].map((n) => n.toString(16).padStart(2, "0")).join("");
    },
  };
})();
