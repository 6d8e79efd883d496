// jetproj status page: polls status.json and draws it. Hand-written, no
// libraries. Every value is set with textContent (never parsed as HTML).
"use strict";
(function () {
  const HOUR = 3600 * 1000;
  const COLORS = ["#3b73b9", "#d9822b", "#2e9e5b", "#b3261e", "#7b52ab", "#12848f", "#8a6d3b", "#c2185b"];
  let samples = [];
  let lastT = 0;
  let view = null;
  let pending = null; // the action waiting for confirmation

  const $ = (sel) => document.querySelector(sel);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  const td = (field, value, cls) => el("td", { "data-field": field, class: cls, text: value === undefined || value === null ? "" : String(value) });
  const num = (field, value) => td(field, value, "n");
  const fmtRate = (r) => (r >= 100 ? Math.round(r) : Math.round(r * 10) / 10).toString();
  const fmtTime = (iso) => (iso ? new Date(iso).toISOString().replace(".000Z", "Z") : "");
  function fmtDur(s) {
    if (s < 0) return "?";
    if (s < 60) return Math.ceil(s) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.ceil(s % 60)).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }
  function owners(m) {
    const ks = Object.keys(m || {}).sort();
    return ks.length ? ks.map((k) => k + ":" + m[k]).join(" ") : "-";
  }
  function fill(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  function actionButton(label, action, question) {
    if (!view || !view.admin) return null;
    const b = el("button", { type: "button", "data-action": action.op + (action.live ? "-" + action.live : ""), text: label });
    b.addEventListener("click", () => ask(action, question));
    return b;
  }

  function renderFeeders(v) {
    fill($("#feeders tbody"), v.feeders.map((f) => {
      const st = f.stalled_at ? `position ${f.stalled_at.position} (${f.stalled_at.event_type}, ${f.stalled_at.size} B > ${f.stalled_at.max_payload} B)` : "";
      return el("tr", { "data-feeder": f.name },
        td("name", f.name), td("stream", f.stream), td("active", f.active || "none"),
        td("standbys", f.standbys.join(" ") || "-"), td("state", f.state, "state-" + f.state),
        num("position", f.position), num("store_head", f.store_head), num("lag", f.lag),
        num("rate", fmtRate(f.rate)), td("stalled", st || f.error || "", "err"));
    }));
  }

  function progressCell(p) {
    const cell = el("td", { "data-field": "progress" });
    if (p.rebuilding) {
      const bar = el("span", { class: "bar" }, el("span"));
      bar.firstChild.style.width = (100 * p.progress).toFixed(1) + "%";
      cell.append(bar, " " + (100 * p.progress).toFixed(1) + "% ");
    }
    if (p.lag > 0) cell.append("ETA " + fmtDur(p.eta_seconds));
    else cell.append(p.rebuilding ? "" : "caught up");
    return cell;
  }

  function stateText(p) {
    let s = p.state;
    if (p.state === "paused" && p.reason) s += " (" + p.reason + ")";
    if (p.rebuilding) s += ", rebuilding";
    if (p.not_live) s += ", not live";
    return s;
  }

  function renderProjections(v) {
    const parked = [];
    fill($("#projections tbody"), v.projections.map((p) => {
      for (const r of p.parked || []) parked.push([p, r]);
      const acts = el("td", { class: "act" });
      if (p.state === "paused" && /start/.test(p.reason || "")) {
        acts.append(actionButton("start", { op: "start", projection: p.name }, `Start ${p.name}?`) || "");
      }
      if (p.state !== "not initialised" && p.state !== "deleted") {
        const on = !p.not_live;
        acts.append(actionButton(on ? "live off" : "live on", { op: "live", projection: p.name, live: on ? "off" : "on" },
          on ? `Switch emission of ${p.name} off? It emits nothing until switched on again.`
            : `Switch emission of ${p.name} on? It emits for events after the source's current end.`) || "");
      }
      return el("tr", { "data-projection": p.name },
        td("name", p.name), td("kind", p.kind), td("state", stateText(p), "state-" + p.state.split(" ")[0]),
        td("store", p.store || "-"), num("partitions", p.partitions), num("position", p.position),
        num("head", p.head), num("lag", p.lag), num("rate", fmtRate(p.rate)), progressCell(p),
        td("owners", owners(p.owners)), num("parked", (p.parked || []).length), acts);
    }));
    $("#noparked").hidden = parked.length > 0;
    $("#parked").hidden = parked.length === 0;
    fill($("#parked tbody"), parked.map(([p, r]) => {
      const k = r.parked || {};
      const acts = el("td", { class: "act" },
        actionButton("retry", { op: "retry", projection: p.name, partition: r.key },
          `Retry ${p.name} ${r.key} from its failing event (sequence ${k.seq})?`),
        actionButton("skip", { op: "skip", projection: p.name, partition: r.key },
          `Skip the failing event of ${p.name} ${r.key} (sequence ${k.seq}, ${k.event_type})? It is never applied.`));
      return el("tr", { "data-projection": p.name, "data-partition": r.key },
        td("projection", p.name), td("partition", r.key), num("seq", k.seq), num("position", k.position),
        td("event_type", k.event_type), num("attempts", k.attempts), td("since", fmtTime(k.since)),
        td("error", k.error, "err"), acts);
    }));
  }

  function renderEmitters(v) {
    fill($("#emitters tbody"), v.emitters.map((e) =>
      el("tr", { "data-emitter": e.name },
        td("name", e.name), td("active", e.active || "none"), td("standbys", e.standbys.join(" ") || "-"),
        num("backlog", e.backlog), el("td", { "data-field": "stalled", class: "n", text: String(e.stalled) }),
        num("rate", fmtRate(e.rate)))));
    // The stalled subjects, oldest first, with since when and why.
    const rows = [];
    v.emitters.forEach((e) => (e.stalled_subjects || []).forEach((s) => rows.push(
      el("tr", { "data-emitter": e.name, "data-subject": s.subject },
        td("emitter", e.name), td("subject", s.subject), td("database", s.database || "-"),
        td("since", fmtTime(s.since)), td("error", s.error || "", "err")))));
    fill($("#stalled tbody"), rows);
  }

  function renderReplicas(v) {
    fill($("#replicas tbody"), v.replicas.map((r) =>
      el("tr", { "data-replica": r.replica },
        td("replica", r.replica), td("projections", (r.projections || []).join(", ")),
        td("slots", Object.keys(r.slots || {}).sort().map((k) => k + ":" + r.slots[k].length).join(" ")))));
  }

  function renderActions(v) {
    $("#noactions").hidden = v.actions.length > 0;
    fill($("#actions tbody"), v.actions.map((a) =>
      el("tr", {}, td("at", fmtTime(a.at)), td("who", a.who), td("instance", a.instance), td("op", a.op),
        td("projection", a.projection), td("partition", a.partition || ""),
        td("result", a.error ? "failed: " + a.error : a.result, a.error ? "err" : ""))));
  }

  // chart draws series ({name, color, points: [[t, v]…]}) over [t0, t1] as
  // an SVG of polylines, with the maximum and the time span on the axes.
  function chart(id, series, t0, t1) {
    const W = 600, H = 120, L = 44, B = 16;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", "chart");
    svg.setAttribute("data-chart", id);
    let vmax = 0, n = 0, last = 0;
    for (const s of series) for (const [, y] of s.points) vmax = Math.max(vmax, y);
    const top = vmax > 0 ? niceCeil(vmax) : 1;
    const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - 4);
    const y = (v) => H - B - (v / top) * (H - B - 6);
    const line = (x1, y1, x2, y2) => {
      const l = document.createElementNS(ns, "line");
      l.setAttribute("x1", x1); l.setAttribute("y1", y1); l.setAttribute("x2", x2); l.setAttribute("y2", y2);
      l.setAttribute("class", "axis");
      return l;
    };
    const text = (tx, ty, s, anchor) => {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", tx); t.setAttribute("y", ty);
      if (anchor) t.setAttribute("text-anchor", anchor);
      t.textContent = s;
      return t;
    };
    svg.append(line(L, H - B, W, H - B), line(L, 6, L, H - B), line(L, 6, W, 6));
    svg.append(text(L - 4, 12, String(top), "end"), text(L - 4, H - B, "0", "end"));
    svg.append(text(L, H - 3, fmtDur((t1 - t0) / 1000) + " ago"), text(W - 4, H - 3, "now", "end"));
    for (const s of series) {
      const pl = document.createElementNS(ns, "polyline");
      pl.setAttribute("points", s.points.map(([t, v]) => x(t).toFixed(1) + "," + y(v).toFixed(1)).join(" "));
      pl.setAttribute("stroke", s.color);
      pl.setAttribute("data-series", s.name);
      svg.append(pl);
      n = Math.max(n, s.points.length);
      if (s.points.length) last = Math.max(last, s.points[s.points.length - 1][1]);
    }
    svg.setAttribute("data-points", String(n));
    svg.setAttribute("data-max", String(vmax));
    svg.setAttribute("data-last", String(last));
    return svg;
  }

  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function legend(series) {
    return el("div", { class: "legend" }, ...series.map((s) => {
      const i = el("i");
      i.style.background = s.color;
      return el("span", {}, i, s.name);
    }));
  }

  function renderCharts(v) {
    const t1 = Date.now();
    const t0 = samples.length ? Math.min(samples[0].t, t1 - 60 * 1000) : t1 - 60 * 1000;
    const stages = ["feeder"];
    for (const p of v.projections) stages.push("projector/" + p.name);
    stages.push("emitter");
    const rates = stages.map((st, i) => ({
      name: st, color: COLORS[i % COLORS.length],
      points: samples.filter((s) => st in s.rate).map((s) => [s.t, s.rate[st]]),
    }));
    $("#rates").replaceChildren(chart("rates", rates, t0, t1), legend(rates));
    $("#lags").replaceChildren(...v.projections.map((p, i) => {
      const s = { name: p.name, color: COLORS[i % COLORS.length], points: samples.filter((x) => p.name in x.lag).map((x) => [x.t, x.lag[p.name]]) };
      return el("figure", {}, el("figcaption", { text: "lag of " + p.name + " (messages)" }), chart("lag/" + p.name, [s], t0, t1));
    }));
  }

  function render(v) {
    $("#served").textContent = `served by ${v.service} ${v.instance}`;
    $("#updated").textContent = "updated " + new Date(v.now).toLocaleTimeString();
    $("#admin").hidden = !v.admin;
    const err = $("#error");
    err.hidden = !(v.errors && v.errors.length);
    err.textContent = (v.errors || []).join("; ");
    renderFeeders(v);
    renderProjections(v);
    renderEmitters(v);
    renderReplicas(v);
    renderActions(v);
    renderCharts(v);
    document.body.setAttribute("data-rendered", String(v.now));
  }

  function ask(action, question) {
    pending = action;
    $("#confirm-text").textContent = question;
    $("#confirm").hidden = false;
  }

  function toast(msg, bad) {
    const t = $("#toast");
    t.textContent = msg;
    t.className = bad ? "bad" : "";
    t.hidden = false;
    setTimeout(() => { t.hidden = true; }, 8000);
  }

  async function confirmAction() {
    const a = pending;
    pending = null;
    $("#confirm").hidden = true;
    if (!a) return;
    const token = $("#token").value.trim();
    sessionStorage.setItem("jetproj-token", token);
    try {
      const r = await fetch("actions", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
        body: JSON.stringify(a),
      });
      const body = await r.json();
      toast(body.message || body.error || r.statusText, !r.ok);
    } catch (e) {
      toast("action failed: " + e, true);
    }
    poll();
  }

  let timer = null;
  async function poll() {
    clearTimeout(timer);
    try {
      const r = await fetch("status.json?since=" + lastT, { cache: "no-store" });
      if (!r.ok) throw new Error(r.status + " " + r.statusText);
      view = await r.json();
      for (const s of view.history) samples.push(s);
      if (samples.length) lastT = samples[samples.length - 1].t;
      const cut = Date.now() - HOUR;
      while (samples.length && samples[0].t < cut) samples.shift();
      render(view);
    } catch (e) {
      const err = $("#error");
      err.hidden = false;
      err.textContent = "status not read: " + e.message;
    }
    const every = view ? Math.min(Math.max(view.interval_ms, 1000), 2000) : 2000;
    timer = setTimeout(poll, every);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#token").value = sessionStorage.getItem("jetproj-token") || "";
    $("#confirm-ok").addEventListener("click", confirmAction);
    $("#confirm-cancel").addEventListener("click", () => { pending = null; $("#confirm").hidden = true; });
    poll();
  });
})();
