// The Call panel's group call through the server: every member sends its camera and microphone
// to the server's @sfu peer, which forwards them, as they are, to every other member. And a
// WHEP viewer for a stream published over WHIP (POST /whip?mode=sfu).

import { GroupCall, watchWhep } from "./rtc-client.js";
import { attach } from "./media.js";
import { StatsView } from "./stats.js";
import { $, describeError, el, log, setStatus } from "./ui.js";

/**
 * What this page sends in a group call: every member receives every other member's stream as it
 * was sent (the server does not transcode), so a tile-sized picture keeps everyone's downlink
 * small: half the source's size (320×240 from the 640×480 camera), at most 15 fps and 500 kbit/s.
 */
const SEND_ENCODINGS = { video: [{ scaleResolutionDownBy: 2, maxFramerate: 15, maxBitrate: 500_000 }] };
const STATS_EVERY_MS = 1000;

function kbit(kbps) {
  return kbps === null || kbps === undefined ? "–" : `${Math.round(kbps)} kbit/s`;
}

export class GroupPanel {
  /**
   * @param {import("./media.js").LocalMedia} media
   */
  constructor(media) {
    this.media = media;
    /** @type {import("./rtc-client.js").RtcClient|null} the Call panel's room */
    this.client = null;
    /** @type {GroupCall|null} */ this.call = null;
    this.local = null;
    this.timer = null;
    this.offs = [];
    /** @type {Map<string, HTMLElement>} peerId -> tile */
    this.tiles = new Map();
    $("group-join").addEventListener("click", () => this.join());
    $("group-leave").addEventListener("click", () => this.leave());
    this.render();
  }

  get pc() {
    return this.call?.pc ?? null;
  }

  /** The Call panel joined a room (or left it: null). Leaving the room ends the group call. */
  setClient(client) {
    if (client === this.client) return;
    if (this.call) this.finish("idle", "You left the room, so you left its group call.");
    this.client = client;
    this.render();
  }

  render() {
    const inRoom = Boolean(this.client);
    const inCall = Boolean(this.call);
    $("group-join").disabled = !inRoom || inCall;
    $("group-leave").disabled = !inCall;
    if (!inCall) {
      setStatus($("group-status"), "idle", inRoom
        ? `Not in the group call: press Join group call to meet everyone in room ${this.client.roomId} who joins it.`
        : "Join a room above first; its group call is for the people in that room.");
    }
  }

  async join() {
    const client = this.client;
    if (!client || this.call) return;
    const call = new GroupCall(client);
    this.call = call;
    this.render();
    const status = $("group-status");
    setStatus(status, "connecting", "Opening your camera and microphone");
    this.offs = [
      call.on("track", (ev) => this.showTrack(ev)),
      call.on("trackended", (ev) => this.trackEnded(ev)),
      call.on("publishers", () => this.showCallStatus()),
      call.on("state", (ev) => this.onState(call, ev)),
      call.on("error", (err) => this.onError(call, err)),
    ];
    try {
      const local = await this.media.open();
      if (this.call !== call) {
        local.stop(); // left while the camera was opening
        return;
      }
      this.local = local;
      this.addSelfTile(local.stream);
      setStatus(status, "connecting", `Joining the group call of room ${client.roomId} through the server`);
      log("page", `[group] joining the group call of room ${client.roomId}`);
      const { sessionId } = await call.join(local.stream, { sendEncodings: SEND_ENCODINGS });
      if (this.call !== call) return;
      log("page", `[group] @sfu answered (session ${sessionId})`);
    } catch (err) {
      if (this.call !== call) return;
      const why = describeError(err);
      this.finish("failed", err.code === "timeout" ? `The server did not answer: ${why}` : `Could not join the group call: ${why}`);
    }
  }

  async leave() {
    if (!this.call) return;
    await this.finish("idle", `You left the group call. You are still in room ${this.client?.roomId}.`);
  }

