// The pbx-voice playground: one call at a time over /call/webrtc or /call, driven with RustPBX commands.
// Plain ES modules, no build step: everything here is served by the pbx server itself.

const $ = (id) => document.getElementById(id);

const FRAME_SAMPLES = 320; // 20 ms at 16 kHz, the WebSocket call type's frame (640 bytes of s16le)
const GATHER_TIMEOUT_MS = 3000;
const CALLS_POLL_MS = 2000;
const MAX_LOG_ENTRIES = 2000;
const DTMF_DURATION_MS = 100;
const DTMF_GAP_MS = 70;
const TOKEN_STORAGE_KEY = "pbx.apiToken";

// What tests (and curious people in the console) can see of the page.
const pbx = {
  state: "idle", // idle | calling | answered | ended
  callId: null,
  callType: null,
  events: [],
  ws: null,
  pc: null,
  remoteStream: null,
  startRecording,
  stopRecording,
  remoteLevel,
};
window.pbx = pbx;

// Everything that belongs to the call in progress; replaced as a whole by the next call.
let call = null;
let recording = null;
let playCount = 0;

// ---------------------------------------------------------------- helpers

function serverBase() {
  const raw = $("server").value.trim().replace(/\/+$/, "");
  return raw || location.origin;
}

function apiToken() {
  return $("token").value.trim();
}

function socketUrl(path, id) {
  const url = new URL(path, serverBase());
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("id", id);
  // Browsers cannot set headers on a WebSocket: the token goes in the query (the server never logs it).
  const token = apiToken();
  if (token) url.searchParams.set("token", token);
  return url.toString();
}

function unauthorizedMessage() {
  return apiToken()
    ? "the server refused the API token: check the API token field"
    : "the server asks for an API token (API_TOKEN): enter it in the API token field";
}

async function fetchJson(path, init = {}) {
  const headers = new Headers(init.headers || {});
  const token = apiToken();
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const resp = await fetch(serverBase() + path, { ...init, headers });
  let body = null;
  try {
    body = await resp.json();
  } catch {
    // A non-JSON answer is reported by its status below.
  }
  if (resp.status === 401) {
    const err = new Error(unauthorizedMessage());
    err.status = 401;
    throw err;
  }
  if (!resp.ok) {
    const detail = body && body.error ? `: ${body.error}` : "";
    throw new Error(`${path} answered HTTP ${resp.status}${detail}`);
  }
  return body;
}

function loadToken() {
  try {
    $("token").value = localStorage.getItem(TOKEN_STORAGE_KEY) || "";
  } catch {
    // No storage (a private window may refuse it): the field just starts empty.
  }
}

