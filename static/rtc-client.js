/**
 * The fantasize-rtc browser client: one small ES module, no dependencies, no build step.
 *
 * It speaks wire protocol v1 of fantasize-rtc-server (see docs/protocol.md): it joins a room, keeps
 * the peer alive with heartbeats, receives messages over a WebSocket (or a long-poll when
 * WebSockets do not get through), reconnects by itself, and relays signals to the other peers
 * and to the server's own peers (`@echo`, `@record`, `@probe`, `@play`). {@link GroupCall} joins a
 * room's group call through the server (`@sfu`); {@link watchWhep} plays a WHIP stream over WHEP.
 *
 * ```js
 * import { RtcClient, PeerLink } from "/static/rtc-client.js";
 *
 * const client = new RtcClient();               // same origin; or new RtcClient({ baseUrl })
 * const me = await client.connect("demo-room", "alice", { name: "Alice" });
 * client.on("peer:connected", (msg) => console.log("joined:", msg.peer.peerId));
 * client.on("signal", (msg) => console.log(msg.fromPeerId, "sent", msg.signal.type));
 *
 * const pc = new RTCPeerConnection({ iceServers: client.iceServers });
 * stream.getTracks().forEach((t) => pc.addTrack(t, stream));
 * const link = new PeerLink(client, "bob", pc);  // trickle ICE both ways through the server
 * await link.call();                              // offer -> bob, resolves when his answer is applied
 * ...
 * await link.hangUp();                            // `bye` to bob, closes pc
 * await client.disconnect();
 *
 * // Bob's side: make the link as the offer arrives (his candidates follow it), then answer.
 * client.on("signal", (msg) => {
 *   if (msg.signal.type !== "offer") return;
 *   const pc = new RTCPeerConnection({ iceServers: client.iceServers });
 *   pc.ontrack = (ev) => { video.srcObject = ev.streams[0]; };
 *   new PeerLink(client, msg.fromPeerId, pc).accept(msg.signal.payload);
 * });
 * ```
 *
 * @module rtc-client
 */

const DEFAULT_REQUEST_TIMEOUT_MS = 10000;

/**
 * WebSocket close codes the server sends: the names of the server's
 * `fantasize_rtc.protocol.CloseCode` (docs/protocol.md lists what each means).
 */
export const CloseCode = Object.freeze({
  LEFT: 1000,
  GOING_AWAY: 1001,
  UNSUPPORTED_DATA: 1003,
  INVALID_TEXT: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  REMOVED: 4000,
  REPLACED: 4001,
  TOO_SLOW: 4002,
});

/** Why a peer left a room: `peer:disconnected`'s `reason` (the server's `protocol.LeaveReason`). */
export const LeaveReason = Object.freeze({ LEFT: "left", TIMEOUT: "timeout", REPLACED: "replaced" });
const POLL_WAIT_MS = 25000;
const MAX_BACKOFF_MS = 5000;

/** An error the server (or the network) gave; `code` is the protocol's snake_case code. */
export class RtcError extends Error {
  /**
   * @param {string} code machine code, e.g. `room_full`, `unauthorized`, `network_error`
   * @param {string} message a sentence for people
   * @param {number} [status] HTTP status, 0 when the server was not reached
   * @param {number|null} [retryAfter] seconds, from `Retry-After`
   */
  constructor(code, message, status = 0, retryAfter = null) {
    super(message);
    this.name = "RtcError";
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/**
 * @typedef {object} PeerInfo
 * @property {string} peerId
 * @property {object|null} metadata
 * @property {number} connectedAt ms since the epoch
 * @property {number} lastSeen ms since the epoch
 */

/**
 * @typedef {object} ConnectResult the server's answer to `POST /rtc/connect`
 * @property {string} roomId
 * @property {string} peerId
 * @property {string} token secret to this peer
 * @property {RTCIceServer[]} iceServers pass these to `new RTCPeerConnection`
 * @property {number} heartbeatIntervalMs
 * @property {number} peerTimeoutMs
 * @property {PeerInfo[]} peers the other peers in the room
 * @property {{roomId: string, maxPeers: number, metadata: object|null}} room
 */

/**
 * @typedef {object} Signal
 * @property {string} type `offer`, `answer`, `candidate`, `bye` or your own
 * @property {*} [payload]
 * @property {string} [to] one peer; without it, every other peer in the room
 */

/**
 * Connection states, in `client.state` and in the `state` event:
 * `idle` (never connected), `connecting`, `connected`, `reconnecting` (lost the server, trying
 * again by itself; `detail.error` says why), `closed` (after `disconnect()`), `failed`
 * (will not retry: another connection took this peer id, or the first connect was refused).
 * @typedef {"idle"|"connecting"|"connected"|"reconnecting"|"closed"|"failed"} ClientState
 */

function delay(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

/** A tiny event emitter: `on(name, fn)` returns the function that unsubscribes. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }

  /**
   * Listen to an event; returns a function that stops listening.
   * @param {string} event
   * @param {(data: any) => void} fn
   * @returns {() => void}
   */
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return () => this.off(event, fn);
  }

  /** Listen once. @param {string} event @param {(data: any) => void} fn @returns {() => void} */
  once(event, fn) {
    const off = this.on(event, (data) => {
      off();
      fn(data);
    });
    return off;
  }

  /** @param {string} event @param {Function} fn */
  off(event, fn) {
    this._handlers.get(event)?.delete(fn);
  }

  /** @param {string} event @param {*} data */
  emit(event, data) {
    for (const fn of [...(this._handlers.get(event) ?? [])]) {
      try {
        fn(data);
      } catch (err) {
        // A broken listener must not stop the others or the client's own loop.
        console.error(`rtc-client: a "${event}" listener threw`, err);
      }
    }
  }
}

/**
 * A peer in one room of a fantasize-rtc server.
 *
 * Events (`client.on(name, fn)`):
 * - `signal` `{type: "signal", roomId, fromPeerId, signal, ts}`: a signal for this peer
 * - `peer:connected` `{roomId, peer: PeerInfo}`, `peer:disconnected` `{roomId, peerId, reason}`
 * - `peers` `PeerInfo[]`: the room's member list changed (also after a reconnect)
 * - `state` `{state, previous, error?, attempt?, retryInMs?}`: see {@link ClientState}
 * - `reconnected` `{attempt, rejoined}`: back after a loss; `rejoined` when the server had
 *   forgotten this peer (e.g. it restarted) and the client joined again
 * - `error` `{code, message, fromPeerId?}`: the server refused a frame that had no waiting
 *   caller, or (with `fromPeerId`) one of its own peers refused an offer
 * - `message`: every message from the server, raw; `sent`: every message to it (for logs)
 */
export class RtcClient extends Emitter {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] server origin and path prefix, e.g. `https://rtc.example.org`;
   *   default: the page's own origin
   * @param {"auto"|"websocket"|"poll"} [options.transport] `auto` (default): WebSocket, and
   *   long-poll when a WebSocket cannot be opened but HTTP works
   * @param {string} [options.authToken] the connect JWT, for servers started with `--auth-secret`
   * @param {number} [options.requestTimeoutMs] per HTTP request (default 10000)
   * @param {boolean} [options.reconnect] reconnect by itself after a loss (default true)
   */
  constructor(options = {}) {
    super();
    this.baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
    this.transportPreference = options.transport ?? "auto";
    this.authToken = options.authToken ?? null;
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.autoReconnect = options.reconnect ?? true;
    /** @type {ClientState} */
    this.state = "idle";
    /** @type {"websocket"|"poll"|null} how messages arrive right now */
    this.transport = null;
    /** @type {string|null} */ this.roomId = null;
    /** @type {string|null} */ this.peerId = null;
    /** @type {string|null} */ this.token = null;
    /** @type {RTCIceServer[]} */ this.iceServers = [];
    /** @type {ConnectResult|null} */ this.info = null;
    /** @type {Map<string, PeerInfo>} the other members of the room */
    this.peers = new Map();
    this.metadata = null;
    this._ws = null;
    this._pending = new Map();
    this._nextId = 1;
    this._heartbeatTimer = null;
    this._life = null; // AbortController of the current connection; aborted by disconnect()
    this._wsWorks = null; // null: untested, true: a WebSocket opened once, false: fell back to poll
    this._reconnecting = null;
  }

  // -- public API ------------------------------------------------------------------------------

