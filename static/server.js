// The Server panel, for the server's operator: rooms and their peers, media sessions with their
// verdicts, recordings being written and a few charts, from GET /rtc/overview with the admin key,
// refreshed every 2 s while the panel is on screen. The key stays in this tab (sessionStorage:
// gone when the tab closes); never localStorage, never a cookie.

import { Sparkline } from "./sparkline.js";
import { $, el, formatBytes, formatDuration, formatMs, log, setStatus } from "./ui.js";

const KEY_STORAGE = "fantasize-rtc.adminKey";
export const REFRESH_MS = 2000;
const HISTORY_MS = 120_000;
const REQUEST_TIMEOUT_MS = 5000;

/**
 * The charts' values between two consecutive overviews. The counters are running totals since
 * the server started, so rates and means come from their differences; a server that restarted in
 * between (its uptime went down, or a total did) gives no rate for that step.
 * @param {object|null} prev the previous answer
 * @param {object} next this answer
 * @returns {{t: number, signals: number|null, sessions: number, setup: number|null, loopLag: number|null}}
 */
export function sample(prev, next) {
  const out = { t: next.at, signals: null, sessions: next.sessions?.total ?? 0, setup: null, loopLag: null };
  if (!prev) return out;
  const seconds = (next.at - prev.at) / 1000;
  if (!(seconds > 0) || (next.server?.uptimeMs ?? 0) < (prev.server?.uptimeMs ?? 0)) return out;
  const before = prev.counters ?? {};
  const after = next.counters ?? {};
  const relayed = (c) => (c.signals?.delivered ?? 0) + (c.signals?.queued ?? 0);
  const signals = relayed(after) - relayed(before);
  if (signals >= 0) out.signals = signals / seconds;
  out.setup = meanMs(before.setup, after.setup);
  out.loopLag = meanMs(before.loopLag, after.loopLag);
  return out;
}

/** The mean of the observations a histogram gained between two answers, in ms (null: none). */
function meanMs(before, after) {
  if (!before || !after) return null;
  const count = after.count - before.count;
  const sum = after.sum - before.sum;
  return count > 0 && sum >= 0 ? (sum / count) * 1000 : null;
}

