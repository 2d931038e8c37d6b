// A small line chart in SVG, written for this dashboard (no network, no dependencies).
// lineChart(element, points, series) where series = [{key, label, color}].
"use strict";
function lineChart(el, points, series, opts) {
  opts = opts || {};
  const W = 600, H = 180, L = 42, R = 8, T = 8, B = 22;
  const xs = points.map(p => p.step);
  const ys = [];
  for (const s of series) for (const p of points) if (p[s.key] != null) ys.push(p[s.key]);
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", opts.title || "chart");
  el.replaceChildren(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const s of series) {
    const span = document.createElement("span");
    span.style.color = s.color;
    span.textContent = "— " + s.label;
    legend.append(span);
  }
  el.append(legend);
  if (!xs.length || !ys.length) return;
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = opts.min != null ? opts.min : Math.min(...ys);
  let y1 = opts.max != null ? opts.max : Math.max(...ys);
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const text = (x, y, s, anchor) => {
    const t = document.createElementNS(svgNS, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("fill", "#8a93a8");
    t.setAttribute("font-size", "11"); t.setAttribute("text-anchor", anchor || "end");
    t.textContent = s; svg.append(t);
  };
  for (let i = 0; i <= 4; i++) {
    const v = y0 + (y1 - y0) * i / 4, y = sy(v);
    const g = document.createElementNS(svgNS, "line");
    g.setAttribute("x1", L); g.setAttribute("x2", W - R); g.setAttribute("y1", y); g.setAttribute("y2", y);
    g.setAttribute("stroke", "#2a3142"); svg.append(g);
    text(L - 4, y + 4, v.toFixed(2));
  }
  text(L, H - 6, String(x0), "start");
  text(W - R, H - 6, String(x1), "end");
  for (const s of series) {
    const d = points.filter(p => p[s.key] != null)
      .map((p, i) => (i ? "L" : "M") + sx(p.step).toFixed(1) + "," + sy(p[s.key]).toFixed(1)).join("");
    const path = document.createElementNS(svgNS, "path");
    path.setAttribute("d", d); path.setAttribute("fill", "none");
    path.setAttribute("stroke", s.color); path.setAttribute("stroke-width", "1.6");
    path.setAttribute("class", "series series-" + s.key);
    svg.append(path);
  }
}