  /**
   * Join `roomId` (created when it does not exist) and start receiving messages.
   * @param {string} roomId 1-64 characters of `A-Z a-z 0-9 . _ ~ -`
   * @param {string} [peerId] your id in the room; the server makes one up when absent
   * @param {object} [metadata] shown to the other peers (e.g. `{name: "Alice"}`)
   * @returns {Promise<ConnectResult>}
   */
  async connect(roomId, peerId, metadata) {
    if (this.state === "connecting" || this.state === "connected" || this.state === "reconnecting") {
      throw new RtcError("invalid_state", `Already ${this.state}; call disconnect() first.`);
    }
    this._life = new AbortController();
    this._setState("connecting");
    try {
      // One round trip: join in the WebSocket upgrade; else (a proxy without WebSockets, an
      // older server, or a refusal) POST /rtc/connect, which also says why a join was refused.
      let info = await this._joinOverWebSocket(roomId, peerId ?? null, metadata ?? null);
      if (!info) {
        info = await this._join(roomId, peerId ?? null, metadata ?? null);
        await this._openChannel();
      }
      this._startHeartbeats();
      this._setState("connected");
      return info;
    } catch (err) {
      this._teardown();
      this._setState("failed", { error: err });
      throw err;
    }
  }

  /**
   * Send a signal to one peer (`to`) or to every other peer in the room.
   * Resolves with the relay result `{listenersNotified, delivered: [peerId], queued: [peerId]}`;
   * rejects with an {@link RtcError} (e.g. `peer_not_found`).
   * @param {Signal|string} signal a Signal, or its type (then `payload` and `to` follow)
   * @param {*} [payload]
   * @param {string} [to]
   * @returns {Promise<{listenersNotified: number, delivered: string[], queued: string[]}>}
   */
  signal(signal, payload, to) {
    const sig = typeof signal === "string" ? { type: signal, payload: payload ?? null } : { ...signal };
    if (typeof signal === "string" && to) sig.to = to;
    if (!this.token) return Promise.reject(new RtcError("invalid_state", "Not connected: call connect() first."));
    this.emit("sent", { type: "signal", signal: sig });
    if (this._ws && this._ws.readyState === WebSocket.OPEN) return this._wsRequest({ type: "signal", signal: sig });
    return this._post("/rtc/signal", { roomId: this.roomId, fromPeerId: this.peerId, signal: sig });
  }

  /**
   * The room as the server sees it now: `{roomId, maxPeers, metadata, createdAt, peers}`.
   * @returns {Promise<object>}
   */
  snapshot() {
    return this._request("GET", `/rtc/rooms/${encodeURIComponent(this.roomId)}`);
  }

  /**
   * Leave the room and stop every timer and socket. Safe to call twice.
   * @param {{keepalive?: boolean}} [options] `keepalive: true` lets the request outlive the page
   *   (use it from `pagehide`)
   */
  async disconnect(options = {}) {
    if (this.state === "idle" || this.state === "closed") return;
    const token = this.token;
    const ids = { roomId: this.roomId, peerId: this.peerId };
    this._life?.abort();
    this._teardown();
    this.token = null; // spent: a later connect() must not present it as proof
    this._setState("closed");
    if (!token) return;
    try {
      await this._request("POST", "/rtc/disconnect", ids, { token, keepalive: options.keepalive, quiet: true });
    } catch {
      // Leaving a server that is gone is not an error: it has forgotten us already.
    }
  }

  /** A URL on the server, with this peer's token as `?token=` (for `<video src>` and downloads). */
  urlWithToken(path) {
    const url = new URL(this.baseUrl + path, location.href);
    if (this.token) url.searchParams.set("token", this.token);
    return url.href;
  }

  /**
   * An HTTP request to the server with this peer's token; JSON in and out.
   * @param {"GET"|"POST"|"DELETE"} method
   * @param {string} path e.g. `/rtc/recordings`
   * @param {object} [body]
   * @returns {Promise<any>}
   */
  request(method, path, body) {
    return this._request(method, path, body);
  }

  // -- joining ---------------------------------------------------------------------------------

  async _join(roomId, peerId, metadata) {
    const body = { roomId };
    if (peerId) body.peerId = peerId;
    if (metadata) body.metadata = metadata;
    if (this.authToken) body.authToken = this.authToken;
    // The old token (when there is one) proves this is us again, so the server replaces our
    // stale entry instead of refusing the id as taken.
    const info = await this._request("POST", "/rtc/connect", body, { token: this.token });
    return this._joined(info, metadata);
  }

