// The Record panel: send media to the server's @record peer, which writes it to a file; list,
// play, download and delete your recordings.

import { attach } from "./media.js";
import { openServerSession } from "./server-session.js";
import { $, describeError, el, formatBytes, formatDuration, log, setStatus } from "./ui.js";

const SAVE_TIMEOUT_MS = 20000;
// The listing's recording states (docs/media.md, "Recordings"), as the duration column says them.
const STATE_NOTE = Object.freeze({ recording: " (recording)", complete: "", incomplete: " (incomplete)" });

export class RecordPanel {
  /**
   * @param {import("./rtc-client.js").RtcClient} lab
   * @param {import("./media.js").LocalMedia} media
   */
  constructor(lab, media) {
    this.lab = lab;
    this.media = media;
    this.session = null;
    this.local = null;
    this.timer = null;
    this.startedAt = 0;
    this.starting = false;
    this.generation = 0;
    /** @type {object[]} the last list the server gave */
    this.recordings = [];
    $("record-start").addEventListener("click", () => this.start());
    $("record-stop").addEventListener("click", () => this.stop());
    $("record-refresh").addEventListener("click", () => this.refresh());
    lab.on("state", (ev) => {
      if (ev.state !== "reconnecting" || !this.session) return;
      this.serverLost = true;
      if (this.session.pc.connectionState !== "connected") this.lostServer();
    });
    lab.on("reconnected", (ev) => {
      if (ev.rejoined && this.session) this.lostServer();
      this.refresh();
    });
  }

  get pc() {
    return this.session?.pc ?? null;
  }

  async start() {
    if (this.session || this.starting) return;
    this.starting = true;
    // Stop (or a lost server) while starting makes this start stale: see EchoPanel.start.
    const gen = ++this.generation;
    const current = () => gen === this.generation;
    const status = $("record-status");
    $("record-start").disabled = true;
    $("record-stop").disabled = false;
    setStatus(status, "connecting", "Opening your camera and microphone");
    try {
      const local = await this.media.open();
      if (!current()) {
        local.stop();
        return;
      }
      this.local = local;
      attach($("record-local"), local.stream);
      setStatus(status, "connecting", "Connecting to the server's recorder");
      const session = await openServerSession(this.lab, "@record", {
        stream: local.stream,
        onState: (state) => current() && this.onState(state),
      });
      if (!current()) {
        session.link.hangUp("stopped");
        return;
      }
      this.session = session;
      this.starting = false;
      session.link.on("bye", ({ reason }) => this.serverEnded(reason));
      if (session.pc.connectionState === "connected") this.onState("connected");
    } catch (err) {
      if (!current()) return;
      this.cleanup();
      setStatus(status, "failed", `Recording failed: ${describeError(err)}`);
      log("error", `@record: ${describeError(err)}`);
    }
  }

  onState(state) {
    if (!this.session) return;
    if (state === "connected" && !this.timer) {
      this.startedAt = performance.now();
      const tick = () => {
        const seconds = (performance.now() - this.startedAt) / 1000;
        setStatus($("record-status"), "connected", `Recording: ${formatDuration(seconds)}. Press Stop to save it.`);
        $("record-status").classList.add("rec");
      };
      tick();
      this.timer = setInterval(tick, 500);
    } else if (state === "failed") {
      this.cleanup();
      setStatus($("record-status"), "failed", "The connection to the recorder failed: no network path worked.");
    } else if (state === "disconnected" && (this.serverLost || this.lab.state !== "connected")) {
      this.lostServer();
    }
  }

  lostServer() {
    this.cleanup();
    setStatus($("record-status"), "failed",
      "Lost the server while recording. What reached it is saved if the server shut down cleanly: "
      + "the list updates when it is back.");
  }

  async stop() {
    const session = this.session;
    if (!session) {
      if (this.starting) {
        this.cleanup();
        setStatus($("record-status"), "idle", "Stopped before the recording began.");
      }
      return;
    }
    const seconds = this.timer ? (performance.now() - this.startedAt) / 1000 : 0;
    session.link.hangUp("stopped"); // the server finalizes the file when it gets the bye
    this.cleanup();
    setStatus($("record-status"), "connecting", `Saving the ${formatDuration(seconds)} recording`);
    log("page", "@record: stopped; waiting for the file");
    await this.waitForSaved(session.sessionId, seconds);
  }

  serverEnded(reason) {
    const session = this.session;
    this.cleanup();
    setStatus($("record-status"), "connecting", `The server ended the recording (${reason}); saving it`);
    this.waitForSaved(session?.sessionId ?? null, 0);
  }

