/* Live update without reloading: poll /api/version; when it changes, fetch this page again and swap
   in its #live part (server-rendered, escaped HTML). Never while the reader is filling in a form. */
(function () {
  "use strict";
  var PERIOD_MS = 2000;
  var dirty = false;
  function markDirty(event) { if (event.target && event.target.form) { dirty = true; } }
  document.addEventListener("input", markDirty);
  document.addEventListener("change", markDirty);
  document.addEventListener("submit", function () { dirty = true; });

  function offline(on) { document.getElementById("offline").hidden = !on; }

  function refresh() {
    return fetch(location.href, { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        if (!fresh || dirty) { return; }
        document.getElementById("live").replaceWith(document.importNode(fresh, true));
        document.body.dataset.version = doc.body.dataset.version;
      });
  }

  function poll() {
    fetch("/api/version", { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(function (data) {
        offline(false);
        if (!dirty && data.version !== document.body.dataset.version) { return refresh(); }
      })
      .catch(function () { offline(true); })
      .then(function () { setTimeout(poll, PERIOD_MS); });
  }
  setTimeout(poll, PERIOD_MS);
})();