  /**
   * Join with `GET /rtc/ws?roomId=...`: the connect answer is the socket's first frame, and the
   * socket stays this peer's channel. Resolves with the answer, or null (nothing joined) when the
   * socket closes or says anything else first.
   */
  _joinOverWebSocket(roomId, peerId, metadata) {
    if (this.transportPreference === "poll" || this._wsWorks === false) return Promise.resolve(null);
    const url = new URL(this.baseUrl + "/rtc/ws", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("roomId", roomId);
    url.searchParams.set("room", roomId); // for a load balancer's room affinity
    if (peerId) url.searchParams.set("peerId", peerId);
    if (metadata) url.searchParams.set("metadata", JSON.stringify(metadata));
    if (this.authToken) url.searchParams.set("authToken", this.authToken);
    if (this.token) url.searchParams.set("token", this.token); // proof: replace our stale entry
    return new Promise((resolve) => {
      const ws = new WebSocket(url.href);
      let settled = false;
      const settle = (info) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!info) {
          ws.onmessage = ws.onclose = null;
          if (ws.readyState <= WebSocket.OPEN) ws.close();
          resolve(null);
          return;
        }
        this._adoptWebSocket(ws); // before the next frame is dispatched (this runs first)
        resolve(this._joined(info, metadata));
      };
      const timer = setTimeout(() => settle(null), 5000);
      ws.onmessage = (ev) => {
        let msg = null;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          // not the answer: join the two-step way
        }
        if (msg?.type !== "connected") {
          settle(null);
          return;
        }
        const { type: _type, ...info } = msg;
        settle(info);
      };
      ws.onclose = () => settle(null);
    });
  }

  _joined(info, metadata) {
    this.info = info;
    this.roomId = info.roomId;
    this.peerId = info.peerId;
    this.token = info.token;
    this.metadata = metadata;
    this.iceServers = info.iceServers ?? [];
    this.peers = new Map((info.peers ?? []).map((p) => [p.peerId, p]));
    this.emit("peers", [...this.peers.values()]);
    return info;
  }

  // -- receiving -------------------------------------------------------------------------------

  async _openChannel() {
    const pref = this.transportPreference;
    if (pref === "poll" || (pref === "auto" && this._wsWorks === false)) {
      this._startPolling();
      return;
    }
    try {
      await this._openWebSocket();
      this._wsWorks = true;
    } catch (err) {
      if (pref === "websocket" || this._wsWorks === true) throw err;
      // The WebSocket never opened but HTTP did work (we just connected): a proxy that does
      // not pass WebSockets. Long-poll instead, for the rest of this client's life.
      this._wsWorks = false;
      this.emit("log", { text: `WebSocket unavailable (${err.message}); using long-poll` });
      this._startPolling();
    }
  }

  _wsUrl() {
    const url = new URL(this.baseUrl + "/rtc/ws", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", this.token);
    if (this.roomId) url.searchParams.set("room", this.roomId);
    return url.href;
  }

  _openWebSocket() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this._wsUrl());
      let opened = false;
      const timer = setTimeout(() => {
        if (!opened) {
          ws.close();
          reject(new RtcError("network_error", "The WebSocket did not open within 5 s."));
        }
      }, 5000);
      ws.onopen = () => {
        opened = true;
        clearTimeout(timer);
        this._adoptWebSocket(ws);
        resolve();
      };
      ws.onmessage = (ev) => this._onText(ev.data);
      ws.onclose = (ev) => {
        clearTimeout(timer);
        if (!opened) reject(new RtcError("network_error", `The WebSocket was refused (code ${ev.code}).`));
      };
    });
  }

  /** An open WebSocket becomes this peer's channel. */
  _adoptWebSocket(ws) {
    this._ws = ws;
    this.transport = "websocket";
    this._wsWorks = true;
    ws.onmessage = (ev) => this._onText(ev.data);
    ws.onclose = (ev) => {
      if (this._ws === ws) this._ws = null;
      this._failPending(new RtcError("network_error", "The connection to the server closed."));
      this._onChannelLost(ev.code, ev.reason);
    };
  }

  _startPolling() {
    this.transport = "poll";
    const life = this._life;
    const loop = async () => {
      while (!life.signal.aborted) {
        let reply;
        try {
          reply = await this._request("GET", `/rtc/poll?waitMs=${POLL_WAIT_MS}`, undefined, {
            timeoutMs: POLL_WAIT_MS + this.requestTimeoutMs, signal: life.signal, quiet: true,
          });
        } catch (err) {
          if (life.signal.aborted) return;
          this._onChannelLost(err.status === 401 ? CloseCode.REMOVED : 1006, err.message);
          return;
        }
        for (const msg of reply.messages ?? []) this._onMessage(msg);
      }
    };
    this._pollLoop = loop();
  }

  _onText(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      // Never silently: a frame we cannot read may have been an offer or an answer.
      const err = new RtcError("bad_message", "The server sent a message that is not valid JSON; it was skipped.");
      this._noteError(err);
      this.emit("error", { code: err.code, message: err.message, text: text.slice(0, 200) });
      return;
    }
    this._onMessage(msg);
  }

  _onMessage(msg) {
    if (msg.id !== undefined && this._pending.has(msg.id)) {
      const { resolve, reject, timer } = this._pending.get(msg.id);
      this._pending.delete(msg.id);
      clearTimeout(timer);
      if (msg.type === "error") reject(new RtcError(msg.error?.code ?? "error", msg.error?.message ?? "Refused."));
      else resolve(msg);
      return;
    }
    this.emit("message", msg);
    switch (msg.type) {
      case "signal":
        this.emit("signal", msg);
        break;
      case "peer:connected":
        this.peers.set(msg.peer.peerId, msg.peer);
        this.emit("peer:connected", msg);
        this.emit("peers", [...this.peers.values()]);
        break;
      case "peer:disconnected":
        this.peers.delete(msg.peerId);
        this.emit("peer:disconnected", msg);
        this.emit("peers", [...this.peers.values()]);
        break;
      case "error": {
        // error.fromPeerId is set when one of the server's own peers refused an offer of ours.
        const fromPeerId = msg.error?.fromPeerId ?? msg.fromPeerId;
        this.emit("error", {
          code: msg.error?.code ?? "error",
          message: msg.error?.message ?? "The server refused a message.",
          ...(fromPeerId ? { fromPeerId } : {}),
        });
        break;
      }
      default:
        break;
    }
  }

  /** The live channel ended without us asking: decide whether and how to come back. */
  _onChannelLost(code, reason) {
    if (this.state === "closed" || this._life?.signal.aborted) return;
    if (code === CloseCode.REPLACED) {
      // Another tab or device connected with our peer id and our token: it is us now, not this.
      this._teardown();
      this._setState("failed", {
        error: new RtcError("replaced", "Another connection took over this peer id."),
      });
      return;
    }
    if (code === CloseCode.LEFT && reason === LeaveReason.LEFT) {
      this._teardown();
      this._setState("closed");
      return;
    }
    if (!this.autoReconnect) {
      this._teardown();
      this._setState("failed", { error: new RtcError("network_error", "Lost the connection to the server.") });
      return;
    }
    // 1012: the server is draining (a restart or a deploy) and asked us to connect again; with the
    // same token, so the membership is kept (another process behind a load balancer takes it).
    const why = code === CloseCode.SERVICE_RESTART
      ? "The server is restarting; connecting again."
      : code === CloseCode.GOING_AWAY
        ? "The server is shutting down or restarting."
        : "Lost the connection to the server.";
    this._reconnect(why);
  }

  async _reconnect(why) {
    if (this._reconnecting) return;
    const life = this._life;
    this._stopHeartbeats();
    this.transport = null;
    this._reconnecting = (async () => {
      for (let attempt = 1; !life.signal.aborted; attempt++) {
        const wait = Math.min(MAX_BACKOFF_MS, 250 * 2 ** (attempt - 1)) * (0.8 + Math.random() * 0.4);
        const error = attempt === 1 ? new RtcError("network_error", why) : this._lastError;
        this._setState("reconnecting", { error, attempt, retryInMs: Math.round(wait) });
        await delay(wait, life.signal);
        if (life.signal.aborted) return;
        try {
          let rejoined = false;
          try {
            await this._request("POST", "/rtc/heartbeat", { roomId: this.roomId, peerId: this.peerId }, { quiet: true });
          } catch (err) {
            if (err.status !== 401 && err.status !== 404 && err.status !== 403) throw err;
            // The server forgot us (restart, or we timed out): join again under the same id.
            await this._join(this.roomId, this.peerId, this.metadata);
            rejoined = true;
          }
          if (life.signal.aborted) return;
          await this._openChannel();
          this._startHeartbeats();
          this._setState("connected");
          this.emit("reconnected", { attempt, rejoined });
          if (!rejoined) this._refreshPeers();
          return;
        } catch (err) {
          this._lastError = err;
        }
      }
    })();
    try {
      await this._reconnecting;
    } finally {
      this._reconnecting = null;
    }
  }

  async _refreshPeers() {
    // Peers may have come and gone while we were away.
    try {
      const snap = await this.snapshot();
      this.peers = new Map(snap.peers.filter((p) => p.peerId !== this.peerId).map((p) => [p.peerId, p]));
      this.emit("peers", [...this.peers.values()]);
    } catch {
      // The next peer event corrects the list anyway.
    }
  }

  // -- heartbeats ------------------------------------------------------------------------------

  _startHeartbeats() {
    this._stopHeartbeats();
    const every = Math.max(1000, this.info?.heartbeatIntervalMs ?? 30000);
    this._heartbeatTimer = setInterval(() => this._beat(), every);
  }

  _stopHeartbeats() {
    if (this._heartbeatTimer) clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
  }

  async _beat() {
    if (this.transport === "poll") return; // every poll request is a heartbeat already
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    try {
      await this._wsRequest({ type: "heartbeat" });
    } catch {
      // No ack in time: the socket is dead without knowing it (sleeping laptop, NAT timeout).
      if (this._ws === ws) ws.close(CloseCode.TOO_SLOW, "no heartbeat ack");
    }
  }

  // -- plumbing --------------------------------------------------------------------------------

  _wsRequest(frame) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RtcError("timeout", "The server did not answer within the request timeout."));
      }, this.requestTimeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      this._ws.send(JSON.stringify({ ...frame, id }));
    }).then((ack) => {
      const { type, id: _id, ...result } = ack;
      return result;
    });
  }

  _failPending(err) {
    for (const { reject, timer } of this._pending.values()) {
      clearTimeout(timer);
      reject(err);
    }
    this._pending.clear();
  }

  _post(path, body) {
    return this._request("POST", path, body);
  }

  /**
   * Every request names its room in `?room=`: the server ignores it; a load balancer can route on
   * it so that a room's peers share a process (docs/scale-out.md, room affinity).
   */
  _withRoom(path, body) {
    const room = body?.roomId ?? this.roomId;
    if (!room || /[?&]room=/.test(path)) return path;
    return `${path}${path.includes("?") ? "&" : "?"}room=${encodeURIComponent(room)}`;
  }

  async _request(method, path, body, opts = {}) {
    const headers = {};
    const token = "token" in opts ? opts.token : this.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), opts.timeoutMs ?? this.requestTimeoutMs);
    const onAbort = () => timeout.abort();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    let response;
    try {
      response = await fetch(this.baseUrl + this._withRoom(path, body), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: timeout.signal,
        keepalive: Boolean(opts.keepalive),
        credentials: "same-origin",
        // Never cached, and no browser "cache lock": two clients' identical long-polls must run
        // side by side instead of queueing behind each other.
        cache: "no-store",
      });
    } catch (err) {
      const message = timeout.signal.aborted && !opts.signal?.aborted
        ? "The server did not answer in time."
        : "The server is not reachable.";
      throw this._noteError(new RtcError("network_error", message, 0));
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
    }
    const text = await response.text().catch(() => "");
    let data = null;
    let unreadable = false;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      unreadable = true; // a proxy's error page, or a body JSON.parse refuses (NaN ...)
    }
    if (response.ok && unreadable) {
      throw this._noteError(
        new RtcError("bad_response", `The server's answer to ${method} ${path} is not valid JSON.`, response.status),
      );
    }
    if (!response.ok) {
      const code = data?.error?.code ?? `http_${response.status}`;
      const message = data?.error?.message ?? `The server answered ${response.status} ${response.statusText}.`;
      const retry = response.headers.get("Retry-After");
      throw this._noteError(new RtcError(code, message, response.status, retry ? Number(retry) : null));
    }
    return data;
  }

  _noteError(err) {
    this._lastError = err;
    return err;
  }

  _setState(state, detail = {}) {
    const previous = this.state;
    if (previous === state && state !== "reconnecting") return;
    this.state = state;
    this.emit("state", { state, previous, ...detail });
  }

  _teardown() {
    this._stopHeartbeats();
    this._failPending(new RtcError("closed", "The client was disconnected."));
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(CloseCode.LEFT, "bye");
    this.transport = null;
  }
}

