// Live numbers from RTCPeerConnection.getStats(): round-trip time, frame rate, bitrate, loss.

import { el, formatMs } from "./ui.js";

/**
 * Reads a peer connection's stats once a second and renders them into a <dl>.
 */
export class StatsView {
  /**
   * @param {RTCPeerConnection} pc
   * @param {HTMLElement} dl
   */
  constructor(pc, dl) {
    this.pc = pc;
    this.dl = dl;
    this.prev = null;
    /** @type {ReturnType<typeof summarizeStats>|null} the latest figures */
    this.latest = null;
    this.timer = setInterval(() => this.update().catch(() => {}), 1000);
    this.update().catch(() => {});
  }

  async update() {
    if (this.pc.connectionState === "closed") return;
    const report = await this.pc.getStats();
    const now = summarizeStats(report);
    const prev = this.prev;
    if (prev) {
      const seconds = (now.timestamp - prev.timestamp) / 1000;
      if (seconds > 0) {
        now.inKbps = ((now.bytesReceived - prev.bytesReceived) * 8) / 1000 / seconds;
        now.outKbps = ((now.bytesSent - prev.bytesSent) * 8) / 1000 / seconds;
        if (now.framesPerSecond === null) now.framesPerSecond = (now.framesDecoded - prev.framesDecoded) / seconds;
      }
    }
    this.prev = now;
    this.latest = now;
    this.render(now);
  }

  render(s) {
    const items = [
      ["Round trip", s.rttMs === null ? "–" : formatMs(s.rttMs)],
      ["Frame rate", s.framesPerSecond === null ? "–" : `${Math.round(s.framesPerSecond)} fps`],
      ["Receiving", s.inKbps === undefined ? "–" : `${Math.round(s.inKbps)} kbit/s`],
      ["Sending", s.outKbps === undefined ? "–" : `${Math.round(s.outKbps)} kbit/s`],
      ["Packet loss", s.lossPct === null ? "–" : `${s.lossPct.toFixed(1)} %`],
      ["Resolution", s.width ? `${s.width}×${s.height}` : "–"],
      ["Frames decoded", String(s.framesDecoded)],
      ["Audio packets in", String(s.audioPackets)],
    ];
    this.dl.replaceChildren(...items.map(([name, value]) => el("div", {}, el("dt", { text: name }), el("dd", { text: value }))));
  }

  stop() {
    clearInterval(this.timer);
  }
}

/**
 * The figures the page shows, from one getStats() report.
 * @param {RTCStatsReport} report
 */
export function summarizeStats(report) {
  const out = {
    timestamp: performance.now(),
    rttMs: null,
    framesPerSecond: null,
    framesDecoded: 0,
    bytesReceived: 0,
    bytesSent: 0,
    packetsReceived: 0,
    packetsLost: 0,
    audioPackets: 0,
    lossPct: null,
    width: 0,
    height: 0,
    localCandidateType: null,
    remoteCandidateType: null,
    protocol: null,
  };
  let pair = null;
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  report.forEach((s) => {
    if (s.type === "inbound-rtp") {
      out.bytesReceived += s.bytesReceived ?? 0;
      out.packetsReceived += s.packetsReceived ?? 0;
      out.packetsLost += Math.max(0, s.packetsLost ?? 0);
      if (s.kind === "video") {
        out.framesDecoded += s.framesDecoded ?? 0;
        if (typeof s.framesPerSecond === "number") out.framesPerSecond = s.framesPerSecond;
        if (s.frameWidth) {
          out.width = s.frameWidth;
          out.height = s.frameHeight;
        }
      } else if (s.kind === "audio") {
        out.audioPackets += s.packetsReceived ?? 0;
      }
    } else if (s.type === "outbound-rtp") {
      out.bytesSent += s.bytesSent ?? 0;
    } else if (s.type === "transport" && s.selectedCandidatePairId) {
      pair = byId.get(s.selectedCandidatePairId) ?? pair;
    } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && !pair) {
      pair = s;
    }
  });
  if (pair) {
    if (typeof pair.currentRoundTripTime === "number") out.rttMs = pair.currentRoundTripTime * 1000;
    const local = byId.get(pair.localCandidateId);
    const remote = byId.get(pair.remoteCandidateId);
    out.localCandidateType = local?.candidateType ?? null;
    out.remoteCandidateType = remote?.candidateType ?? null;
    out.protocol = local?.protocol ?? null;
  }
  const total = out.packetsReceived + out.packetsLost;
  if (total > 0) out.lossPct = (out.packetsLost / total) * 100;
  return out;
}
