// m2a console charts: every <figure class="chart" data-chart='{...}'> is drawn with the vendored
// uPlot (static/vendor/uplot). The spec, written by the page: {"kind": "line" | "bars", "unit":
// "tokens" | "$" | "ms", "x": ["YYYY-MM-DD", ...], "series": [{"label": "...", "values": [...]}]}.
// The chart is a picture of numbers the page also lists in a table (screen readers read that);
// without JavaScript the table is all there is. No inline script or style: the CSP forbids both.
(function () {
  "use strict";

  if (!window.uPlot) { return; }
  var PALETTE = ["#0b5cad", "#c2410c", "#15803d", "#7c3aed", "#be185d", "#0e7490", "#a16207", "#4b5563",
                 "#9f1239"];
  var HEIGHT = 240;

  function cssVar(name, fallback) {
    var v = window.getComputedStyle(document.documentElement).getPropertyValue(name);
    return (v && v.trim()) || fallback;
  }

  function format(unit, v) {
    if (v === null || v === undefined || isNaN(v)) { return "–"; }
    var abs = Math.abs(v);
    if (unit === "$") {
      var digits = abs !== 0 && abs < 1 ? 4 : 2;
      return (v < 0 ? "-$" : "$") + abs.toLocaleString("en-US", {minimumFractionDigits: digits,
                                                                  maximumFractionDigits: digits});
    }
    if (unit === "ms") { return abs >= 10000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms"; }
    if (abs >= 1e9) { return (v / 1e9).toFixed(1) + "G"; }
    if (abs >= 1e6) { return (v / 1e6).toFixed(1) + "M"; }
    if (abs >= 1e4) { return (v / 1e3).toFixed(0) + "k"; }
    return Math.round(v).toLocaleString("en-US");
  }

  function day(ts) {
    return ts === null || ts === undefined ? "–" : new Date(ts * 1000).toISOString().slice(0, 10);
  }

  function draw(fig) {
    var spec;
    try { spec = JSON.parse(fig.dataset.chart); } catch (e) { return; }
    var host = fig.querySelector(".chart-plot");
    if (!host || !spec.x || !spec.series || !spec.series.length) { return; }
    var fg = cssVar("--fg", "#16181d"), line = cssVar("--line", "#d5d8de");
    var bars = spec.kind === "bars" ? window.uPlot.paths.bars({size: [0.7, 48]}) : null;
    var xs = spec.x.map(function (d) { return Date.parse(d + "T00:00:00Z") / 1000; });
    var data = [xs].concat(spec.series.map(function (s) { return s.values; }));
    var axis = {stroke: fg, grid: {stroke: line, width: 1}, ticks: {stroke: line, width: 1}};
    var opts = {
      width: Math.max(280, host.clientWidth || 600),
      height: HEIGHT,
      tzDate: function (ts) { return window.uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      scales: {x: {time: true}},
      axes: [
        Object.assign({}, axis),
        Object.assign({}, axis, {size: 72, values: function (u, vals) {
          return vals.map(function (v) { return format(spec.unit, v); });
        }})
      ],
      series: [{label: "day", value: function (u, ts) { return day(ts); }}].concat(
        spec.series.map(function (s, i) {
          var colour = PALETTE[i % PALETTE.length];
          return {
            label: s.label,
            stroke: colour,
            width: 2,
            fill: bars ? colour + "b3" : undefined,
            paths: bars || undefined,
            points: {show: !bars && spec.x.length <= 62},
            value: function (u, v) { return format(spec.unit, v); }
          };
        })
      )
    };
    var plot = new window.uPlot(opts, data, host);
    fig.classList.add("drawn");
    var pending = null;
    window.addEventListener("resize", function () {
      if (pending) { window.clearTimeout(pending); }
      pending = window.setTimeout(function () {
        plot.setSize({width: Math.max(280, host.clientWidth || 600), height: HEIGHT});
      }, 150);
    });
  }

  document.querySelectorAll("figure.chart[data-chart]").forEach(draw);
})();
