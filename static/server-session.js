// A session with one of the server's own peers (@echo, @record, @probe, @play, or a mode of the
// application's), shared by the media panels: a peer connection, the signaling link, and readable states.

import { callServerPeer, RtcError } from "./rtc-client.js";
import { log } from "./ui.js";

/** The server's own peers of the built-in modes, there whenever the server runs its media layer. */
const BUILT_IN = new Set(["@echo", "@record", "@probe", "@play"]);

/**
 * Open a session with `serverPeerId` over the page's signaling connection.
 * @param {import("./rtc-client.js").RtcClient} lab the page's connected client
 * @param {string} serverPeerId `@echo`, `@record`, `@probe`, `@play` or `@` and a registered mode's name
 * @param {object} options
 * @param {MediaStream} [options.stream] what to send
 * @param {boolean} [options.receive] ask for video and audio without sending any (for `@play`)
 * @param {boolean} [options.relayOnly] `iceTransportPolicy: "relay"` (only TURN candidates)
 * @param {boolean} [options.dataChannel] open a data channel (named after the mode)
 * @param {(channel: RTCDataChannel) => void} [options.onChannel] called with that channel at once,
 *   before the offer goes out, so that no event of it can be missed
 * @param {object} [options.extra] extra offer payload fields (session options)
 * @param {(track: MediaStreamTrack, streams: MediaStream[]) => void} [options.onTrack]
 * @param {(state: RTCPeerConnectionState) => void} [options.onState]
 * @returns {Promise<{pc: RTCPeerConnection, link: import("./rtc-client.js").PeerLink, sessionId: string|null, channel: RTCDataChannel|null}>}
 */
export async function openServerSession(lab, serverPeerId, options = {}) {
  if (lab.state !== "connected") {
    throw new RtcError("not_connected", "The page is not connected to the server right now (see the status at the top).");
  }
  const config = { iceServers: lab.iceServers };
  if (options.relayOnly) {
    const hasTurn = lab.iceServers.some((s) => [].concat(s.urls).some((u) => /^turns?:/i.test(u)));
    if (!hasTurn) {
      throw new RtcError("no_turn", "Relay-only needs a TURN server, and this server hands out none. "
        + "Start it with --ice-server turn:user:password@host:3478 (or --turn-secret) to test relaying.");
    }
    config.iceTransportPolicy = "relay";
  }
  const pc = new RTCPeerConnection(config);
  let channel = null;
  try {
    if (options.stream) options.stream.getTracks().forEach((t) => pc.addTrack(t, options.stream));
    if (options.receive) {
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    if (options.dataChannel) {
      channel = pc.createDataChannel(serverPeerId.slice(1));
      options.onChannel?.(channel);
    }
    if (options.onTrack) pc.addEventListener("track", (ev) => options.onTrack(ev.track, ev.streams));
    if (options.onState) {
      pc.addEventListener("connectionstatechange", () => {
        log("page", `${serverPeerId}: connection state ${pc.connectionState}`);
        options.onState(pc.connectionState);
      });
    }
    log("page", `${serverPeerId}: sending an offer`);
    const link = await callServerPeer(lab, pc, serverPeerId, { extra: options.extra });
    const sessionId = link.answerPayload?.sessionId ?? null;
    log("page", `${serverPeerId}: answered${sessionId ? ` (session ${sessionId.slice(0, 8)}…)` : ""}`);
    return { pc, link, sessionId, channel };
  } catch (err) {
    pc.close();
    if (err.code === "peer_not_found" && !BUILT_IN.has(serverPeerId)) {
      // The built-in peers are there whenever the media layer is; a mode of the application's
      // can be gone (the server restarted without it) while the page still lists it.
      throw new RtcError("unknown_mode", `The server does not offer the mode ${serverPeerId.slice(1)} `
        + `(there is no ${serverPeerId} on it any more).`);
    }
    if (err.code === "peer_not_found") {
      throw new RtcError("no_media", `This server does not run its own media peers (no ${serverPeerId}): it was `
        + "started without the media layer, so only the Call panel works here.");
    }
    throw err;
  }
}

/** Words for a connection state, for status lines. */
export function describeConnectionState(state) {
  return {
    new: "Starting",
    connecting: "Connecting",
    connected: "Connected",
    disconnected: "Interrupted; waiting for the connection to recover",
    failed: "The connection failed",
    closed: "Closed",
  }[state] ?? state;
}
