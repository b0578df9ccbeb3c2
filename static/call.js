// The Call panel: join a room, see who is there, call one of them. The call is peer to peer
// between the two browsers; the server only relays offer, answer, candidates and bye. The room's
// group call through the server, and the WHEP viewer, are in group.js.

import { PeerLink, RtcClient } from "./rtc-client.js";
import { GroupPanel, WhepPanel } from "./group.js";
import { attach } from "./media.js";
import { StatsView, summarizeStats } from "./stats.js";
import { $, describeError, el, log, setStatus, summarize } from "./ui.js";

const ANSWER_TIMEOUT_MS = 45000; // a person has to notice the call and click Answer

/** Names the panel shows for a peer: metadata.name when given, else the id. */
function nameOf(peer) {
  const name = peer?.metadata?.name;
  return typeof name === "string" && name ? name : peer?.peerId ?? "someone";
}

function randomName() {
  const words = ["otter", "heron", "lynx", "finch", "puffin", "marten", "ibis", "koala"];
  return `${words[Math.floor(Math.random() * words.length)]}-${Math.floor(100 + Math.random() * 900)}`;
}

export class CallPanel {
  /**
   * @param {import("./media.js").LocalMedia} media
   * @param {object} [clientOptions] options for the room's RtcClient (e.g. `{transport: "poll"}`)
   */
  constructor(media, clientOptions = {}) {
    this.media = media;
    this.clientOptions = clientOptions;
    /** @type {RtcClient|null} */ this.client = null;
    /** @type {PeerLink|null} */ this.link = null;
    this.local = null;
    this.stats = null;
    this.incoming = null; // {peerId, payload} of an offer waiting for Answer/Decline
    this.remotePeerId = null;
    this.offs = [];
    /** The room's group call through the server (it uses this panel's room). */
    this.group = new GroupPanel(media);
    this.whep = new WhepPanel(clientOptions.baseUrl ?? "");

    const params = new URLSearchParams(location.search);
    $("call-room").value = params.get("room") ?? $("call-room").value;
    $("call-name").value = sessionStorage.getItem("fantasize-rtc.name") ?? randomName();

    $("call-join").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.join($("call-room").value.trim(), $("call-name").value.trim());
    });
    $("call-leave").addEventListener("click", () => this.leave());
    $("call-hangup").addEventListener("click", () => this.hangUp());
    $("call-answer").addEventListener("click", () => this.answer());
    $("call-decline").addEventListener("click", () => this.decline());
    $("call-invite").addEventListener("click", () => this.copyInvite());
    this.renderPeers();
  }

  get pc() {
    return this.link?.pc ?? null;
  }

  // -- room ------------------------------------------------------------------------------------

  async join(roomId, name) {
    if (this.client) return;
    const client = new RtcClient(this.clientOptions);
    this.client = client;
    this.offs = [
      client.on("message", (msg) => log("server", `[call] ${summarize(msg)}`)),
      client.on("sent", (msg) => log("sent", `[call] ${summarize(msg)}`)),
      client.on("peers", () => this.renderPeers()),
      client.on("signal", (msg) => this.onSignal(msg)),
      client.on("state", (ev) => this.onClientState(ev)),
      client.on("log", (ev) => log("page", `[call] ${ev.text}`)),
    ];
    this.setJoinControls("joining");
    setStatus($("call-status"), "connecting", `Joining room ${roomId}`);
    log("page", `[call] joining room ${roomId} as ${name}`);
    try {
      await client.connect(roomId, name, { name });
    } catch (err) {
      this.dropClient();
      this.setJoinControls("out");
      let text = describeError(err);
      if (err.code === "peer_id_taken") text = `Someone called ${name} is already in room ${roomId}: pick another name.`;
      else if (err.code === "room_full") text = `Room ${roomId} is full: try another room.`;
      else if (err.code === "invalid_request") text = `Could not join: ${text}`;
      setStatus($("call-status"), "failed", text);
      log("error", `[call] join failed: ${text}`);
      return;
    }
    sessionStorage.setItem("fantasize-rtc.name", name);
    this.setJoinControls("in");
    this.group.setClient(client);
    this.showRoomStatus();
    this.renderPeers();
  }

  async leave() {
    await this.hangUp();
    await this.group.leave();
    this.hideIncoming();
    const client = this.client;
    if (!client) return;
    this.dropClient();
    await client.disconnect();
    log("page", "[call] left the room");
    this.setJoinControls("out");
    setStatus($("call-status"), "idle", "Not in a room.");
    this.renderPeers();
  }

  dropClient() {
    this.offs.forEach((off) => off());
    this.offs = [];
    this.client = null;
    this.group.setClient(null);
  }

  onClientState(ev) {
    const status = $("call-status");
    if (ev.state === "reconnecting") {
      const why = ev.error ? describeError(ev.error) : "Lost the connection to the server.";
      const retry = ev.retryInMs ? ` Trying again in ${Math.max(1, Math.round(ev.retryInMs / 1000))} s (attempt ${ev.attempt}).` : "";
      setStatus(status, "failed", `${why}${retry}`);
      this.renderPeers();
    } else if (ev.state === "connected" && ev.previous === "reconnecting") {
      log("page", "[call] back in touch with the server");
      this.showRoomStatus();
      this.renderPeers();
    } else if (ev.state === "failed" && ev.previous !== "connecting") {
      const why = ev.error?.code === "replaced"
        ? "Another tab joined this room with your name, so this one left it."
        : describeError(ev.error);
      setStatus(status, "failed", why);
      this.dropClient();
      this.setJoinControls("out");
      this.renderPeers();
    } else if (ev.state === "closed" && this.client) {
      setStatus(status, "idle", "The server ended your membership of the room.");
      this.dropClient();
      this.setJoinControls("out");
      this.renderPeers();
    }
  }

  showRoomStatus() {
    if (this.link || !this.client) return;
    const others = [...this.client.peers.keys()].filter((id) => !id.startsWith("@")).length;
    const who = others === 0 ? "Nobody else is here yet: open this page in another tab or on another machine and join the same room."
      : `${others} other ${others === 1 ? "person is" : "people are"} here: pick one to call.`;
    setStatus($("call-status"), "connected", `In room ${this.client.roomId} as ${this.client.peerId}. ${who}`);
  }

  setJoinControls(mode) {
    const inRoom = mode === "in";
    $("call-room").disabled = mode !== "out";
    $("call-name").disabled = mode !== "out";
    $("call-join-button").disabled = mode !== "out";
    $("call-leave").disabled = !inRoom;
    $("call-invite").disabled = !inRoom;
  }

  renderPeers() {
    const list = $("call-peers");
    const client = this.client;
    if (!client || !client.peerId) {
      list.replaceChildren(el("li", { class: "empty", text: "Join a room to see who is there." }));
      return;
    }
    const items = [el("li", { class: "me", "data-peer-id": client.peerId }, el("span", { text: `${client.peerId} (you)` }))];
    const online = client.state === "connected";
    for (const peer of client.peers.values()) {
      if (peer.peerId.startsWith("@")) {
        items.push(el("li", { class: "server", "data-peer-id": peer.peerId }, el("span", { text: `${peer.peerId} (server peer)` })));
        continue;
      }
      const inThisCall = this.remotePeerId === peer.peerId;
      items.push(el("li", { "data-peer-id": peer.peerId },
        el("span", { text: nameOf(peer) === peer.peerId ? peer.peerId : `${nameOf(peer)} (${peer.peerId})` }),
        inThisCall
          ? el("span", { class: "me", text: "in a call" })
          : el("button", {
            class: "small", type: "button", "aria-label": `Call ${peer.peerId}`, text: "Call",
            disabled: Boolean(this.link) || !online, onclick: () => this.call(peer.peerId),
          })));
    }
    if (client.peers.size === 0) items.push(el("li", { class: "empty", text: "Nobody else yet." }));
    list.replaceChildren(...items);
    if (!this.link && client.state === "connected") this.showRoomStatus();
  }

  async copyInvite() {
    const url = new URL(location.href);
    url.search = `?room=${encodeURIComponent(this.client?.roomId ?? "")}`;
    url.hash = "#call";
    try {
      await navigator.clipboard.writeText(url.href);
      log("page", `Invite link copied: ${url.href}`);
    } catch {
      log("page", `Invite link (copy it by hand): ${url.href}`);
    }
  }

  // -- calls -----------------------------------------------------------------------------------

  newPeerConnection(remotePeerId) {
    const pc = new RTCPeerConnection({ iceServers: this.client.iceServers });
    const remoteStream = new MediaStream();
    pc.addEventListener("track", (ev) => {
      remoteStream.addTrack(ev.track);
      attach($("call-remote"), remoteStream);
    });
    pc.addEventListener("connectionstatechange", () => this.onConnectionState(pc, remotePeerId));
    const link = new PeerLink(this.client, remotePeerId, pc);
    link.on("bye", ({ reason }) => this.ended(`${remotePeerId} ended the call (${reason}).`, "idle"));
    this.link = link;
    this.remotePeerId = remotePeerId;
    $("call-remote-caption").textContent = remotePeerId;
    return link;
  }

  async startLocal(pc) {
    const local = await this.media.open();
    if (this.pc !== pc) {
      // Hung up (or the other side left) while the camera was opening: do not leave it on.
      local.stop();
      throw new Error("The call ended");
    }
    this.local = local;
    attach($("call-local"), this.local.stream);
    this.local.stream.getTracks().forEach((t) => pc.addTrack(t, this.local.stream));
  }

  async call(peerId) {
    if (!this.client || this.link) return;
    const link = this.newPeerConnection(peerId);
    this.renderPeers();
    $("call-hangup").disabled = false;
    setStatus($("call-status"), "connecting", `Calling ${peerId}; waiting for an answer`);
    log("page", `[call] calling ${peerId}`);
    try {
      await this.startLocal(link.pc);
      await link.call({ timeoutMs: ANSWER_TIMEOUT_MS });
      if (this.link === link && link.pc.connectionState !== "connected") {
        setStatus($("call-status"), "connecting", `${peerId} answered; connecting`);
      }
    } catch (err) {
      if (this.link !== link) return; // already ended (bye, hang-up)
      this.ended(`The call to ${peerId} did not connect: ${describeError(err)}`, "failed");
    }
  }

  onSignal(msg) {
    const from = msg.fromPeerId;
    const sig = msg.signal;
    if (from.startsWith("@")) return;
    if (sig.type === "offer") {
      if (this.link || this.incoming) {
        this.client.signal({ type: "bye", payload: { reason: "busy" }, to: from }).catch(() => {});
        log("page", `[call] ${from} called while busy; told them so`);
        return;
      }
      // Make the link now so the caller's trickled candidates are kept until Answer is clicked.
      this.newPeerConnection(from);
      this.incoming = { peerId: from, payload: sig.payload };
      $("call-incoming-text").textContent = `${nameOf(this.client.peers.get(from) ?? { peerId: from })} is calling you.`;
      $("call-incoming").hidden = false;
      $("call-answer").focus();
      this.renderPeers();
      setStatus($("call-status"), "connecting", `${from} is calling`);
      log("page", `[call] incoming call from ${from}`);
    }
  }

  async answer() {
    const incoming = this.incoming;
    const link = this.link;
    if (!incoming || !link) return;
    this.hideIncoming();
    $("call-hangup").disabled = false;
    setStatus($("call-status"), "connecting", `Answering ${incoming.peerId}`);
    try {
      await this.startLocal(link.pc);
      await link.accept(incoming.payload);
    } catch (err) {
      if (this.link !== link) return;
      this.ended(`Could not answer ${incoming.peerId}: ${describeError(err)}`, "failed");
    }
  }

  async decline() {
    const incoming = this.incoming;
    this.hideIncoming();
    if (!incoming) return;
    const bye = this.link?.hangUp("declined");
    this.cleanupCall();
    await bye;
    log("page", `[call] declined the call from ${incoming.peerId}`);
    this.showRoomStatus();
  }

  hideIncoming() {
    this.incoming = null;
    $("call-incoming").hidden = true;
  }

  async hangUp() {
    const link = this.link;
    if (!link) return;
    const peer = this.remotePeerId;
    const bye = link.hangUp("hang-up"); // closes at once; the bye goes out in the background
    this.cleanupCall();
    await bye;
    log("page", `[call] hung up on ${peer}`);
    setStatus($("call-status"), "idle", `Call with ${peer} ended. You are still in room ${this.client?.roomId}.`);
  }

  onConnectionState(pc, peerId) {
    if (this.pc !== pc) return;
    const state = pc.connectionState;
    log("page", `[call] connection to ${peerId}: ${state}`);
    if (state === "connected") {
      setStatus($("call-status"), "connected", `In a call with ${peerId}.`);
      this.stats?.stop();
      this.stats = new StatsView(pc, $("call-stats"));
      // Say which way the media goes, from the candidate pair ICE picked.
      pc.getStats().then((report) => {
        if (this.pc !== pc) return;
        const s = summarizeStats(report);
        const relayed = s.localCandidateType === "relay" || s.remoteCandidateType === "relay";
        const how = relayed ? "through a TURN relay" : "directly between your browsers";
        setStatus($("call-status"), "connected", `In a call with ${peerId}. Media goes ${how}.`);
      }).catch(() => {});
    } else if (state === "disconnected") {
      setStatus($("call-status"), "connecting", `The connection to ${peerId} was interrupted; waiting for it to recover`);
    } else if (state === "failed") {
      this.ended(`The connection to ${peerId} failed: the two browsers could not reach each other. `
        + "Behind strict firewalls a TURN server is needed (fantasize-rtc serve --ice-server turn:...).", "failed");
    }
  }

  ended(text, state) {
    const wasIncoming = this.incoming;
    this.hideIncoming();
    this.cleanupCall();
    setStatus($("call-status"), state, wasIncoming ? `${wasIncoming.peerId} gave up before you answered.` : text);
    log(state === "failed" ? "error" : "page", `[call] ${text}`);
  }

  cleanupCall() {
    const link = this.link;
    this.link = null;
    this.remotePeerId = null;
    this.stats?.stop();
    this.stats = null;
    $("call-stats").replaceChildren();
    this.local?.stop();
    this.local = null;
    attach($("call-local"), null);
    attach($("call-remote"), null);
    $("call-remote-caption").textContent = "The other side";
    $("call-hangup").disabled = true;
    link?.close();
    this.renderPeers();
  }
}
