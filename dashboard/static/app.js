// deepscreen dashboard: keyboard shortcuts and image reveal. No framework, no CDN.
// Every action also works without JavaScript (links and buttons); this only adds keys.
(function () {
  "use strict";

  function typing(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }

  function go(url) { if (url) { window.location.assign(url); } }

  function queuePage() {
    var rows = Array.prototype.slice.call(document.querySelectorAll("#queue tr.row"));
    var index = -1;
    function select(i) {
      if (!rows.length) { return; }
      index = Math.max(0, Math.min(rows.length - 1, i));
      rows.forEach(function (r) { r.classList.remove("selected"); r.removeAttribute("aria-selected"); });
      rows[index].classList.add("selected");
      rows[index].setAttribute("aria-selected", "true");
      rows[index].scrollIntoView({ block: "nearest" });
    }
    rows.forEach(function (row, i) {
      row.addEventListener("click", function (event) {
        if (event.target.tagName !== "A") { go(row.dataset.href); }
      });
      row.addEventListener("mouseenter", function () { index = i; });
    });
    if (rows.length) { select(0); }
    return {
      j: function () { select(index + 1); },
      k: function () { select(index - 1); },
      Enter: function () { if (index >= 0) { go(rows[index].dataset.href); } },
      n: function () { var a = document.getElementById("next-page"); if (a) { go(a.href); } },
      p: function () { var a = document.getElementById("prev-page"); if (a) { go(a.href); } },
      "/": function () { var f = document.querySelector("#filters select, #filters input"); if (f) { f.focus(); } }
    };
  }

  // The queue's grid: a cursor (arrows), a selection (Space, "a"), and decisions on the
  // selection, posted one item at a time to its decide endpoint with the CSRF token.
  function gridPage(grid) {
    var tiles = Array.prototype.slice.call(grid.querySelectorAll(".tile"));
    var buttons = Array.prototype.slice.call(document.querySelectorAll("#grid-actions button[data-decision]"));
    var status = document.getElementById("grid-status");
    var count = document.getElementById("grid-selected");
    var csrf = document.querySelector('meta[name="csrf-token"]');
    var index = -1;
    var busy = false;
    function selected() { return tiles.filter(function (t) { return t.getAttribute("aria-selected") === "true"; }); }
    function refresh() {
      var n = selected().length;
      if (count) { count.textContent = n + " selected"; }
      buttons.forEach(function (b) { b.disabled = busy || n === 0; });
    }
    function focus(i) {
      if (!tiles.length) { return; }
      index = Math.max(0, Math.min(tiles.length - 1, i));
      tiles.forEach(function (t) { t.classList.remove("cursor"); });
      tiles[index].classList.add("cursor");
      tiles[index].scrollIntoView({ block: "nearest" });
    }
    function columns() {
      var top = tiles.length ? tiles[0].offsetTop : 0;
      var n = tiles.filter(function (t) { return t.offsetTop === top; }).length;
      return Math.max(1, n);
    }
    function toggle(tile, on) {
      if (!tile.dataset.decide) { return; }  // claimed by someone else, or no right to decide
      var value = on === undefined ? tile.getAttribute("aria-selected") !== "true" : on;
      tile.setAttribute("aria-selected", value ? "true" : "false");
      refresh();
    }
    function decide(decision) {
      var chosen = selected();
      if (busy || !chosen.length) { return; }
      busy = true;
      refresh();
      status.textContent = "Sending " + chosen.length + " decision" + (chosen.length === 1 ? "" : "s") + "…";
      var failures = [];
      var sends = chosen.map(function (tile) {
        var body = new FormData();
        body.append("decision", decision);
        body.append("csrf_token", csrf ? csrf.content : "");
        return fetch(tile.dataset.decide, {
          method: "POST", body: body, credentials: "same-origin",
          headers: { "Accept": "application/json", "X-CSRF-Token": csrf ? csrf.content : "" }
        }).then(function (response) {
          if (response.ok) { tile.classList.add("decided"); return; }
          return response.json().then(function (e) { failures.push(tile.dataset.imageId + ": " + e.error); },
                                      function () { failures.push(tile.dataset.imageId + ": " + response.status); });
        }, function () { failures.push(tile.dataset.imageId + ": network error"); });
      });
      Promise.all(sends).then(function () {
        if (failures.length) {
          busy = false;
          status.textContent = "Not recorded: " + failures.join("; ");
          refresh();
        } else {
          status.textContent = chosen.length + " recorded";
          window.location.reload();
        }
      });
    }
    tiles.forEach(function (tile, i) {
      tile.addEventListener("click", function (event) {
        focus(i);
        if (event.ctrlKey || event.metaKey || event.shiftKey) { toggle(tile); } else { go(tile.dataset.href); }
      });
    });
    buttons.forEach(function (b) { b.addEventListener("click", function () { decide(b.dataset.decision); }); });
    if (tiles.length) { focus(0); }
    refresh();
    var keys = {
      ArrowRight: function () { focus(index + 1); },
      ArrowLeft: function () { focus(index - 1); },
      ArrowDown: function () { focus(index + columns()); },
      ArrowUp: function () { focus(index - columns()); },
      " ": function () { if (index >= 0) { toggle(tiles[index]); } },
      a: function () {
        var all = tiles.filter(function (t) { return t.dataset.decide; });
        var on = selected().length < all.length;
        all.forEach(function (t) { toggle(t, on); });
      },
      v: function () { if (index >= 0) { tiles[index].classList.toggle("revealed"); } },
      Enter: function () { if (index >= 0) { go(tiles[index].dataset.href); } },
      n: function () { var a = document.getElementById("next-page"); if (a) { go(a.href); } },
      p: function () { var a = document.getElementById("prev-page"); if (a) { go(a.href); } }
    };
    buttons.forEach(function (b) { keys[b.dataset.key] = function () { decide(b.dataset.decision); }; });
    return keys;
  }

  function itemPage(item) {
    var keys = {
      j: function () { go(item.dataset.next); },
      k: function () { go(item.dataset.prev); },
      q: function () { go(item.dataset.queue); },
      v: function () { var box = document.getElementById("reveal-box"); if (box) { box.classList.toggle("revealed"); } },
      n: function () { var note = document.getElementById("note"); if (note) { note.focus(); } }
    };
    document.querySelectorAll("#decide button[data-key]").forEach(function (button) {
      if (!button.disabled) { keys[button.dataset.key] = function () { button.click(); }; }
    });
    var note = document.getElementById("note");
    if (note) {
      note.addEventListener("keydown", function (event) {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
          event.preventDefault();
          document.getElementById("act-note").click();
        }
      });
    }
    return keys;
  }

  document.addEventListener("DOMContentLoaded", function () {
    var item = document.getElementById("item");
    var grid = document.getElementById("grid");
    var keys = item ? itemPage(item) : document.getElementById("queue") ? queuePage() : grid ? gridPage(grid) : {};
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && typing(event.target)) { event.target.blur(); return; }
      if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) { return; }
      var action = keys[event.key];
      if (action) { event.preventDefault(); action(); }
    });
  });
})();
