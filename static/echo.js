// The Echo panel: camera and microphone to the server's @echo peer and back, with live stats;
// or to any other mode the server offers (GET /rtc/modes), with its data channel messages.

import { attach } from "./media.js";
import { openServerSession } from "./server-session.js";
import { StatsView } from "./stats.js";
import { $, describeError, el, log, setStatus } from "./ui.js";

/**
 * Built-in modes with a place of their own on the page: listed, but not in the picker (record
 * wants its file list, probe its verdict, play sends only and is Receive only here).
 */
const ELSEWHERE = {
  record: "try it in the Record panel",
  probe: "try it in the Connectivity test panel",
  play: "try it here: echo with Receive only ticked",
  sfu: "try it in the Call panel: Group call through the server",
};

/** What the picker offers before the server's list arrives (and if it never does). */
const ECHO = { name: "echo", description: "sends your audio and video back", serverPeer: "@echo" };

/** Messages kept in the panel's list; older ones scroll away. */
const MAX_MESSAGES = 200;

export class EchoPanel {
  /**
   * @param {import("./rtc-client.js").RtcClient} lab
   * @param {import("./media.js").LocalMedia} media
   */
  constructor(lab, media) {
    this.lab = lab;
    this.media = media;
    this.session = null;
    this.local = null;
    this.stats = null;
    this.starting = false;
    this.serverLost = false;
    this.receiveOnly = false;
    /** The mode of the running (or last) session: echo, play, or one of the application's. */
    this.mode = "echo";
    /** @type {RTCDataChannel|null} the session's data channel (modes other than echo and play) */
    this.channel = null;
    /** @type {Map<string, {name: string, description: string, serverPeer: string}>} */
    this.modes = new Map([["echo", ECHO]]);
    this.generation = 0;
    $("echo-receive").addEventListener("change", () => this.showMode());
    $("echo-mode").addEventListener("change", () => this.showMode());
    this.showMode();
    $("echo-start").addEventListener("click", () => this.start());
    $("echo-stop").addEventListener("click", () => this.stop());
    $("echo-say").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.say();
    });
    // The echo lives on the server: when the server goes away, so does the echo.
    lab.on("state", (ev) => {
      if (ev.state !== "reconnecting" || !this.session) return;
      this.serverLost = true;
      if (this.session.pc.connectionState !== "connected") {
        this.finish("failed", `Lost the server, so ${this.what} ended. Press ${this.button} once it is back.`);
      }
    });
    lab.on("reconnected", (ev) => {
      if (!ev.rejoined) return;
      // A restarted server may offer other modes.
      this.loadModes();
      if (this.session) {
        this.finish("failed", `The server restarted, so ${this.what} ended. Press ${this.button} to begin again.`);
      }
    });
    $("echo-hear").addEventListener("change", (ev) => {
      $("echo-remote").muted = !ev.target.checked;
    });
  }

  /** True for the application's own modes (not echo, not play): they get a data channel. */
  get custom() {
    return this.mode !== "echo" && this.mode !== "play";
  }

  /** The running session in words, for status lines. */
  get what() {
    return this.custom ? `the @${this.mode} session` : "the echo";
  }

  /** The start button's words for the running session's mode. */
  get button() {
    return this.custom ? `Start ${this.mode}` : "Start echo";
  }

  /** Ask the server which modes it offers and fill the picker and the list. */
  async loadModes() {
    try {
      const body = await this.lab.request("GET", "/rtc/modes");
      this.setModes(Array.isArray(body?.modes) ? body.modes : []);
    } catch (err) {
      const why = describeError(err);
      $("echo-modes-summary").textContent = `Modes this server offers: could not get the list (${why.replace(/\.$/, "")}).`;
      log("error", `Could not get the server's modes: ${why}`);
    }
  }

  /** @param {{name: string, description?: string, serverPeer?: string}[]} list as GET /rtc/modes gives it */
  setModes(list) {
    const known = list.filter((m) => m && typeof m.name === "string");
    this.modes = new Map(known.map((m) => [m.name, { description: "", serverPeer: `@${m.name}`, ...m }]));
    const pickable = known.filter((m) => !(m.name in ELSEWHERE)).map((m) => m.name);
    if (!pickable.includes("echo")) pickable.unshift("echo"); // the default, as before the list came
    const select = $("echo-mode");
    const chosen = select.value;
    select.replaceChildren(...pickable.map((name) => el("option", { value: name }, name)));
    select.value = pickable.includes(chosen) ? chosen : "echo";
    $("echo-mode-list").replaceChildren(
      ...known.flatMap((m) => [
        el("dt", {}, el("code", {}, this.modes.get(m.name).serverPeer)),
        el(
          "dd",
          {},
          m.description || "(no description)",
          m.name in ELSEWHERE ? el("span", { class: "where" }, ` (${ELSEWHERE[m.name]})`) : null,
        ),
      ]),
    );
    $("echo-modes-summary").textContent = `Modes this server offers (${known.length})`;
    log("page", `The server offers the modes ${known.map((m) => m.name).join(", ") || "(none)"}.`);
    this.showMode();
  }

  /** Label the button, the pictures and the description for the mode the picker and checkbox pick. */
  showMode() {
    const name = $("echo-mode").value || "echo";
    const echo = name === "echo";
    $("echo-receive-label").hidden = !echo;
    const receive = echo && $("echo-receive").checked;
    const shown = receive ? "play" : name;
    $("echo-start").textContent = receive ? "Start receiving" : echo ? "Start echo" : `Start ${name}`;
    $("echo-local").closest("figure").querySelector(".ph").textContent = receive
      ? "Nothing is sent in receive-only mode"
      : "Your camera appears here";
    const info = this.modes.get(shown) ?? (shown === "play" ? { description: "sends a generated test video and tone" } : null);
    $("echo-mode-description").textContent = `@${shown}: ${info?.description || "no description."}`;
    if (!this.session && !this.starting) {
      $("echo-remote").closest("figure").querySelector(".ph").textContent = echo
        ? "The echo from the server appears here"
        : `What @${name} sends back appears here`;
      // The previous session's messages stay readable until another mode is picked.
      if (echo) $("echo-chat").hidden = true;
    }
  }

  get pc() {
    return this.session?.pc ?? null;
  }

  async start() {
    if (this.session || this.starting) return;
    this.starting = true;
    // Stop (or a lost server) while this is still starting makes it stale: whatever it opens
    // afterwards is closed again instead of running behind an idle panel.
    const gen = ++this.generation;
    const current = () => gen === this.generation;
    const picked = $("echo-mode").value || "echo";
    this.receiveOnly = picked === "echo" && $("echo-receive").checked;
    this.mode = this.receiveOnly ? "play" : picked;
    const peer = `@${this.mode}`;
    const custom = this.custom;
    const status = $("echo-status");
    $("echo-start").disabled = true;
    $("echo-stop").disabled = false;
    $("echo-receive").disabled = true;
    $("echo-mode").disabled = true;
    $("echo-remote-caption").textContent = this.receiveOnly
      ? "Sent by the server (@play)"
      : custom ? `Sent back by ${peer}` : "Echoed back by the server";
    $("echo-remote").closest("figure").querySelector(".ph").textContent = custom
      ? `What ${peer} sends back appears here`
      : "The echo from the server appears here";
    if (custom) this.openChat(peer);
    try {
      let local = null;
      if (!this.receiveOnly) {
        setStatus(status, "connecting", "Opening your camera and microphone");
        local = await this.media.open();
        if (!current()) {
          local.stop();
          return;
        }
        this.local = local;
        attach($("echo-local"), local.stream);
      }
      setStatus(status, "connecting", custom
        ? `Connecting to the server's ${peer} peer`
        : `Connecting to the server's ${this.receiveOnly ? "test source" : "echo peer"}`);
      const remote = new MediaStream();
      const session = await openServerSession(this.lab, peer, {
        stream: local?.stream,
        receive: this.receiveOnly,
        dataChannel: custom,
        onChannel: (channel) => this.watchChannel(channel, peer, current),
        onTrack: (track) => {
          if (!current()) return;
          remote.addTrack(track);
          attach($("echo-remote"), remote);
        },
        onState: (state) => current() && this.onState(state),
      });
      if (!current()) {
        session.link.hangUp("stopped");
        return;
      }
      this.session = session;
      this.starting = false;
      session.link.on("bye", ({ reason }) => {
        // "shutdown": the server is draining for a restart (its socket closes with 1012 next).
        if (reason === "shutdown") this.finish("failed", `The server is restarting, so ${this.what} ended. Press ${this.button} once it is back.`);
        else this.finish("idle", `The server ended the session (${reason}).`);
      });
      if (custom && !this.sendsMedia()) {
        $("echo-remote").closest("figure").querySelector(".ph").textContent = `${peer} sends no audio or video back`;
      }
      this.stats = new StatsView(session.pc, $("echo-stats"));
      if (session.pc.connectionState === "connected") this.onState("connected");
    } catch (err) {
      if (!current()) return;
      if (err.code === "unknown_mode") this.loadModes(); // the list the page showed is out of date
      this.finish("failed", custom
        ? `Could not start ${peer}: ${describeError(err)}`
        : `${this.receiveOnly ? "Receiving" : "Echo"} failed: ${describeError(err)}`);
    }
  }

  /** Whether the answer says the server sends media on any of the session's transceivers. */
  sendsMedia() {
    const pc = this.session?.pc;
    return Boolean(pc?.getTransceivers().some((t) => t.currentDirection === "sendrecv" || t.currentDirection === "recvonly"));
  }

  onState(state) {
    const status = $("echo-status");
    const source = this.local?.kind === "generated" ? "the generated test pattern" : "your camera";
    if (state === "connected") {
      if (this.custom) {
        // Said once the answer is in (what the mode sends back is known then): start() calls again.
        if (!this.session) return;
        const back = this.sendsMedia() ? "what it sends back is on the right" : "it sends no audio or video back";
        setStatus(status, "connected", `Connected to @${this.mode}: ${source} goes to the server and ${back}. `
          + "Its data channel messages appear below.");
      } else {
        setStatus(status, "connected", this.receiveOnly
          ? "Receiving: the server sends a test pattern and a 400 Hz tone, shown on the right."
          : `Echoing: ${source} goes to the server and comes back on the right.`);
      }
    } else if (state === "disconnected") {
      if (this.serverLost || this.lab.state !== "connected") {
        // Media stopped and the signaling is gone too: the server itself went away.
        this.finish("failed", `Lost the server, so ${this.what} ended. Press ${this.button} once it is back.`);
      } else {
        setStatus(status, "connecting", "The connection was interrupted; waiting for it to recover");
      }
    } else if (state === "failed") {
      this.finish("failed", "The connection to the server failed: no network path worked (a TURN server may be needed).");
    }
  }

  // -- the data channel (modes other than echo and play) ----------------------------------------

  openChat(peer) {
    $("echo-chat").hidden = false;
    $("echo-chat-title").textContent = `Data channel messages with ${peer}`;
    $("echo-messages").replaceChildren(el("li", { class: "empty" }, "Nothing sent or received yet."));
    $("echo-send").disabled = true;
  }

  /** Follow the session's data channel: its messages into the list, Send enabled while it is open. */
  watchChannel(channel, peer, current) {
    channel.binaryType = "arraybuffer";
    channel.addEventListener("open", () => {
      if (!current()) return;
      this.channel = channel;
      $("echo-send").disabled = false;
      log("page", `${peer}: data channel open`);
    });
    channel.addEventListener("message", (ev) => {
      if (!current()) return;
      const text = typeof ev.data === "string" ? ev.data : `(${ev.data.byteLength} bytes of binary data)`;
      this.addMessage(peer, text, "them");
    });
    channel.addEventListener("close", () => {
      if (this.channel === channel) this.channel = null;
      if (current()) $("echo-send").disabled = true;
    });
  }

  /** Send the message box's text on the data channel. */
  say() {
    const input = $("echo-message");
    const text = input.value;
    if (!text) return;
    if (this.channel?.readyState !== "open") {
      this.addMessage("Page", "Not sent: the data channel is not open (start a session first).", "note");
      return;
    }
    this.channel.send(text);
    this.addMessage("You", text, "you");
    input.value = "";
  }

  addMessage(who, text, kind) {
    const list = $("echo-messages");
    list.querySelector(".empty")?.remove();
    list.append(el("li", { class: kind }, el("span", { class: "who" }, `${who}:`), " ", text));
    while (list.children.length > MAX_MESSAGES) list.firstElementChild.remove();
    list.scrollTop = list.scrollHeight;
  }

  stop() {
    if (!this.session && !this.starting) return;
    this.session?.link.hangUp("stopped");
    this.finish("idle", "Stopped.");
    log("page", `${this.custom ? `@${this.mode}` : "@echo"}: stopped`);
  }

  finish(state, text) {
    this.generation += 1;
    this.starting = false;
    this.serverLost = false;
    this.stats?.stop();
    this.stats = null;
    this.session?.link.close();
    this.session = null;
    this.channel = null;
    this.local?.stop();
    this.local = null;
    attach($("echo-local"), null);
    attach($("echo-remote"), null);
    $("echo-stats").replaceChildren();
    $("echo-start").disabled = false;
    $("echo-stop").disabled = true;
    $("echo-receive").disabled = false;
    $("echo-mode").disabled = false;
    $("echo-send").disabled = true;
    setStatus($("echo-status"), state, text);
    if (state === "failed") log("error", text);
  }
}
