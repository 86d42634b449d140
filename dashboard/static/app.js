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
    var keys = item ? itemPage(item) : document.getElementById("queue") ? queuePage() : {};
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && typing(event.target)) { event.target.blur(); return; }
      if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) { return; }
      var action = keys[event.key];
      if (action) { event.preventDefault(); action(); }
    });
  });
})();