  /** End the call on this page (tiles removed at once), say why; resolves once `bye` went out. */
  finish(state, text) {
    const call = this.call;
    this.call = null;
    this.offs.forEach((off) => off());
    this.offs = [];
    clearInterval(this.timer);
    this.timer = null;
    const left = call?.leave();
    this.local?.stop();
    this.local = null;
    for (const tile of this.tiles.values()) tile.remove();
    this.tiles.clear();
    $("group-tiles").replaceChildren();
    this.render();
    setStatus($("group-status"), state, text);
    log(state === "failed" ? "error" : "page", `[group] ${text}`);
    return left;
  }

  onState(call, ev) {
    if (this.call !== call) return;
    const status = $("group-status");
    log("page", `[group] call ${ev.state}${ev.error ? `: ${describeError(ev.error)}` : ""}`);
    if (ev.state === "connected") {
      this.showCallStatus();
      if (!this.timer) this.timer = setInterval(() => this.updateStats(call), STATS_EVERY_MS);
    } else if (ev.state === "interrupted") {
      setStatus(status, "connecting", "The connection to the server was interrupted; waiting for it to recover");
    } else if (ev.state === "reconnecting") {
      setStatus(status, "connecting", `${describeError(ev.error)} Joining the group call again`);
    } else if (ev.state === "failed") {
      this.finish("failed", `The group call ended: ${describeError(ev.error)}`);
    } else if (ev.state === "closed") {
      this.finish("idle", "The group call ended.");
    }
  }

  onError(call, err) {
    if (this.call !== call) return;
    // @sfu refused something in a running call, or this browser could not apply its offer.
    const text = err.code === "negotiation_failed" ? describeError(err) : `The server refused: ${describeError(err)}`;
    setStatus($("group-status"), "failed", text);
    log("error", `[group] ${err.code}: ${err.message}`);
  }

  showCallStatus() {
    const call = this.call;
    if (!call || call.state !== "connected") return;
    const others = call.publishers().map((p) => p.peerId);
    const who = others.length === 0
      ? "Nobody else is in it yet: join the same room's group call from another tab or machine."
      : `You see ${others.length} other${others.length === 1 ? "" : "s"}: ${others.join(", ")}.`;
    setStatus($("group-status"), "connected",
      `In the group call of room ${this.client?.roomId}; the server forwards your camera to the others. ${who}`);
  }

  // -- tiles -------------------------------------------------------------------------------------

  tile(peerId, self = false) {
    let tile = this.tiles.get(peerId);
    if (tile) return tile;
    const video = el("video", { autoplay: true, playsinline: true, muted: self });
    video.muted = self; // the property, not only the attribute: never hear yourself
    tile = el("figure", { class: self ? "tile self" : "tile remote", "data-peer-id": peerId },
      el("span", { class: "ph", "aria-hidden": "true", text: self ? "Your camera" : `${peerId} sends no video` }),
      video,
      el("figcaption", {},
        el("span", { class: "who", text: self ? `${peerId} (you)` : peerId }),
        self ? null : el("span", { class: "rate", title: "Inbound bitrate (audio and video)", text: "–" })));
    this.tiles.set(peerId, tile);
    if (self) $("group-tiles").prepend(tile);
    else $("group-tiles").append(tile);
    return tile;
  }

  addSelfTile(stream) {
    const me = this.client?.peerId ?? "me";
    attach(this.tile(me, true).querySelector("video"), stream);
  }

  showTrack({ peerId, kind, stream }) {
    const tile = this.tile(peerId);
    const video = tile.querySelector("video");
    if (video.srcObject !== stream) attach(video, stream);
    tile.classList.toggle("live", stream.getVideoTracks().length > 0);
    log("page", `[group] receiving ${peerId}'s ${kind}`);
  }

  trackEnded({ peerId, kind, stream, last }) {
    const tile = this.tiles.get(peerId);
    if (!tile) return;
    if (last) {
      tile.remove();
      this.tiles.delete(peerId);
      log("page", `[group] ${peerId} is no longer in the call`);
    } else {
      tile.classList.toggle("live", Boolean(stream?.getVideoTracks().length));
      log("page", `[group] ${peerId} stopped sending ${kind}`);
    }
  }

