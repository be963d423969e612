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
    var source = null, count = 0;
    function watch() {
      if (source) source.close();
      rows.textContent = ""; count = 0;
      empty.hidden = false;
      empty.textContent = "Waiting for messages on " + filter.value + "…";
      source = new EventSource(form.dataset.stream + "?filter=" + encodeURIComponent(filter.value));
      source.addEventListener("ready", function () { status.textContent = "Watching " + filter.value + "."; });
      source.addEventListener("message", function (e) { add(JSON.parse(e.data)); });
      source.addEventListener("dropped", function (e) {
        status.textContent = JSON.parse(e.data).dropped + " messages were skipped: they came faster than this page could show them.";
      });
      source.onerror = function () { status.textContent = "Connection lost; retrying…"; };
    }
    function add(m) {
      empty.hidden = true;
      var tr = document.createElement("tr");
      [new Date(m.time).toLocaleTimeString(), m.topic, (m.encoding === "base64" ? "base64: " : "") + m.payload,
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
