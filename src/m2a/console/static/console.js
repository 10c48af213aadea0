// m2a console: small shared behaviour, no inline script anywhere (the CSP forbids it).
// data-confirm="text" on a form asks before it is sent; data-copy="id" copies that element's text;
// table.sortable gets keyboard-usable sort buttons on its headers; [data-autorefresh="s"] reloads
// the page every s seconds while the tab is visible (pressing a key or focusing a field stops it).
(function () {
  "use strict";

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      ev.preventDefault();
    }
  });

  function announce(el, text) {
    var live = el.parentNode.querySelector("[data-copy-status]");
    if (live) { live.textContent = text; }
  }

  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest ? ev.target.closest("[data-copy]") : null;
    if (!btn) { return; }
    var source = document.getElementById(btn.dataset.copy);
    if (!source) { return; }
    var text = source.textContent.trim();
    var done = function () { announce(btn, "Copied."); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { selectText(source); });
    } else {
      selectText(source);
      try { document.execCommand("copy"); done(); } catch (e) { announce(btn, "Press Ctrl+C to copy."); }
    }
  });

  function selectText(el) {
    var range = document.createRange();
    range.selectNodeContents(el);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  function cellValue(row, index) {
    var cell = row.children[index];
    if (!cell) { return ""; }
    var raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    var num = parseFloat(raw.replace(/[,$%]/g, ""));
    return isNaN(num) || !/^[-$\d.,%\s]+(ms|s|W|°C|GiB|MiB|KiB|B)?$/.test(raw) ? raw.toLowerCase() : num;
  }

  function makeSortable(table) {
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, index) {
      var button = document.createElement("button");
      button.type = "button";
      while (th.firstChild) { button.appendChild(th.firstChild); }
      th.appendChild(button);
      button.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, index), y = cellValue(b, index);
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  document.querySelectorAll("table.sortable").forEach(makeSortable);

  var auto = document.querySelector("[data-autorefresh]");
  if (auto) {
    var seconds = Math.max(5, parseInt(auto.dataset.autorefresh, 10) || 10);
    var stopped = false;
    var stop = function () { stopped = true; };
    document.addEventListener("keydown", stop);
    document.addEventListener("focusin", function (ev) {
      if (ev.target.matches("input, select, textarea")) { stop(); }
    });
    window.setInterval(function () {
      if (!stopped && document.visibilityState === "visible") { window.location.reload(); }
    }, seconds * 1000);
  }
})();
