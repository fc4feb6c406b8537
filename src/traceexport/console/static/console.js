// traceexport console: status, dead letters and the mapping playground, over the JSON API (docs/console-api.md).
// No framework and no innerHTML: every value from the API or a record is set with textContent.
(() => {
  "use strict";

  const TE = (window.traceexportConsole = {});
  const TOKEN_KEY = "traceexport.console.token";
  const SVG = "http://www.w3.org/2000/svg";

  // ---- small helpers ------------------------------------------------------------------------
  function $(id) { return document.getElementById(id); }

  // Characters that reorder or hide the text around them: bidirectional embeddings, overrides and isolates
  // (a backend's "bad \u202egnp.exe" reads "bad exe.png"), zero-width spaces and joiners between words, BOM.
  const HIDDEN = /[\u202a-\u202e\u2066-\u2069\u200b\u2060-\u2064\ufeff]/g;

  // Text from outside (records, reasons, errors) with those characters shown as the \uXXXX escape JSON uses.
  function visible(text) {
    return String(text).replace(HIDDEN, c => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
  }

  // An element with attributes ("text": textContent, "cls": className) and children (nodes or text); text and
  // a title are shown through visible().
  function el(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = visible(v);
      else if (k === "title") node.title = visible(v);
      else if (k === "cls") node.className = v;
      else node.setAttribute(k, v);
    }
    node.append(...children.filter(c => c != null));
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  function clear(node) { node.replaceChildren(); }

  function fmtNum(v, digits) {
    return v == null ? "—" : Number(v).toLocaleString(undefined, { maximumFractionDigits: digits ?? 1 });
  }

  function fmtRate(v) { return v == null ? "—" : fmtNum(v, 2) + "/s"; }

  function fmtDuration(s) {
    if (s == null) return "—";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    if (s < 3600) return Math.floor(s / 60) + "m " + Math.round(s % 60) + "s";
    return Math.floor(s / 3600) + "h " + Math.round((s % 3600) / 60) + "m";
  }

  function fmtBytes(b) {
    if (b == null) return "—";
    let units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return (i ? b.toFixed(1) : String(b)) + " " + units[i];
  }

  function fmtTime(t) {
    if (t == null) return "—";
    let d = new Date(t * 1000);
    return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function debounce(fn, ms) {
    let timer = null;
    return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }

  // ---- API: bearer token, errors, the unreachable banner ------------------------------------
  class ApiError extends Error { constructor(status, message) { super(message); this.status = status; } }
  // 401 brings up the token form and 0/503 the banner: neither needs its own message in a view.
  function shown(e) { return !(e instanceof ApiError) || ![0, 401, 503].includes(e.status); }

  // A console token is printable ASCII (the daemon refuses any other); a header cannot carry more, and fetch()
  // throws on a character beyond Latin-1, which would read as "unreachable" with no way to type it again.
  const SENDABLE_TOKEN = /^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$/;

  async function api(path, options = {}) {
    let token = sessionStorage.getItem(TOKEN_KEY);
    if (token && !SENDABLE_TOKEN.test(token)) { sessionStorage.removeItem(TOKEN_KEY); token = null; }
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const body = typeof options.body === "object" ? JSON.stringify(options.body) : options.body;
    let response, data = null;
    try {
      response = await fetch(path, { method: options.method || "GET", headers, body, cache: "no-store", credentials: "omit" });
      data = JSON.parse((await response.text()) || "null");
    } catch (err) {
      if (!response) {
        setUnreachable(err.message || String(err));
        throw new ApiError(0, "the daemon is unreachable");
      }
    }
    const error = (data && data.error) || "HTTP " + response.status;
    setUnreachable(response.status === 503 ? "HTTP 503: " + error : null);
    if (response.status === 401) askToken(token ? "The token was refused; enter it again." : null);
    if (!response.ok) throw new ApiError(response.status, error);
    return data;
  }
  TE.api = api;

  function setUnreachable(reason) {
    let banner = $("banner");
    if (reason) {
      banner.textContent = visible("The daemon is unreachable (" + reason + "); retrying");
      banner.hidden = false;
      document.body.classList.add("stale");
    } else {
      document.body.classList.remove("stale");
      banner.hidden = true;
      banner.textContent = "";
    }
  }

  function askToken(message) {
    let dialog = $("token-dialog"), msg = $("token-message");
    msg.textContent = message || "";
    msg.hidden = !message;
    if (!dialog.open) {
      $("token-input").value = "";
      dialog.showModal();
      $("token-input").focus();
    }
  }

  function onTokenSubmit(ev) {
    ev.preventDefault();
    let value = $("token-input").value.trim();
    if (!value) return;
    if (!SENDABLE_TOKEN.test(value)) {
      let msg = $("token-message");
      msg.textContent = "A console token is printable ASCII (letters, digits, punctuation); this one is not.";
      msg.hidden = false;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token-dialog").close();
    refreshAll();
  }

  // ---- confirmation dialog ------------------------------------------------------------------
  function confirmAction(text) {
    let dialog = $("confirm-dialog");
    $("confirm-text").textContent = text;
    return new Promise(resolve => {
      function done(answer) {
        $("confirm-ok").removeEventListener("click", ok);
        $("confirm-cancel").removeEventListener("click", cancel);
        dialog.removeEventListener("cancel", cancel);
        if (dialog.open) dialog.close();
        resolve(answer);
      }
      function ok() { done(true); }
      function cancel(ev) { if (ev) ev.preventDefault(); done(false); }
      $("confirm-ok").addEventListener("click", ok);
      $("confirm-cancel").addEventListener("click", cancel);
      dialog.addEventListener("cancel", cancel);
      dialog.showModal();
      $("confirm-cancel").focus();  // Enter on a dialog just opened must not purge or replay
    });
  }

  // ---- routing -----------------------------------------------------------------------------
  let VIEWS = ["status", "dead-letters", "playground"];

  function route() {
    let hash = location.hash.replace(/^#/, "");
    let q = hash.indexOf("?");
    let name = q >= 0 ? hash.slice(0, q) : hash;
    let params = new URLSearchParams(q >= 0 ? hash.slice(q + 1) : "");
    if (!VIEWS.includes(name)) name = "status";
    VIEWS.forEach(v => {
      $("view-" + v).hidden = v !== name;
      $("tab-" + v).classList.toggle("active", v === name);
    });
    document.body.setAttribute("data-view", name);
    if (name === "dead-letters") DL.open(params);
    if (name === "playground") PG.open();
    if (name === "status") { Status.renderPlots(); }
  }

  // ---- Status ------------------------------------------------------------------------------
  let Status = {
    last: null,
    history: null,
    sinkNames: [],

    fetch() {
      return api("/api/status").then(data => { Status.last = data; Status.render(data); }, () => {});
    },

    fetchHistory() {
      return api("/api/history").then(data => { Status.history = data; Status.renderPlots(); }, () => {});
    },

    poll() { Status.fetch().then(() => { setTimeout(Status.poll, 2000); }); },

    pollHistory() { Status.fetchHistory().then(() => { setTimeout(Status.pollHistory, 5000); }); },

    render(s) {
      $("meta").textContent = "v" + s.version;
      let ready = $("ready");
      ready.textContent = s.ready ? "ready" : "not ready";
      ready.className = "pill " + (s.ready ? "ok" : "bad");
      ready.setAttribute("data-ready", String(!!s.ready));
      $("not-ready-reason").textContent = s.ready ? "" : visible(s.not_ready_reason || "");
      let sp = s.spool || {};
      $("spool-text").textContent = fmtBytes(sp.bytes) + " of " + fmtBytes(sp.max_bytes);
      let frac = sp.max_bytes ? Math.min(1, (sp.bytes || 0) / sp.max_bytes) : 0;
      let bar = $("spool-bar");
      bar.style.width = (frac * 100).toFixed(1) + "%";
      bar.classList.toggle("warn", frac > 0.8);
      $("spool-records").textContent = fmtNum(sp.records, 0) + " records" + (sp.dir ? " in " + visible(sp.dir) : "");
      $("updated").textContent = new Date(s.time * 1000).toLocaleTimeString();
      let totalDl = 0;
      (s.sinks || []).forEach(k => { totalDl += k.dead_letters || 0; });
      $("dl-badge").textContent = totalDl ? String(totalDl) : "";
      // The open dead-letter list follows the counts (unless the user is in the middle of a selection).
      if (totalDl !== DL.countSeen && DL.loaded && !$("view-dead-letters").hidden && !DL.selectedIds().length) {
        DL.countSeen = totalDl;
        DL.reload(true);
      }
      Status.sinkNames = (s.sinks || []).map(k => k.name);
      let box = $("sinks");
      let seen = {};
      (s.sinks || []).forEach(sink => {
        seen[sink.name] = true;
        let card = box.querySelector('[data-sink="' + CSS.escape(sink.name) + '"]') || Status.card(box, sink);
        Status.fill(card, sink);
      });
      Array.from(box.children).forEach(card => {
        if (!seen[card.getAttribute("data-sink")]) box.removeChild(card);
      });
    },

    card(box, sink) {
      let card = el("article", { cls: "card", "data-sink": sink.name }, [el("div", { cls: "card-head" }, [
        el("h2", { text: sink.name }), el("span", { cls: "muted", text: sink.type })])]);
      let big = el("div", { cls: "big" });
      [["rate_1m", "records/s, 1 min"], ["rate_5m", "records/s, 5 min"], ["queue_depth", "queued"],
        ["oldest_pending_age_seconds", "oldest pending"]].forEach(f => {
        big.appendChild(el("div", { cls: "stat" }, [
          el("span", { cls: "value", "data-field": f[0] }), el("span", { cls: "label", text: f[1] })]));
      });
      card.appendChild(big);
      let dl = el("dl", { cls: "kv" });
      function row(label, field, node) {
        dl.appendChild(el("dt", { text: label }));
        dl.appendChild(el("dd", null, [node || el("span", { "data-field": field })]));
      }
      row("Delivery p50 / p95, 5 min", "delivery");
      row("End to end p50 / p95, 5 min", "e2e");
      row("Delivery p50 / p95, all time", "delivery_total");  // since the spool began: what `status` shows
      row("End to end p50 / p95, all time", "e2e_total");
      row("Accepted / exported", "counts");
      row("Retries", "retried");
      let dlLink = el("a", { "data-field": "dead_letters", href: "#dead-letters?sink=" + encodeURIComponent(sink.name) });
      row("Dead letters", "dead_letters", dlLink);
      row("Requests", "requests");
      row("Rate limit", "rate_limit");
      card.appendChild(dl);
      box.appendChild(card);
      return card;
    },

    fill(card, k) {
      function set(field, text) {
        let node = card.querySelector('[data-field="' + field + '"]');
        if (node && node.textContent !== text) node.textContent = text;
      }
      set("rate_1m", fmtRate(k.rate_1m));
      set("rate_5m", fmtRate(k.rate_5m));
      set("queue_depth", fmtNum(k.queue_depth, 0));
      set("oldest_pending_age_seconds", fmtDuration(k.oldest_pending_age_seconds));
      let lat = k.latency || {};
      function pair(l) { return l ? fmtDuration(l.p50_seconds) + " / " + fmtDuration(l.p95_seconds) : "—"; }
      set("delivery", pair(lat.delivery));
      set("e2e", pair(lat.e2e));
      let total = k.latency_total || {};
      set("delivery_total", pair(total.delivery));
      set("e2e_total", pair(total.e2e));
      set("counts", fmtNum(k.accepted, 0) + " / " + fmtNum(k.exported, 0));
      set("retried", fmtNum(k.retried, 0));
      set("dead_letters", fmtNum(k.dead_letters, 0));
      card.querySelector('[data-field="dead_letters"]').classList.toggle("bad-text", (k.dead_letters || 0) > 0);
      let req = k.requests || {};
      set("requests", Object.keys(req).map(o => o + " " + fmtNum(req[o], 0)).join(" · ") || "—");
      let rps = k.rate_limit ? k.rate_limit.requests_per_second : null;
      set("rate_limit", rps == null ? "unlimited" : fmtNum(rps, 2) + " requests/s");
    },

    renderPlots() {
      let h = Status.history;
      if (!h || $("view-status").hidden) return;
      let names = Status.sinkNames.slice();
      (h.points || []).forEach(p => {
        Object.keys(p.sinks || {}).forEach(n => { if (!names.includes(n)) names.push(n); });
      });
      plot($("plot-rate"), h.points || [], names, [{ key: "rate", dashed: false }], v => fmtNum(v, 1));
      plot($("plot-latency"), h.points || [], names,
        [{ key: "delivery_p95_seconds", dashed: false }, { key: "e2e_p95_seconds", dashed: true }], fmtDuration);
    }
  };

  // An SVG line plot over the last hour: one series per sink (and per key), gaps where values are null.
  function plot(box, points, names, keys, fmtY) {
    let W = 560, H = 170, L = 52, R = 10, T = 10, B = 24;
    let now = points.length ? Math.max(points[points.length - 1].time, Date.now() / 1000 - 5) : Date.now() / 1000;
    // The last hour at most; while the history is young, the last ten minutes (or since its first point).
    const span = Math.min(3600, Math.max(600, points.length ? now - points[0].time : 0));
    let t0 = now - span;
    let max = 0;
    points.forEach(p => {
      names.forEach(n => {
        let s = (p.sinks || {})[n];
        keys.forEach(k => { if (s && s[k.key] != null && s[k.key] > max) max = s[k.key]; });
      });
    });
    max = max > 0 ? max * 1.1 : 1;
    function x(t) { return L + (W - L - R) * (t - t0) / span; }
    function y(v) { return T + (H - T - B) * (1 - v / max); }
    let root = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", role: "img" });
    [0, 0.5, 1].forEach(f => {
      let yy = y(max * f);
      root.appendChild(svg("line", { x1: L, x2: W - R, y1: yy, y2: yy, class: "grid-line" }));
      let label = svg("text", { x: L - 6, y: yy + 4, class: "axis", "text-anchor": "end" });
      label.textContent = f === 0 ? "0" : fmtY(max * f);
      root.appendChild(label);
    });
    const minutes = Math.round(span / 60);
    [[t0, "−" + minutes + " min"], [t0 + span / 2, "−" + Math.round(minutes / 2) + " min"], [now, "now"]].forEach((m, i) => {
      let label = svg("text", { x: x(m[0]), y: H - 6, class: "axis", "text-anchor": ["start", "middle", "end"][i] });
      label.textContent = m[1];
      root.appendChild(label);
    });
    names.forEach((n, i) => {
      keys.forEach(k => {
        let seg = [];
        function flush() {
          if (seg.length > 1) {
            root.appendChild(svg("polyline", { points: seg.join(" "), class: "series s" + (i % 8) + (k.dashed ? " dashed" : ""), "data-series": n + ":" + k.key }));
          } else if (seg.length === 1) {
            let xy = seg[0].split(",");
            root.appendChild(svg("circle", { cx: xy[0], cy: xy[1], r: 2, class: "dot s" + (i % 8) }));
          }
          seg = [];
        }
        points.forEach(p => {
          let s = (p.sinks || {})[n];
          if (p.time < t0 || !s || s[k.key] == null) { flush(); return; }
          seg.push(x(p.time).toFixed(1) + "," + y(s[k.key]).toFixed(1));
        });
        flush();
      });
    });
    clear(box);
    box.appendChild(root);
    let legend = el("div", { cls: "legend" });
    names.forEach((n, i) => {
      legend.appendChild(el("span", { cls: "key" }, [el("span", { cls: "swatch s" + (i % 8) }), n]));
    });
    if (!points.length) legend.appendChild(el("span", { cls: "muted", text: "no history yet" }));
    box.appendChild(legend);
  }

  // ---- Dead letters ------------------------------------------------------------------------
  const PAGE = 100, MAX_PAGE = 1000;
  let DL = {
    entries: [],
    total: 0,
    selected: {},
    openId: null,
    loaded: false,
    countSeen: null,
    queue: Promise.resolve(),  // list requests run one after another, each on the list the one before left
    following: false,  // a reload that follows the counts is queued and not started yet

    open(params) {
      if (params.has("sink")) {
        DL.ensureSinkOption(params.get("sink"));
        $("dl-sink").value = params.get("sink");
        history.replaceState(null, "", "#dead-letters");
        DL.reload();
      } else if (!DL.loaded) {
        DL.reload();
      }
    },

    ensureSinkOption(name) {
      let select = $("dl-sink");
      let exists = Array.from(select.options).some(o => o.value === name);
      if (!exists && name) select.appendChild(el("option", { value: name, text: name }));
    },

    query(afterId, limit) {
      let q = new URLSearchParams();
      let sink = $("dl-sink").value, reason = $("dl-reason").value.trim();
      let minAge = $("dl-min-age").value, maxAge = $("dl-max-age").value;
      if (sink) q.set("sink", sink);
      if (reason) q.set("reason", reason);
      if (minAge !== "") q.set("min_age", String(Number(minAge) * 60));
      if (maxAge !== "") q.set("max_age", String(Number(maxAge) * 60));
      q.set("limit", String(limit || PAGE));
      if (afterId != null) q.set("after_id", String(afterId));
      return "/api/dead-letters?" + q.toString();
    },

    // The list from its start: a page, or with keep as many entries as are shown (the pages "More" added stay
    // while dead letters keep arriving, as they do when a sink is down and the list follows the counts).
    reload(keep) {
      DL.loaded = true;
      keep = keep === true;
      if (keep && DL.following) return DL.queue;
      DL.following = DL.following || keep;
      return DL.enqueue(() => {
        if (keep) DL.following = false;
        return DL.read(keep ? Math.max(PAGE, DL.entries.length) : PAGE).then(data => {
          DL.entries = data.entries;
          DL.total = data.total || 0;
          DL.selected = {};
          (data.sinks || []).forEach(DL.ensureSinkOption);
          DL.render();
        });
      });
    },

    enqueue(task) {
      DL.queue = DL.queue.then(task).catch(e => { if (shown(e)) DL.showResult(e.message, true); });
      return DL.queue;
    },

    // The first `want` entries the filters match, a request per thousand (the API's largest page).
    async read(want) {
      let entries = [], data = null;
      while (entries.length < want) {
        let limit = Math.min(MAX_PAGE, want - entries.length);
        data = await api(DL.query(entries.length ? entries[entries.length - 1].id : null, limit));
        entries = entries.concat(data.entries || []);
        if ((data.entries || []).length < limit) break;
      }
      return { entries: entries, total: data.total, sinks: data.sinks };
    },

    more() {
      return DL.enqueue(() => {
        let last = DL.entries.length ? DL.entries[DL.entries.length - 1].id : null;
        return api(DL.query(last)).then(data => {
          DL.entries = DL.entries.concat(data.entries || []);
          DL.total = data.total || 0;
          DL.render();
        });
      });
    },

    render() {
      let body = $("dl-rows");
      clear(body);
      DL.entries.forEach(e => {
        let box = el("input", { type: "checkbox", "aria-label": "select " + e.id });
        box.checked = !!DL.selected[e.id];
        box.addEventListener("click", ev => { ev.stopPropagation(); });
        box.addEventListener("change", () => {
          if (box.checked) DL.selected[e.id] = true; else delete DL.selected[e.id];
          DL.updateToolbar();
        });
        let tr = el("tr", { "data-id": String(e.id), cls: e.id === DL.openId ? "open" : "" }, [
          el("td", null, [box]),
          el("td", { text: String(e.id) }),
          el("td", { text: e.sink }),
          el("td", { text: e.record_type || "—" }),
          el("td", { cls: "reason", text: e.reason || "", title: e.reason || "" }),
          el("td", { text: e.status_code == null ? "—" : String(e.status_code) }),
          el("td", { text: String(e.attempts) }),
          el("td", { cls: "nowrap", text: fmtTime(e.first_attempt) }),
          el("td", { cls: "nowrap", text: fmtTime(e.last_attempt) })
        ]);
        tr.addEventListener("click", () => { DL.show(e.id); });
        body.appendChild(tr);
      });
      $("dl-empty").hidden = DL.entries.length > 0;
      // The total counts entries past the last page; "more" reads past the highest id shown.
      $("dl-more").hidden = DL.entries.length >= DL.total;
      DL.updateToolbar();
    },

    selectedIds() {
      return Object.keys(DL.selected).map(Number);
    },

    updateToolbar() {
      let n = DL.selectedIds().length;
      $("dl-replay-selected").disabled = n === 0;
      $("dl-purge-selected").disabled = n === 0;
      $("dl-all").checked = n > 0 && n === DL.entries.length;
      $("dl-count").textContent = "Showing " + DL.entries.length + " of " + DL.total + (n ? " · " + n + " selected" : "");
    },

    show(id) {
      api("/api/dead-letters/" + encodeURIComponent(id)).then(e => {
        DL.openId = e.id;
        let fields = $("dl-entry-fields");
        clear(fields);
        $("dl-entry-title").textContent = "Entry " + e.id;
        let order = ["id", "sink", "record_type", "record_key", "app_id", "reason", "status_code", "permanent",
          "attempts", "first_attempt", "last_attempt"];
        let keys = order.filter(k => k in e)
          .concat(Object.keys(e).filter(k => !order.includes(k) && k !== "record"));
        keys.forEach(k => {
          let v = e[k];
          if (k === "first_attempt" || k === "last_attempt") v = fmtTime(v);
          else if (v !== null && typeof v === "object") v = JSON.stringify(v);
          fields.appendChild(el("dt", { text: k.replace(/_/g, " ") }));
          fields.appendChild(el("dd", { "data-field": k, text: v == null ? "—" : String(v) }));
        });
        $("dl-entry-record").textContent = visible(JSON.stringify(e.record, null, 2));
        $("dl-entry").hidden = false;
        Array.from($("dl-rows").children).forEach(tr => {
          tr.classList.toggle("open", tr.getAttribute("data-id") === String(e.id));
        });
      }).catch(err => { if (shown(err)) DL.showResult(err.message, true); });
    },

    closeEntry() {
      DL.openId = null;
      $("dl-entry").hidden = true;
      Array.from($("dl-rows").children).forEach(tr => { tr.classList.remove("open"); });
    },

    act(action, ids) {
      if (!ids.length) return;
      let one = ids.length === 1;
      let what = one ? "1 entry" : ids.length + " entries";
      let text = action === "replay"
        ? "Replay " + what + "? " + (one ? "It goes back to its sink's queue and is sent again."
                                          : "They go back to their sinks' queues and are sent again.")
        : "Purge " + what + "? " + (one ? "It is deleted for good." : "They are deleted for good.");
      confirmAction(text).then(ok => {
        if (!ok) return;
        api("/api/dead-letters/" + action, { method: "POST", body: { ids: ids } }).then(r => {
          if (action === "replay") {
            let per = Object.keys(r.replayed || {}).map(s => s + ": " + r.replayed[s]).join(", ");
            DL.showResult("Replayed " + r.total + (per ? " (" + per + ")" : ""), false);
          } else {
            DL.showResult("Purged " + r.purged, false);
          }
          if (DL.openId != null && ids.includes(DL.openId)) DL.closeEntry();
          DL.reload(true);
        }).catch(e => { DL.showResult(action + " failed: " + e.message, true); });
      });
    },

    showResult(text, bad) {
      let r = $("dl-result");
      r.textContent = visible(text);
      r.classList.toggle("bad-text", !!bad);
    },

    init() {
      $("dl-filters").addEventListener("submit", ev => { ev.preventDefault(); DL.reload(); });
      $("dl-sink").addEventListener("change", DL.reload);
      $("dl-reason").addEventListener("input", debounce(DL.reload, 400));
      $("dl-more").addEventListener("click", DL.more);
      $("dl-all").addEventListener("change", () => {
        DL.selected = {};
        if ($("dl-all").checked) DL.entries.forEach(e => { DL.selected[e.id] = true; });
        DL.render();
      });
      $("dl-replay-selected").addEventListener("click", () => { DL.act("replay", DL.selectedIds()); });
      $("dl-purge-selected").addEventListener("click", () => { DL.act("purge", DL.selectedIds()); });
      $("dl-entry-replay").addEventListener("click", () => { DL.act("replay", [DL.openId]); });
      $("dl-entry-purge").addEventListener("click", () => { DL.act("purge", [DL.openId]); });
      $("dl-entry-close").addEventListener("click", DL.closeEntry);
    }
  };

  // ---- Playground --------------------------------------------------------------------------
  let PG = {
    info: null,
    seq: 0,
    result: null,

    open() {
      if (PG.info) return;
      api("/api/playground").then(info => {
        PG.info = info;
        let backend = $("pg-backend");
        clear(backend);
        (info.backends || []).forEach(b => { backend.appendChild(el("option", { value: b, text: b })); });
        let sample = $("pg-sample");
        while (sample.options.length > 1) sample.remove(1);
        (info.samples || []).forEach((s, i) => {
          sample.appendChild(el("option", { value: String(i), text: s.name + " (" + s.record_type + ")" }));
        });
        if ($("pg-show-builtin").checked) PG.showBuiltin();
        if ($("pg-record").value.trim()) PG.remap();
      }).catch(e => { if (shown(e)) PG.state(e.message, true); });
    },

    pickSample() {
      let i = $("pg-sample").value;
      if (i === "" || !PG.info) return;
      $("pg-record").value = JSON.stringify(PG.info.samples[Number(i)].record, null, 2);
      PG.remap();
    },

    showBuiltin() {
      let on = $("pg-show-builtin").checked;
      $("pg-builtin").hidden = !on;
      if (!on) return;
      let backend = $("pg-backend").value;
      if (!backend) return;
      $("pg-builtin-text").textContent = "Loading…";
      api("/api/playground/mapping?backend=" + encodeURIComponent(backend)).then(m => {
        $("pg-builtin-file").textContent = m.file;
        $("pg-builtin-text").textContent = m.text;
      }).catch(e => { $("pg-builtin-text").textContent = visible(e.message); });
    },

    state(text, bad) {
      let s = $("pg-state");
      s.textContent = visible(text);
      s.classList.toggle("bad-text", !!bad);
    },

    remap() {
      if (!PG.info) return;
      let record = $("pg-record").value;
      if (!record.trim()) { PG.state("Pick a sample or paste a record.", false); return; }
      let body = JSON.stringify({ backend: $("pg-backend").value, record: record, override: $("pg-override").value });
      let size = new Blob([body]).size, max = PG.info.max_body_bytes;
      if (max && size > max) {
        PG.state("The input is " + fmtBytes(size) + "; the playground takes at most " + fmtBytes(max) + ".", true);
        return;
      }
      let seq = ++PG.seq;
      PG.state("Mapping…", false);
      api("/api/playground/map", { method: "POST", body: body }).then(r => {
        if (seq === PG.seq) PG.render(r);
      }).catch(e => {
        if (seq !== PG.seq || !shown(e)) return;
        PG.state(e.status === 413 ? "The input is larger than the daemon takes (" + e.message + ")." : e.message, true);
      });
    },

    render(r) {
      PG.result = r;
      let err = $("pg-error"), problems = $("pg-problems");
      err.hidden = !r.error;
      err.textContent = visible(r.error || "");
      clear(problems);
      (r.problems || []).forEach(p => {
        let where = (p.file || "override.yaml") + (p.line != null ? " line " + p.line : "");
        problems.appendChild(el("li", { "data-line": p.line == null ? "" : String(p.line) }, [
          el("span", { cls: "where", text: where }), p.path ? el("code", { text: p.path }) : null,
          el("span", { text: " " + p.message })]));
      });
      problems.hidden = !(r.problems || []).length;
      let payloads = r.payloads || [], requests = r.requests || [];
      PG.state(r.ok
        ? (r.record_type || "record") + " → " + payloads.length + " payload(s), " + requests.length + " request(s)"
        : (r.error ? "The record could not be mapped." : "The override has problems."), !r.ok);
      let pbox = $("pg-payloads");
      clear(pbox);
      payloads.forEach((p, i) => {
        let det = el("details", { cls: "payload", "data-entity": p.entity || "", "data-index": String(i) }, [
          el("summary", null, [el("strong", { text: p.entity || "payload" }), " ",
            el("span", { cls: "muted", text: (p.kind || "") + (p.key ? " · " + p.key : "") })])
        ]);
        det.open = true;
        det.appendChild(jsonTree(p.body, [], (path, node) => { PG.select(p, path, node); }));
        pbox.appendChild(det);
      });
      let rbox = $("pg-requests");
      clear(rbox);
      requests.forEach((body, i) => {
        let det = el("details", { cls: "request" }, [el("summary", { text: "Request " + (i + 1) }),
          el("pre", { cls: "code", text: JSON.stringify(body, null, 2) })]);
        det.open = requests.length <= 3;
        rbox.appendChild(det);
      });
      PG.clearProvenance();
    },

    clearProvenance() {
      $("prov-empty").hidden = false;
      $("prov-fields").hidden = true;
    },

    select(payload, path, node) {
      document.querySelectorAll(".tree .selected").forEach(n => { n.classList.remove("selected"); });
      node.classList.add("selected");
      let best = null;
      (payload.provenance || []).forEach(entry => {
        let p = entry.path || [];
        if (p.length > path.length) return;
        for (let i = 0; i < p.length; i++) if (String(p[i]) !== String(path[i])) return;
        if (!best || p.length > best.path.length) best = entry;
      });
      let box = $("prov-fields");
      clear(box);
      function row(k, v, field) {
        box.appendChild(el("dt", { text: k }));
        box.appendChild(el("dd", { "data-field": field, text: v }));
      }
      row("Field", pathText(path), "path");
      if (!best) {
        row("Produced by", "no provenance recorded for this field", "file");
      } else {
        row("File", best.file, "file");
        row("Line", best.line == null ? "—" : String(best.line), "line");
        row("Source", best.builtin ? "built-in mapping" : "your override", "builtin");
        if (best.path.length < path.length) row("Via", pathText(best.path), "via");
        let spec = typeof best.spec === "string" ? best.spec : JSON.stringify(best.spec, null, 2);
        box.appendChild(el("dt", { text: "Spec" }));
        box.appendChild(el("dd", null, [el("pre", { cls: "code", "data-field": "spec", text: spec == null ? "" : spec })]));
      }
      $("prov-empty").hidden = true;
      box.hidden = false;
    },

    init() {
      let later = debounce(PG.remap, 400);
      $("pg-sample").addEventListener("change", PG.pickSample);
      $("pg-record").addEventListener("input", later);
      $("pg-override").addEventListener("input", later);
      $("pg-backend").addEventListener("change", () => { PG.showBuiltin(); later(); });
      $("pg-show-builtin").addEventListener("change", PG.showBuiltin);
    }
  };

  function pathText(path) {
    return path.length ? path.map(p => typeof p === "number" ? "[" + p + "]" : p).join(".").replace(/\.\[/g, "[") : "(body)";
  }

  // A collapsible JSON tree; every field is clickable and carries its path as data-path (JSON). An object's
  // fields are built open while the tree holds fewer than TREE_OPEN of them; a larger one starts closed and is
  // built when opened (a record with thousands of inputs froze the page for many seconds building them all).
  const TREE_OPEN = 2000;

  function jsonTree(value, path, onSelect) {
    let budget = TREE_OPEN;
    let root = el("div", { cls: "tree" });
    root.appendChild(node(null, value, path));
    return root;

    function node(key, v, p) {
      let row = el("div", { cls: "node" });
      let line = el("div", { cls: "line" });
      let isObj = v !== null && typeof v === "object";
      let toggle = el("span", { cls: "toggle" + (isObj ? "" : " leaf"), text: isObj ? "▾" : "" });
      line.appendChild(toggle);
      let field = el("span", { cls: "field", "data-path": JSON.stringify(p), tabindex: "0" });
      if (key !== null) field.appendChild(el("span", { cls: typeof key === "number" ? "idx" : "key", text: typeof key === "number" ? String(key) : JSON.stringify(key) }));
      if (key !== null) field.appendChild(el("span", { cls: "punct", text: ": " }));
      if (isObj) {
        let arr = Array.isArray(v), n = arr ? v.length : Object.keys(v).length;
        field.appendChild(el("span", { cls: "punct", text: arr ? "[" + n + "]" : "{" + n + "}" }));
      } else {
        field.appendChild(el("span", { cls: "v-" + (v === null ? "null" : typeof v), text: JSON.stringify(v) }));
      }
      function pick(ev) { ev.stopPropagation(); onSelect(p, field); }
      field.addEventListener("click", pick);
      field.addEventListener("keydown", ev => { if (ev.key === "Enter") pick(ev); });
      line.appendChild(field);
      row.appendChild(line);
      if (isObj) {
        let kids = el("div", { cls: "children" });
        let keys = Array.isArray(v) ? v.map((_, i) => i) : Object.keys(v);
        let built = false;
        function build() {
          built = true;
          keys.forEach(k => { kids.appendChild(node(k, v[k], p.concat([k]))); });
        }
        if (keys.length <= budget) {
          budget -= keys.length;
          build();
        } else {
          kids.hidden = true;
          toggle.textContent = "▸";
        }
        row.appendChild(kids);
        toggle.addEventListener("click", () => {
          if (!built) { budget = TREE_OPEN; build(); }
          let closed = kids.hidden = !kids.hidden;
          toggle.textContent = closed ? "▸" : "▾";
        });
      }
      return row;
    }
  }

  // ---- start -------------------------------------------------------------------------------
  function refreshAll() {
    DL.loaded = false;
    PG.info = null;
    route();
    Status.fetch();
    Status.fetchHistory();
  }

  function start() {
    $("token-form").addEventListener("submit", onTokenSubmit);
    $("token-dialog").addEventListener("cancel", ev => { ev.preventDefault(); });
    DL.init();
    PG.init();
    window.addEventListener("hashchange", route);
    route();
    Status.poll();
    Status.pollHistory();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
