// The Connectivity test panel: a session with the server's @probe peer, and its report in words.

import { generatedStream } from "./media.js";
import { openServerSession } from "./server-session.js";
import { summarizeStats } from "./stats.js";
import { $, describeError, el, formatMs, log, setStatus } from "./ui.js";

const REPORT_TIMEOUT_MS = 20000;

const TYPE_WORDS = {
  host: "its own network address",
  srflx: "its public address as seen through a router (found with STUN)",
  prflx: "an address discovered during the connection checks (behind NAT)",
  relay: "a TURN relay server",
};

/** A sentence for people about how the two ends found each other. */
export function explainPair(local, remote) {
  const types = new Set([local, remote]);
  if (types.has("relay")) {
    return "Your browser could reach the server only through a TURN relay. It works, but every packet takes a "
      + "detour through the relay; strict firewalls or networks that block UDP cause this.";
  }
  if (types.has("srflx") || types.has("prflx")) {
    return "Your browser reached the server through your router's public address. That is a direct connection, "
      + "as fast as it gets across the internet, and the normal case for home and office networks.";
  }
  if (types.has("host")) {
    return "Your browser reached the server directly on its own network address: nothing in between, the best case "
      + "(usual when both are on the same machine or local network).";
  }
  return "";
}

/** Whether a host (a name or an address, as in a URL) is only reachable inside a private network. */
export function isPrivateHost(host) {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  if (h === "localhost" || h.endsWith(".local") || h.endsWith(".localhost") || !h.includes(".") && !h.includes(":")) return true;
  const v4 = h.match(/^(\d+)\.(\d+)\.(\d+)\.(\d+)$/);
  if (v4) {
    const [a, b] = [Number(v4[1]), Number(v4[2])];
    return a === 10 || a === 127 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 169 && b === 254)
      || (a === 100 && b >= 64 && b <= 127);
  }
  if (h.includes(":")) return h === "::1" || /^f[cd]/.test(h) || /^fe[89ab]/.test(h);
  return false;
}

/**
 * What the page can tell from here about reaching the server's own peers: the addresses and UDP
 * port(s) the server announces (`GET /rtc/media`), and, in plain words, what will not work.
 * @param {object} info the answer of GET /rtc/media
 * @param {{host: string, hostname: string, protocol: string}} page the page's location
 * @param {boolean} secure window.isSecureContext
 * @returns {{announced: string, advice: string[]}}
 */
export function explainSetup(info, page, secure) {
  const udp = info?.udp ?? { mode: "random", addresses: [], announced: [] };
  const shown = [...udp.addresses, ...udp.announced.map((a) => a.address)];
  const port = udp.ports ? (udp.ports[0] === udp.ports[1] ? `UDP port ${udp.ports[0]}` : `UDP ports ${udp.ports[0]}-${udp.ports[1]}`)
    : "random UDP ports";
  const announced = `The server's own peers announce ${shown.length ? shown.join(", ") : "no address"} on ${port}.`;
  const advice = [];
  if (!secure) {
    advice.push(`This page is not a secure context (it came over plain HTTP from ${page.hostname}), so your browser `
      + "will not give it the camera or microphone. Start the server with --tls-self-signed (or --tls-cert and --tls-key) "
      + `and open https://${page.host}/ instead.`);
  }
  const onlyPrivate = shown.length > 0 && shown.every(isPrivateHost);
  if (!isPrivateHost(page.hostname)) {
    if (onlyPrivate) {
      advice.push(`You opened this page on ${page.hostname}, but the server announces only private addresses `
        + `(${shown.join(", ")}): from outside its network, media will not connect. Start it with --udp-port 40000 `
        + "--public-ip <its public address> and open that UDP port.");
    } else if (udp.mode === "random") {
      advice.push("The server's own peers take random UDP ports; behind a firewall or NAT give them one with --udp-port "
        + "(and open it) so that media can get in.");
    }
  }
  return { announced, advice };
}

/** `host:port`, with IPv6 addresses in brackets as in URLs. */
function hostPort(c) {
  return c.address.includes(":") ? `[${c.address}]:${c.port}` : `${c.address}:${c.port}`;
}

