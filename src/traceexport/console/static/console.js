// traceexport console: status, dead letters and the mapping playground, over the JSON API (docs/console-api.md).
// No framework and no innerHTML: every value from the API or a record is set with textContent.
(function () {
  "use strict";

  var TE = (window.traceexportConsole = {});
  var TOKEN_KEY = "traceexport.console.token";
  var SVG = "http://www.w3.org/2000/svg";

  // ---- small helpers ------------------------------------------------------------------------
  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (k === "text") node.textContent = attrs[k];
        else if (k === "cls") node.className = attrs[k];
        else node.setAttribute(k, attrs[k]);
      });
    }
    (children || []).forEach(function (c) { if (c != null) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function fmtNum(v, digits) {
    if (v == null) return "—";
    return Number(v).toLocaleString(undefined, { maximumFractionDigits: digits == null ? 1 : digits });
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
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return (i ? b.toFixed(1) : String(b)) + " " + units[i];
  }

  function fmtTime(t) {
    if (t == null) return "—";
    var d = new Date(t * 1000);
    return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function debounce(fn, ms) {
    var timer = null;
    return function () { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }

  // ---- API: bearer token, errors, the unreachable banner ------------------------------------
  function ApiError(status, message) { this.status = status; this.message = message; }

  var tokenWaiters = [];

  function api(path, options) {
    options = options || {};
    var headers = { Accept: "application/json" };
    var token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    var init = { method: options.method || "GET", headers: headers, cache: "no-store", credentials: "omit" };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = typeof options.body === "string" ? options.body : JSON.stringify(options.body);
    }
    return fetch(path, init).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (response.status === 503) {
          setUnreachable("HTTP 503: " + ((data && data.error) || "the daemon is stopping"));
          throw new ApiError(503, (data && data.error) || "the daemon is stopping");
        }
        setUnreachable(null);
        if (response.status === 401) {
          askToken(token ? "The token was refused; enter it again." : null);
          throw new ApiError(401, (data && data.error) || "unauthorized");
        }
        if (!response.ok) throw new ApiError(response.status, (data && data.error) || ("HTTP " + response.status));
        return data;
      });
    }, function (err) {
      setUnreachable(String((err && err.message) || err));
      throw new ApiError(0, "the daemon is unreachable");
    });
  }
  TE.api = api;

  function setUnreachable(reason) {
    var banner = $("banner");
    if (reason) {
      banner.textContent = "The daemon is unreachable (" + reason + "); retrying";
      banner.hidden = false;
    } else {
      banner.hidden = true;
      banner.textContent = "";
    }
  }

  function askToken(message) {
    var dialog = $("token-dialog"), msg = $("token-message");
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
    var value = $("token-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token-dialog").close();
    refreshAll();
  }

  // ---- confirmation dialog ------------------------------------------------------------------
  function confirmAction(text) {
    var dialog = $("confirm-dialog");
    $("confirm-text").textContent = text;
    return new Promise(function (resolve) {
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
      $("confirm-ok").focus();
    });
  }

  // ---- routing -----------------------------------------------------------------------------
  var VIEWS = ["status", "dead-letters", "playground"];

  function route() {
    var hash = location.hash.replace(/^#/, "");
    var q = hash.indexOf("?");
    var name = q >= 0 ? hash.slice(0, q) : hash;
    var params = new URLSearchParams(q >= 0 ? hash.slice(q + 1) : "");
    if (VIEWS.indexOf(name) < 0) name = "status";
    VIEWS.forEach(function (v) {
      $("view-" + v).hidden = v !== name;
      $("tab-" + v).classList.toggle("active", v === name);
    });
    document.body.setAttribute("data-view", name);
    if (name === "dead-letters") DL.open(params);
    if (name === "playground") PG.open();
    if (name === "status") { Status.renderPlots(); }
  }

  // ---- Status ------------------------------------------------------------------------------
  var Status = {
    last: null,
    history: null,
    sinkNames: [],

    poll: function () {
      api("/api/status").then(function (data) { Status.last = data; Status.render(data); })
        .catch(function () {})
        .then(function () { setTimeout(Status.poll, 2000); });
    },

    pollHistory: function () {
      api("/api/history").then(function (data) { Status.history = data; Status.renderPlots(); })
        .catch(function () {})
        .then(function () { setTimeout(Status.pollHistory, 5000); });
    },

    render: function (s) {
      $("meta").textContent = "v" + s.version;
      var ready = $("ready");
      ready.textContent = s.ready ? "ready" : "not ready";
      ready.className = "pill " + (s.ready ? "ok" : "bad");
      ready.setAttribute("data-ready", String(!!s.ready));
      $("not-ready-reason").textContent = s.ready ? "" : (s.not_ready_reason || "");
      var sp = s.spool || {};
      $("spool-text").textContent = fmtBytes(sp.bytes) + " of " + fmtBytes(sp.max_bytes);
      var frac = sp.max_bytes ? Math.min(1, (sp.bytes || 0) / sp.max_bytes) : 0;
      var bar = $("spool-bar");
      bar.style.width = (frac * 100).toFixed(1) + "%";
      bar.classList.toggle("warn", frac > 0.8);
      $("spool-records").textContent = fmtNum(sp.records, 0) + " records" + (sp.dir ? " in " + sp.dir : "");
      $("updated").textContent = new Date(s.time * 1000).toLocaleTimeString();
      var totalDl = 0;
      (s.sinks || []).forEach(function (k) { totalDl += k.dead_letters || 0; });
      $("dl-badge").textContent = totalDl ? String(totalDl) : "";
      // The open dead-letter list follows the counts (unless the user is in the middle of a selection).
      if (totalDl !== DL.countSeen && DL.loaded && !$("view-dead-letters").hidden && !DL.selectedIds().length) {
        DL.countSeen = totalDl;
        DL.reload();
      }
      Status.sinkNames = (s.sinks || []).map(function (k) { return k.name; });
      var box = $("sinks");
      var seen = {};
      (s.sinks || []).forEach(function (sink) {
        seen[sink.name] = true;
        var card = box.querySelector('[data-sink="' + CSS.escape(sink.name) + '"]') || Status.card(box, sink);
        Status.fill(card, sink);
      });
      Array.prototype.slice.call(box.children).forEach(function (card) {
        if (!seen[card.getAttribute("data-sink")]) box.removeChild(card);
      });
    },

    card: function (box, sink) {
      var card = el("article", { cls: "card", "data-sink": sink.name });
      var head = el("div", { cls: "card-head" }, [
        el("h2", { text: sink.name }), el("span", { cls: "muted", text: sink.type })
      ]);
      card.appendChild(head);
      var big = el("div", { cls: "big" });
      [["rate_1m", "records/s, 1 min"], ["rate_5m", "records/s, 5 min"], ["queue_depth", "queued"],
        ["oldest_pending_age_seconds", "oldest pending"]].forEach(function (f) {
        big.appendChild(el("div", { cls: "stat" }, [
          el("span", { cls: "value", "data-field": f[0] }), el("span", { cls: "label", text: f[1] })]));
      });
      card.appendChild(big);
      var dl = el("dl", { cls: "kv" });
      function row(label, field, node) {
        dl.appendChild(el("dt", { text: label }));
        dl.appendChild(el("dd", null, [node || el("span", { "data-field": field })]));
      }
      row("Delivery p50 / p95", "delivery");
      row("End to end p50 / p95", "e2e");
      row("Accepted / exported", "counts");
      row("Retries", "retried");
      var dlLink = el("a", { "data-field": "dead_letters", href: "#dead-letters?sink=" + encodeURIComponent(sink.name) });
      row("Dead letters", "dead_letters", dlLink);
      row("Requests", "requests");
      row("Rate limit", "rate_limit");
      card.appendChild(dl);
      box.appendChild(card);
      return card;
    },

    fill: function (card, k) {
      function set(field, text) {
        var node = card.querySelector('[data-field="' + field + '"]');
        if (node && node.textContent !== text) node.textContent = text;
      }
      set("rate_1m", fmtRate(k.rate_1m));
      set("rate_5m", fmtRate(k.rate_5m));
      set("queue_depth", fmtNum(k.queue_depth, 0));
      set("oldest_pending_age_seconds", fmtDuration(k.oldest_pending_age_seconds));
      var lat = k.latency || {};
      function pair(l) { return l ? fmtDuration(l.p50_seconds) + " / " + fmtDuration(l.p95_seconds) : "—"; }
      set("delivery", pair(lat.delivery));
      set("e2e", pair(lat.e2e));
      set("counts", fmtNum(k.accepted, 0) + " / " + fmtNum(k.exported, 0));
      set("retried", fmtNum(k.retried, 0));
      set("dead_letters", fmtNum(k.dead_letters, 0));
      card.querySelector('[data-field="dead_letters"]').classList.toggle("bad-text", (k.dead_letters || 0) > 0);
      var req = k.requests || {};
      set("requests", Object.keys(req).map(function (o) { return o + " " + fmtNum(req[o], 0); }).join(" · ") || "—");
      var rps = k.rate_limit ? k.rate_limit.requests_per_second : null;
      set("rate_limit", rps == null ? "unlimited" : fmtNum(rps, 2) + " requests/s");
    },

    renderPlots: function () {
      var h = Status.history;
      if (!h || $("view-status").hidden) return;
      var names = Status.sinkNames.slice();
      (h.points || []).forEach(function (p) {
        Object.keys(p.sinks || {}).forEach(function (n) { if (names.indexOf(n) < 0) names.push(n); });
      });
      plot($("plot-rate"), h.points || [], names, [{ key: "rate", dashed: false }], function (v) { return fmtNum(v, 1); });
      plot($("plot-latency"), h.points || [], names,
        [{ key: "delivery_p95_seconds", dashed: false }, { key: "e2e_p95_seconds", dashed: true }], fmtDuration);
    }
  };

  // An SVG line plot over the last hour: one series per sink (and per key), gaps where values are null.
  function plot(box, points, names, keys, fmtY) {
    var W = 560, H = 170, L = 52, R = 10, T = 10, B = 24;
    var now = points.length ? Math.max(points[points.length - 1].time, Date.now() / 1000 - 5) : Date.now() / 1000;
    var t0 = now - 3600;
    var max = 0;
    points.forEach(function (p) {
      names.forEach(function (n) {
        var s = (p.sinks || {})[n];
        keys.forEach(function (k) { if (s && s[k.key] != null && s[k.key] > max) max = s[k.key]; });
      });
    });
    max = max > 0 ? max * 1.1 : 1;
    function x(t) { return L + (W - L - R) * (t - t0) / 3600; }
    function y(v) { return T + (H - T - B) * (1 - v / max); }
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", role: "img" });
    [0, 0.5, 1].forEach(function (f) {
      var yy = y(max * f);
      root.appendChild(svg("line", { x1: L, x2: W - R, y1: yy, y2: yy, class: "grid-line" }));
      var label = svg("text", { x: L - 6, y: yy + 4, class: "axis", "text-anchor": "end" });
      label.textContent = f === 0 ? "0" : fmtY(max * f);
      root.appendChild(label);
    });
    [[t0, "−60 min"], [t0 + 1800, "−30 min"], [now, "now"]].forEach(function (m, i) {
      var label = svg("text", { x: x(m[0]), y: H - 6, class: "axis", "text-anchor": ["start", "middle", "end"][i] });
      label.textContent = m[1];
      root.appendChild(label);
    });
    names.forEach(function (n, i) {
      keys.forEach(function (k) {
        var seg = [];
        function flush() {
          if (seg.length > 1) {
            root.appendChild(svg("polyline", { points: seg.join(" "), class: "series s" + (i % 8) + (k.dashed ? " dashed" : ""), "data-series": n + ":" + k.key }));
          } else if (seg.length === 1) {
            var xy = seg[0].split(",");
            root.appendChild(svg("circle", { cx: xy[0], cy: xy[1], r: 2, class: "dot s" + (i % 8) }));
          }
          seg = [];
        }
        points.forEach(function (p) {
          var s = (p.sinks || {})[n];
          if (p.time < t0 || !s || s[k.key] == null) { flush(); return; }
          seg.push(x(p.time).toFixed(1) + "," + y(s[k.key]).toFixed(1));
        });
        flush();
      });
    });
    clear(box);
    box.appendChild(root);
    var legend = el("div", { cls: "legend" });
    names.forEach(function (n, i) {
      legend.appendChild(el("span", { cls: "key" }, [el("span", { cls: "swatch s" + (i % 8) }), n]));
    });
    if (!points.length) legend.appendChild(el("span", { cls: "muted", text: "no history yet" }));
    box.appendChild(legend);
  }

  // ---- Dead letters ------------------------------------------------------------------------
  var DL = {
    entries: [],
    total: 0,
    selected: {},
    openId: null,
    loaded: false,
    countSeen: null,

    open: function (params) {
      if (params.has("sink")) {
        DL.ensureSinkOption(params.get("sink"));
        $("dl-sink").value = params.get("sink");
        history.replaceState(null, "", "#dead-letters");
        DL.reload();
      } else if (!DL.loaded) {
        DL.reload();
      }
    },

    ensureSinkOption: function (name) {
      var select = $("dl-sink");
      var exists = Array.prototype.some.call(select.options, function (o) { return o.value === name; });
      if (!exists && name) select.appendChild(el("option", { value: name, text: name }));
    },

    query: function (afterId) {
      var q = new URLSearchParams();
      var sink = $("dl-sink").value, reason = $("dl-reason").value.trim();
      var minAge = $("dl-min-age").value, maxAge = $("dl-max-age").value;
      if (sink) q.set("sink", sink);
      if (reason) q.set("reason", reason);
      if (minAge !== "") q.set("min_age", String(Number(minAge) * 60));
      if (maxAge !== "") q.set("max_age", String(Number(maxAge) * 60));
      q.set("limit", "100");
      if (afterId != null) q.set("after_id", String(afterId));
      return "/api/dead-letters?" + q.toString();
    },

    reload: function () {
      DL.loaded = true;
      return api(DL.query(null)).then(function (data) {
        DL.entries = data.entries || [];
        DL.total = data.total || 0;
        DL.selected = {};
        (data.sinks || []).forEach(DL.ensureSinkOption);
        DL.render();
      }).catch(function (e) { DL.showResult(e.message, true); });
    },

    more: function () {
      var last = DL.entries.length ? DL.entries[DL.entries.length - 1].id : null;
      api(DL.query(last)).then(function (data) {
        DL.entries = DL.entries.concat(data.entries || []);
        DL.render();
      }).catch(function (e) { DL.showResult(e.message, true); });
    },

    render: function () {
      var body = $("dl-rows");
      clear(body);
      DL.entries.forEach(function (e) {
        var box = el("input", { type: "checkbox", "aria-label": "select " + e.id });
        box.checked = !!DL.selected[e.id];
        box.addEventListener("click", function (ev) { ev.stopPropagation(); });
        box.addEventListener("change", function () {
          if (box.checked) DL.selected[e.id] = true; else delete DL.selected[e.id];
          DL.updateToolbar();
        });
        var tr = el("tr", { "data-id": String(e.id), cls: e.id === DL.openId ? "open" : "" }, [
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
        tr.addEventListener("click", function () { DL.show(e.id); });
        body.appendChild(tr);
      });
      $("dl-empty").hidden = DL.entries.length > 0;
      // The total counts entries past the last page; "more" reads past the highest id shown.
      $("dl-more").hidden = DL.entries.length >= DL.total;
      DL.updateToolbar();
    },

    selectedIds: function () {
      return Object.keys(DL.selected).map(Number);
    },

    updateToolbar: function () {
      var n = DL.selectedIds().length;
      $("dl-replay-selected").disabled = n === 0;
      $("dl-purge-selected").disabled = n === 0;
      $("dl-all").checked = n > 0 && n === DL.entries.length;
      $("dl-count").textContent = "Showing " + DL.entries.length + " of " + DL.total + (n ? " · " + n + " selected" : "");
    },

    show: function (id) {
      api("/api/dead-letters/" + encodeURIComponent(id)).then(function (e) {
        DL.openId = e.id;
        var fields = $("dl-entry-fields");
        clear(fields);
        $("dl-entry-title").textContent = "Entry " + e.id;
        var order = ["id", "sink", "record_type", "record_key", "app_id", "reason", "status_code", "permanent",
          "attempts", "first_attempt", "last_attempt"];
        var keys = order.filter(function (k) { return k in e; })
          .concat(Object.keys(e).filter(function (k) { return order.indexOf(k) < 0 && k !== "record"; }));
        keys.forEach(function (k) {
          var v = e[k];
          if (k === "first_attempt" || k === "last_attempt") v = fmtTime(v);
          else if (v !== null && typeof v === "object") v = JSON.stringify(v);
          fields.appendChild(el("dt", { text: k.replace(/_/g, " ") }));
          fields.appendChild(el("dd", { "data-field": k, text: v == null ? "—" : String(v) }));
        });
        $("dl-entry-record").textContent = JSON.stringify(e.record, null, 2);
        $("dl-entry").hidden = false;
        Array.prototype.forEach.call($("dl-rows").children, function (tr) {
          tr.classList.toggle("open", tr.getAttribute("data-id") === String(e.id));
        });
      }).catch(function (err) { DL.showResult(err.message, true); });
    },

    closeEntry: function () {
      DL.openId = null;
      $("dl-entry").hidden = true;
      Array.prototype.forEach.call($("dl-rows").children, function (tr) { tr.classList.remove("open"); });
    },

    act: function (action, ids) {
      if (!ids.length) return;
      var what = ids.length === 1 ? "1 entry" : ids.length + " entries";
      var text = action === "replay"
        ? "Replay " + what + "? They go back to their sink's queue and are sent again."
        : "Purge " + what + "? They are deleted for good.";
      confirmAction(text).then(function (ok) {
        if (!ok) return;
        api("/api/dead-letters/" + action, { method: "POST", body: { ids: ids } }).then(function (r) {
          if (action === "replay") {
            var per = Object.keys(r.replayed || {}).map(function (s) { return s + ": " + r.replayed[s]; }).join(", ");
            DL.showResult("Replayed " + r.total + (per ? " (" + per + ")" : ""), false);
          } else {
            DL.showResult("Purged " + r.purged, false);
          }
          if (DL.openId != null && ids.indexOf(DL.openId) >= 0) DL.closeEntry();
          DL.reload();
        }).catch(function (e) { DL.showResult(action + " failed: " + e.message, true); });
      });
    },

    showResult: function (text, bad) {
      var r = $("dl-result");
      r.textContent = text;
      r.classList.toggle("bad-text", !!bad);
    },

    init: function () {
      $("dl-filters").addEventListener("submit", function (ev) { ev.preventDefault(); DL.reload(); });
      $("dl-sink").addEventListener("change", DL.reload);
      $("dl-reason").addEventListener("input", debounce(DL.reload, 400));
      $("dl-more").addEventListener("click", DL.more);
      $("dl-all").addEventListener("change", function () {
        DL.selected = {};
        if ($("dl-all").checked) DL.entries.forEach(function (e) { DL.selected[e.id] = true; });
        DL.render();
      });
      $("dl-replay-selected").addEventListener("click", function () { DL.act("replay", DL.selectedIds()); });
      $("dl-purge-selected").addEventListener("click", function () { DL.act("purge", DL.selectedIds()); });
      $("dl-entry-replay").addEventListener("click", function () { DL.act("replay", [DL.openId]); });
      $("dl-entry-purge").addEventListener("click", function () { DL.act("purge", [DL.openId]); });
      $("dl-entry-close").addEventListener("click", DL.closeEntry);
    }
  };

  // ---- Playground --------------------------------------------------------------------------
  var PG = {
    info: null,
    seq: 0,
    result: null,

    open: function () {
      if (PG.info) return;
      api("/api/playground").then(function (info) {
        PG.info = info;
        var backend = $("pg-backend");
        clear(backend);
        (info.backends || []).forEach(function (b) { backend.appendChild(el("option", { value: b, text: b })); });
        var sample = $("pg-sample");
        while (sample.options.length > 1) sample.remove(1);
        (info.samples || []).forEach(function (s, i) {
          sample.appendChild(el("option", { value: String(i), text: s.name + " (" + s.record_type + ")" }));
        });
        if ($("pg-show-builtin").checked) PG.showBuiltin();
        if ($("pg-record").value.trim()) PG.remap();
      }).catch(function (e) { PG.state(e.message, true); });
    },

    pickSample: function () {
      var i = $("pg-sample").value;
      if (i === "" || !PG.info) return;
      $("pg-record").value = JSON.stringify(PG.info.samples[Number(i)].record, null, 2);
      PG.remap();
    },

    showBuiltin: function () {
      var on = $("pg-show-builtin").checked;
      $("pg-builtin").hidden = !on;
      if (!on) return;
      var backend = $("pg-backend").value;
      if (!backend) return;
      $("pg-builtin-text").textContent = "Loading…";
      api("/api/playground/mapping?backend=" + encodeURIComponent(backend)).then(function (m) {
        $("pg-builtin-file").textContent = m.file;
        $("pg-builtin-text").textContent = m.text;
      }).catch(function (e) { $("pg-builtin-text").textContent = e.message; });
    },

    state: function (text, bad) {
      var s = $("pg-state");
      s.textContent = text;
      s.classList.toggle("bad-text", !!bad);
    },

    remap: function () {
      if (!PG.info) return;
      var record = $("pg-record").value;
      if (!record.trim()) { PG.state("Pick a sample or paste a record.", false); return; }
      var body = JSON.stringify({ backend: $("pg-backend").value, record: record, override: $("pg-override").value });
      var size = new Blob([body]).size, max = PG.info.max_body_bytes;
      if (max && size > max) {
        PG.state("The input is " + fmtBytes(size) + "; the playground takes at most " + fmtBytes(max) + ".", true);
        return;
      }
      var seq = ++PG.seq;
      PG.state("Mapping…", false);
      api("/api/playground/map", { method: "POST", body: body }).then(function (r) {
        if (seq === PG.seq) PG.render(r);
      }).catch(function (e) {
        if (seq !== PG.seq) return;
        PG.state(e.status === 413 ? "The input is larger than the daemon takes (" + e.message + ")." : e.message, true);
      });
    },

    render: function (r) {
      PG.result = r;
      var err = $("pg-error"), problems = $("pg-problems");
      err.hidden = !r.error;
      err.textContent = r.error || "";
      clear(problems);
      (r.problems || []).forEach(function (p) {
        var where = (p.file || "override.yaml") + (p.line != null ? " line " + p.line : "");
        problems.appendChild(el("li", { "data-line": p.line == null ? "" : String(p.line) }, [
          el("span", { cls: "where", text: where }), p.path ? el("code", { text: p.path }) : null,
          el("span", { text: " " + p.message })]));
      });
      problems.hidden = !(r.problems || []).length;
      var payloads = r.payloads || [], requests = r.requests || [];
      PG.state(r.ok
        ? (r.record_type || "record") + " → " + payloads.length + " payload(s), " + requests.length + " request(s)"
        : (r.error ? "The record could not be mapped." : "The override has problems."), !r.ok);
      var pbox = $("pg-payloads");
      clear(pbox);
      payloads.forEach(function (p, i) {
        var det = el("details", { cls: "payload", "data-entity": p.entity || "", "data-index": String(i) }, [
          el("summary", null, [el("strong", { text: p.entity || "payload" }), " ",
            el("span", { cls: "muted", text: (p.kind || "") + (p.key ? " · " + p.key : "") })])
        ]);
        det.open = true;
        det.appendChild(jsonTree(p.body, [], function (path, node) { PG.select(p, path, node); }));
        pbox.appendChild(det);
      });
      var rbox = $("pg-requests");
      clear(rbox);
      requests.forEach(function (body, i) {
        var det = el("details", { cls: "request" }, [el("summary", { text: "Request " + (i + 1) }),
          el("pre", { cls: "code", text: JSON.stringify(body, null, 2) })]);
        det.open = requests.length <= 3;
        rbox.appendChild(det);
      });
      PG.clearProvenance();
    },

    clearProvenance: function () {
      $("prov-empty").hidden = false;
      $("prov-fields").hidden = true;
    },

    select: function (payload, path, node) {
      Array.prototype.forEach.call(document.querySelectorAll(".tree .selected"), function (n) { n.classList.remove("selected"); });
      node.classList.add("selected");
      var best = null;
      (payload.provenance || []).forEach(function (entry) {
        var p = entry.path || [];
        if (p.length > path.length) return;
        for (var i = 0; i < p.length; i++) if (String(p[i]) !== String(path[i])) return;
        if (!best || p.length > best.path.length) best = entry;
      });
      var box = $("prov-fields");
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
        var spec = typeof best.spec === "string" ? best.spec : JSON.stringify(best.spec, null, 2);
        box.appendChild(el("dt", { text: "Spec" }));
        box.appendChild(el("dd", null, [el("pre", { cls: "code", "data-field": "spec", text: spec == null ? "" : spec })]));
      }
      $("prov-empty").hidden = true;
      box.hidden = false;
    },

    init: function () {
      var later = debounce(PG.remap, 400);
      $("pg-sample").addEventListener("change", PG.pickSample);
      $("pg-record").addEventListener("input", later);
      $("pg-override").addEventListener("input", later);
      $("pg-backend").addEventListener("change", function () { PG.showBuiltin(); later(); });
      $("pg-show-builtin").addEventListener("change", PG.showBuiltin);
    }
  };

  function pathText(path) {
    return path.length ? path.map(function (p) { return typeof p === "number" ? "[" + p + "]" : p; }).join(".").replace(/\.\[/g, "[") : "(body)";
  }

  // A collapsible JSON tree; every field is clickable and carries its path as data-path (JSON).
  function jsonTree(value, path, onSelect) {
    var root = el("div", { cls: "tree" });
    root.appendChild(node(null, value, path));
    return root;

    function node(key, v, p) {
      var row = el("div", { cls: "node" });
      var line = el("div", { cls: "line" });
      var isObj = v !== null && typeof v === "object";
      var toggle = el("span", { cls: "toggle" + (isObj ? "" : " leaf"), text: isObj ? "▾" : "" });
      line.appendChild(toggle);
      var field = el("span", { cls: "field", "data-path": JSON.stringify(p), tabindex: "0" });
      if (key !== null) field.appendChild(el("span", { cls: typeof key === "number" ? "idx" : "key", text: typeof key === "number" ? String(key) : JSON.stringify(key) }));
      if (key !== null) field.appendChild(el("span", { cls: "punct", text: ": " }));
      if (isObj) {
        var arr = Array.isArray(v), n = arr ? v.length : Object.keys(v).length;
        field.appendChild(el("span", { cls: "punct", text: arr ? "[" + n + "]" : "{" + n + "}" }));
      } else {
        field.appendChild(el("span", { cls: "v-" + (v === null ? "null" : typeof v), text: JSON.stringify(v) }));
      }
      function pick(ev) { ev.stopPropagation(); onSelect(p, field); }
      field.addEventListener("click", pick);
      field.addEventListener("keydown", function (ev) { if (ev.key === "Enter") pick(ev); });
      line.appendChild(field);
      row.appendChild(line);
      if (isObj) {
        var kids = el("div", { cls: "children" });
        if (Array.isArray(v)) v.forEach(function (item, i) { kids.appendChild(node(i, item, p.concat([i]))); });
        else Object.keys(v).forEach(function (k) { kids.appendChild(node(k, v[k], p.concat([k]))); });
        row.appendChild(kids);
        toggle.addEventListener("click", function () {
          var closed = kids.hidden = !kids.hidden;
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
  }

  function start() {
    $("token-form").addEventListener("submit", onTokenSubmit);
    $("token-dialog").addEventListener("cancel", function (ev) { ev.preventDefault(); });
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
