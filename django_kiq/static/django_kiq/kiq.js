/* django-kiq console: the live parts (realtime chart, live poll, row selection).
 *
 * Everything else works without JavaScript. No library, no CDN. Data from the server is only
 * ever put into the page with textContent or as numbers in SVG attributes, never as HTML.
 */
"use strict";
(function () {
  const store = {
    get(key, fallback) {
      try { const v = window.localStorage.getItem("kiq." + key); return v === null ? fallback : v; }
      catch (e) { return fallback; }
    },
    set(key, value) { try { window.localStorage.setItem("kiq." + key, String(value)); } catch (e) { /* private mode */ } },
  };
  const INTERVALS = [2, 5, 10, 20];
  const fmt = (n) => Number(n).toLocaleString("en-US");

  function interval() {
    const s = parseInt(store.get("interval", "5"), 10);
    return INTERVALS.includes(s) ? s : 5;
  }

  function main() {
    return document.querySelector(".kiq-main");
  }

  function updateSummary(stats) {
    document.querySelectorAll("[data-kiq-stat]").forEach((el) => {
      const value = stats[el.dataset.kiqStat];
      if (typeof value === "number") el.textContent = fmt(value);
    });
  }

  // -- realtime chart (dashboard) --------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  const POINTS = 60;

  function svgEl(name, attrs) {
    const el = document.createElementNS(SVG, name);
    Object.entries(attrs).forEach(([k, v]) => el.setAttribute(k, String(v)));
    return el;
  }

  function niceMax(v) {
    if (v <= 4) return 4; // whole numbers on the four grid lines
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const s of [1, 2, 5, 10]) if (v <= s * p) return s * p;
    return 10 * p;
  }

  function draw(svg, series) {
    const W = 960, H = 200, L = 56, R = 12, T = 12, B = 24;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const top = niceMax(Math.max(1, ...series.processed, ...series.failed));
    const x = (i) => L + (i * (W - L - R)) / (POINTS - 1);
    const y = (v) => H - B - ((H - B - T) * v) / top;
    for (let k = 0; k <= 4; k++) {
      const v = (top * k) / 4;
      svg.appendChild(svgEl("line", { class: "kiq-grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      const label = svgEl("text", { class: "kiq-axis", x: L - 6, y: y(v), "text-anchor": "end", "dominant-baseline": "middle" });
      label.textContent = fmt(Math.round(v * 10) / 10);
      svg.appendChild(label);
    }
    const axis = svgEl("text", { class: "kiq-axis", x: W - R, y: H - 6, "text-anchor": "end" });
    axis.textContent = "now";
    svg.appendChild(axis);
    for (const name of ["processed", "failed"]) {
      const values = series[name];
      const offset = POINTS - values.length;
      const points = values.map((v, i) => x(offset + i).toFixed(1) + "," + y(v).toFixed(1)).join(" ");
      svg.appendChild(svgEl("polyline", { class: "kiq-line kiq-" + name, points: points }));
    }
  }

  function realtime(panel) {
    const url = main().dataset.statsUrl;
    const svg = panel.querySelector("[data-kiq-rt-chart]");
    const select = panel.querySelector("[data-kiq-interval]");
    const pauseButton = panel.querySelector("[data-kiq-pause]");
    const series = { processed: [], failed: [] };
    let previous = null, timer = null, paused = store.get("paused", "0") === "1";

    select.value = String(interval());
    select.addEventListener("change", () => { store.set("interval", select.value); schedule(0); });
    pauseButton.addEventListener("click", () => {
      paused = !paused;
      store.set("paused", paused ? "1" : "0");
      render();
      schedule(0);
    });

    function render() {
      pauseButton.textContent = paused ? "Resume" : "Pause";
      panel.classList.toggle("kiq-paused", paused);
    }

    function schedule(delay) {
      window.clearTimeout(timer);
      if (!paused) timer = window.setTimeout(poll, delay);
    }

    async function poll() {
      try {
        const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (!response.ok) throw new Error("HTTP " + response.status);
        const stats = await response.json();
        if (previous) {
          for (const name of ["processed", "failed"]) {
            series[name].push(Math.max(0, stats[name] - previous[name]));
            if (series[name].length > POINTS) series[name].shift();
            const last = panel.querySelector('[data-kiq-rt-last="' + name + '"]');
            if (last) last.textContent = fmt(series[name][series[name].length - 1]);
          }
        }
        previous = stats;
        updateSummary(stats);
        draw(svg, series);
      } catch (err) {
        const help = panel.querySelector("[data-kiq-rt-help]");
        if (help) help.textContent = "Could not read the stats (" + err.message + "); retrying.";
      }
      schedule(interval() * 1000);
    }

    render();
    draw(svg, series);
    poll();
  }

  // -- live poll (list pages): reload the page every interval -----------------------------------
  function livePoll(box) {
    const toggle = box.querySelector("[data-kiq-live-toggle]");
    const state = box.querySelector("[data-kiq-live-state]");
    toggle.checked = store.get("live", "0") === "1";
    let timer = null;

    function busyUser() {
      // Do not throw away a selection or a filter being typed.
      const active = document.activeElement;
      return document.querySelector("input.action-select:checked") !== null ||
        (active && active.tagName === "INPUT" && active.type === "text");
    }

    function tick() {
      if (busyUser()) {
        state.textContent = "(waiting: rows selected)";
        timer = window.setTimeout(tick, 1000);
        return;
      }
      window.location.reload();
    }

    function apply() {
      window.clearTimeout(timer);
      state.textContent = toggle.checked ? "every " + interval() + " s" : "";
      if (toggle.checked) timer = window.setTimeout(tick, interval() * 1000);
    }

    toggle.addEventListener("change", () => { store.set("live", toggle.checked ? "1" : "0"); apply(); });
    apply();
  }

  // -- row selection (job sets) ------------------------------------------------------------------
  function selection(all) {
    const boxes = () => Array.from(document.querySelectorAll("input.action-select"));
    const counter = document.querySelector("[data-kiq-selected-count]");
    function update() {
      const n = boxes().filter((b) => b.checked).length;
      if (counter) counter.textContent = n ? n + " selected" : "";
      all.checked = n > 0 && n === boxes().length;
      boxes().forEach((b) => b.closest("tr").classList.toggle("selected", b.checked));
    }
    all.addEventListener("change", () => { boxes().forEach((b) => { b.checked = all.checked; }); update(); });
    boxes().forEach((b) => b.addEventListener("change", update));
    update();
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!main()) return;
    const rt = document.querySelector("[data-kiq-realtime]");
    if (rt) realtime(rt);
    const live = document.querySelector("[data-kiq-live]");
    if (live) livePoll(live);
    const all = document.querySelector("[data-kiq-select-all]");
    if (all) selection(all);
  });
})();
