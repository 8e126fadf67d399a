/* Live update without reloading. News of a change is pushed (Server-Sent Events from /api/events:
   the page's version when it changes, and every 15 s as a heartbeat); where push is not working
   (turned off, the kiosk's limit of streams reached, no EventSource, a proxy that buffers, the
   connection lost) the page polls /api/version every 2 s, as it always did. On news: fetch this
   page again and swap in its #live part (server-rendered, escaped HTML); news that arrives during
   a fetch cancels it and fetches again. Never while the reader is filling in a form.
   The page announces "hipcad:news" (detail: version, via "push" or "poll") and "hipcad:updated"
   (detail: version) on the document, for tests and `hipcad bench --appliance`. */
(function () {
  "use strict";
  var PERIOD_MS = 2000;        // polling, while push is not working
  var STALE_MS = 40000;        // an open stream silent this long (heartbeat every 15 s) is not working
  var PUSH_RETRY_MS = 60000;   // after the kiosk refused a stream, ask again this much later
  var dirty = false;
  var source = null, heardAt = 0;
  var inflight = null, fetching = null;   // the page fetch under way (AbortController) and for which version

  function markDirty(event) { if (event.target && event.target.form) { dirty = true; } }
  document.addEventListener("input", markDirty);
  document.addEventListener("change", markDirty);
  document.addEventListener("submit", function () { dirty = true; });

  function offline(on) { document.getElementById("offline").hidden = !on; }
  function announce(name, detail) { document.dispatchEvent(new CustomEvent(name, { detail: detail })); }

  function refresh(version, via) {
    if (inflight) { inflight.abort(); }
    var controller = inflight = new AbortController();
    fetching = version;
    return fetch(location.href, { cache: "no-store", credentials: "same-origin", signal: controller.signal })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) {
        if (controller !== inflight) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        if (!fresh || dirty) { return; }
        document.getElementById("live").replaceWith(document.importNode(fresh, true));
        document.body.dataset.version = doc.body.dataset.version;
        announce("hipcad:updated", { version: doc.body.dataset.version });
      })
      .catch(function () {
        // aborted for newer news; or failed: try again in a second (push may say nothing for 15 s)
        if (controller === inflight) { setTimeout(function () { news(version, via); }, 1000); }
      })
      .then(function () { if (controller === inflight) { inflight = null; fetching = null; } });
  }

  function news(version, via) {
    if (dirty || version === document.body.dataset.version || (inflight && version === fetching)) { return; }
    announce("hipcad:news", { version: version, via: via });
    refresh(version, via);
  }

  function pushWorking() {
    return source !== null && source.readyState === 1 && Date.now() - heardAt < STALE_MS;
  }

  function startPush() {
    if (!window.EventSource || document.body.dataset.push !== "1") { return; }
    source = new EventSource("/api/events");
    source.onopen = function () { heardAt = Date.now(); offline(false); };
    source.addEventListener("version", function (event) {
      heardAt = Date.now();
      offline(false);
      var data;
      try { data = JSON.parse(event.data); } catch (err) { return; }
      news(data.version, "push");
    });
    source.onerror = function () {
      // CONNECTING: the browser reconnects by itself (polling covers the gap); CLOSED: the kiosk
      // refused the stream (limit reached, push off): poll, and ask again later
      if (source && source.readyState === 2) { source = null; setTimeout(startPush, PUSH_RETRY_MS); }
    };
  }

  function poll() {
    if (source !== null && source.readyState === 1 && !pushWorking()) {
      source.close();   // open but silent (a buffering proxy?): poll, and try push again later
      source = null;
      setTimeout(startPush, PUSH_RETRY_MS);
    }
    if (pushWorking()) { setTimeout(poll, PERIOD_MS); return; }
    fetch("/api/version", { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(function (data) { offline(false); news(data.version, "poll"); })
      .catch(function () { offline(true); })
      .then(function () { setTimeout(poll, PERIOD_MS); });
  }
  startPush();
  setTimeout(poll, PERIOD_MS);
})();