/** A length of time for people: "42 s", "5 min", "2 h 5 min", "3 d 4 h". */
export function formatSpan(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const min = Math.floor(s / 60);
  if (min < 60) return `${min} min`;
  const h = Math.floor(min / 60);
  if (h < 24) return `${h} h ${min % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

const count = (n) => (n ?? 0).toLocaleString("en");
const clock = (ms) => new Date(ms).toLocaleTimeString();
const rate = (v) => `${v < 10 ? v.toFixed(1) : Math.round(v)} /s`;

function readKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null; // storage blocked: the key lives in memory until the page goes
  }
}

function transportWords(transport, peerId, backend) {
  if (transport === "ws") return ["WebSocket", "receives over a WebSocket"];
  if (transport === "poll") return ["long-poll", "receives by long-poll"];
  if (peerId.startsWith("@")) return ["server", "one of the server's own media peers"];
  return backend === "redis"
    ? ["elsewhere", "no WebSocket or long-poll on this process: HTTP calls only, or connected to another process"]
    : ["HTTP", "no WebSocket or long-poll: it uses HTTP calls only"];
}

function verdictClass(verdict) {
  if (!verdict) return "";
  if (verdict.startsWith("failed")) return "bad";
  if (verdict.startsWith("connected")) return verdict.includes("TURN relay") ? "warn" : "ok";
  return "";
}

export class ServerPanel {
  /**
   * @param {string} baseUrl where the server's routes are ("" at the root)
   * @param {import("./rtc-client.js").RtcClient} lab the page's own client, to mark its room
   */
  constructor(baseUrl, lab) {
    this.baseUrl = baseUrl;
    this.lab = lab;
    this.panel = $("panel-server");
    /** @type {string|null} the key in use; stored in the tab once the server accepted it */
    this.key = readKey();
    this.accepted = Boolean(this.key);
    this.polling = false;
    this.generation = 0;
    this.timer = null;
    this.controller = null;
    /** @type {object|null} the last answer */
    this.last = null;
    /** @type {ReturnType<typeof sample>[]} about two minutes of chart values */
    this.samples = [];
    /** @type {string|null} what is wrong now, so the log says it once */
    this.trouble = null;
    const chart = (key, title, description, format, floor, empty) => new Sparkline({
      key, title, description, format, floor, empty, windowMs: HISTORY_MS, minWindowMs: 10 * REFRESH_MS, maxGapMs: 3 * REFRESH_MS,
    });
    this.charts = {
      signals: chart("signals", "Signals relayed", "per second", rate, 1),
      sessions: chart("sessions", "Media sessions", "open at once", (v) => count(Math.round(v)), 2),
      setup: chart("setup", "Session setup", "mean time from offer to connected, in milliseconds", formatMs, 50,
        "no new sessions"),
      loopLag: chart("loopLag", "Event-loop lag", "mean delay of the server's event loop, in milliseconds", formatMs, 5),
    };
    $("server-charts").replaceChildren(...Object.values(this.charts).map((c) => c.node));

    $("server-key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.useKey($("server-key").value.trim());
    });
    $("server-forget").addEventListener("click", () => this.forget());
    // Poll only while someone can see it: the panel is the current tab and the browser tab shows.
    new MutationObserver(() => this.sync()).observe(this.panel, { attributes: true, attributeFilter: ["hidden"] });
    document.addEventListener("visibilitychange", () => this.sync());
    this.showKeyState();
    if (this.key) setStatus($("server-panel-status"), "connecting", "Asking the server");
    this.sync();
  }

  get active() {
    return Boolean(this.key) && !this.panel.hidden && document.visibilityState === "visible";
  }

  /** Start or stop polling to match what is on screen. */
  sync() {
    if (this.active && !this.polling) {
      this.polling = true;
      this.poll();
    } else if (!this.active && this.polling) {
      this.stopPolling();
    }
  }

  stopPolling() {
    this.polling = false;
    this.generation += 1;
    clearTimeout(this.timer);
    this.timer = null;
    this.controller?.abort();
    this.controller = null;
  }

  useKey(key) {
    if (!key) {
      setStatus($("server-panel-status"), "failed", "Enter the admin key first (the server's --admin-key).");
      $("server-key").focus();
      return;
    }
    this.stopPolling();
    this.key = key;
    this.accepted = false;
    this.last = null;
    this.samples = [];
    this.trouble = null;
    setStatus($("server-panel-status"), "connecting", "Checking the key with the server");
    this.showKeyState();
    this.sync();
  }

  /** Stop polling and drop the key and everything seen with it. */
  dropKey() {
    this.stopPolling();
    try {
      sessionStorage.removeItem(KEY_STORAGE);
    } catch {
      // nothing was stored
    }
    this.key = null;
    this.accepted = false;
    this.last = null;
    this.samples = [];
    this.trouble = null;
  }

  forget() {
    this.dropKey();
    $("server-key").value = "";
    this.showKeyState();
    setStatus($("server-panel-status"), "idle", "Key forgotten. Enter the admin key to see what the server is doing.");
    log("page", "Server panel: the admin key is forgotten.");
    $("server-key").focus();
  }

  /** The form while there is no accepted key; the figures once there are some. */
  showKeyState() {
    $("server-key-form").hidden = this.accepted;
    $("server-forget").hidden = !this.key;
    $("server-view").hidden = !this.last;
    $("server-draining").hidden = !this.last?.server?.draining;
  }

  async poll() {
    const gen = this.generation;
    const controller = new AbortController();
    this.controller = controller;
    const timeout = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    let result;
    try {
      const response = await fetch(`${this.baseUrl}/rtc/overview`, {
        headers: { Authorization: `Bearer ${this.key}` },
        cache: "no-store",
        signal: controller.signal,
      });
      let body = null;
      try {
        body = await response.json();
      } catch {
        // not JSON: a proxy's error page; the status says enough
      }
      result = { status: response.status, body };
    } catch (err) {
      result = { error: err, timedOut: controller.signal.aborted };
    } finally {
      clearTimeout(timeout);
    }
    if (gen !== this.generation) return; // stopped, or another key, meanwhile
    this.controller = null;
    if (result.status === 200 && result.body) this.answered(result.body);
    else if (result.status === 401) this.refused();
    else if (result.status) this.failed(`The server answered ${result.status}${result.body?.error?.message ? `: ${result.body.error.message.replace(/\.$/, "")}` : ""}`);
    else if (result.timedOut) this.failed(`The server did not answer within ${REQUEST_TIMEOUT_MS / 1000} s`);
    else this.failed("Cannot reach the server (the network or the server is down)");
    if (gen !== this.generation || !this.polling) return;
    this.timer = setTimeout(() => this.poll(), REFRESH_MS);
  }

  answered(body) {
    if (!this.accepted) {
      this.accepted = true;
      try {
        sessionStorage.setItem(KEY_STORAGE, this.key);
      } catch {
        // storage blocked: keep it in memory for this page
      }
      $("server-key").value = "";
      log("page", "Server panel: the server accepted the admin key.");
    }
    if (this.trouble) log("page", "Server panel: the server answers again.");
    this.trouble = null;
    this.samples.push(sample(this.last, body));
    while (this.samples.length && this.samples[0].t < body.at - HISTORY_MS) this.samples.shift();
    this.last = body;
    this.showKeyState();
    $("server-view").classList.remove("stale");
    const status = $("server-panel-status");
    const text = `Live: refreshed every ${REFRESH_MS / 1000} s while this panel is open.`;
    if (status.textContent !== text) setStatus(status, "connected", text);
    this.render(body);
  }

  refused() {
    const before = this.accepted;
    this.dropKey();
    this.showKeyState();
    setStatus($("server-panel-status"), "failed", before
      ? "The server no longer accepts this admin key (was it restarted with another --admin-key?). Enter the key again."
      : "The server refused this admin key. Check it (the server's --admin-key) and try again.");
    log("error", "Server panel: the server refused the admin key.");
  }

  failed(why) {
    if (this.trouble !== why) log("error", `Server panel: ${why}; retrying every ${REFRESH_MS / 1000} s.`);
    this.trouble = why;
    const since = this.last ? ` The figures below are from ${clock(this.last.at)}.` : "";
    setStatus($("server-panel-status"), "failed", `${why}. Retrying every ${REFRESH_MS / 1000} s.${since}`);
    $("server-view").classList.add("stale");
  }

  // -- drawing ------------------------------------------------------------------------------------

  render(o) {
    const server = o.server ?? {};
    $("server-draining").textContent = server.draining
      ? "This server is draining: it is shutting down, refuses new connections and media sessions, "
        + "and is sending its peers elsewhere. What you see are its last moments."
      : "";
    $("server-about").textContent = [
      `fantasize-rtc-server ${server.version ?? "?"}`,
      `${server.backend ?? "?"} backend`,
      `up ${formatSpan(server.uptimeMs)}`,
      `figures of ${clock(o.at)}`,
    ].join(" · ");
    this.renderSummary(o);
    this.renderCharts(o);
    this.renderRooms(o.rooms ?? {}, server.backend);
    this.renderSessions(o.sessions ?? {});
    this.renderRecordings(o.recordings?.inProgress ?? []);
  }

  renderSummary(o) {
    const c = o.counters ?? {};
    const signals = c.signals ?? {};
    const connects = c.connects ?? {};
    const refusedJoins = Object.entries(connects).reduce((sum, [k, v]) => (k === "ok" ? sum : sum + v), 0);
    const items = [
      ["Rooms", count(o.rooms?.total)],
      ["Peers", count(o.rooms?.peers)],
      ["Media sessions", count(o.sessions?.total)],
      ["Recording now", count(o.recordings?.inProgress?.length)],
      ["Signals relayed", count((signals.delivered ?? 0) + (signals.queued ?? 0))],
      ["Signals dropped · refused", `${count(signals.dropped)} · ${count(signals.refused)}`],
      ["Joins ok · refused", `${count(connects.ok)} · ${count(refusedJoins)}`],
      ["Media sessions opened · refused", c.mediaSessions ? `${count(c.mediaSessions.opened)} · ${count(c.mediaSessions.refused)}` : "–"],
    ];
    $("server-summary").replaceChildren(...items.map(([name, value]) => el("div", {}, el("dt", { text: name }), el("dd", { text: value }))));
  }

  renderCharts(o) {
    const series = (name) => this.samples.map((s) => ({ t: s.t, v: s[name] }));
    const { signals, sessions, setup, loopLag } = this.charts;
    signals.update(series("signals"), o.at);
    sessions.update(series("sessions"), o.at);
    loopLag.update(series("loopLag"), o.at);
    // Setup time has a value only when a session connected since the last answer: say the latest.
    const known = this.samples.filter((s) => s.setup !== null);
    const latest = known.length ? known[known.length - 1] : null;
    const older = latest && latest !== this.samples[this.samples.length - 1];
    setup.update(series("setup"), o.at, latest ? formatMs(latest.setup) : undefined,
      older ? `latest at ${clock(latest.t)}` : undefined);
  }

  renderRooms(rooms, backend) {
    const shown = [...(rooms.shown ?? [])].sort((a, b) => (b.createdAt ?? 0) - (a.createdAt ?? 0));
    $("server-rooms-note").textContent = (rooms.total ?? 0) > shown.length
      ? `The ${shown.length} newest of ${count(rooms.total)} rooms.`
      : `${count(rooms.total)} ${rooms.total === 1 ? "room" : "rooms"}, ${count(rooms.peers)} ${rooms.peers === 1 ? "peer" : "peers"}.`;
    const now = this.last?.at ?? Date.now();
    const rows = shown.map((room) => {
      const peers = room.peers ?? [];
      const own = room.roomId === this.lab?.roomId;
      return el("tr", { "data-room-id": room.roomId },
        el("th", { scope: "row" }, el("code", { text: room.roomId }), own ? el("span", { class: "note", text: " (this page)" }) : null),
        el("td", {}, peers.length === 0 ? el("span", { class: "note", text: "nobody" }) : el("ul", { class: "chips" }, ...peers.map((peer) => {
          const [tag, meaning] = transportWords(peer.transport, peer.peerId, backend);
          const seen = peer.lastSeen ? `, last heard from ${formatSpan(now - peer.lastSeen)} ago` : "";
          return el("li", { "data-peer-id": peer.peerId, title: `Joined ${formatSpan(now - peer.connectedAt)} ago${seen}; ${meaning}.` },
            peer.peerId, el("span", { class: "tag", text: tag }));
        }))),
        el("td", { class: "num", text: room.maxPeers ? `${peers.length} of ${room.maxPeers}` : String(peers.length) }),
        el("td", { class: "num", text: room.createdAt ? formatSpan(now - room.createdAt) : "–" }));
    });
    fill($("server-rooms"), rows, 4, "No rooms right now.");
  }

  renderSessions(sessions) {
    const shown = sessions.shown ?? [];
    $("server-sessions-note").textContent = (sessions.total ?? 0) > shown.length
      ? `${shown.length} of ${count(sessions.total)} sessions shown.`
      : "";
    const rows = shown.map((s) => el("tr", { "data-session-id": s.sessionId, "data-state": s.state },
      el("th", { scope: "row" }, s.mode ?? "?", el("span", { class: "note", text: s.via ? ` via ${s.via}` : "" })),
      el("td", {}, el("code", { text: s.roomId ?? "–" }), " · ", el("code", { text: s.peerId ?? "–" })),
      el("td", { class: "state", text: s.state ?? "–" }),
      el("td", { class: `verdict-cell ${verdictClass(s.verdict)}`, text: s.verdict ?? "–" }),
      el("td", { class: "num", text: formatMs(s.connectMs) }),
      el("td", { class: "num", text: formatDuration((s.durationMs ?? NaN) / 1000) }),
      el("td", { class: "num", text: `${formatBytes(s.bytesReceived)} in · ${formatBytes(s.bytesSent)} out` })));
    fill($("server-sessions"), rows, 7, "No media sessions right now.");
  }

  renderRecordings(recordings) {
    const rows = recordings.map((r) => el("tr", { "data-recording-id": r.id },
      el("th", { scope: "row" }, el("code", { text: r.id ?? "?" })),
      el("td", {}, r.roomId ? el("code", { text: r.roomId }) : "–", r.peerId ? " · " : null, r.peerId ? el("code", { text: r.peerId }) : null),
      el("td", { class: "num", text: formatDuration(r.duration ?? r.durationS) }),
      el("td", { class: "num", text: formatBytes(r.size) }),
      el("td", { text: [r.format, (r.codecs ?? []).join(", ")].filter(Boolean).join(": ") || "–" })));
    fill($("server-recordings"), rows, 5, "Nothing is being recorded right now.");
  }
}

/** Put `rows` in a table body, or one line saying it is empty. */
function fill(body, rows, columns, empty) {
  if (rows.length === 0) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: String(columns), text: empty })));
  } else {
    body.replaceChildren(...rows);
  }
}