function saveToken() {
  try {
    const token = apiToken();
    if (token) localStorage.setItem(TOKEN_STORAGE_KEY, token);
    else localStorage.removeItem(TOKEN_STORAGE_KEY);
  } catch {
    // As above: kept for this page only.
  }
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function clock(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  // Chunked: String.fromCharCode with a whole recording as arguments overflows the stack.
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

// ---------------------------------------------------------------- event log

function brief(value) {
  // One line per entry: long strings (SDP, base64) are shown by their length only.
  return JSON.stringify(value, (key, v) => {
    if (typeof v === "string" && v.length > 80) return `<${v.length} chars>`;
    return v;
  });
}

function addLogEntry(kind, name, data, time = Date.now()) {
  const log = $("log");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const li = document.createElement("li");
  li.className = kind;
  if (kind === "event") li.classList.add(name);
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  const timeEl = document.createElement("span");
  timeEl.className = "time";
  timeEl.textContent = clock(time);
  const nameEl = document.createElement("span");
  nameEl.className = "name";
  nameEl.textContent = kind === "sent" ? `→ ${name}` : name;
  const briefEl = document.createElement("span");
  briefEl.className = "brief";
  summary.append(timeEl, nameEl, briefEl);
  details.append(summary);
  if (data !== undefined) {
    const rest = { ...data };
    delete rest.event;
    delete rest.command;
    delete rest.timestamp;
    briefEl.textContent = typeof data === "string" ? data : brief(rest);
    const pre = document.createElement("pre");
    details.append(pre);
    // Pretty JSON only when opened: an SDP is big and most lines are never expanded.
    details.addEventListener("toggle", () => {
      if (details.open && !pre.textContent) pre.textContent = JSON.stringify(data, null, 2);
    });
  }
  li.append(details);
  log.append(li);
  while (log.childElementCount > MAX_LOG_ENTRIES) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function note(text) {
  addLogEntry("note", text);
}

// ---------------------------------------------------------------- state and UI

function setState(state) {
  pbx.state = state;
  const el = $("state");
  el.textContent = state;
  el.className = `state state-${state}`;
  const live = state === "calling" || state === "answered";
  $("call").disabled = live;
  $("hangup").disabled = !live;
  const fields = ["server", "token", "call-type", "call-id", "vad", "asr", "tts", "denoise", "record", "aec"];
  for (const id of fields) $(id).disabled = live;
  $("controls").disabled = state !== "answered";
  const rtc = pbx.callType === "webrtc";
  for (const key of document.querySelectorAll("#keypad button")) key.disabled = !rtc;
  $("dtmf-hint").textContent = rtc || !pbx.callType ? "DTMF (RFC 4733)" : "DTMF: WebRTC calls only";
  $("call-label").textContent = pbx.callId ? `${pbx.callId} · ${pbx.callType}` : "";
}

function callOption() {
  const option = {};
  const vad = $("vad").value;
  const asr = $("asr").value;
  if (vad) option.vad = { type: vad };
  if (asr) option.asr = { provider: asr };
  option.tts = { provider: $("tts").value };
  if ($("denoise").checked) option.denoise = true;
  if ($("record").checked) option.recorder = {};
  return option;
}

async function openMicrophone() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("no microphone access: browsers allow it on https:// or http://localhost only");
  }
  // The browser's processing suits a person with speakers; a test tone or a headset is better without it.
  const processing = $("aec").checked;
  return navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing },
    video: false,
  });
}

function openSocket(path, id) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(socketUrl(path, id));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => resolve(ws);
    ws.onerror = async () => reject(new Error(await socketFailure(path)));
  });
}

async function socketFailure(path) {
  // The browser hides why a WebSocket failed (a 401, 409 or 503 look the same): ask the REST side,
  // which has the same token check.
  try {
    await fetchJson("/call/lists");
  } catch (err) {
    if (err.status === 401) return err.message;
  }
  return `could not open ${path} (is the id in use, or the server down?)`;
}

function send(command) {
  const ws = pbx.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    note(`not connected: ${command.command} not sent`);
    return false;
  }
  ws.send(JSON.stringify(command));
  addLogEntry("sent", command.command, command);
  return true;
}

// ---------------------------------------------------------------- a call

class Call {
  constructor(id, type) {
    this.id = id;
    this.type = type;
    // Made here, in the click's own task: a context made after an await may stay suspended (autoplay).
    this.ctx = type === "websocket" ? new AudioContext({ latencyHint: "interactive" }) : null;
    this.mic = null;
    this.pc = null;
    this.ws = null;
    this.audio = null; // the WebSocket call type's capture and playback
    this.over = false;
    this.closeTimer = null;
  }

  async start() {
    if (this.type === "webrtc") await this.startWebRtc();
    else await this.startWebSocket();
  }

  async startWebRtc() {
    const iceServers = await fetchJson("/iceservers");
    this.check();
    this.mic = await openMicrophone();
    this.check();
    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    pbx.pc = pc;
    pc.ontrack = (e) => {
      const stream = e.streams[0] || new MediaStream([e.track]);
      pbx.remoteStream = stream;
      $("remote-audio").srcObject = stream;
    };
    pc.onconnectionstatechange = () => note(`peer connection ${pc.connectionState}`);
    let invited = false;
    pc.onicecandidate = (e) => {
      // Candidates found before the invite are in its offer; later ones trickle.
      if (invited && e.candidate && e.candidate.candidate && !this.over) {
        send({ command: "candidate", candidates: [e.candidate.candidate] });
      }
    };
    for (const track of this.mic.getAudioTracks()) pc.addTrack(track, this.mic);
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringDone(pc, GATHER_TIMEOUT_MS);
    this.check();
    note(`ICE gathering ${pc.iceGatheringState}`);
    await this.connect("/call/webrtc");
    const option = { offer: pc.localDescription.sdp, ...callOption() };
    send({ command: "invite", option });
    invited = true;
  }