  async waitForSaved(sessionId, seconds) {
    const deadline = performance.now() + SAVE_TIMEOUT_MS;
    const known = new Set(this.recordings.map((r) => r.id));
    while (performance.now() < deadline) {
      await this.refresh();
      // A recording is listed while it is written ("recording"); it is saved once it is not.
      const saved = this.recordings.find((r) => r.state !== "recording"
        && ((sessionId && r.sessionId === sessionId) || (!sessionId && !known.has(r.id))));
      if (saved) {
        setStatus($("record-status"), "connected",
          `Saved: ${formatDuration(saved.duration ?? seconds)}, ${formatBytes(saved.size)}. It is at the top of the list below.`);
        this.highlight(saved.id);
        return;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    setStatus($("record-status"), "failed", "The server did not list the recording in time; press Refresh in a moment.");
  }

  cleanup() {
    $("record-status").classList.remove("rec");
    this.generation += 1;
    this.starting = false;
    this.serverLost = false;
    clearInterval(this.timer);
    this.timer = null;
    this.session?.link.close();
    this.session = null;
    this.local?.stop();
    this.local = null;
    attach($("record-local"), null);
    $("record-start").disabled = false;
    $("record-stop").disabled = true;
  }

  async refresh() {
    if (this.lab.state !== "connected") return;
    let reply;
    try {
      reply = await this.lab.request("GET", "/rtc/recordings");
    } catch (err) {
      log("error", `Could not list recordings: ${describeError(err)}`);
      return;
    }
    const list = Array.isArray(reply) ? reply : reply?.recordings ?? [];
    list.sort((a, b) => (b.createdAt ?? b.created ?? 0) - (a.createdAt ?? a.created ?? 0));
    this.recordings = list;
    this.render();
  }

  render() {
    const body = $("record-list");
    if (this.recordings.length === 0) {
      body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "5", text: "No recordings yet." })));
      return;
    }
    body.replaceChildren(...this.recordings.map((rec) => {
      const created = new Date(rec.createdAt ?? rec.created ?? Date.now());
      const url = this.lab.urlWithToken(`/rtc/recordings/${encodeURIComponent(rec.id)}`);
      const label = created.toLocaleString();
      return el("tr", { "data-recording-id": rec.id },
        el("td", {}, el("time", { datetime: created.toISOString(), text: label })),
        el("td", { text: formatDuration(rec.duration ?? rec.durationS) + (STATE_NOTE[rec.state] ?? "") }),
        el("td", { text: formatBytes(rec.size) }),
        el("td", { text: (rec.codecs ?? []).join(", ") || "–" }),
        el("td", { class: "act" },
          el("button", { class: "small", type: "button", text: "Play", "aria-label": `Play the recording of ${label}`, onclick: () => this.play(rec, url, label) }),
          el("a", { class: "button", href: url, download: `${rec.id}.${rec.format ?? "webm"}`, text: "Download", "aria-label": `Download the recording of ${label}` }),
          el("button", {
            class: "small", type: "button", text: "Delete", "aria-label": `Delete the recording of ${label}`,
            onclick: (ev) => this.confirmRemove(ev.currentTarget, rec),
          })));
    }));
  }

  play(rec, url, label) {
    const player = $("record-player");
    player.src = url;
    player.closest("figure").classList.add("live");
    player.play().catch(() => {});
    $("record-player-caption").textContent = `Playing the recording of ${label}`;
    this.highlight(rec.id);
  }

  highlight(id) {
    for (const row of $("record-list").querySelectorAll("tr")) row.classList.toggle("playing", row.dataset.recordingId === id);
  }

  /** Deleting cannot be undone: the first click arms the button, a second one within 4 s deletes. */
  confirmRemove(button, rec) {
    if (button.dataset.armed) {
      this.remove(rec);
      return;
    }
    button.dataset.armed = "1";
    button.textContent = "Really delete?";
    button.classList.add("danger");
    setTimeout(() => {
      delete button.dataset.armed;
      button.textContent = "Delete";
      button.classList.remove("danger");
    }, 4000);
  }

  async remove(rec) {
    try {
      await this.lab.request("DELETE", `/rtc/recordings/${encodeURIComponent(rec.id)}`);
      log("page", `Deleted recording ${rec.id}`);
    } catch (err) {
      log("error", `Could not delete the recording: ${describeError(err)}`);
    }
    const player = $("record-player");
    if (player.src.includes(encodeURIComponent(rec.id))) {
      player.removeAttribute("src");
      player.closest("figure").classList.remove("live");
      player.load();
      $("record-player-caption").textContent = "Pick a recording to play it here";
    }
    await this.refresh();
  }
}