/**
 * Ties an `RTCPeerConnection` to one remote peer through an {@link RtcClient}: offers, answers,
 * trickled ICE candidates (both ways) and `bye` travel as signals. The remote peer may be another
 * browser or one of the server's own peers (`@echo`, `@record`, `@probe`, `@play`).
 *
 * Events: `answer` (the remote answer was applied; for server peers its payload may carry a
 * `sessionId`), `bye` (the remote side hung up; `{reason}`), `closed` (either way).
 */
export class PeerLink extends Emitter {
  /**
   * @param {RtcClient} client a connected client
   * @param {string} remotePeerId
   * @param {RTCPeerConnection} pc
   */
  constructor(client, remotePeerId, pc) {
    super();
    this.client = client;
    this.remotePeerId = remotePeerId;
    this.pc = pc;
    this.closed = false;
    /** @type {object|null} the payload of the remote answer (sdp, and sessionId from server peers) */
    this.answerPayload = null;
    this._remoteCandidates = [];
    this._answerWaiter = null;
    // Our candidates wait until our offer or answer is on its way: a candidate that overtakes
    // the description it belongs to arrives where no session exists yet, and is lost.
    this._localCandidates = [];
    this._descriptionSent = false;
    this._onIce = (ev) => {
      // `null` tells the other side that gathering is complete.
      const payload = ev.candidate ? ev.candidate.toJSON() : null;
      if (this._descriptionSent) this._sendCandidate(payload);
      else this._localCandidates.push(payload);
    };
    pc.addEventListener("icecandidate", this._onIce);
    this._offSignal = client.on("signal", (msg) => {
      if (msg.fromPeerId === this.remotePeerId) this._onSignal(msg.signal).catch((err) => this._fail(err));
    });
    this._offError = client.on("error", (err) => {
      if (err.fromPeerId === this.remotePeerId) this._fail(new RtcError(err.code, err.message));
    });
    this._offGone = client.on("peer:disconnected", (msg) => {
      if (msg.peerId === this.remotePeerId) this._remoteEnded(`${msg.peerId} left the room (${msg.reason})`);
    });
  }

  /**
   * Make an offer, send it, and resolve once the remote answer is applied.
   * @param {object} [options]
   * @param {object} [options.extra] extra fields for the offer payload (session options)
   * @param {number} [options.timeoutMs] how long to wait for the answer (default 15000)
   * @param {number} [options.gatherFirstMs] wait up to this long for ICE gathering before sending
   *   the offer, so it carries its candidates (default 0: pure trickle)
   * @returns {Promise<object>} the answer payload
   */
  async call(options = {}) {
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    // Half-trickle: let the offer carry the candidates gathered within gatherFirstMs; any later
    // ones still trickle. The server's own peers (aiortc) start their connectivity checks with
    // the candidates they hold when they answer, so an offer without any can fail at once.
    if (options.gatherFirstMs) {
      await iceGatheringDone(this.pc, options.gatherFirstMs);
      // The ones in the offer need not trickle again.
      const sdp = this.pc.localDescription.sdp;
      this._localCandidates = this._localCandidates.filter((c) => c === null || !sdp.includes(c.candidate));
    }
    const answered = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new RtcError("timeout", `${this.remotePeerId} did not answer within ${(options.timeoutMs ?? 15000) / 1000} s.`));
      }, options.timeoutMs ?? 15000);
      this._answerWaiter = {
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
    });
    // If sending the offer fails, nobody awaits `answered`; its later rejection is expected.
    answered.catch(() => {});
    try {
      await this.client.signal({
        type: "offer", payload: { sdp: this.pc.localDescription.sdp, ...(options.extra ?? {}) }, to: this.remotePeerId,
      });
    } catch (err) {
      this._answerWaiter?.reject(err); // stops its timer
      this._answerWaiter = null;
      throw err;
    }
    this._flushLocalCandidates();
    return answered;
  }

  /**
   * Answer an offer the remote peer sent (the `signal.payload` of its `offer`).
   * @param {{sdp: string}} offerPayload
   */
  async accept(offerPayload) {
    await this.pc.setRemoteDescription({ type: "offer", sdp: offerPayload.sdp });
    await this._flushCandidates();
    const answer = await this.pc.createAnswer();
    await this.pc.setLocalDescription(answer);
    await this.client.signal({ type: "answer", payload: { sdp: this.pc.localDescription.sdp }, to: this.remotePeerId });
    this._flushLocalCandidates();
  }

  /**
   * Hang up: tell the remote side (`bye`) and close the peer connection. Safe to call twice.
   * @param {*} [reason]
   */
  async hangUp(reason = "hang-up") {
    if (this.closed) return;
    this.close();
    try {
      await this.client.signal({ type: "bye", payload: { reason }, to: this.remotePeerId });
    } catch {
      // The other side may be gone already; closing our end is what matters.
    }
  }

  /** Close the peer connection and stop listening, without telling the remote side. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.pc.removeEventListener("icecandidate", this._onIce);
    this._offSignal();
    this._offError();
    this._offGone();
    this._answerWaiter?.reject(new RtcError("closed", "The call was closed."));
    this._answerWaiter = null;
    this.pc.close();
    this.emit("closed", {});
  }

  _sendCandidate(payload) {
    if (this.closed) return;
    this.client.signal({ type: "candidate", payload, to: this.remotePeerId }).catch(() => {
      // A lost candidate is not fatal: ICE works with the ones that arrive.
    });
  }

  _flushLocalCandidates() {
    this._descriptionSent = true;
    const held = this._localCandidates;
    this._localCandidates = [];
    held.forEach((payload) => this._sendCandidate(payload));
  }

  async _onSignal(sig) {
    if (this.closed) return;
    switch (sig.type) {
      case "answer":
        if (this.pc.signalingState !== "have-local-offer") return;
        await this.pc.setRemoteDescription({ type: "answer", sdp: sig.payload.sdp });
        await this._flushCandidates();
        this.answerPayload = sig.payload;
        this.emit("answer", sig.payload);
        this._answerWaiter?.resolve(sig.payload);
        this._answerWaiter = null;
        break;
      case "candidate":
        if (sig.payload === null || sig.payload === undefined) {
          this._remoteCandidates.push(null);
        } else {
          this._remoteCandidates.push(sig.payload);
        }
        if (this.pc.remoteDescription) await this._flushCandidates();
        break;
      case "bye":
        this._remoteEnded(sig.payload?.reason ?? "hung up");
        break;
      case "error":
        this._fail(new RtcError(sig.payload?.code ?? "error", sig.payload?.message ?? "The remote peer refused."));
        break;
      default:
        break;
    }
  }

  async _flushCandidates() {
    const queued = this._remoteCandidates;
    this._remoteCandidates = [];
    for (const cand of queued) {
      try {
        // addIceCandidate() with no argument (or null) marks the end of the remote candidates.
        if (cand === null) await this.pc.addIceCandidate();
        else await this.pc.addIceCandidate(cand);
      } catch (err) {
        // One bad candidate must not end the call; ICE tries the others.
        console.warn("rtc-client: a remote candidate was refused", err);
      }
    }
  }

  _remoteEnded(reason) {
    if (this.closed) return;
    this.emit("bye", { reason });
    this._answerWaiter?.reject(new RtcError("bye", `${this.remotePeerId} ended it: ${reason}`));
    this._answerWaiter = null;
    this.close();
  }

  _fail(err) {
    this._answerWaiter?.reject(err);
    this._answerWaiter = null;
    this.emit("error", err);
  }
}

/**
 * Start a session with one of the server's own peers through the signaling channel: offer to
 * `@echo` (or `@record`, `@probe`, `@play`), trickle ICE both ways, wait for the answer.
 * @param {RtcClient} client a connected client
 * @param {RTCPeerConnection} pc with its tracks (or transceivers) added
 * @param {string} serverPeerId e.g. `"@echo"`
 * @param {object} [options] as for {@link PeerLink#call}; `gatherFirstMs` defaults to 2000 here
 * @returns {Promise<PeerLink>} `link.answerPayload.sessionId` names the server's session when given
 */
export async function callServerPeer(client, pc, serverPeerId, options = {}) {
  const link = new PeerLink(client, serverPeerId, pc);
  try {
    await link.call({ gatherFirstMs: 2000, ...options });
  } catch (err) {
    link.close();
    throw err;
  }
  return link;
}

/**
 * Resolve when ICE gathering is complete, or after `timeoutMs` with what was gathered so far
 * (a slow STUN server must not hold a one-round-trip offer forever).
 * @param {RTCPeerConnection} pc
 * @param {number} [timeoutMs]
 */
