// Roost console: copy buttons, confirmations, the live message view and the
// test publisher. Everything else works without JavaScript.
"use strict";
(function () {
  document.addEventListener("click", function (e) {
    var b = e.target.closest("button[data-copy]");
    if (!b) return;
    var el = document.getElementById(b.dataset.copy);
    if (!el || !navigator.clipboard) return;
    navigator.clipboard.writeText(el.textContent).then(function () {
      var was = b.textContent; b.textContent = "Copied"; setTimeout(function () { b.textContent = was; }, 1500);
    });
  });
  document.addEventListener("submit", function (e) {
    var f = e.target;
    if (f.dataset.confirm && !window.confirm(f.dataset.confirm)) e.preventDefault();
  });

  var form = document.getElementById("live-form");
  if (form) live(form);

  function live(form) {
    var status = document.getElementById("live-status");
    var rows = document.getElementById("live-rows");
    var empty = document.getElementById("live-empty");
    var filter = document.getElementById("filter");
    var source = null, count = 0, paused = false, held = [];
    var controls = document.getElementById("live-controls");
    var pause = document.getElementById("live-pause");
    controls.hidden = false;
    pause.addEventListener("click", function () {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
      pause.setAttribute("aria-pressed", paused ? "true" : "false");
      if (paused) { status.textContent = "Paused: new messages are held until you resume."; return; }
      var h = held; held = [];
      h.forEach(add);
      status.textContent = "Watching " + filter.value + ".";
    });
    document.getElementById("live-clear").addEventListener("click", function () {
      rows.textContent = ""; count = 0; held = [];
      empty.hidden = false;
    });
    // utc writes a time as the other pages do, in UTC: 15:04:05.000 UTC.
    function utc(t) { return new Date(t).toISOString().slice(11, 23) + " UTC"; }
    function sender(s) { return s === "inline" ? "API or console" : (s || "—"); }
    function arrived(m) {
      if (!paused) { add(m); return; }
      held.push(m);
      if (held.length > 500) held.shift();
      status.textContent = "Paused: " + held.length + (held.length === 1 ? " new message" : " new messages") + " held until you resume.";
    }
    function watch() {
      if (source) source.close();
      rows.textContent = ""; count = 0; held = [];
      empty.hidden = false;
      empty.textContent = "Waiting for messages on " + filter.value + "…";
      source = new EventSource(form.dataset.stream + "?filter=" + encodeURIComponent(filter.value));
      source.addEventListener("ready", function () { if (!paused) status.textContent = "Watching " + filter.value + "."; });
      source.addEventListener("message", function (e) { arrived(JSON.parse(e.data)); });
      source.addEventListener("dropped", function (e) {
        var n = JSON.parse(e.data).dropped;
        status.textContent = n + (n === 1 ? " message was" : " messages were") + " skipped: they came faster than this page could show them.";
      });
      source.onerror = function () { status.textContent = "Connection lost; retrying…"; };
    }
    function add(m) {
      empty.hidden = true;
      var tr = document.createElement("tr");
      [utc(m.time), sender(m.sender), m.topic, (m.encoding === "base64" ? "base64: " : "") + m.payload,
        m.qos + (m.retain ? " retained" : "")].forEach(function (text) {
        var td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
      });
      rows.insertBefore(tr, rows.firstChild);
      if (++count > 500) rows.removeChild(rows.lastChild);
    }
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      history.replaceState(null, "", "?filter=" + encodeURIComponent(filter.value));
      watch();
    });
    watch();

    var pub = document.getElementById("publish-form");
    if (!pub) return;
    var result = document.getElementById("publish-result");
    pub.addEventListener("submit", function (e) {
      e.preventDefault();
      var data = new FormData(pub);
      fetch(pub.action, { method: "POST", body: new URLSearchParams(data), headers: { "X-CSRF-Token": data.get("csrf") }, credentials: "same-origin" })
        .then(function (r) {
          if (r.ok) { result.textContent = "Published."; return; }
          return r.text().then(function (t) { result.textContent = "Not published: " + t; });
        })
        .catch(function () { result.textContent = "Not published: the console did not answer."; });
    });
  }
})();
