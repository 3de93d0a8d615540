// The health page: polls /api/status every 2 s and draws it. No framework, no network beyond the device.
"use strict";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

function esc(value) {
  return String(value ?? "–").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function fmt(value, digits = 1, unit = "") {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return (typeof value === "number" ? value.toFixed(digits) : value) + unit;
}

function rows(list) {
  return list.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
}

function spark(values, cls) {
  const points = values.map((v, i) => [i, v]).filter(([, v]) => v !== null && v !== undefined);
  if (points.length < 2) return `<svg class="spark ${cls}"></svg>`;
  const max = Math.max(...points.map(([, v]) => v)) || 1;
  const n = values.length - 1 || 1;
  const line = points.map(([i, v]) => `${(i / n) * 100},${28 - (v / max) * 26}`).join(" ");
  return `<svg class="spark ${cls}" viewBox="0 0 100 28" preserveAspectRatio="none"><polyline points="${line}"/></svg>`;
}

function banner(health) {
  const el = $("banner");
  if (!health) { el.className = "banner waiting"; el.textContent = "no health figures"; return; }
  if (health.ok && health.reasons.length === 0) {
    el.className = "banner ok";
    el.textContent = health.ready ? "healthy" : "healthy, starting up";
    return;
  }
  el.className = health.ok ? "banner warn" : "banner bad";
  el.innerHTML = (health.ok ? "running, with problems" : "not healthy") +
    "<ul>" + health.reasons.map((r) => `<li>${esc(r)}</li>`).join("") + "</ul>";
}

function cameraCard(name, cam) {
  let card = document.querySelector(`.camera[data-name="${CSS.escape(name)}"]`);
  if (!card) {
    card = document.createElement("div");
    card.className = "camera";
    card.dataset.name = name;
    card.innerHTML = `<div class="title"><h2></h2><span class="state"></span></div>
      <img alt="latest frame of ${esc(name)}"><div class="figures"></div>`;
    card.querySelector("h2").textContent = name;
    const img = card.querySelector("img");
    img.onload = () => { card.dataset.frameWidth = img.naturalWidth; };  // tests and people can tell it loaded
    $("cameras").appendChild(card);
  }
  const state = card.querySelector(".state");
  state.textContent = cam.state;
  state.className = "state " + cam.state;
  card.querySelector("img").src = `/api/cameras/${encodeURIComponent(name)}/latest.jpg?t=${Date.now()}`;
  card.dataset.fps = fmt(cam.fps, 2);
  const stages = cam.stages || {};
  const stageRows = Object.entries(stages).map(([stage, s]) =>
    `<tr><td>${esc(stage)}</td><td>${esc(fmt(s.p50_ms, 1))}</td><td>${esc(fmt(s.p95_ms, 1))}</td></tr>`).join("");
  const history = cam.history || { fps: [], infer_p50_ms: [] };
  card.querySelector(".figures").innerHTML =
    (cam.degraded ? `<div class="degraded">${esc(cam.degraded)}</div>` : "") +
    `<dl>${rows([
      ["fps", `${fmt(cam.fps, 1)} of ${fmt(cam.target_fps, 0)}` + (cam.detect_fps < cam.target_fps ? ` (level caps ${fmt(cam.detect_fps, 1)})` : "")],
      ["quality", cam.quality_level ? `${cam.quality_level}` + (cam.priority ? ` · priority ${cam.priority}` : "") : "–"],
      ["motion gate", cam.motion ? (cam.motion.enabled ? `${cam.motion.gated} skipped / ${cam.motion.inferred} inferred` : "off") + (cam.motion.shed ? ` · ${cam.motion.shed} shed` : "") : "–"],
      ["captured / dropped", `${cam.frames_captured ?? "–"} / ${cam.frames_dropped ?? "–"}`],
      ["detections", cam.detections],
      ["objects", cam.objects ? `${cam.objects.tracks} tracked · ${cam.objects.open_events} in events · ${cam.objects.events_started} events in all` : "–"],
      ["reconnects", `${cam.reconnects ?? 0} · not running ${fmt(cam.outage_s, 0, " s")} in all`],
      ["last detection", cam.last_detection ? `${cam.last_detection.labels.join(", ")} · ${new Date(cam.last_detection.ts_ms).toLocaleTimeString()}` : "–"],
      ["last error", cam.last_error],
    ])}</dl>` +
    `<table><tr><th>stage (ms)</th><th>p50</th><th>p95</th></tr>${stageRows}</table>` +
    `<div class="caption">fps, last 15 min</div>${spark(history.fps, "fps")}` +
    `<div class="caption">inference p50 (ms), last 15 min</div>${spark(history.infer_p50_ms, "latency")}`;
}

function render(s) {
  $("device").textContent = `${s.device_id} · v${s.version} · up ${fmt(s.uptime_s, 0, " s")}`;
  banner(s.health);
  const names = Object.keys(s.cameras || {});
  document.querySelectorAll(".camera").forEach((c) => { if (!names.includes(c.dataset.name)) c.remove(); });
  names.forEach((name) => cameraCard(name, s.cameras[name]));
  const e = s.engine || {};
  const gpu = s.gpu_memory || {};
  const gate = e.accuracy_gate ? (e.accuracy_gate.verified ? " (accuracy checked)" : " (accuracy UNVERIFIED)") : "";
  $("engine").innerHTML = s.engine ? rows([
    ["backend", `${e.backend} (${(e.providers || []).join(", ")})`], ["precision", e.precision + gate],
    ["model", e.model_path], ["input", `${e.input_width}×${e.input_height}`], ["batch", `≤ ${e.max_batch}`],
    ["GPU memory", `${fmt(gpu.used_mb, 0)} / ${fmt(gpu.budget_mb, 0)} MB`],
  ]) : rows([["engine", s.model_error || "not loaded"]]);
  const sys = s.system || {};
  const temps = sys.temperatures_c ? Object.entries(sys.temperatures_c).map(([z, t]) => `${z} ${fmt(t, 0)}°C`).join(", ") : "–";
  $("system").innerHTML = s.system ? rows([
    ["CPU", fmt(sys.cpu_percent, 0, " %")], ["memory", `${fmt(sys.memory_used_percent, 0)} % used`],
    ["disk free", fmt(sys.disk_free_mb, 0, " MB")], ["temperatures", temps],
  ]) : rows([["system", "first reading soon"]]);
  const sync = s.sync || {};
  const st = s.store || {};
  $("sync").innerHTML = rows([
    ["MQTT", s.sync ? (sync.connected ? `connected, session ${sync.session}` : `not connected: ${sync.last_error || "connecting"}`) : "no broker configured"],
    ["in flight", s.sync ? `${sync.in_flight} (window ${sync.window})` : "–"],
    ["outbox", `${st.outbox_pending ?? "–"} waiting, oldest ${fmt(st.outbox_oldest_age_s, 0, " s")}`],
    ["dead letters", st.outbox_dead ?? "–"],
    ["store", st.writable ? `writable, ${st.committed_rows} rows this run` : (st.open_error || st.last_error || "not writable")],
  ]);
  if (s.quality) {
    const q = s.quality;
    const sla = s.sla || {};
    const recent = (q.transitions || []).slice(-5).reverse()
      .map((t) => `${new Date(t.ts_ms).toLocaleTimeString()} ${t.from} → ${t.to}: ${t.reason}`);
    $("quality-panel").hidden = false;
    $("quality").innerHTML = q.mode === "off" ? rows([["adaptive quality", `off: ${q.error || "–"}`]]) : rows([
      ["level", `${q.level} (${q.mode}${q.mode === "auto" ? `, ${q.ceiling} to ${q.floor}` : ""})`],
      ["profile", `${q.profile} · ${q.profile_reason || ""}`],
      ["since", `${new Date(q.since_ms).toLocaleTimeString()}: ${q.reason}`],
      ["now", q.waiting || "–"],
      ["SLA", `capture→result p95 ≤ ${fmt(q.sla_ms, 0, " ms")}, now ${fmt((q.signals || {}).result_p95_ms, 0, " ms")}`],
      ["alerts", (sla.alerts || []).length ? sla.alerts.join("; ") : "none"],
      ["model", q.model_variant + (q.model_error ? ` (${q.model_error})` : "")],
    ]) + (recent.length ? `<dt>transitions</dt><dd><ul class="transitions">${recent.map((r) => `<li>${esc(r)}</li>`).join("")}</ul></dd>` : "");
  }
}

async function poll() {
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
  } catch (err) {
    const el = $("banner");
    el.className = "banner bad";
    el.textContent = `cannot reach the agent: ${err.message}`;
  }
  setTimeout(poll, POLL_MS);
}

poll();