  async updateStats(call) {
    let stats;
    try {
      stats = await call.stats();
    } catch {
      return; // closed in between
    }
    if (this.call !== call) return;
    for (const [peerId, tile] of this.tiles) {
      const rate = tile.querySelector(".rate");
      if (!rate) continue;
      const s = stats.peers[peerId];
      rate.textContent = s ? [s.frameWidth ? `${s.frameWidth}×${s.frameHeight}` : null, kbit(s.kbps)].filter(Boolean).join(" · ") : "–";
      if (s?.kbps !== null && s?.kbps !== undefined) rate.dataset.kbps = String(Math.round(s.kbps));
    }
  }
}

/** "Watch a WHIP stream": a WHEP viewer of a session published with POST /whip?mode=sfu. */
export class WhepPanel {
  /** @param {string} baseUrl where the server's routes are ("" at the root) */
  constructor(baseUrl) {
    this.baseUrl = baseUrl;
    /** @type {import("./rtc-client.js").WhepViewer|null} */ this.viewer = null;
    this.stats = null;
    this.generation = 0;
    $("whep-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.watch($("whep-session").value.trim(), $("whep-token").value.trim());
    });
    $("whep-stop").addEventListener("click", () => this.stop());
  }

  get pc() {
    return this.viewer?.pc ?? null;
  }

  /** A session id, or a URL or path that holds one (/whip/<id>, /whep/<id>). */
  static sessionIdOf(text) {
    const found = /\/wh[ie]p\/([^/?#\s]+)/.exec(text);
    return found ? found[1] : text;
  }

  async watch(text, token) {
    if (this.viewer || !text) return;
    const gen = ++this.generation;
    const sessionId = WhepPanel.sessionIdOf(text);
    const status = $("whep-status");
    this.controls(true);
    setStatus(status, "connecting", `Asking the server for stream ${sessionId}`);
    log("page", `[whep] watching ${sessionId}`);
    try {
      const viewer = await watchWhep(`${this.baseUrl}/whep/${encodeURIComponent(sessionId)}`, { token: token || undefined });
      if (gen !== this.generation) {
        viewer.close();
        return;
      }
      this.viewer = viewer;
      attach($("whep-video"), viewer.stream);
      viewer.on("ended", ({ reason }) => this.ended(viewer, reason));
      viewer.pc.addEventListener("connectionstatechange", () => {
        if (this.viewer !== viewer || viewer.pc.connectionState !== "connected") return;
        setStatus(status, "connected", `Watching stream ${sessionId}, forwarded by the server as it was published.`);
        this.stats?.stop();
        this.stats = new StatsView(viewer.pc, $("whep-stats"));
      });
      setStatus(status, "connecting", `The server answered; connecting to stream ${sessionId}`);
    } catch (err) {
      if (gen !== this.generation) return;
      this.controls(false);
      let why = describeError(err);
      if (err.status === 404) why = `There is no live stream ${sessionId}: ${why}`;
      setStatus(status, "failed", `Could not watch: ${why}`);
      log("error", `[whep] ${why}`);
    }
  }

  ended(viewer, reason) {
    if (this.viewer !== viewer) return;
    this.cleanup();
    const text = `${reason} Nothing more will come; the publisher may start a new session.`;
    setStatus($("whep-status"), "idle", text);
    log("page", `[whep] ${reason}`);
  }

  async stop() {
    const viewer = this.viewer;
    this.generation++;
    this.cleanup();
    setStatus($("whep-status"), "idle", "Stopped watching.");
    await viewer?.close();
  }

  cleanup() {
    this.viewer = null;
    this.stats?.stop();
    this.stats = null;
    $("whep-stats").replaceChildren();
    attach($("whep-video"), null);
    this.controls(false);
  }

  controls(watching) {
    $("whep-session").disabled = watching;
    $("whep-token").disabled = watching;
    $("whep-watch").disabled = watching;
    $("whep-stop").disabled = !watching;
  }
}
