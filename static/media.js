// Where the page's outgoing media comes from: the camera and microphone, or a generated test
// pattern and tone when there is no camera, it was denied, or the user picks it.

import { describeError, log } from "./ui.js";

const WIDTH = 640;
const HEIGHT = 480;
const FPS = 30;

/**
 * A canvas animation and an oscillator as a MediaStream. Timers, not requestAnimationFrame,
 * drive it so it keeps running in a background tab.
 * @returns {{stream: MediaStream, stop: () => void}}
 */
export function generatedStream(label = "fantasize-rtc test pattern") {
  const canvas = document.createElement("canvas");
  canvas.width = WIDTH;
  canvas.height = HEIGHT;
  const ctx = canvas.getContext("2d");
  const started = performance.now();
  let frame = 0;
  const draw = () => {
    const t = (performance.now() - started) / 1000;
    frame += 1;
    const bars = ["#e6e6e6", "#e6e600", "#00e6e6", "#00e600", "#e600e6", "#e60000", "#0000e6"];
    const w = WIDTH / bars.length;
    bars.forEach((color, i) => {
      ctx.fillStyle = color;
      ctx.fillRect(i * w, 0, w + 1, HEIGHT * 0.62);
    });
    ctx.fillStyle = "#1b1f24";
    ctx.fillRect(0, HEIGHT * 0.62, WIDTH, HEIGHT * 0.38);
    // A ball that moves, so a frozen picture is obvious at a glance.
    const x = WIDTH / 2 + Math.cos(t * 1.7) * WIDTH * 0.38;
    const y = HEIGHT * 0.31 + Math.sin(t * 2.3) * HEIGHT * 0.2;
    ctx.beginPath();
    ctx.arc(x, y, 34, 0, Math.PI * 2);
    ctx.fillStyle = "#11151a";
    ctx.fill();
    ctx.fillStyle = "#ffffff";
    ctx.font = "bold 34px ui-monospace, monospace";
    ctx.textBaseline = "middle";
    const now = new Date();
    const clock = `${now.toTimeString().slice(0, 8)}.${String(Math.floor(now.getMilliseconds() / 10)).padStart(2, "0")}`;
    ctx.fillText(clock, 24, HEIGHT * 0.73);
    ctx.font = "22px ui-monospace, monospace";
    ctx.fillText(`frame ${frame}`, 24, HEIGHT * 0.83);
    ctx.fillStyle = "#9aa4b0";
    ctx.font = "18px system-ui, sans-serif";
    ctx.fillText(label, 24, HEIGHT * 0.93);
  };
  draw();
  const timer = setInterval(draw, 1000 / FPS);
  const stream = canvas.captureStream(FPS);

  let audio = null;
  try {
    audio = new AudioContext();
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.frequency.value = 440;
    gain.gain.value = 0.08; // a quiet tone: it is a test signal, not an alarm
    const dest = audio.createMediaStreamDestination();
    osc.connect(gain).connect(dest);
    osc.start();
    audio.resume().catch(() => {});
    dest.stream.getAudioTracks().forEach((t) => stream.addTrack(t));
  } catch (err) {
    log("error", `No generated tone: ${describeError(err)}`);
  }
  return {
    stream,
    stop() {
      clearInterval(timer);
      stream.getTracks().forEach((t) => t.stop());
      audio?.close().catch(() => {});
    },
  };
}

/**
 * The page's media source: the select at the top decides camera or generated; a camera that
 * fails falls back to the generated source and says why in the notice.
 */
export class LocalMedia {
  /**
   * @param {HTMLSelectElement} select
   * @param {HTMLElement} notice
   */
  constructor(select, notice) {
    this.select = select;
    this.notice = notice;
    this.cameraProblem = null;
    select.addEventListener("change", () => {
      if (select.value === "camera") this._hideNotice();
      log("page", `Media source: ${select.selectedOptions[0].textContent} (used by the next session you start).`);
    });
  }

  /**
   * A fresh stream for one session; call `stop()` on the result when the session ends.
   * @returns {Promise<{stream: MediaStream, kind: "camera"|"generated", stop: () => void}>}
   */
  async open() {
    if (this.select.value === "camera") {
      try {
        if (!navigator.mediaDevices?.getUserMedia) {
          throw Object.assign(new Error(window.isSecureContext
            ? "This browser offers no camera access"
            : "Browsers give the camera only to secure pages: open this page over https:// (start the server with "
              + "--tls-self-signed, or --tls-cert and --tls-key) or on localhost"),
          { name: "NotSupportedError" });
        }
        const stream = await navigator.mediaDevices.getUserMedia({
          video: { width: { ideal: WIDTH }, height: { ideal: HEIGHT } },
          audio: true,
        });
        return { stream, kind: "camera", stop: () => stream.getTracks().forEach((t) => t.stop()) };
      } catch (err) {
        this._cameraFailed(err);
      }
    }
    const gen = generatedStream();
    return { stream: gen.stream, kind: "generated", stop: gen.stop };
  }

  _cameraFailed(err) {
    let why;
    if (err.name === "NotAllowedError" || err.name === "SecurityError") {
      why = "Camera and microphone access was denied.";
    } else if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
      why = "No camera or microphone was found.";
    } else if (err.name === "NotReadableError") {
      why = "The camera or microphone is busy in another program.";
    } else {
      why = `The camera could not be opened: ${describeError(err)}`;
    }
    this.cameraProblem = why;
    this.select.value = "generated";
    this.notice.textContent = `${why} Using a generated test pattern and tone instead; everything else works the same.`;
    this.notice.hidden = false;
    log("error", `${why} Falling back to the generated source.`);
  }

  _hideNotice() {
    this.notice.hidden = true;
  }
}

/**
 * Show a stream in a video element (and keep playing it when it is muted by policy).
 * @param {HTMLVideoElement} video
 * @param {MediaStream|null} stream
 */
export function attach(video, stream) {
  video.srcObject = stream;
  video.closest("figure")?.classList.toggle("live", Boolean(stream));
  if (stream) video.play().catch(() => {});
}