export class ProbePanel {
  /** @param {import("./rtc-client.js").RtcClient} lab */
  constructor(lab) {
    this.lab = lab;
    this.session = null;
    this.source = null;
    this.running = false;
    /** @type {object|null} the last report from the server */
    this.report = null;
    $("probe-start").addEventListener("click", () => this.run());
    this.setup = this.showSetup();
  }

  /** What the server announces, and what will not work from here (before any test is run). */
  async showSetup() {
    let info = null;
    try {
      info = await this.lab.request("GET", "/rtc/media");
    } catch (err) {
      log("error", `Could not read the server's media setup: ${describeError(err)}`);
    }
    const { announced, advice } = explainSetup(info, location, window.isSecureContext);
    $("probe-announced").textContent = info ? announced : "";
    $("probe-advice").replaceChildren(...advice.map((text) => el("li", { text })));
    for (const text of advice) log("page", text);
    return { info, advice };
  }

  get pc() {
    return this.session?.pc ?? null;
  }

  async run() {
    if (this.running) return;
    this.running = true;
    this.report = null;
    $("probe-start").disabled = true;
    $("probe-result").hidden = true;
    const relayOnly = $("probe-relay").checked;
    const status = $("probe-status");
    const t0 = performance.now();
    setStatus(status, "connecting", relayOnly ? "Testing (relay only)" : "Testing");
    let reportSignal = null;
    try {
      // A generated source: testing the network should not need camera permission.
      this.source = generatedStream("connectivity test");
      let connectedAt = null;
      this.session = await openServerSession(this.lab, "@probe", {
        stream: this.source.stream,
        dataChannel: true,
        relayOnly,
        onState: (state) => {
          if (state === "connected" && connectedAt === null) {
            connectedAt = performance.now();
            setStatus(status, "connecting", `Connected in ${formatMs(connectedAt - t0)}; measuring`);
          }
        },
      });
      const { pc, link, channel } = this.session;
      reportSignal = new Promise((resolve) => {
        const off = this.lab.on("signal", (msg) => {
          if (msg.fromPeerId === "@probe" && msg.signal.type === "probe:report") {
            off();
            resolve(msg.signal.payload);
          }
        });
        channel?.addEventListener("message", (ev) => {
          try {
            const data = JSON.parse(ev.data);
            if (data?.type === "probe:report" && data.report) resolve(data.report);
          } catch {
            // not a report
          }
        });
        link.on("closed", () => off());
      });
      const report = await this.waitForReport(reportSignal);
      const stats = await pc.getStats();
      const browser = summarizeStats(stats);
      const gathered = { host: 0, srflx: 0, prflx: 0, relay: 0 };
      stats.forEach((st) => {
        if (st.type === "local-candidate" && st.candidateType in gathered) gathered[st.candidateType] += 1;
      });
      this.report = report;
      this.render(report, browser, gathered, connectedAt === null ? null : connectedAt - t0, relayOnly);
      const failed = !report || /^failed|^closed before/.test(report.verdict ?? "");
      const took = ((performance.now() - t0) / 1000).toFixed(1);
      setStatus(status, failed ? "failed" : "connected", failed ? "The test could not connect." : `Test finished in ${took} s.`);
      log("page", `@probe: ${report?.verdict ?? "no report"}`);
    } catch (err) {
      setStatus(status, "failed", `The test failed: ${describeError(err)}`);
      log("error", `@probe: ${describeError(err)}`);
    } finally {
      this.session?.link.hangUp("done");
      this.session = null;
      this.source?.stop();
      this.source = null;
      this.running = false;
      $("probe-start").disabled = false;
    }
  }

