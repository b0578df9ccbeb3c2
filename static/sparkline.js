// Small line charts drawn as inline SVG: no library, nothing fetched, colours from the page's CSS
// (so they follow the dark scheme). A chart is a <figure> with its name and current value in
// words, the line, and a text alternative that says what the line shows.

import { el } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
// The drawing's own units; the SVG stretches to its box (preserveAspectRatio none) and the
// strokes keep their width (vector-effect non-scaling-stroke).
const WIDTH = 240;
const HEIGHT = 56;
const PAD = 3;

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

/**
 * One chart: `update(points, now)` redraws it from `{t, v}` points (ms, value; `v === null` is a gap).
 */
export class Sparkline {
  /**
   * @param {object} options
   * @param {string} options.key a short name, for tests and styling (`data-chart`)
   * @param {string} options.title what is measured, e.g. "Signals relayed"
   * @param {string} options.description the same for the text alternative, e.g. "signals relayed per second"
   * @param {(v: number) => string} options.format a value with its unit, e.g. "3.5 /s"
   * @param {number} options.floor the smallest top of the scale (a flat line near 0 stays low)
   * @param {number} options.windowMs how much time the width shows at most
   * @param {number} options.minWindowMs ... and at least (until then, from the first point to now)
   * @param {number} options.maxGapMs points further apart than this are not joined
   * @param {string} [options.empty] the value's words before there is any
   */
  constructor(options) {
    this.options = options;
    this.value = el("span", { class: "chart-value", text: options.empty ?? "–" });
    this.scale = el("span", { class: "chart-scale", "aria-hidden": "true" });
    this.svg = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: "none", role: "img", focusable: "false" });
    this.svg.append(svg("line", { class: "chart-base", x1: 0, x2: WIDTH, y1: HEIGHT - PAD, y2: HEIGHT - PAD, "vector-effect": "non-scaling-stroke" }));
    this.area = svg("path", { class: "chart-area" });
    this.line = svg("path", { class: "chart-line", "vector-effect": "non-scaling-stroke" });
    this.dots = svg("path", { class: "chart-dots", "vector-effect": "non-scaling-stroke" });
    this.svg.append(this.area, this.line, this.dots);
    this.node = el("figure", { class: "chart", "data-chart": options.key, "data-points": "0" },
      el("figcaption", {}, el("span", { class: "chart-name", text: options.title }), this.value),
      this.svg,
      this.scale);
    this.update([], 0);
  }

  /**
   * @param {{t: number, v: number|null}[]} points oldest first
   * @param {number} now the time at the right edge (ms)
   * @param {string} [current] the value's words, when the last point alone does not say it
   * @param {string} [note] said under the chart (and in the text alternative), e.g. when `current` was
   */
  update(points, now, current, note) {
    const { maxGapMs, floor, format, description } = this.options;
    const shown = points.filter((p) => p.t >= now - this.options.windowMs);
    // The width spans the history there is, so a new chart is not a dot at its right edge.
    const windowMs = Math.min(this.options.windowMs, Math.max(this.options.minWindowMs, shown.length ? now - shown[0].t : 0));
    const values = shown.map((p) => p.v).filter((v) => v !== null && Number.isFinite(v));
    const top = Math.max(floor, ...values) * 1.1;
    const x = (t) => (WIDTH * (t - (now - windowMs))) / windowMs;
    const y = (v) => HEIGHT - PAD - ((HEIGHT - 2 * PAD) * v) / top;
    // Segments of consecutive values; a gap (null, or too long between two points) starts anew.
    const segments = [];
    let run = null;
    let prevT = -Infinity;
    for (const p of shown) {
      if (p.v === null || !Number.isFinite(p.v)) {
        run = null;
      } else {
        if (!run || p.t - prevT > maxGapMs) segments.push((run = []));
        run.push([x(p.t), y(p.v)]);
      }
      prevT = p.t;
    }
    const f = (n) => n.toFixed(1);
    this.line.setAttribute("d", segments.filter((s) => s.length > 1)
      .map((s) => `M${s.map(([px, py]) => `${f(px)} ${f(py)}`).join("L")}`).join(""));
    // A lone value is a dot (a zero-length stroke with round caps stays round however the SVG stretches).
    this.dots.setAttribute("d", segments.filter((s) => s.length === 1).map(([[px, py]]) => `M${f(px)} ${f(py)}h0`).join(""));
    this.area.setAttribute("d", segments.filter((s) => s.length > 1).map((s) => `M${f(s[0][0])} ${f(HEIGHT - PAD)}`
      + `L${s.map(([px, py]) => `${f(px)} ${f(py)}`).join("L")}L${f(s[s.length - 1][0])} ${f(HEIGHT - PAD)}Z`).join(""));

    const last = shown.length ? shown[shown.length - 1].v : null;
    const words = current ?? (last === null || last === undefined ? (this.options.empty ?? "–") : format(last));
    this.value.textContent = words;
    this.node.dataset.points = String(values.length);
    const minutes = Math.round(windowMs / 60000);
    const seconds = Math.round(windowMs / 1000);
    const [span, spanLong] = windowMs >= 60000
      ? [`${minutes} min`, `${minutes} minute${minutes === 1 ? "" : "s"}`]
      : [`${seconds} s`, `${seconds} seconds`];
    const scale = (...items) => this.scale.replaceChildren(...items.filter(Boolean)
      .flatMap((text, i) => [i ? " · " : "", el("span", { text })]));
    if (values.length === 0) {
      scale(note, `last ${span}`);
      this.svg.setAttribute("aria-label", `${this.options.title}: no values yet.`);
      return;
    }
    const low = Math.min(...values);
    const high = Math.max(...values);
    scale(note, `peak ${format(high)}`, `last ${span}`);
    this.svg.setAttribute("aria-label", `${this.options.title}, ${description}, over the last ${spanLong}: `
      + `now ${words}${note ? ` (${note})` : ""}, lowest ${format(low)}, highest ${format(high)} (${values.length} values).`);
  }
}