export function iceGatheringDone(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, timeoutMs);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/**
 * One-round-trip session with the server's own peer: gather candidates, `POST /rtc/offer`,
 * apply the answer. No room needed (pass `client` to send its token and room).
 * @param {RTCPeerConnection} pc with its tracks (or transceivers) added
 * @param {object} options
 * @param {"echo"|"record"|"probe"|"play"} options.mode
 * @param {RtcClient} [options.client] a connected client: its token and room go with the offer
 * @param {string} [options.baseUrl] when no client is given
 * @param {object} [options.extra] more fields for the request body
 * @returns {Promise<{sessionId: string, answer: object}>}
 */
export async function offerToServer(pc, options) {
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await iceGatheringDone(pc);
  const body = { sdp: pc.localDescription.sdp, type: "offer", mode: options.mode, ...(options.extra ?? {}) };
  let answer;
  if (options.client) {
    if (options.client.roomId) body.roomId = options.client.roomId;
    answer = await options.client.request("POST", "/rtc/offer", body);
  } else {
    const tmp = new RtcClient({ baseUrl: options.baseUrl });
    answer = await tmp.request("POST", "/rtc/offer", body);
  }
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  return { sessionId: answer.sessionId, answer };
}

// -- group calls through the server (@sfu) ---------------------------------------------------------

/** Errors worth sending a signal again for, once the client is back in touch with the server. */
const RETRYABLE = new Set(["network_error", "timeout", "closed"]);

/**
 * Wait until `client` is connected again (resolves at once when it is), or `timeoutMs` passed.
 * @param {RtcClient} client
 * @param {number} timeoutMs
 * @returns {Promise<boolean>} whether it is connected
 */
function clientConnected(client, timeoutMs) {
  if (client.state === "connected") return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      off();
      resolve(false);
    }, timeoutMs);
    const off = client.on("state", (ev) => {
      if (ev.state === "reconnecting" || ev.state === "connecting") return;
      clearTimeout(timer);
      off();
      resolve(ev.state === "connected");
    });
  });
}

/**
 * Call `fn` when the remote side closes DTLS (a close_notify: the server ended the session). The
 * browser says so at once on `RTCDtlsTransport.state`, while `connectionState` stays
 * "connected" until ICE consent expires, many seconds later. Returns a function to call after
 * every `setRemoteDescription` (it watches the transports that appeared).
 * @param {RTCPeerConnection} pc
 * @param {() => void} fn
 */
function onRemoteClose(pc, fn) {
  const seen = new WeakSet();
  return () => {
    const transports = [...pc.getReceivers(), ...pc.getSenders()].map((x) => x.transport);
    if (pc.sctp) transports.push(pc.sctp.transport);
    for (const transport of transports) {
      if (!transport || seen.has(transport)) continue;
      seen.add(transport);
      const check = () => {
        if (transport.state === "closed" && pc.signalingState !== "closed") fn();
      };
      transport.addEventListener("statechange", check);
      check();
    }
  };
}

/**
 * Put the codecs whose MIME type is in `preferred` first (in that order) on `transceiver`, keeping
 * the others after them: the offer still says the browser can receive them all.
 * @param {RTCRtpTransceiver} transceiver
 * @param {string[]} preferred e.g. `["video/VP8"]`
 */
function preferCodecs(transceiver, preferred) {
  const kind = transceiver.sender.track?.kind ?? transceiver.receiver.track?.kind;
  if (!kind || !preferred.length || typeof transceiver.setCodecPreferences !== "function") return;
  const codecs = RTCRtpReceiver.getCapabilities?.(kind)?.codecs;
  if (!codecs) return;
  const rank = (c) => {
    const i = preferred.findIndex((p) => p.toLowerCase() === c.mimeType.toLowerCase());
    return i < 0 ? preferred.length : i;
  };
  try {
    transceiver.setCodecPreferences([...codecs].sort((a, b) => rank(a) - rank(b)));
  } catch {
    // A browser that refuses the list keeps its own order; the server says if it cannot forward it.
  }
}

/**
 * Group state, in `call.state` and the `state` event: `idle` (not joined yet), `joining` (offer
 * sent, waiting for the answer or for the connection), `connected`, `interrupted` (the media
 * connection dropped; the browser tries to recover it), `reconnecting` (the session was lost,
 * e.g. the server restarted; the call joins again by itself once the client is back), `closed`
 * (after `leave()`), `failed` (refused, or could not join again; `detail.error` says why).
 * @typedef {"idle"|"joining"|"connected"|"interrupted"|"reconnecting"|"closed"|"failed"} GroupCallState
 */

/**
 * One member's side of a room's group call through the server: what this browser sends goes to
 * the server's `@sfu` peer, which forwards it (as it is, without transcoding) to every other
 * member of the call, and forwards theirs to this browser on the same peer connection. The
 * server renegotiates as members come and go; this class answers its offers. docs/client.md has
 * the details, docs/protocol.md ("Group calls") the messages.
 *
 * ```js
 * const call = new GroupCall(client);          // client: a connected RtcClient (the room)
 * call.on("track", ({ peerId, kind, stream }) => showTile(peerId, stream));
 * call.on("trackended", ({ peerId, last }) => { if (last) removeTile(peerId); });
 * await call.join(localStream);                 // resolves when the server's answer is applied
 * const { peers } = await call.stats();         // peers[peerId].kbps: inbound bitrate per member
 * await call.leave();
 * ```
 *
 * Events:
 * - `track` `{peerId, kind, track, stream, mid, publicationId}`: a member's track arrived;
 *   `stream` is that member's MediaStream (one per member: audio and video together)
 * - `trackended` `{peerId, kind, mid, publicationId, stream, last}`: it stopped (the member
 *   stopped publishing or left the room); `last` when that member sends nothing more
 * - `publishers` `[{peerId, tracks: [{mid, kind, publicationId}]}]`: who this browser receives
 * - `state` `{state, previous, error?}`: see {@link GroupCallState}
 * - `error` {@link RtcError}: `@sfu` refused something (a codec it does not forward, an offer
 *   without BUNDLE...), or the call could not join again
 *
 * Reconnects: while the client reconnects, the call's media keeps flowing (it does not go through
 * the signaling channel) and the server's offers wait in its outbox. When the session itself is
 * gone (the server restarted, said `bye`, or this peer was timed out and joined again) the call
 * joins again by itself with the same local stream, up to `maxRejoins` times in a row.
 */
export class GroupCall extends Emitter {
  /**
   * @param {RtcClient} client a connected client, in the room whose call to join
   * @param {object} [options]
   * @param {RTCIceServer[]} [options.iceServers] default: the client's (from its connect answer)
   * @param {string} [options.serverPeer] default `"@sfu"`
   * @param {number} [options.maxRejoins] joins again by itself after a lost session up to this many
   *   times in a row (default 3; 0: never)
   */
  constructor(client, options = {}) {
    super();
    this.client = client;
    this.serverPeerId = options.serverPeer ?? "@sfu";
    this.iceServers = options.iceServers ?? null;
    this.maxRejoins = options.maxRejoins ?? 3;
    /** @type {GroupCallState} */
    this.state = "idle";
    /** @type {RTCPeerConnection|null} the current peer connection (a new one after a rejoin) */
    this.pc = null;
    /** @type {string|null} the server's media session */
    this.sessionId = null;
    /** @type {Object<string, {peerId: string, kind: string, publicationId: string}>} mid -> whose media */
    this.tracks = {};
    /** @type {Map<string, {peerId: string, stream: MediaStream, mids: Set<string>}>} members received */
    this.remote = new Map();
    /** @type {number|null} `performance.now()` when the current peer connection connected */
    this.connectedAt = null;
    this._received = new Map(); // mid -> {mid, peerId, kind, publicationId, track}
    this._gone = new Set(); // publication ids of members that left the room (their offer is on its way)
    this._stream = null;
    this._options = {};
    this._offs = [];
    this._chain = Promise.resolve();
    this._waiter = null;
    this._rejoins = 0;
    this._rejoinTimer = null;
    this._lastRates = new Map(); // mid -> {bytes, timestamp}
    this._publishersKey = "";
    this._oldSessions = new Set(); // sessions this call had before a rejoin: their signals are stale
    this._answered = false; // the first answer was applied (a loss before it fails join())
    this._inJoin = false; // join() is waiting: it reports errors by rejecting
  }