  /** The report: pushed by the server (signal or data channel), else read from the session. */
  async waitForReport(pushed) {
    const sessionId = this.session.sessionId;
    const deadline = performance.now() + REPORT_TIMEOUT_MS;
    let last = null;
    while (performance.now() < deadline) {
      const early = await Promise.race([pushed, new Promise((r) => setTimeout(() => r(null), 700))]);
      if (early) return early;
      if (sessionId) {
        try {
          last = await this.lab.request("GET", `/rtc/sessions/${encodeURIComponent(sessionId)}`);
          if (last.probe?.state === "done" || last.state === "closed" || last.state === "closing") return last;
        } catch (err) {
          log("error", `@probe: could not read the report: ${describeError(err)}`);
        }
      }
      if (this.session.pc.connectionState === "failed") break;
    }
    return last;
  }

  render(report, browser, gathered, browserConnectMs, relayOnly) {
    const verdict = report?.verdict ?? "failed: no report from the server";
    const pair = report?.candidatePair;
    const localType = pair?.remote?.type ?? browser.localCandidateType; // the server's remote is the browser
    const serverType = pair?.local?.type ?? browser.remoteCandidateType;
    let outcome = "direct";
    if (/^failed|^closed before/.test(verdict)) outcome = "failed";
    else if (localType === "relay" || serverType === "relay") outcome = "relay";
    const v = $("probe-verdict");
    v.dataset.outcome = outcome;
    v.textContent = verdict.charAt(0).toUpperCase() + verdict.slice(1) + ".";
    $("probe-explain").textContent = outcome === "failed"
      ? "No network path between your browser and the server worked. A firewall probably blocks UDP; a TURN "
        + "server reachable over TCP or TLS on port 443 usually fixes that."
      : explainPair(localType, serverType);
    const rows = [];
    const add = (name, value) => {
      if (value !== null && value !== undefined && value !== "") rows.push(el("dt", { text: name }), el("dd", { text: value }));
    };
    if (pair) {
      add("Candidate pair", `${pair.remote.type} (your browser) ↔ ${pair.local.type} (server), ${pair.local.protocol.toUpperCase()}`);
      add("Your browser used", `${TYPE_WORDS[pair.remote.type] ?? pair.remote.type}: ${hostPort(pair.remote)}`);
      add("The server used", `${TYPE_WORDS[pair.local.type] ?? pair.local.type}: ${hostPort(pair.local)}`);
    } else if (browser.localCandidateType) {
      add("Candidate pair", `${browser.localCandidateType} (your browser) ↔ ${browser.remoteCandidateType} (server), ${(browser.protocol ?? "").toUpperCase()}`);
    }
    const t = report?.timings ?? {};
    add("Time to connect (browser)", browserConnectMs === null ? null : formatMs(browserConnectMs));
    add("Time to connect (server)", t.connectMs === null || t.connectMs === undefined ? null : formatMs(t.connectMs));
    add("Connectivity checks (ICE)", t.iceConnectionMs === null || t.iceConnectionMs === undefined ? null : formatMs(t.iceConnectionMs));
    add("Encryption handshake (DTLS)", t.dtlsMs === null || t.dtlsMs === undefined ? null : formatMs(t.dtlsMs));
    const rtt = report?.rttMs ?? report?.probe?.rttMs ?? report?.stats?.rtcpRttMs ?? browser.rttMs;
    add("Round trip", rtt === null || rtt === undefined ? null : formatMs(rtt));
    const s = report?.stats;
    if (s) {
      const frames = s.framesReceived ? Object.entries(s.framesReceived).map(([k, n]) => `${n} ${k}`).join(", ") : "";
      add("The server received", `${s.packetsReceived ?? 0} packets${frames ? ` (${frames} frames)` : ""}, ${s.bytesReceived ?? 0} bytes`);
      if (typeof s.lossPercent === "number") add("Packet loss", `${s.lossPercent.toFixed(1)} %`);
    }
    const kinds = Object.entries(gathered).filter(([, n]) => n > 0).map(([k, n]) => `${n} ${k}`);
    add("Your browser's candidates", kinds.length ? kinds.join(", ") : "none");
    add("ICE servers offered", this.lab.iceServers.length
      ? this.lab.iceServers.map((s) => [].concat(s.urls).join(" ")).join("; ") : "none (direct connections only)");
    if (relayOnly) add("Mode", "relay only (TURN)");
    $("probe-details").replaceChildren(...rows);
    $("probe-result").hidden = false;
  }
}
