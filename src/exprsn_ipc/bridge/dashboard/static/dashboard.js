// The Bridge dashboard: renders the /dashboard Socket.IO feed.
// Everything received is inserted with textContent, never as HTML.
(function () {
  "use strict";

  var MAX_EVENTS = 200;
  var params = new URLSearchParams(window.location.search);
  var token = params.get("token");
  if (token && window.history && window.history.replaceState) {
    // Keep the token out of the address bar (and of anything copied from it).
    params.delete("token");
    var rest = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : ""));
  }

  function $(selector) { return document.querySelector(selector); }

  function cell(text, className) {
    var td = document.createElement("td");
    td.textContent = text === undefined || text === null ? "" : String(text);
    if (className) { td.className = className; }
    return td;
  }

  function row(cells, attrs) {
    var tr = document.createElement("tr");
    cells.forEach(function (c) { tr.appendChild(c); });
    Object.keys(attrs || {}).forEach(function (k) { tr.setAttribute(k, attrs[k]); });
    return tr;
  }

  function fill(tableId, rows) {
    var body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren.apply(body, rows);
  }

  function clock(ms) {
    var d = new Date(ms);
    var pad = function (n, w) { return String(n).padStart(w || 2, "0"); };
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
  }

  function setStatus(state, text) {
    var el = $("#status");
    el.className = "status status-" + state;
    el.dataset.state = state;
    el.textContent = text;
  }

  function renderStats(stats) {
    if (!stats || !stats.services) { return; }
    $("#summary").textContent =
      stats.services.length + " services · " + stats.connections.length + " connections · " +
      stats.totals.routed + " routed · backend " + stats.backend + " · up " + Math.round(stats.uptime) + " s";

    fill("services", stats.services.map(function (s) {
      return row([
        cell(s.name),
        cell(s.active ? "active" : "gone", s.active ? "ok" : "bad"),
        cell(s.replicas, "num"),
        cell(s.connections, "num"),
        cell(s.sent, "num"),
        cell(s.delivered, "num"),
        cell(s.rejected, s.rejected ? "num bad" : "num"),
      ], { "data-service": s.name });
    }));

    fill("connections", stats.connections.map(function (c) {
      return row([cell(c.id), cell(c.namespace), cell(c.mode + (c.bypass ? " (dev bypass)" : "")), cell(clock(c.connected))],
        { "data-service": c.fullName });
    }));

    fill("rates", stats.rates.map(function (r) {
      return row([cell(r.event, "event"), cell(r.rate.toFixed(2), "num"), cell(r.total, "num")], { "data-event": r.event });
    }));

    var limits = stats.rateLimits || {};
    $("#ratelimit-config").textContent = limits.enabled
      ? "enabled: " + limits.maxRequests + " requests per " + limits.window + " ms per service"
      : "disabled (IPC_RATE_LIMIT=false)";
    var usage = limits.usage || {};
    var denials = limits.denials || {};
    var names = Object.keys(usage).concat(Object.keys(denials)).filter(function (n, i, all) { return all.indexOf(n) === i; }).sort();
    fill("ratelimits", names.map(function (n) {
      var used = usage[n] || 0;
      var near = limits.maxRequests && used >= 0.8 * limits.maxRequests;
      return row([cell(n), cell(used, near ? "num warn" : "num"), cell(denials[n] || 0, denials[n] ? "num bad" : "num")]);
    }));

    var errors = [];
    var rejected = (stats.errors && stats.errors.rejected) || {};
    Object.keys(rejected).sort().forEach(function (code) { errors.push(row([cell("Bridge"), cell(code), cell(rejected[code], "num bad")])); });
    var perService = (stats.errors && stats.errors.perService) || {};
    Object.keys(perService).sort().forEach(function (svc) {
      Object.keys(perService[svc]).sort().forEach(function (code) {
        errors.push(row([cell(svc), cell(code), cell(perService[svc][code], "num bad")]));
      });
    });
    if (stats.errors && stats.errors.feedSkipped) {
      errors.push(row([cell("dashboard"), cell("events not shown (burst)"), cell(stats.errors.feedSkipped, "num warn")]));
    }
    fill("errors", errors);
  }

  function eventRow(e, fresh) {
    return row([
      cell(clock(e.time)),
      cell(e.source),
      cell("→"),
      cell(e.target),
      cell(e.event, "event"),
      cell(e.receivers, "num"),
      cell(e.preview, "preview"),
    ], { "data-event": e.event, "class": fresh ? "fresh" : "" });
  }

  function addEvents(events, fresh) {
    var body = document.querySelector("#events tbody");
    events.forEach(function (e) { body.insertBefore(eventRow(e, fresh), body.firstChild); });
    while (body.children.length > MAX_EVENTS) { body.removeChild(body.lastChild); }
  }

  if (typeof io !== "function") {
    setStatus("down", "socket.io client failed to load");
    return;
  }

  var socket = io("/dashboard", {
    auth: token ? { token: token } : {},
    transports: ["websocket", "polling"],
  });

  socket.on("connect", function () {
    setStatus("live", "live");
    socket.emit("state", function (state) {
      if (!state || !state.stats) { return; }
      document.querySelector("#events tbody").replaceChildren();
      addEvents(state.events || [], false);
      renderStats(state.stats);
    });
  });
  socket.on("connect_error", function (err) { setStatus("down", "refused: " + (err && err.message ? err.message : err)); });
  socket.on("disconnect", function () { setStatus("connecting", "reconnecting…"); });
  socket.on("events", function (events) { addEvents(events || [], true); });
  socket.on("stats", renderStats);
})();