  /**
   * Join the call: offer what `localStream` holds to `@sfu` and resolve once its answer is
   * applied (the media connection follows; watch `state`). Rejects with an {@link RtcError}
   * when `@sfu` refuses the offer or does not answer.
   * @param {MediaStream|null} localStream what to send; null to only receive
   * @param {object} [options]
   * @param {{audio?: RTCRtpEncodingParameters[], video?: RTCRtpEncodingParameters[]}} [options.sendEncodings]
   *   per kind, e.g. `{video: [{maxBitrate: 400000, scaleResolutionDownBy: 2}]}`
   * @param {string[]} [options.preferCodecs] MIME types to list first in the offer (default
   *   `["video/VP8", "audio/opus"]`: what the server forwards, and what every browser receives)
   * @param {object} [options.extra] more fields for the offer's payload (session options)
   * @param {boolean} [options.receiveSlots] offer a receive-only section per track the call
   *   publishes now (from the room's snapshot), which the server's answer fills: those members
   *   play without waiting for a renegotiation (default true)
   * @param {number} [options.timeoutMs] for the answer (default 15000)
   * @param {number} [options.gatherFirstMs] let the offer carry the ICE candidates gathered
   *   within this time (default 2000, as {@link callServerPeer})
   * @returns {Promise<{sessionId: string}>}
   */
  async join(localStream, options = {}) {
    if (this.state !== "idle") throw new RtcError("invalid_state", `This call is ${this.state}: make a new GroupCall.`);
    if (this.client.state !== "connected") throw new RtcError("invalid_state", "The client is not connected to a room.");
    this._stream = localStream ?? null;
    this._options = options;
    const client = this.client;
    this._offs = [
      client.on("signal", (msg) => {
        if (msg.fromPeerId === this.serverPeerId) this._enqueue(() => this._onSignal(msg.signal ?? {}));
      }),
      client.on("error", (err) => {
        if (err.fromPeerId === this.serverPeerId) this._onRefused(new RtcError(err.code, err.message));
      }),
      client.on("peer:disconnected", (msg) => this._memberLeft(msg.peerId)),
      client.on("reconnected", (ev) => this._onReconnected(ev)),
      client.on("state", (ev) => {
        if (ev.state === "closed" || ev.state === "failed") this._end(ev.state === "failed" ? "failed" : "closed", ev.error);
      }),
    ];
    this._inJoin = true;
    try {
      return await this._start();
    } catch (err) {
      this._end("failed", err);
      throw err;
    } finally {
      this._inJoin = false;
    }
  }

  /**
   * Leave the call: `bye` to `@sfu`, close the peer connection, end every received track
   * (`trackended` for each). Safe to call twice. The local stream is the caller's to stop.
   */
  async leave() {
    if (this.state === "closed" || this.state === "idle") return;
    const told = this.state !== "failed";
    this._end("closed");
    if (!told) return;
    try {
      await this.client.signal({ type: "bye", payload: null, to: this.serverPeerId });
    } catch {
      // The server may be gone, or have ended the session already: leaving is done on our side.
    }
  }

