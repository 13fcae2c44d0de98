"use strict";
// taskmill dashboard: polls /api/state once a second and redraws; buttons post /api/action.
(function () {
  const token = new URLSearchParams(location.search).get("token") || "__TOKEN__";
  const headers = { "X-Taskmill-Token": token, "Content-Type": "application/json" };
  const $ = (sel) => document.querySelector(sel);
  const esc = (v) => String(v === null || v === undefined ? "" : v)
    .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  const secs = (s) => s === null || s === undefined ? "" :
    s < 60 ? s.toFixed(1) + " s" : s < 3600 ? Math.floor(s / 60) + " m " + Math.round(s % 60) + " s" :
    Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " m";
  const when = (iso) => iso ? new Date(iso.endsWith("Z") || iso.includes("+") ? iso : iso + "Z").toLocaleString() : "";
  const firstLine = (text) => esc(String(text || "").split("\n")[0]);
  const button = (label, action, attrs) => `<button data-action="${action}" ${attrs}>${label}</button>`;

  const drawn = new Map();  // what each part was drawn from: unchanged parts are not redrawn
  function changed(key, value) {
    const text = JSON.stringify(value);
    if (drawn.get(key) === text) return false;
    drawn.set(key, text);
    return true;
  }

  function rows(table, items, render, columns) {
    if (!changed(table, items)) return;
    const body = $(table + " tbody");
    body.innerHTML = items.length ? items.map(render).join("") :
      `<tr class="empty"><td colspan="${columns}">none</td></tr>`;
  }

  function summary(s) {
    const c = s.counts, t = s.totals, cap = s.capacity || {};
    const cards = [["running", c.running], ["pending", c.pending], ["paused", c.paused], ["blocked", c.blocked],
      ["waiting", c.waiting], ["completed", t.completed], ["failed attempts", t.failed], ["dead-lettered", t.dead_lettered],
      ["cpus in use", `${cap.cpus_in_use ?? 0} / ${cap.cpus_total ?? 0}`], ["max concurrency", s.max_concurrency]];
    $("#summary").innerHTML = cards.map(([k, v]) =>
      `<div class="card" data-key="${esc(k)}"><b>${esc(v)}</b><span>${esc(k)}</span></div>`).join("");
  }

  function throughput(series) {
    const svg = $("#throughput"), w = 600, h = 140;
    if (!series.length) { svg.innerHTML = `<text x="10" y="20">collecting…</text>`; return; }
    const top = Math.max(1, ...series.map((p) => Math.max(p.completed, p.failed)));
    const t0 = series[0].t, span = Math.max(1, series[series.length - 1].t - t0);
    const line = (key) => series.map((p) =>
      `${((p.t - t0) / span * (w - 10) + 5).toFixed(1)},${(h - 15 - p[key] / top * (h - 30)).toFixed(1)}`).join(" ");
    const last = series[series.length - 1];
    svg.innerHTML = `<polyline class="completed" points="${line("completed")}"/>` +
      `<polyline class="failed" points="${line("failed")}"/>` +
      `<text x="8" y="14">max ${top.toFixed(1)}/s · now ${last.completed.toFixed(1)} completed/s, ${last.failed.toFixed(1)} failed/s</text>`;
  }

  function render(s) {
    const status = $("#status");
    status.textContent = s.is_paused ? "all paused" : "live";
    status.className = "pill " + (s.is_paused ? "paused" : "live");
    $("#store").textContent = `${s.store} · coordinator ${s.pid}`;
    summary(s);
    $("#running-count").textContent = `(${s.running.length})`;
    rows("#running", s.running, (r) => `<tr data-id="${r.id}"><td>${r.id}</td><td>${esc(r.task_type)}</td>` +
      `<td>${esc(r.label)}</td><td>${esc(r.group)}</td>` +
      `<td><div class="bar" title="${r.percent === null ? "no estimate yet" : Math.round(r.percent * 100) + "%"}">` +
      `<i style="width:${Math.round((r.percent || 0) * 100)}%"></i></div> ${r.percent === null ? "" : Math.round(r.percent * 100) + "%"}</td>` +
      `<td>${secs(r.elapsed_s)}</td><td>${secs(r.eta_s)}</td><td>${button("Cancel", "cancel", `data-id="${r.id}"`)}</td></tr>`, 8);
    const pausedGroups = new Set(s.paused.filter((p) => p.kind === "group").map((p) => p.scope));
    const queue = s.queue.map((q) => ({ ...q, held: pausedGroups.has(q.group) }));
    rows("#queue", queue, (q) => `<tr><td>${esc(q.domain)}</td><td>${esc(q.group)}</td><td>${q.priority}</td>` +
      `<td>${esc(q.status)}</td><td>${q.tasks}</td><td>${!q.group ? "" : q.held
        ? button("Resume group", "resume", `data-scope="group" data-name="${esc(q.group)}"`)
        : button("Pause group", "pause", `data-scope="group" data-name="${esc(q.group)}"`)}</td></tr>`, 6);
    const pausedDomains = new Set(s.paused.filter((p) => p.kind === "domain").map((p) => p.scope));
    const domains = s.domains.map((name) => ({ name, held: pausedDomains.has(name) }));
    rows("#domains", domains, (d) => `<tr><td>${esc(d.name)}</td><td>${d.held ? "paused" : "running"}</td><td>` +
      (d.held ? button("Resume", "resume", `data-scope="domain" data-name="${esc(d.name)}"`)
        : button("Pause", "pause", `data-scope="domain" data-name="${esc(d.name)}"`)) + `</td></tr>`, 3);
    rows("#paused", s.paused, (p) => `<tr><td>${esc(p.kind)}</td><td>${esc(p.scope || "everything")}</td>` +
      `<td>${when(p.paused_at)}</td><td>${when(p.resume_at)}</td><td>` +
      button("Resume", "resume", `data-scope="${p.kind === "global" ? "all" : esc(p.kind)}" data-name="${esc(p.scope)}"`) + `</td></tr>`, 5);
    throughput(s.throughput);
    const cap = s.capacity || {};
    const breakdown = Object.entries(s.pressure_breakdown).map(([k, v]) => `${esc(k)} ${v.toFixed(2)}`).join(", ");
    $("#pressure").innerHTML = `pressure <b>${s.pressure.toFixed(2)}</b>${breakdown ? " (" + breakdown + ")" : ""} · ` +
      `cpus ${cap.cpus_in_use ?? 0} of ${cap.cpus_total ?? 0} · memory ${Math.round((cap.memory_in_use || 0) / 1048576)} MiB in use · ` +
      `${s.workers} workers`;
    const most = Math.max(1, ...Object.values(s.denials));
    $("#denials").innerHTML = Object.entries(s.denials).map(([k, v]) =>
      `<div class="row" data-reason="${esc(k)}"><span>${esc(k)}</span><i style="width:${Math.round(v / most * 200)}px"></i> ${v}</div>`).join("");
    const biggest = (key) => Math.max(1e-9, ...s.types.map((t) => t[key] || 0));
    const maxCount = biggest("count"), maxMs = biggest("avg_ms");
    const chart = (v, top, cls) => `<span class="hbar ${cls}"><i style="width:${Math.round((v || 0) / top * 120)}px"></i></span>`;
    rows("#types", s.types, (t) => `<tr><td>${esc(t.task_type)}</td><td>${chart(t.count, maxCount, "count")} ${t.count}</td>` +
      `<td>${t.avg_ms === null ? "" : chart(t.avg_ms, maxMs, "ms") + " " + t.avg_ms + " ms"}</td>` +
      `<td>${chart(t.failure_rate, 1, "fail")} ${(t.failure_rate * 100).toFixed(1)}%</td></tr>`, 4);
    rows("#failures", s.failures, (f) => `<tr><td>${f.id}</td><td>${esc(f.task_type)}</td><td>${esc(f.status)}</td>` +
      `<td>${when(f.completed_at)}</td><td class="err" title="${esc(f.error)}">${firstLine(f.error)}</td></tr>`, 5);
    rows("#dead-letters", s.dead_letters, (d) => `<tr data-id="${d.id}"><td>${d.id}</td><td>${esc(d.task_type)}</td>` +
      `<td>${when(d.completed_at)}</td><td class="err" title="${esc(d.error)}">${firstLine(d.error)}</td>` +
      `<td>${button("Retry", "retry", `data-id="${d.id}"`)}</td></tr>`, 5);
    document.body.dataset.updated = s.now;
  }

  async function poll() {
    try {
      const r = await fetch("/api/state", { headers, cache: "no-store" });
      const s = await r.json();
      if (!r.ok) throw new Error(s.error || r.statusText);
      render(s);
    } catch (e) {
      const status = $("#status");
      status.textContent = "coordinator unreachable";
      status.className = "pill gone";
      $("#message").textContent = String(e.message || e);
    }
  }

  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (!b) return;
    const body = { action: b.dataset.action, scope: b.dataset.scope || "all" };
    if (b.dataset.name !== undefined) body.name = b.dataset.name;
    if (b.dataset.id !== undefined) { body.id = Number(b.dataset.id); delete body.scope; }
    b.disabled = true;
    try {
      const r = await fetch("/api/action", { method: "POST", headers, body: JSON.stringify(body) });
      const out = await r.json();
      $("#message").textContent = r.ok ? `${out.done}` : `failed: ${out.error}`;
    } finally {
      b.disabled = false;
      poll();
    }
  });

  poll();
  setInterval(poll, 1000);
})();