  async startWebSocket() {
    this.mic = await openMicrophone();
    this.check();
    this.audio = await PcmAudio.open(this.ctx, this.mic);
    pbx.remoteStream = this.audio.stream;
    this.check();
    await this.connect("/call");
    send({ command: "invite", option: { codec: "pcm", ...callOption() } });
    this.audio.capture((frame) => {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(frame);
    });
  }

  async connect(path) {
    const ws = await openSocket(path, this.id);
    if (this.over) {
      ws.close();
      this.check();
    }
    this.ws = ws;
    pbx.ws = ws;
    note(`connected to ${path}`);
    ws.onmessage = (msg) => this.onMessage(msg);
    ws.onclose = (e) => {
      if (this.over) return;
      note(`socket closed (code ${e.code}${e.reason ? `: ${e.reason}` : ""})`);
      this.end();
    };
  }

  check() {
    if (!this.over) return;
    // Hung up while this step was pending: let go of what it just opened too.
    this.release();
    throw new Error("call abandoned");
  }

  async onMessage(msg) {
    if (typeof msg.data !== "string") {
      if (this.audio) this.audio.play(msg.data);
      return;
    }
    let ev;
    try {
      ev = JSON.parse(msg.data);
    } catch {
      note(`unreadable text frame: ${msg.data.slice(0, 80)}`);
      return;
    }
    pbx.events.push(ev);
    addLogEntry("event", ev.event || "?", ev, ev.timestamp || Date.now());
    if (ev.event === "answer") await this.onAnswer(ev);
    else if (ev.event === "hangup") this.end();
  }

  async onAnswer(ev) {
    if (this.pc && ev.sdp) {
      try {
        await this.pc.setRemoteDescription({ type: "answer", sdp: ev.sdp });
      } catch (err) {
        note(`the answer SDP was refused: ${err.message}`);
        this.hangup();
        return;
      }
    }
    if (!this.over) setState("answered");
  }

  hangup() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      send({ command: "hangup" });
      // The server answers with a hangup event and closes; don't wait forever if it doesn't.
      this.closeTimer = setTimeout(() => this.end(), 3000);
    } else {
      note("call abandoned before it was placed");
      this.end();
    }
  }

  end() {
    if (this.over) return;
    this.over = true;
    clearTimeout(this.closeTimer);
    this.release();
    if (call === this) setState("ended");
  }

  release() {
    if (this.ws) {
      this.ws.onmessage = null;
      if (this.ws.readyState <= WebSocket.OPEN) this.ws.close();
    }
    if (this.pc && this.pc.signalingState !== "closed") this.pc.close();
    if (this.mic) for (const track of this.mic.getTracks()) track.stop();
    if (this.audio) this.audio.close();
    else if (this.ctx && this.ctx.state !== "closed") this.ctx.close();
    if (call === this) $("remote-audio").srcObject = null;
  }

  sendDtmf(key) {
    const sender = this.pc && this.pc.getSenders().find((s) => s.track && s.track.kind === "audio");
    const dtmf = sender && sender.dtmf;
    if (!dtmf || !dtmf.canInsertDTMF) {
      note("DTMF is not available: the answer did not negotiate telephone-event");
      return;
    }
    // insertDTMF replaces what is still queued, so quick presses are appended to the tone buffer.
    dtmf.insertDTMF(dtmf.toneBuffer + key, DTMF_DURATION_MS, DTMF_GAP_MS);
    addLogEntry("sent", `dtmf ${key}`, { digit: key, via: "RFC 4733" });
  }
}

function gatheringDone(pc, timeoutMs) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const timer = setTimeout(done, timeoutMs);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onChange);
      resolve();
    }
    function onChange() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", onChange);
  });
}

// ---------------------------------------------------------------- WebSocket call audio

// Runs on the audio thread: the microphone at the context's rate, averaged down to 16 kHz s16le frames.
const CAPTURE_WORKLET = `
class Pcm16kCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / 16000;
    this.pos = 0;
    this.sum = 0;
    this.count = 0;
    this.frame = new Int16Array(${FRAME_SAMPLES});
    this.fill = 0;
  }
  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    for (let i = 0; i < input.length; i++) {
      // A box filter over each output sample's span of input: crude, but it keeps most aliasing out.
      this.sum += input[i];
      this.count += 1;
      this.pos += 1;
      if (this.pos >= this.step) {
        this.pos -= this.step;
        const v = Math.max(-1, Math.min(1, this.sum / this.count));
        this.sum = 0;
        this.count = 0;
        this.frame[this.fill++] = v < 0 ? v * 32768 : v * 32767;
        if (this.fill === this.frame.length) {
          this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
          this.frame = new Int16Array(${FRAME_SAMPLES});
          this.fill = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("pcm16k-capture", Pcm16kCapture);
`;

