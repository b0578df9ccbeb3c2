// The Echo panel: camera and microphone to the server's @echo peer and back, with live stats.

import { attach } from "./media.js";
import { openServerSession } from "./server-session.js";
import { StatsView } from "./stats.js";
import { $, describeError, log, setStatus } from "./ui.js";

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
    this.generation = 0;
    $("echo-receive").addEventListener("change", () => this.showMode());
    this.showMode();
    $("echo-start").addEventListener("click", () => this.start());
    $("echo-stop").addEventListener("click", () => this.stop());
    // The echo lives on the server: when the server goes away, so does the echo.
    lab.on("state", (ev) => {
      if (ev.state !== "reconnecting" || !this.session) return;
      this.serverLost = true;
      if (this.session.pc.connectionState !== "connected") {
        this.finish("failed", "Lost the server, so the echo ended. Press Start echo once it is back.");
      }
    });
    lab.on("reconnected", (ev) => {
      if (ev.rejoined && this.session) {
        this.finish("failed", "The server restarted, so the echo ended. Press Start echo to begin again.");
      }
    });
    $("echo-hear").addEventListener("change", (ev) => {
      $("echo-remote").muted = !ev.target.checked;
    });
  }

  /** Label the button and the left picture for the mode the checkbox picks. */
  showMode() {
    const receive = $("echo-receive").checked;
    $("echo-start").textContent = receive ? "Start receiving" : "Start echo";
    $("echo-local").closest("figure").querySelector(".ph").textContent = receive
      ? "Nothing is sent in receive-only mode"
      : "Your camera appears here";
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
    this.receiveOnly = $("echo-receive").checked;
    const peer = this.receiveOnly ? "@play" : "@echo";
    const status = $("echo-status");
    $("echo-start").disabled = true;
    $("echo-stop").disabled = false;
    $("echo-receive").disabled = true;
    $("echo-remote-caption").textContent = this.receiveOnly ? "Sent by the server (@play)" : "Echoed back by the server";
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
      setStatus(status, "connecting", `Connecting to the server's ${this.receiveOnly ? "test source" : "echo peer"}`);
      const remote = new MediaStream();
      const session = await openServerSession(this.lab, peer, {
        stream: local?.stream,
        receive: this.receiveOnly,
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
        if (reason === "shutdown") this.finish("failed", "The server is restarting, so the echo ended. Press Start echo once it is back.");
        else this.finish("idle", `The server ended the session (${reason}).`);
      });
      this.stats = new StatsView(session.pc, $("echo-stats"));
      if (session.pc.connectionState === "connected") this.onState("connected");
    } catch (err) {
      if (current()) this.finish("failed", `${this.receiveOnly ? "Receiving" : "Echo"} failed: ${describeError(err)}`);
    }
  }

  onState(state) {
    const status = $("echo-status");
    const source = this.local?.kind === "generated" ? "the generated test pattern" : "your camera";
    if (state === "connected") {
      setStatus(status, "connected", this.receiveOnly
        ? "Receiving: the server sends a test pattern and a 400 Hz tone, shown on the right."
        : `Echoing: ${source} goes to the server and comes back on the right.`);
    } else if (state === "disconnected") {
      if (this.serverLost || this.lab.state !== "connected") {
        // Media stopped and the signaling is gone too: the server itself went away.
        this.finish("failed", "Lost the server, so the echo ended. Press Start echo once it is back.");
      } else {
        setStatus(status, "connecting", "The connection was interrupted; waiting for it to recover");
      }
    } else if (state === "failed") {
      this.finish("failed", "The connection to the server failed: no network path worked (a TURN server may be needed).");
    }
  }

  stop() {
    if (!this.session && !this.starting) return;
    this.session?.link.hangUp("stopped");
    this.finish("idle", "Stopped.");
    log("page", "@echo: stopped");
  }

  finish(state, text) {
    this.generation += 1;
    this.starting = false;
    this.serverLost = false;
    this.stats?.stop();
    this.stats = null;
    this.session?.link.close();
    this.session = null;
    this.local?.stop();
    this.local = null;
    attach($("echo-local"), null);
    attach($("echo-remote"), null);
    $("echo-stats").replaceChildren();
    $("echo-start").disabled = false;
    $("echo-stop").disabled = true;
    $("echo-receive").disabled = false;
    setStatus($("echo-status"), state, text);
    if (state === "failed") log("error", text);
  }
}
