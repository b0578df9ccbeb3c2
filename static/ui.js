// Small DOM helpers and the page's log, shared by every panel.

/** @param {string} id */
export const $ = (id) => document.getElementById(id);

/**
 * Build an element: el("td", {class: "act"}, "text", child).
 * @param {string} tag
 * @param {object} [attrs]
 * @param {...(Node|string|null|undefined)} children
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child);
  }
  return node;
}

/**
 * Set a panel's status line: `state` is idle, connecting, connected or failed.
 * @param {HTMLElement} node
 * @param {"idle"|"connecting"|"connected"|"failed"} state
 * @param {string} text
 */
export function setStatus(node, state, text) {
  node.dataset.state = state;
  node.textContent = text;
}

/** Turn anything thrown into a sentence for people. */
export function describeError(err) {
  if (!err) return "Unknown error.";
  if (err.name === "NotAllowedError") return "Permission was denied.";
  if (err.name === "NotFoundError") return "No such device was found.";
  const text = err.message || String(err);
  return /[.!?]$/.test(text) ? text : `${text}.`;
}

/** @param {number} bytes */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || Number.isNaN(bytes)) return "–";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GB`;
}

/** @param {number} seconds */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${seconds < 10 ? seconds.toFixed(1) : s} s`;
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** @param {number} ms */
export function formatMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

// -- the log ---------------------------------------------------------------------------------------

const MAX_LOG_LINES = 1000;
const logLines = [];
let verbose = false;

function isNoisy(text) {
  return /\bcandidate\b/.test(text);
}

/**
 * Add a line to the Log panel (and the console).
 * @param {"page"|"server"|"sent"|"error"} source
 * @param {string} text
 */
export function log(source, text) {
  const now = new Date();
  const line = { now, source, text };
  logLines.push(line);
  if (logLines.length > MAX_LOG_LINES) logLines.shift();
  if (source === "error") console.warn(`[${source}] ${text}`);
  render(line);
}

function render(line) {
  const list = $("log");
  if (!list || (!verbose && isNoisy(line.text))) return;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const t = line.now;
  const two = (n) => String(n).padStart(2, "0");
  const stamp = `${two(t.getHours())}:${two(t.getMinutes())}:${two(t.getSeconds())}.${String(t.getMilliseconds()).padStart(3, "0")}`;
  list.append(el("li", { "data-source": line.source },
    el("time", { datetime: line.now.toISOString(), text: stamp }),
    el("span", { class: `src src-${line.source}`, text: line.source }),
    line.text));
  while (list.childElementCount > MAX_LOG_LINES) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function rerender() {
  $("log").replaceChildren();
  logLines.forEach(render);
}

/** Wire the Log panel's buttons. */
export function setupLogPanel() {
  $("log-clear").addEventListener("click", () => {
    logLines.length = 0;
    $("log").replaceChildren();
  });
  $("log-copy").addEventListener("click", async () => {
    const text = logLines.map((l) => `${l.now.toISOString()} ${l.source} ${l.text}`).join("\n");
    try {
      await navigator.clipboard.writeText(text);
      log("page", `Copied ${logLines.length} log lines to the clipboard.`);
    } catch {
      log("error", "The browser did not allow copying to the clipboard.");
    }
  });
  $("log-verbose").addEventListener("change", (ev) => {
    verbose = ev.target.checked;
    rerender();
  });
}

/**
 * Summarize a server message or a sent frame for the log, without whole SDPs.
 * @param {object} msg
 */
export function summarize(msg) {
  if (msg.type === "signal") {
    const sig = msg.signal ?? {};
    const who = msg.fromPeerId ? `from ${msg.fromPeerId}` : `to ${sig.to ?? "everyone"}`;
    let extra = "";
    if (sig.payload?.sdp) extra = ` (SDP, ${sig.payload.sdp.length} bytes)`;
    else if (sig.type === "candidate") extra = sig.payload ? ` ${sig.payload.candidate}` : " (end of candidates)";
    else if (sig.payload !== undefined && sig.payload !== null) extra = ` ${JSON.stringify(sig.payload).slice(0, 200)}`;
    return `${sig.type} ${who}${extra}`;
  }
  if (msg.type === "peer:connected") return `${msg.peer.peerId} joined ${msg.roomId}`;
  if (msg.type === "peer:disconnected") return `${msg.peerId} left ${msg.roomId} (${msg.reason})`;
  if (msg.type === "error") return `error ${msg.error?.code}: ${msg.error?.message}`;
  return JSON.stringify(msg).slice(0, 300);
}
