// Live updates for the explorer's server-rendered pages.  Everything here is an
// enhancement: without it every page is complete, only not live.
//
// A page marks the parts that change with data-live-src (a URL that answers with
// the server-rendered HTML of that part) and data-live-on (the event kinds that
// change it).  Events arrive over Server-Sent Events from /v1/events; a part is
// re-fetched at most every MIN_GAP_MS however fast blocks come.  The transaction
// page instead follows /v1/transactions/{id} until the transaction is final.
(function () {
  "use strict";

  var THEME_KEY = "explorer-theme";
  var MIN_GAP_MS = 500;
  var root = document.documentElement;
  var darkQuery = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

  // --- theme ---------------------------------------------------------------------------
  function currentTheme() {
    var chosen = root.getAttribute("data-theme");
    if (chosen === "dark" || chosen === "light") return chosen;
    return darkQuery && darkQuery.matches ? "dark" : "light";
  }

  function setupThemeToggle() {
    var button = document.getElementById("theme-toggle");
    if (!button) return;
    var label = button.querySelector(".theme-label");
    function show() {
      var next = currentTheme() === "dark" ? "light" : "dark";
      label.textContent = next === "dark" ? "Dark" : "Light";
      button.setAttribute("aria-label", "Switch to the " + next + " theme");
      button.title = "Switch to the " + next + " theme";
    }
    button.addEventListener("click", function () {
      var next = currentTheme() === "dark" ? "light" : "dark";
      root.setAttribute("data-theme", next);
      try {
        localStorage.setItem(THEME_KEY, next);
      } catch (e) {
        // Not stored: the choice lasts for this page only.
      }
      show();
    });
    if (darkQuery && darkQuery.addEventListener) darkQuery.addEventListener("change", show);
    show();
    button.hidden = false;
  }

  // --- small helpers -------------------------------------------------------------------
  function agoText(ms) {
    var seconds = Math.max(0, Math.floor((Date.now() - ms) / 1000));
    if (seconds < 60) return seconds + " s ago";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    return Math.floor(seconds / 86400) + " d ago";
  }

  function utcText(ms) {
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }

  function refreshTimes(scope) {
    var times = scope.querySelectorAll("time[data-ago]");
    for (var i = 0; i < times.length; i++) {
      var ms = Date.parse(times[i].getAttribute("datetime"));
      if (!isNaN(ms)) times[i].textContent = agoText(ms);
    }
  }

  function element(tag, attributes, text) {
    var node = document.createElement(tag);
    for (var name in attributes) node.setAttribute(name, attributes[name]);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function announce(message) {
    var region = document.getElementById("announcer");
    if (region) region.textContent = message;
  }

  function setupCopy(scope) {
    if (!navigator.clipboard || !window.isSecureContext) return;
    var buttons = scope.querySelectorAll("button[data-copy]");
    for (var i = 0; i < buttons.length; i++) {
      (function (button) {
        if (button.getAttribute("data-ready")) return;
        button.setAttribute("data-ready", "1");
        button.hidden = false;
        button.addEventListener("click", function () {
          navigator.clipboard.writeText(button.getAttribute("data-copy")).then(
            function () { button.textContent = "Copied"; },
            function () { button.textContent = "Copy failed"; }
          );
          setTimeout(function () { button.textContent = "Copy"; }, 1500);
        });
      })(buttons[i]);
    }
  }

  function badge(status, confirmations) {
    var text = status === "included" ? "included · " + confirmations + " conf." : status;
    return element("span", { "class": "badge badge-" + status, "data-status": status }, text);
  }

  // --- live regions --------------------------------------------------------------------
  function LiveRegion(node) {
    this.node = node;
    this.src = node.getAttribute("data-live-src");
    this.kinds = (node.getAttribute("data-live-on") || "block").split(/\s+/);
    this.busy = false;
    this.dirty = false;
    this.last = 0;
  }

  LiveRegion.prototype.wants = function (kind) {
    return this.kinds.indexOf(kind) >= 0;
  };

  LiveRegion.prototype.refresh = function () {
    var self = this;
    if (self.busy) {
      self.dirty = true;
      return;
    }
    var wait = self.last + MIN_GAP_MS - Date.now();
    self.busy = true;
    setTimeout(function () {
      self.last = Date.now();
      fetch(self.src, { headers: { Accept: "text/html" }, cache: "no-store" })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) { self.swap(html); })
        .catch(function () { /* the next event tries again */ })
        .then(function () {
          self.busy = false;
          if (self.dirty) {
            self.dirty = false;
            self.refresh();
          }
        });
    }, Math.max(0, wait));
  };

  LiveRegion.prototype.swap = function (html) {
    var node = this.node;
    var seen = {};
    var keyed = node.querySelectorAll("[data-key]");
    for (var i = 0; i < keyed.length; i++) seen[keyed[i].getAttribute("data-key")] = true;
    // Keep keyboard focus on the same link when the part it sits in is replaced.
    var focused = document.activeElement;
    var focusHref = focused && node.contains(focused) ? focused.getAttribute("href") : null;
    // The HTML is the node's own template output, escaped on the server.
    node.innerHTML = html;
    keyed = node.querySelectorAll("[data-key]");
    for (var j = 0; j < keyed.length; j++) {
      if (!seen[keyed[j].getAttribute("data-key")]) keyed[j].classList.add("fresh");
    }
    if (focusHref) {
      var links = node.querySelectorAll("a[href]");
      for (var k = 0; k < links.length; k++) {
        if (links[k].getAttribute("href") === focusHref) {
          links[k].focus({ preventScroll: true });
          break;
        }
      }
    }
    refreshTimes(node);
    setupCopy(node);
  };

  // --- the transaction page: pending -> included -> final -------------------------------
  var STEPS = ["pending", "included", "final"];

  function TxWatcher(panel) {
    this.panel = panel;
    this.id = panel.getAttribute("data-tx-watch");
    this.status = panel.getAttribute("data-status");
    this.busy = false;
    this.again = false;
  }

  TxWatcher.prototype.done = function () {
    return this.status === "final";
  };

  TxWatcher.prototype.check = function () {
    var self = this;
    if (self.done()) return;
    if (self.busy) {
      self.again = true;
      return;
    }
    self.busy = true;
    fetch("/v1/transactions/" + encodeURIComponent(self.id), { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (response.status === 404) return { status: "unknown" };
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (tx) { self.apply(tx); })
      .catch(function () { /* the next block tries again */ })
      .then(function () {
        self.busy = false;
        if (self.again) {
          self.again = false;
          self.check();
        }
      });
  };

  TxWatcher.prototype.field = function (name) {
    return document.querySelector('[data-field="' + name + '"]');
  };

  TxWatcher.prototype.apply = function (tx) {
    var changed = tx.status !== this.status;
    this.status = tx.status;
    this.panel.setAttribute("data-status", tx.status);
    var reached = STEPS.indexOf(tx.status);
    var steps = this.panel.querySelectorAll(".step");
    for (var i = 0; i < steps.length; i++) {
      var index = STEPS.indexOf(steps[i].getAttribute("data-step"));
      steps[i].classList.toggle("done", index < reached);
      steps[i].classList.toggle("current", index === reached);
      if (index === reached) steps[i].setAttribute("aria-current", "step");
      else steps[i].removeAttribute("aria-current");
    }
    var status = this.field("status");
    if (status) status.replaceChildren(badge(tx.status, tx.confirmations || 0));
    var confirmations = this.field("confirmations");
    if (confirmations) confirmations.textContent = String(tx.confirmations || 0);
    var block = this.field("block");
    if (block && tx.block_height !== null && tx.block_height !== undefined) {
      block.replaceChildren(element("a", { "class": "mono", href: "/explorer/block/" + tx.block_height }, "#" + tx.block_height));
    }
    var position = this.field("position");
    if (position && tx.index !== null && tx.index !== undefined && position.getAttribute("data-index") !== String(tx.index)) {
      position.setAttribute("data-index", String(tx.index));
      position.textContent = "index " + tx.index;
    }
    var time = this.field("time");
    if (time && tx.timestamp && !time.querySelector("time")) {
      var when = element("time", { datetime: new Date(tx.timestamp).toISOString(), title: utcText(tx.timestamp), "data-ago": "" }, agoText(tx.timestamp));
      var note = element("span", { "class": "subtle" });
      note.append("(", when, ")");
      time.replaceChildren(utcText(tx.timestamp) + " ", note);
    }
    var liveNote = this.field("live-note");
    if (tx.status === "unknown") {
      if (liveNote) liveNote.textContent = "The node no longer knows this transaction: it left the mempool without entering a block (expired or replaced).";
    } else if (tx.status === "final" && liveNote) {
      liveNote.textContent = "Final: this transaction can no longer change.";
    } else if (tx.status === "included" && liveNote) {
      liveNote.textContent = "In block #" + tx.block_height + ", not final yet: this page updates as blocks confirm it.";
    }
    if (changed) {
      announce(tx.status === "included" ? "Transaction included in block " + tx.block_height : "Transaction " + tx.status);
    }
  };

  // --- the events stream ---------------------------------------------------------------
  function setLiveStatus(state, text) {
    var status = document.getElementById("live-status");
    if (!status) return;
    status.setAttribute("data-state", state);
    status.textContent = text;
  }

  function connect(regions, watcher) {
    if (!window.EventSource) return;
    var source = new EventSource("/v1/events");
    function refreshAll(kind) {
      for (var i = 0; i < regions.length; i++) {
        if (!kind || regions[i].wants(kind)) regions[i].refresh();
      }
      if (watcher && (!kind || kind === "block")) watcher.check();
    }
    source.addEventListener("open", function () {
      setLiveStatus("live", "live");
      refreshAll(null); // catch up on anything made between the page's render and now
    });
    source.addEventListener("error", function () {
      setLiveStatus("waiting", "reconnecting…");
    });
    source.addEventListener("block", function (event) {
      try {
        var block = JSON.parse(event.data);
        var heights = document.querySelectorAll("[data-head-height]");
        for (var i = 0; i < heights.length; i++) heights[i].textContent = String(block.height);
      } catch (e) {
        // A malformed event changes nothing; the refresh below still runs.
      }
      refreshAll("block");
    });
    source.addEventListener("tx", function () {
      refreshAll("tx");
    });
    ["fault", "reorg"].forEach(function (kind) {
      source.addEventListener(kind, function () { refreshAll(kind); });
    });
  }

  function start() {
    setupThemeToggle();
    setupCopy(document);
    refreshTimes(document);
    setInterval(function () { refreshTimes(document); }, 5000);
    var regions = [];
    var nodes = document.querySelectorAll("[data-live-src]");
    for (var i = 0; i < nodes.length; i++) regions.push(new LiveRegion(nodes[i]));
    var panel = document.querySelector("[data-tx-watch]");
    connect(regions, panel ? new TxWatcher(panel) : null);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
