// llmgw finance page: fetches /ui/api/... and draws tables and SVG bar charts. Plain JS, no
// dependencies, no inline script (the page's Content-Security-Policy allows scripts from this
// origin only). Every amount shown is a string the server formatted from integer nano-dollars:
// nothing here does arithmetic on money (bar lengths are the server's percentages).
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const DAY = 86400000;
  const params = new URLSearchParams(location.search);
  const WINDOW_KEYS = ["period", "since", "until", "last"];
  const $ = (id) => document.getElementById(id);
  let currency = null;

  function windowQuery(extra) {
    const q = new URLSearchParams();
    for (const k of WINDOW_KEYS) if (params.get(k)) q.set(k, params.get(k));
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    const s = q.toString();
    return s ? "?" + s : "";
  }

  function shiftDay(iso, days) {
    return new Date(Date.parse(iso + "T00:00:00Z") + days * DAY).toISOString().slice(0, 10);
  }

  // ---- the window picker ----------------------------------------------------------------------

  function setupPicker() {
    const mode = $("mode");
    const last = params.get("last");
    if (last && last !== "30") {  // a window given in the address, e.g. ?last=7
      mode.append(el("option", { value: "last" + last }, `Last ${last} days`));
      mode.value = "last" + last;
    } else if (last) mode.value = "last30";
    else if (params.get("since") || params.get("until")) mode.value = "custom";
    else mode.value = "month";
    if (params.get("period") && /^\d{4}-\d{2}$/.test(params.get("period"))) $("month").value = params.get("period");
    if (params.get("since")) $("since").value = params.get("since").slice(0, 10);
    if (params.get("until")) $("until").value = shiftDay(params.get("until").slice(0, 10), -1);
    const sync = () => {
      $("month-field").hidden = mode.value !== "month";
      $("custom-fields").hidden = mode.value !== "custom";
    };
    mode.addEventListener("change", sync);
    sync();
    $("picker").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      if (params.get("customer")) q.set("customer", params.get("customer"));
      if (mode.value.startsWith("last")) q.set("last", mode.value.slice(4));
      else if (mode.value === "custom") {
        if ($("since").value) q.set("since", $("since").value);
        if ($("until").value) q.set("until", shiftDay($("until").value, 1));
      } else if ($("month").value) q.set("period", $("month").value);
      location.assign("/ui" + (q.toString() ? "?" + q : ""));
    });
  }

  // ---- drawing helpers ------------------------------------------------------------------------

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) e.setAttribute(k, v);
    }
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  const int = (n) => Number(n).toLocaleString("en-US");

  function moneyCell(m) {
    return { text: m.display, title: "$" + m.usd + " (exact)", cls: "num" };
  }

  function convertedCell(m) {
    return { text: m.converted, title: currency ? currency.label : null, cls: "num converted" };
  }

  // columns: [{head, cell(row) -> string | {text, title, cls, href}}]; rows; optional total row
  function table(id, columns, rows, total, empty) {
    const t = $(id);
    t.replaceChildren();
    const head = el("tr");
    for (const c of columns) head.append(el("th", { class: c.num ? "num" : null, scope: "col" }, c.head));
    const thead = el("thead");
    thead.append(head);
    t.append(thead);
    const body = el("tbody");
    t.append(body);
    const fill = (tr, r, isTotal) => {
      for (const c of columns) {
        let v = c.cell(r, isTotal);
        if (v === null || v === undefined || typeof v !== "object") v = { text: v };
        const td = el("td", { class: [c.num ? "num" : "", v.cls || ""].join(" ").trim() || null, title: v.title || null });
        if (v.href && !isTotal) td.append(el("a", { href: v.href }, v.text));
        else if (v.node) td.append(v.node);
        else td.textContent = v.text === null || v.text === undefined ? "" : String(v.text);
        tr.append(td);
      }
      return tr;
    };
    if (!rows.length) {
      const tr = el("tr");
      tr.append(el("td", { colspan: columns.length, class: "empty" }, empty || "Nothing in this window."));
      body.append(tr);
    }
    for (const r of rows) body.append(fill(el("tr"), r, false));
    if (total) {
      const foot = el("tfoot");
      foot.append(fill(el("tr", { class: "total" }), total, true));
      t.append(foot);
    }
  }

  function spendColumns() {
    const cols = [
      { head: "Requests", num: true, cell: (r) => int(r.requests) },
      { head: "Errors", num: true, cell: (r) => int(r.errors) },
      { head: "Prompt tokens", num: true, cell: (r) => int(r.prompt_tokens) },
      { head: "Completion tokens", num: true, cell: (r) => int(r.completion_tokens) },
      { head: "Cost (USD)", num: true, cell: (r) => ({ ...moneyCell(r.cost), cls: "num cost" }) },
    ];
    if (currency) cols.push({ head: `Cost (${currency.code}, converted)`, num: true, cell: (r) => convertedCell(r.cost) });
    cols.push({ head: "Cache hits", num: true, cell: (r) => int(r.cache_hits) });
    cols.push({ head: "Saved (USD)", num: true, cell: (r) => moneyCell(r.saved) });
    if (currency) cols.push({ head: `Saved (${currency.code}, converted)`, num: true, cell: (r) => convertedCell(r.saved) });
    return cols;
  }

  function budgetText(b) {
    if (!b) return { text: "—", cls: "muted" };
    const resets = b.resets ? `, resets ${b.resets.slice(0, 10)}` : "";
    const node = el("span", { class: "budget" });
    const bar = el("span", { class: "meter level-" + b.level });
    const fill = el("span", { class: "fill" });
    fill.style.width = Math.min(100, Math.max(0, b.utilisation_pct)) + "%"; // CSSOM: allowed by the CSP
    bar.append(fill);
    node.append(bar, el("span", { class: "level-text level-" + b.level },
      `${b.utilisation_pct}% of $${b.limit_usd} / ${b.period}${b.hard ? " (hard)" : ""}${resets}`));
    return { node, title: `spent $${b.spent_usd} of $${b.limit_usd}; ${b.level}` };
  }

  function barChart(id, rows, label, levelOf) {
    const svg = $(id);
    svg.replaceChildren();
    const shown = rows.slice(0, 25);
    const h = 22;
    svg.setAttribute("viewBox", `0 0 1000 ${Math.max(1, shown.length) * h}`);
    shown.forEach((r, i) => {
      const y = i * h;
      svg.append(svgEl("text", { x: 0, y: y + 15, class: "label" }, label(r)));
      const width = Math.max(r.cost_nanos > 0 ? 1 : 0, r.bar_pct * 6.2);
      svg.append(svgEl("rect", { x: 220, y: y + 3, width: width.toFixed(1), height: h - 6,
        class: "bar level-" + (levelOf ? levelOf(r) : "ok") }));
      svg.append(svgEl("text", { x: 226 + width, y: y + 15, class: "value" }, r.cost.display));
    });
    if (rows.length > shown.length) {
      svg.setAttribute("aria-label", `Top ${shown.length} of ${rows.length}`);
    }
  }

  function dailyChart(days) {
    const svg = $("daily-chart");
    svg.replaceChildren();
    const n = Math.max(1, days.length);
    const w = 1000 / n;
    svg.setAttribute("viewBox", "0 0 1000 180");
    days.forEach((d, i) => {
      const hgt = d.bar_pct * 1.5;
      const rect = svgEl("rect", { x: (i * w + w * 0.1).toFixed(2), y: (160 - hgt).toFixed(2),
        width: Math.max(1, w * 0.8).toFixed(2), height: hgt.toFixed(2), class: "bar level-ok" });
      rect.append(svgEl("title", {}, `${d.day}: ${d.cost.display}`));
      svg.append(rect);
    });
    if (days.length) {
      svg.append(svgEl("text", { x: 0, y: 176, class: "label" }, days[0].day));
      svg.append(svgEl("text", { x: 1000, y: 176, class: "label end" }, days[days.length - 1].day));
    }
  }

  function link(id, path, extra) {
    $(id).setAttribute("href", path + windowQuery(extra));
  }

  function convertedLink(id, path) {
    if (!currency) return;
    link(id, path, { converted: "1" });
    $(id).hidden = false;
    $(id).textContent = `CSV with ${currency.code} (converted)`;
  }

  function errorsTable(id, data) {
    table(id, [
      { head: "Error type", cell: (r, t) => (t ? "Total" : r.error_type || "(none)") },
      { head: "Code", cell: (r) => r.error_code || "" },
      { head: "Status", cell: (r) => r.status_class || "" },
      { head: "Errors", num: true, cell: (r) => int(r.errors) },
      { head: "Share of requests", num: true, cell: (r) => (r.share_pct === undefined ? "" : r.share_pct + "%") },
    ], data.errors, { errors: data.total_errors, share_pct: undefined }, "No errors in this window.");
  }

  // ---- views ----------------------------------------------------------------------------------

  async function api(path) {
    const resp = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
    if (resp.status === 401) {
      location.assign("/ui/login");
      throw new Error("not logged in");
    }
    const body = await resp.json();
    if (!resp.ok) throw new Error((body.error && body.error.message) || resp.statusText);
    return body;
  }

  function showMeta(data, windowJson) {
    currency = data.currency;
    const w = windowJson;
    const midnight = (iso) => iso && iso.endsWith("T00:00:00.000Z");
    let span;
    if ((!w.since || midnight(w.since)) && (!w.until || midnight(w.until))) {
      const last = w.until ? new Date(Date.parse(w.until) - DAY).toISOString().slice(0, 10) : "today";
      span = `${w.since ? w.since.slice(0, 10) : "the beginning"} to ${last} (whole UTC days)`;
    } else {
      span = `${w.since || "the beginning"} to ${w.until || "now"} (UTC, end excluded)`;
    }
    $("window-label").textContent = `${w.label}: ${span}`;
    if (!params.get("period") && !params.get("since") && !params.get("until") && !params.get("last") && w.since) {
      $("month").value = w.since.slice(0, 7);
    }
    if (currency) {
      const note = $("currency-note");
      note.hidden = false;
      note.textContent = `${currency.code} amounts are ${currency.label}, for display only; USD is the amount billed and recorded.`;
    }
  }

  async function overview() {
    const [data, errors] = await Promise.all([api("/ui/api/customers" + windowQuery()),
      api("/ui/api/errors" + windowQuery())]);
    const rep = data.customers;
    showMeta(data, rep.window);
    const q = (id) => "/ui" + windowQuery({ customer: id });
    table("customers-table", [
      { head: "Customer", cell: (r, t) => (t ? "Total" : r.id === null ? { text: "(none)" } : { text: r.id, href: q(r.id) }) },
      { head: "Name", cell: (r) => r.name || "" },
      ...spendColumns(),
      { head: "Budget now", cell: (r, t) => (t ? "" : budgetText(r.budget)) },
    ], rep.groups, rep.total);
    barChart("customers-chart", rep.groups, (r) => r.name || r.id || "(none)", (r) => (r.budget ? r.budget.level : "ok"));
    errorsTable("errors-table", errors);
    link("customers-csv", "/ui/api/customers.csv");
    convertedLink("customers-csv-converted", "/ui/api/customers.csv");
    $("budgets-csv").setAttribute("href", "/ui/api/budgets.csv");
    link("errors-csv", "/ui/api/errors.csv");
    $("overview").hidden = false;
  }

  async function customerView(cid) {
    const base = "/ui/api/customer/" + encodeURIComponent(cid);
    const data = await api(base + windowQuery());
    showMeta(data, data.window);
    $("back").setAttribute("href", "/ui" + windowQuery());
    $("customer-title").textContent = data.name ? `${data.name} (${data.id})` : data.id;
    document.title = `llmgw · ${data.id}`;
    const total = data.daily.total;
    const cards = $("customer-cards");
    cards.replaceChildren();
    const hitRate = total.requests ? Math.round((1000 * total.cache_hits) / total.requests) / 10 : 0;
    for (const [label, value, id] of [
      ["Spend", total.cost.display + (currency ? ` · ${total.cost.converted} (converted)` : ""), "card-spend"],
      ["Requests", int(total.requests), "card-requests"],
      ["Cache hits", `${int(total.cache_hits)} (${hitRate}%)`, "card-hits"],
      ["Saved by the cache", total.saved.display, "card-saved"],
    ]) {
      const card = el("div", { class: "card", id });
      card.append(el("span", { class: "card-label" }, label), el("span", { class: "card-value" }, value));
      cards.append(card);
    }
    table("c-budgets-table", [
      { head: "Scope", cell: (b) => `${b.scope} ${b.name || b.scope_id}` },
      { head: "Period", cell: (b) => b.period + (b.hard ? " (hard)" : " (soft)") },
      { head: "Limit (USD)", num: true, cell: (b) => "$" + b.limit_usd },
      { head: "Spent (USD)", num: true, cell: (b) => "$" + b.spent_usd },
      { head: "Remaining (USD)", num: true, cell: (b) => "$" + b.remaining_usd },
      { head: "Used", cell: (b) => ({ text: `${b.utilisation_pct}%`, cls: "level-text level-" + b.level }) },
      { head: "Warns at", num: true, cell: (b) => b.warn_pct + "%" },
      { head: "Resets", cell: (b) => (b.resets ? b.resets.slice(0, 16).replace("T", " ") : "never") },
    ], data.budgets, null, "No budgets.");
    const dayCols = spendColumns();
    table("c-daily-table", [{ head: "Day (UTC)", cell: (r, t) => (t ? "Total" : r.day) }, ...dayCols],
      data.daily.days, data.daily.total);
    dailyChart(data.daily.days);
    table("c-models-table", [{ head: "Model", cell: (r, t) => (t ? "Total" : r.id || "(none)") }, ...spendColumns()],
      data.models.groups, data.models.total);
    table("c-keys-table", [
      { head: "Key", cell: (r, t) => (t ? "Total" : r.id || "(none)") },
      { head: "Name", cell: (r) => r.name || "" }, ...spendColumns()], data.keys.groups, data.keys.total);
    table("c-cache-table", [
      { head: "Cache outcome", cell: (r) => r.cache || "(not consulted)" },
      { head: "Requests", num: true, cell: (r) => int(r.requests) },
      { head: "Saved (USD)", num: true, cell: (r) => moneyCell(r.saved) },
    ], data.cache.outcomes, null);
    errorsTable("c-errors-table", data.errors);
    for (const t of ["daily", "models", "keys", "cache", "errors"]) {
      link(`c-${t}-csv`, `${base}/${t}.csv`);
      if (t !== "errors") convertedLink(`c-${t}-csv-converted`, `${base}/${t}.csv`);
    }
    $("c-budgets-csv").setAttribute("href", `${base}/budgets.csv`);
    $("customer").hidden = false;
  }

  async function main() {
    setupPicker();
    const status = $("status");
    try {
      const cid = params.get("customer");
      if (cid) await customerView(cid);
      else await overview();
      status.textContent = "";
      status.hidden = true;
      document.body.setAttribute("data-ready", "1");
    } catch (e) {
      status.textContent = "Could not load: " + e.message;
      status.className = "error";
      document.body.setAttribute("data-ready", "error");
    }
  }

  document.addEventListener("DOMContentLoaded", main);
})();