class PcmAudio {
  static async open(ctx, mic) {
    const url = URL.createObjectURL(new Blob([CAPTURE_WORKLET], { type: "text/javascript" }));
    try {
      await ctx.audioWorklet.addModule(url);
    } finally {
      URL.revokeObjectURL(url);
    }
    await ctx.resume();
    return new PcmAudio(ctx, mic);
  }

  constructor(ctx, mic) {
    this.ctx = ctx;
    this.mic = mic;
    // What the server sends goes to the speakers and to a stream the recording helper can tap.
    this.out = ctx.createGain();
    this.out.connect(ctx.destination);
    this.tap = ctx.createMediaStreamDestination();
    this.out.connect(this.tap);
    this.stream = this.tap.stream;
    this.playAt = 0;
    this.node = null;
    this.meter = ctx.createAnalyser();
    this.meter.fftSize = 1024;
    this.out.connect(this.meter);
  }

  level() {
    const samples = new Float32Array(this.meter.fftSize);
    this.meter.getFloatTimeDomainData(samples);
    let peak = 0;
    for (const v of samples) peak = Math.max(peak, Math.abs(v));
    return peak;
  }

  capture(onFrame) {
    const source = this.ctx.createMediaStreamSource(this.mic);
    this.node = new AudioWorkletNode(this.ctx, "pcm16k-capture", { numberOfOutputs: 1 });
    this.node.port.onmessage = (e) => onFrame(e.data);
    source.connect(this.node);
    // Connected (silently) to the output so the rendering graph keeps pulling the worklet.
    this.node.connect(this.ctx.destination);
  }

  play(data) {
    const pcm = new Int16Array(data);
    if (!pcm.length) return;
    const buffer = this.ctx.createBuffer(1, pcm.length, 16000);
    const samples = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
    const node = this.ctx.createBufferSource();
    node.buffer = buffer;
    node.connect(this.out);
    const now = this.ctx.currentTime;
    // Frames arrive paced in real time with network jitter: after an underrun, restart 80 ms ahead.
    if (this.playAt < now + 0.01) this.playAt = now + 0.08;
    node.start(this.playAt);
    this.playAt += buffer.duration;
  }

  close() {
    if (this.node) this.node.port.onmessage = null;
    if (this.ctx.state !== "closed") this.ctx.close();
  }
}

// ---------------------------------------------------------------- recording (for tests and demos)

/** Record what the server sends (the remote stream) with MediaRecorder; resolves once recording. */
async function startRecording() {
  if (!pbx.remoteStream) throw new Error("no remote audio yet: record after the answer");
  if (recording && recording.recorder.state !== "inactive") throw new Error("already recording");
  const mimeType = MediaRecorder.isTypeSupported("audio/webm;codecs=opus") ? "audio/webm;codecs=opus" : "";
  const recorder = new MediaRecorder(pbx.remoteStream, mimeType ? { mimeType } : {});
  const chunks = [];
  recorder.ondataavailable = (e) => {
    if (e.data.size) chunks.push(e.data);
  };
  const stopped = new Promise((resolve) => {
    recorder.onstop = resolve;
  });
  const started = new Promise((resolve) => {
    recorder.onstart = resolve;
  });
  recording = { recorder, chunks, stopped };
  recorder.start(250);
  await started;
  return recorder.mimeType;
}

/** Stop the recording; resolves to it as base64 (WebM/Opus in Chromium). */
async function stopRecording() {
  if (!recording) throw new Error("not recording");
  const { recorder, chunks, stopped } = recording;
  recording = null;
  // The recorder stops by itself when the call's tracks end; then the data is already complete.
  if (recorder.state !== "inactive") recorder.stop();
  await stopped;
  const blob = new Blob(chunks, { type: recorder.mimeType });
  return toBase64(await blob.arrayBuffer());
}

