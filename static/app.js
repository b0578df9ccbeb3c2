// The demo page: tabs, the page's own connection to the server, and the six panels.

import { RtcClient } from "./rtc-client.js";
import { CallPanel } from "./call.js";
import { EchoPanel } from "./echo.js";
import { LocalMedia } from "./media.js";
import { ProbePanel } from "./probe.js";
import { RecordPanel } from "./record.js";
import { ServerPanel } from "./server.js";
import { $, describeError, log, setupLogPanel, summarize } from "./ui.js";

// -- tabs (WAI-ARIA tabs pattern: arrows, Home, End; the URL hash remembers the panel) ----------

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab, focus) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
    const name = tab.id.replace("tab-", "");
    if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab, false));
    tab.addEventListener("keydown", (ev) => {
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[ev.key];
      if (next === undefined) return;
      ev.preventDefault();
      select(tabs[(next + tabs.length) % tabs.length], true);
    });
  });
  const fromHash = () => {
    const tab = $(`tab-${location.hash.slice(1)}`);
    if (tab && tab.getAttribute("role") === "tab") select(tab, false);
  };
  window.addEventListener("hashchange", fromHash);
  fromHash();
}

// -- the page's own membership: a private room for the media panels -----------------------------

// The media panels talk to the server's own peers (@echo, @record, @probe) from a private room,
// and recordings belong to the peer that made them; keeping the ids for the tab's life (the
// connect cookie proves it is us after a reload) keeps "Your recordings" across reloads.
function labIds() {
  const saved = sessionStorage.getItem("fantasize-rtc.lab");
  if (saved) {
    try {
      const ids = JSON.parse(saved);
      if (ids.roomId && ids.peerId) return ids;
    } catch {
      // fall through to fresh ids
    }
  }
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  const ids = { roomId: `lab-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`, peerId: "me" };
  sessionStorage.setItem("fantasize-rtc.lab", JSON.stringify(ids));
  return ids;
}

function showServerState(client, ev) {
  const pill = $("server-status");
  pill.dataset.state = ev.state;
  if (ev.state === "connected") {
    pill.textContent = `Connected to the server (${client.transport === "poll" ? "long-poll" : "WebSocket"})`;
  } else if (ev.state === "connecting") {
    pill.textContent = "Connecting to the server…";
  } else if (ev.state === "reconnecting") {
    const wait = ev.retryInMs ? ` Retrying in ${Math.max(1, Math.round(ev.retryInMs / 1000))} s.` : "";
    const why = describeError(ev.error);
    pill.textContent = `Lost the server: ${why.charAt(0).toLowerCase()}${why.slice(1)}${wait}`;
  } else if (ev.state === "failed") {
    pill.textContent = `Cannot reach the server: ${describeError(ev.error)}`;
  } else if (ev.state === "closed") {
    pill.textContent = "Disconnected from the server.";
  }
}

async function connectLab(client) {
  const { roomId, peerId } = labIds();
  for (let attempt = 1; ; attempt++) {
    try {
      await client.connect(roomId, peerId, { name: "demo page" });
      log("page", `Connected to the server as ${client.peerId} in private room ${client.roomId} (${client.transport}).`);
      return;
    } catch (err) {
      const wait = Math.min(10, 2 ** attempt);
      log("error", `Could not connect to the server: ${describeError(err)} Trying again in ${wait} s.`);
      showServerState(client, { state: "failed", error: new Error(`${describeError(err)} Trying again in ${wait} s.`) });
      await new Promise((r) => setTimeout(r, wait * 1000));
    }
  }
}

async function showVersion() {
  try {
    const health = await (await fetch(`${BASE}/healthz`)).json();
    $("foot-version").textContent = `fantasize-rtc-server ${health.version}`;
  } catch {
    // The footer is decoration; the status pill reports a missing server.
  }
}

// Where the server's routes are: the page's own folder, so the page also works when the app is
// mounted under a prefix (aiohttp add_subapp("/realtime", create_app())): "" at the root.
const BASE = new URL(".", location.href).pathname.replace(/\/+$/, "");

/** Options for the page's clients: the base path, and `?transport=poll` (or `websocket`). */
export function clientOptions() {
  const transport = new URLSearchParams(location.search).get("transport");
  return transport === "poll" || transport === "websocket" ? { baseUrl: BASE, transport } : { baseUrl: BASE };
}

function main() {
  setupTabs();
  setupLogPanel();
  const media = new LocalMedia($("source"), $("media-notice"));
  const lab = new RtcClient(clientOptions());
  lab.on("state", (ev) => {
    showServerState(lab, ev);
    if (ev.state === "reconnecting") log("error", `Lost the server: ${describeError(ev.error)} (attempt ${ev.attempt})`);
  });
  lab.on("reconnected", (ev) => log("page", `Back in touch with the server${ev.rejoined ? " (it had restarted: joined again)" : ""}.`));
  lab.on("message", (msg) => log("server", summarize(msg)));
  lab.on("sent", (msg) => log("sent", summarize(msg)));
  lab.on("log", (ev) => log("page", ev.text));

  const panels = {
    lab,
    media,
    echo: new EchoPanel(lab, media),
    record: new RecordPanel(lab, media),
    probe: new ProbePanel(lab),
    call: new CallPanel(media, clientOptions()),
    server: new ServerPanel(BASE, lab),
  };
  // For tests and the curious: `demo.echo.pc.getStats()` in the console.
  window.demo = panels;
  window.addEventListener("pagehide", () => {
    // Leave the rooms now rather than after the peer timeout; the other side sees us go.
    panels.call.client?.disconnect({ keepalive: true });
    lab.disconnect({ keepalive: true });
  });
  window.addEventListener("pageshow", (ev) => {
    // Back from the browser's page cache: the connections were closed on pagehide; start fresh.
    if (ev.persisted) location.reload();
  });
  log("page", "Page loaded.");
  showVersion();
  connectLab(lab).then(() => {
    panels.record.refresh();
    panels.echo.loadModes();
  });
}

main();