  /**
   * Inbound figures per received track and per member, from `getStats()`; `kbps` is the
   * bitrate since the previous `stats()` call (null on the first), so call it at a steady pace.
   * @returns {Promise<{tracks: object[], peers: Object<string, {kbps: number|null, framesDecoded: number,
   *   framesPerSecond: number|null, frameWidth: number, frameHeight: number, audioPackets: number}>}>}
   */
  async stats() {
    const pc = this.pc;
    const out = { tracks: [], peers: {} };
    if (!pc || pc.connectionState === "closed") return out;
    const report = await pc.getStats();
    const byTrackId = new Map([...this._received.values()].map((r) => [r.track.id, r]));
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      const received = (s.mid !== undefined ? this._received.get(s.mid) : null) ?? byTrackId.get(s.trackIdentifier);
      if (!received) return;
      const prev = this._lastRates.get(received.mid);
      const bytes = s.bytesReceived ?? 0;
      const kbps = prev && s.timestamp > prev.timestamp && bytes >= prev.bytes
        ? ((bytes - prev.bytes) * 8) / (s.timestamp - prev.timestamp) // bytes per ms * 8 = kbit/s
        : null;
      this._lastRates.set(received.mid, { bytes, timestamp: s.timestamp });
      const track = {
        mid: received.mid,
        peerId: received.peerId,
        kind: received.kind,
        publicationId: received.publicationId,
        bytesReceived: bytes,
        packetsReceived: s.packetsReceived ?? 0,
        packetsLost: s.packetsLost ?? 0,
        framesDecoded: s.framesDecoded ?? 0,
        framesPerSecond: s.framesPerSecond ?? null,
        frameWidth: s.frameWidth ?? 0,
        frameHeight: s.frameHeight ?? 0,
        kbps,
      };
      out.tracks.push(track);
      const peer = out.peers[track.peerId] ??= {
        kbps: null, framesDecoded: 0, framesPerSecond: null, frameWidth: 0, frameHeight: 0, audioPackets: 0,
      };
      if (kbps !== null) peer.kbps = (peer.kbps ?? 0) + kbps;
      if (track.kind === "video") {
        peer.framesDecoded += track.framesDecoded;
        peer.framesPerSecond = track.framesPerSecond ?? peer.framesPerSecond;
        peer.frameWidth = track.frameWidth || peer.frameWidth;
        peer.frameHeight = track.frameHeight || peer.frameHeight;
      } else {
        peer.audioPackets += track.packetsReceived;
      }
    });
    return out;
  }

  /** Who this browser receives now: `[{peerId, tracks: [{mid, kind, publicationId}]}]`. */
  publishers() {
    const byPeer = new Map();
    for (const [mid, info] of Object.entries(this.tracks)) {
      if (this._gone.has(info.publicationId)) continue;
      if (!byPeer.has(info.peerId)) byPeer.set(info.peerId, []);
      byPeer.get(info.peerId).push({ mid, kind: info.kind, publicationId: info.publicationId });
    }
    return [...byPeer].map(([peerId, tracks]) => ({ peerId, tracks }));
  }

  // -- one session: a peer connection, its offer and the server's answer ------------------------

  async _start() {
    const options = this._options;
    this._setState("joining");
    const pc = new RTCPeerConnection({ iceServers: this.iceServers ?? this.client.iceServers, bundlePolicy: "max-bundle" });
    this.pc = pc;
    this.sessionId = null;
    this.connectedAt = null;
    this._remoteCandidates = [];
    this._localCandidates = [];
    this._descriptionSent = false;
    pc.addEventListener("icecandidate", (ev) => {
      if (pc !== this.pc) return;
      const payload = ev.candidate ? ev.candidate.toJSON() : null; // null: gathering is complete
      if (this._descriptionSent) this._sendCandidate(payload);
      else this._localCandidates.push(payload);
    });
    pc.addEventListener("track", (ev) => {
      if (pc === this.pc && ev.transceiver?.mid) this._receive(ev.transceiver.mid, ev.track);
    });
    pc.addEventListener("connectionstatechange", () => this._onConnectionState(pc));
    this._watchClose = onRemoteClose(pc, () => {
      if (pc === this.pc) this._lost("The server closed the call's media connection.");
    });
    // The client offers once; every later offer comes from the server (negotiationneeded is ignored).
    const prefer = options.preferCodecs ?? ["video/VP8", "audio/opus"];
    const tracks = this._stream?.getTracks() ?? [];
    for (const track of tracks) {
      const init = { direction: "sendonly", streams: [this._stream] };
      const encodings = options.sendEncodings?.[track.kind];
      if (encodings) init.sendEncodings = encodings;
      preferCodecs(pc.addTransceiver(track, init), prefer);
    }
    // Receive slots: a receive-only section per track the call publishes now (the room's snapshot
    // lists them). The server's answer puts those tracks on them: no renegotiation before they play.
    if (options.receiveSlots ?? true) {
      for (const kind of await this._publishedKinds()) preferCodecs(pc.addTransceiver(kind, { direction: "recvonly" }), prefer);
    }
    // Nothing to send: a data channel gives the offer a section, so the server can add ours to it.
    if (!tracks.length) pc.createDataChannel("sfu");
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc, options.gatherFirstMs ?? 2000);
    if (pc !== this.pc) throw new RtcError("closed", "The call was left while it was joining.");
    const sdp = pc.localDescription.sdp;
    this._localCandidates = this._localCandidates.filter((c) => c === null || !sdp.includes(c.candidate));
    const timeoutMs = options.timeoutMs ?? 15000;
    const answered = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new RtcError("timeout", `${this.serverPeerId} did not answer within ${timeoutMs / 1000} s.`));
      }, timeoutMs);
      this._waiter = {
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
    });
    answered.catch(() => {}); // if sending the offer fails, nobody awaits it
    try {
      await this.client.signal({ type: "offer", payload: { sdp, ...(options.extra ?? {}) }, to: this.serverPeerId });
    } catch (err) {
      this._waiter?.reject(err);
      this._waiter = null;
      throw err;
    }
    this._descriptionSent = true;
    const held = this._localCandidates;
    this._localCandidates = [];
    held.forEach((payload) => this._sendCandidate(payload));
    return answered;
  }

  /** The kind of every track the room's other members publish now; none when the snapshot cannot
   *  be had (the server then sends them by renegotiation, as it always can). */
  async _publishedKinds() {
    let snapshot;
    try {
      snapshot = await this.client.snapshot();
    } catch {
      return [];
    }
    return (snapshot?.media?.publishers ?? [])
      .filter((publisher) => publisher.peerId !== this.client.peerId)
      .flatMap((publisher) => (publisher.tracks ?? []).map((track) => track.kind))
      .filter((kind) => kind === "audio" || kind === "video");
  }

  /** Signals from @sfu, one at a time and in order (an offer must be answered before the next). */
  _enqueue(task) {
    this._chain = this._chain.then(task).catch((err) => {
      if (this.state === "closed" || this.state === "failed") return;
      this._onRefused(err instanceof RtcError
        ? err
        : new RtcError("negotiation_failed", `This browser could not apply ${this.serverPeerId}'s description: ${describe(err)}`));
    });
  }

  async _onSignal(sig) {
    const pc = this.pc;
    if (!pc || this.state === "closed" || this.state === "failed") return;
    const payload = sig.payload ?? {};
    // A signal of a session this call had before it joined again is stale.
    if (payload.sessionId && this._oldSessions.has(payload.sessionId)) return;
    switch (sig.type) {
      case "answer": {
        if (pc.signalingState !== "have-local-offer") return;
        this.sessionId = payload.sessionId ?? null;
        this._setTracks(payload.tracks);
        await pc.setRemoteDescription({ type: "answer", sdp: payload.sdp });
        this._answered = true;
        this._watchClose();
        this._receiveListed(pc);
        await this._flushRemoteCandidates(pc);
        this._waiter?.resolve({ sessionId: this.sessionId });
        this._waiter = null;
        break;
      }
      case "offer": {
        // The server offers only once the session connected, so never while ours is unanswered.
        if (pc.signalingState !== "stable") return;
        if (payload.sessionId) this.sessionId = payload.sessionId;
        // Ended tracks go now, before the renegotiation: their tiles must not freeze meanwhile.
        this._setTracks(payload.tracks);
        await pc.setRemoteDescription({ type: "offer", sdp: payload.sdp });
        this._watchClose();
        this._receiveListed(pc);
        await pc.setLocalDescription(await pc.createAnswer());
        if (pc !== this.pc) return;
        // The session named: the server refuses an answer meant for an earlier session of ours.
        const answer = { sdp: pc.localDescription.sdp, ...(this.sessionId ? { sessionId: this.sessionId } : {}) };
        await this._signalReliably({ type: "answer", payload: answer, to: this.serverPeerId });
        break;
      }
      case "candidate":
        this._remoteCandidates.push(sig.payload ?? null);
        if (pc.remoteDescription) await this._flushRemoteCandidates(pc);
        break;
      case "bye": {
        const reason = payload.reason ?? "ended";
        this._lost(`The server ended the call's session (${reason}).`);
        break;
      }
      default:
        break;
    }
  }

  async _flushRemoteCandidates(pc) {
    const queued = this._remoteCandidates;
    this._remoteCandidates = [];
    for (const cand of queued) {
      try {
        if (cand === null) await pc.addIceCandidate();
        else await pc.addIceCandidate(cand);
      } catch (err) {
        console.warn("rtc-client: a remote candidate was refused", err);
      }
    }
  }

  _sendCandidate(payload) {
    this.client.signal({ type: "candidate", payload, to: this.serverPeerId }).catch(() => {
      // A lost candidate is not fatal: ICE works with the ones that arrive.
    });
  }

  /**
   * Send a signal the session depends on (an answer): when the client has lost the server for a
   * moment, send it again once it is back (the server waits 10 s for an answer).
   */
  async _signalReliably(signal) {
    try {
      await this.client.signal(signal);
    } catch (err) {
      if (!RETRYABLE.has(err.code) || !(await clientConnected(this.client, 8000))) throw err;
      await this.client.signal(signal);
    }
  }

  // -- what this browser receives ---------------------------------------------------------------

  /** The server's map of mid -> whose media: tracks no longer in it end now. */
  _setTracks(tracks) {
    const next = tracks && typeof tracks === "object" ? tracks : {};
    for (const [mid, received] of [...this._received]) {
      if (next[mid]?.publicationId !== received.publicationId) this._endReceived(mid);
    }
    this.tracks = { ...next };
    this._emitPublishers();
  }

  /** After a description is applied: every listed mid's receiver track (no track event when a
   *  transceiver stays receiving while it carries another publication). */
  _receiveListed(pc) {
    for (const transceiver of pc.getTransceivers()) {
      const mid = transceiver.mid;
      if (mid && this.tracks[mid] && !this._received.has(mid)) this._receive(mid, transceiver.receiver.track);
    }
  }

  _receive(mid, track) {
    const info = this.tracks[mid];
    if (!info || !track || this._gone.has(info.publicationId)) return;
    const known = this._received.get(mid);
    if (known && known.track === track && known.publicationId === info.publicationId) return;
    if (known) this._endReceived(mid);
    let member = this.remote.get(info.peerId);
    if (!member) {
      member = { peerId: info.peerId, stream: new MediaStream(), mids: new Set() };
      this.remote.set(info.peerId, member);
    }
    member.stream.addTrack(track);
    member.mids.add(mid);
    const received = { mid, peerId: info.peerId, kind: info.kind ?? track.kind, publicationId: info.publicationId, track };
    this._received.set(mid, received);
    this.emit("track", { ...received, stream: member.stream });
  }

  _endReceived(mid) {
    const received = this._received.get(mid);
    if (!received) return;
    this._received.delete(mid);
    this._lastRates.delete(mid);
    const member = this.remote.get(received.peerId);
    let last = true;
    if (member) {
      member.stream.removeTrack(received.track);
      member.mids.delete(mid);
      last = member.mids.size === 0;
      if (last) this.remote.delete(received.peerId);
    }
    this.emit("trackended", { ...received, stream: member?.stream ?? null, last });
  }

  /** A member left the room: its tracks end at once (the server's offer without them follows). */
  _memberLeft(peerId) {
    let changed = false;
    for (const [mid, info] of Object.entries(this.tracks)) {
      if (info.peerId !== peerId) continue;
      this._gone.add(info.publicationId);
      this._endReceived(mid);
      changed = true;
    }
    if (changed) this._emitPublishers();
  }

  _emitPublishers() {
    const list = this.publishers();
    const key = JSON.stringify(list);
    if (key === this._publishersKey) return;
    this._publishersKey = key;
    this.emit("publishers", list);
  }

  // -- the call's life -------------------------------------------------------------------------

  _onConnectionState(pc) {
    if (pc !== this.pc) return;
    const state = pc.connectionState;
    if (state === "connected") {
      this.connectedAt = performance.now();
      this._rejoins = 0;
      this._setState("connected");
    } else if (state === "disconnected") {
      if (this.state === "connected") this._setState("interrupted");
    } else if (state === "failed" || state === "closed") {
      this._lost(state === "failed"
        ? "The media connection to the server failed."
        : "The server closed the call's media connection.");
    }
  }

  /** `@sfu` refused an offer or an answer of ours. */
  _onRefused(err) {
    if (this._waiter) {
      this._waiter.reject(err);
      this._waiter = null;
      return; // join() rejects with it
    }
    if (this.state === "closed" || this.state === "failed") return;
    this.emit("error", err);
  }

  _onReconnected(ev) {
    if (this.state === "reconnecting") this._rejoinSoon();
    else if (ev.rejoined && (this.state === "connected" || this.state === "interrupted" || this.state === "joining")) {
      // The server had forgotten this peer (it restarted, or timed it out): its session is gone.
      this._lost("The server forgot this peer while it was away.");
    }
  }

  /** The session is gone (not by leave()): drop it, and join again when the client can. */
  _lost(why) {
    if (this.state === "closed" || this.state === "failed" || this.state === "reconnecting") return;
    if (!this._answered) {
      this._end("failed", new RtcError("connection_lost", why)); // join() rejects with it
      return;
    }
    if (this._waiter) {
      this._waiter.reject(new RtcError("closed", why));
      this._waiter = null;
    }
    this._dropSession();
    if (this._rejoins >= this.maxRejoins) {
      this._end("failed", new RtcError("connection_lost", `${why} Gave up joining again after ${this._rejoins} tries.`));
      return;
    }
    this._setState("reconnecting", { error: new RtcError("connection_lost", why) });
    if (this.client.state === "connected") this._rejoinSoon();
    // else: the client's `reconnected` event brings us back.
  }

  _rejoinSoon() {
    if (this._rejoinTimer || this.state !== "reconnecting") return;
    const wait = Math.min(4000, 500 * 2 ** this._rejoins);
    this._rejoins += 1;
    this._rejoinTimer = setTimeout(() => {
      this._rejoinTimer = null;
      if (this.state !== "reconnecting") return;
      if (this.client.state !== "connected") return; // `reconnected` calls again
      this._start().catch((err) => {
        // A server that is still draining, or just back, may refuse once: try again (up to maxRejoins).
        if (this.state === "joining") this._lost(`Joining again failed: ${describe(err)}`);
      });
    }, wait);
  }

  /** Close the peer connection and end what it received (the call object lives on). */
  _dropSession() {
    const pc = this.pc;
    this.pc = null;
    if (this.sessionId) this._oldSessions.add(this.sessionId);
    this.sessionId = null;
    this.connectedAt = null;
    for (const mid of [...this._received.keys()]) this._endReceived(mid);
    this.tracks = {};
    this._gone.clear();
    this._emitPublishers();
    pc?.close();
  }

  _end(state, error) {
    if (this.state === "closed" || this.state === "failed") return;
    clearTimeout(this._rejoinTimer);
    this._rejoinTimer = null;
    this._waiter?.reject(error ?? new RtcError("closed", "The call was left."));
    this._waiter = null;
    this._offs.forEach((off) => off());
    this._offs = [];
    this._dropSession();
    this._setState(state, error ? { error } : {});
    // join() rejects with its own errors; later ones are events.
    if (state === "failed" && error && !this._inJoin) this.emit("error", error);
  }

  _setState(state, detail = {}) {
    const previous = this.state;
    if (previous === state) return;
    this.state = state;
    this.emit("state", { state, previous, ...detail });
  }
}