/** The level (0-1) of what the server's audio sounds like in the page right now. */
async function remoteLevel() {
  if (call && call.audio && !call.over) return call.audio.level();
  if (pbx.pc && pbx.pc.connectionState !== "closed") {
    const stats = await pbx.pc.getStats();
    for (const s of stats.values()) {
      if (s.type === "inbound-rtp" && s.kind === "audio") return s.audioLevel || 0;
    }
  }
  return 0;
}

// ---------------------------------------------------------------- active calls

async function refreshCalls() {
  const status = $("calls-status");
  try {
    const body = await fetchJson("/call/lists");
    renderCalls(body.calls || []);
    status.textContent = `updated ${clock(Date.now()).slice(0, 8)}`;
    status.title = "";
  } catch (err) {
    if (err.status === 401) {
      status.textContent = apiToken() ? "API token refused" : "API token needed";
      status.title = err.message;
    } else {
      status.textContent = "server unreachable";
      status.title = "";
    }
  } finally {
    setTimeout(refreshCalls, CALLS_POLL_MS);
  }
}

function renderCalls(calls) {
  const body = $("calls");
  body.replaceChildren();
  if (!calls.length) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = document.createElement("td");
    td.colSpan = 4;
    td.textContent = "no active calls";
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const c of calls) {
    const tr = document.createElement("tr");
    tr.dataset.id = c.id;
    if (c.id === pbx.callId && (pbx.state === "calling" || pbx.state === "answered")) tr.className = "mine";
    const id = document.createElement("td");
    id.className = "id";
    id.textContent = c.id;
    id.title = c.id;
    const type = document.createElement("td");
    type.textContent = c.call_type;
    const created = document.createElement("td");
    const at = Date.parse(c.created_at);
    created.textContent = Number.isNaN(at) ? c.created_at : clock(at);
    created.title = c.created_at;
    const action = document.createElement("td");
    const kill = document.createElement("button");
    kill.type = "button";
    kill.className = "small danger kill";
    kill.dataset.id = c.id;
    kill.textContent = "Kill";
    kill.addEventListener("click", () => killCall(c.id));
    action.append(kill);
    tr.append(id, type, created, action);
    body.append(tr);
  }
}

async function killCall(id) {
  try {
    await fetchJson(`/call/kill/${encodeURIComponent(id)}`, { method: "POST" });
    note(`killed ${id}`);
  } catch (err) {
    note(`kill ${id} failed: ${err.message}`);
  }
}

// ---------------------------------------------------------------- wiring

async function placeCall() {
  if (pbx.state === "calling" || pbx.state === "answered") return;
  const type = $("call-type").value;
  const id = $("call-id").value.trim() || `web.${randomId()}`;
  const current = new Call(id, type);
  call = current;
  Object.assign(pbx, { callId: id, callType: type, events: [], ws: null, pc: null, remoteStream: null });
  setState("calling");
  note(`calling ${id} (${type})`);
  try {
    await current.start();
  } catch (err) {
    if (current.over) {
      current.release();
    } else {
      note(`call failed: ${err.message}`);
      current.end();
    }
  }
}

function speak() {
  const text = $("tts-text").value.trim();
  if (!text) return;
  playCount += 1;
  send({ command: "tts", text, playId: `tts-${playCount}` });
}

function play() {
  const url = $("play-url").value.trim();
  if (url) send({ command: "play", url });
}

function onEnter(input, action) {
  $(input).addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      action();
    }
  });
}

function init() {
  $("server").value = location.origin;
  loadToken();
  $("token").addEventListener("input", saveToken);
  $("connect-form").addEventListener("submit", (e) => {
    e.preventDefault();
    placeCall();
  });
  $("hangup").addEventListener("click", () => call && call.hangup());
  $("speak").addEventListener("click", speak);
  $("play").addEventListener("click", play);
  $("interrupt").addEventListener("click", () => send({ command: "interrupt" }));
  onEnter("tts-text", speak);
  onEnter("play-url", play);
  for (const key of document.querySelectorAll("#keypad button")) {
    key.addEventListener("click", () => call && call.sendDtmf(key.dataset.key));
  }
  $("clear-log").addEventListener("click", () => $("log").replaceChildren());
  window.addEventListener("pagehide", () => call && call.end());
  setState("idle");
  refreshCalls();
}

init();