function describe(err) {
  return err?.message || String(err);
}

// -- WHEP viewers ------------------------------------------------------------------------------------

/**
 * A WHEP viewer (RFC 9725's sibling, draft-ietf-wish-whep): receives a stream the server
 * forwards, here a WHIP session published with `POST /whip?mode=sfu`. Made by {@link watchWhep}.
 *
 * Events: `ended` `{reason}` once, when the stream ends (the publisher stopped: the server closes
 * the viewer's connection) or the connection fails; `close()` ends it from this side (no event).
 */
export class WhepViewer extends Emitter {
  /**
   * @param {string} url the WHEP endpoint, e.g. `/whep/<sessionId>`
   * @param {object} [options] see {@link watchWhep}
   */
  constructor(url, options = {}) {
    super();
    this.url = new URL(url, location.href).href;
    this.token = options.token ?? null;
    this.options = options;
    this.pc = new RTCPeerConnection({ iceServers: options.iceServers ?? [], bundlePolicy: "max-bundle" });
    /** @type {MediaStream} what arrives: the publisher's audio and video */
    this.stream = new MediaStream();
    /** @type {string|null} the viewer's resource (`Location` of the 201): PATCH and DELETE go there */
    this.location = null;
    this.etag = null;
    this.closed = false;
    this.endedReason = null;
    this._late = []; // candidates gathered after the offer went
    this._posted = false;
  }

  async start() {
    const pc = this.pc;
    const options = this.options;
    if (options.audio !== false) pc.addTransceiver("audio", { direction: "recvonly" });
    if (options.video !== false) pc.addTransceiver("video", { direction: "recvonly" });
    pc.addEventListener("track", (ev) => this.stream.addTrack(ev.track));
    pc.addEventListener("icecandidate", (ev) => {
      if (!this._posted) return; // still in the offer (gathered before it went)
      this._late.push(ev.candidate);
      this._trickle();
    });
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") this._ended("The connection to the server failed.");
    });
    // The server closes the viewer's connection when the publisher stops.
    const watchClose = onRemoteClose(pc, () => this._ended("The stream ended: the server closed it (its publisher stopped)."));
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc, options.gatherFirstMs ?? 2000);
    this._posted = true;
    const response = await this._fetch("POST", this.url, pc.localDescription.sdp, "application/sdp");
    const text = await response.text().catch(() => "");
    if (response.status !== 201) throw errorOf(response, text, "The server refused to play the stream");
    const where = response.headers.get("Location");
    this.location = where ? new URL(where, this.url).href : null;
    this.etag = response.headers.get("ETag");
    await pc.setRemoteDescription({ type: "answer", sdp: text });
    watchClose();
    this._trickle();
    return this;
  }

  /** Stop watching: `DELETE` the viewer, then close the connection. Safe to call twice. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    this.stream.getTracks().forEach((t) => t.stop()); // the picture stops now
    if (this.location && !this.endedReason) {
      // First, so that the server ends the viewer because it was asked to (not because its
      // connection closed); a server that does not answer within 3 s does not hold the page.
      try {
        await this._fetch("DELETE", this.location, undefined, undefined, true, 3000);
      } catch {
        // The server may have ended it already; closing our side is what matters.
      }
    }
    this.pc.close();
  }

  _ended(reason) {
    if (this.endedReason || this.closed) return;
    this.endedReason = reason;
    this.emit("ended", { reason });
    this.closed = true;
    this.pc.close();
  }

  /** Candidates gathered after the POST, as an SDP fragment PATCHed to the viewer (RFC 9725 4.3). */
  async _trickle() {
    if (!this.location || !this._late.length || this.closed) return;
    const batch = this._late;
    this._late = [];
    const sdp = this.pc.localDescription?.sdp ?? "";
    const ufrag = /^a=ice-ufrag:(\S+)/m.exec(sdp)?.[1];
    const pwd = /^a=ice-pwd:(\S+)/m.exec(sdp)?.[1];
    const lines = [];
    if (ufrag && pwd) lines.push(`a=ice-ufrag:${ufrag}`, `a=ice-pwd:${pwd}`);
    const mid = this.pc.getTransceivers()[0]?.mid ?? "0";
    lines.push(`m=audio 9 UDP/TLS/RTP/SAVPF 0`, `a=mid:${mid}`);
    for (const cand of batch) lines.push(cand ? `a=${cand.candidate}` : "a=end-of-candidates");
    try {
      const response = await this._fetch("PATCH", this.location, `${lines.join("\r\n")}\r\n`, "application/trickle-ice-sdpfrag");
      if (!response.ok && response.status !== 405) console.warn(`rtc-client: WHEP trickle answered ${response.status}`);
    } catch {
      // ICE works with the candidates the offer carried.
    }
  }

  async _fetch(method, url, body, contentType, keepalive = false, timeoutMs = 10000) {
    const headers = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (contentType) headers["Content-Type"] = contentType;
    if (method === "POST") headers.Accept = "application/sdp";
    if (this.etag && method === "PATCH") headers["If-Match"] = this.etag;
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), timeoutMs);
    try {
      return await fetch(url, {
        method, headers, body, keepalive, cache: "no-store", credentials: "same-origin", signal: timeout.signal,
      });
    } catch {
      throw new RtcError("network_error", timeout.signal.aborted
        ? "The server did not answer in time."
        : "The server is not reachable.", 0);
    } finally {
      clearTimeout(timer);
    }
  }
}

function errorOf(response, text, what) {
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: a proxy's page
  }
  const code = data?.error?.code ?? `http_${response.status}`;
  const message = data?.error?.message ?? `${what} (${response.status} ${response.statusText}).`;
  return new RtcError(code, message, response.status);
}

/**
 * Watch a stream over WHEP: a recvonly audio and video offer (with the candidates gathered in its
 * first 2 s; later ones are PATCHed) to `url`, the answer applied. Rejects with an
 * {@link RtcError} carrying the server's `code` (`session_not_found`, `unauthorized`...).
 *
 * ```js
 * const viewer = await watchWhep(`/whep/${sessionId}`);     // an anonymous WHIP session
 * video.srcObject = viewer.stream;
 * viewer.on("ended", ({ reason }) => console.log(reason));   // the publisher stopped
 * await viewer.close();                                        // DELETE on the viewer's Location
 * ```
 * @param {string} url `/whep/{sessionId}` of the server (relative to the page, or absolute)
 * @param {object} [options]
 * @param {string} [options.token] for an owned session: its owner's peer token, or the admin key
 * @param {RTCIceServer[]} [options.iceServers]
 * @param {boolean} [options.audio] ask for audio (default true)
 * @param {boolean} [options.video] ask for video (default true)
 * @param {number} [options.gatherFirstMs] default 2000
 * @returns {Promise<WhepViewer>} `{pc, stream, location, close(), on("ended")}`
 */
export async function watchWhep(url, options = {}) {
  const viewer = new WhepViewer(url, options);
  try {
    return await viewer.start();
  } catch (err) {
    await viewer.close();
    throw err;
  }
}
