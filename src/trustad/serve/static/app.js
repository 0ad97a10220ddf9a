"use strict";
// The web page: send one image to POST /predict?map=png and show the answer.

const $ = (id) => document.getElementById(id);
// The service's token (`trustad serve --token-file`), kept in this browser only.
const TOKEN_KEY = "trustad-token";

function authorization() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "not fitted";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") return value.toPrecision(digits || 4);
  return String(value);
}

async function loadModelInfo() {
  try {
    const r = await fetch("/model", { headers: authorization() });
    const m = await r.json();
    if (!r.ok) throw new Error(m.error || `HTTP ${r.status}`);
    const w = m.backbone.weights;
    const parts = [
      `${m.backbone.name || "custom backbone"}`,
      `${m.support.length} support image(s)`,
      `calibrator: ${m.calibrator ? m.calibrator.name : "none"}`,
      `decision: ${m.decision_rule || "none"}`,
    ];
    if (w) parts.push(`weights ${w.sha256.slice(0, 12)}…`);
    $("model-info").textContent = parts.join(" · ");
  } catch (e) {
    $("model-info").textContent = `model information unavailable: ${e.message}`;
  }
}

function show(result, file) {
  $("original").src = URL.createObjectURL(file);
  $("overlay").src = "data:image/png;base64," + result.map.data;
  for (const key of ["score", "probability", "gated_probability", "p_value", "entropy"]) {
    $(key).textContent = fmt(result[key]);
  }
  const interval = result.probability_interval;
  $("probability-interval").textContent = interval ?
    `90 % credible interval ${fmt(interval[0])} to ${fmt(interval[1])}` : "";
  $("decision").textContent = result.decision === null ? "none" :
    (result.decision ? "anomalous" : "normal");
  $("decision-rule").textContent = result.decision_rule ?
    `by the ${result.decision_rule} rule` : "no threshold fitted";
  $("decision").className = result.decision ? "bad" : "ok";
  $("flag").className = result.flag ? "warn" : "";
  $("flag").textContent = result.flag === null ? "not fitted" :
    (result.flag ? "RAISED" : "no");
  const v = $("verdict");
  v.className = "verdict " + (result.decision ? "bad" : "ok");
  v.textContent = result.decision === null ? `score ${fmt(result.score)}` :
    (result.decision ? "Anomalous" : "Normal");
  $("flag-reason").textContent = result.flag_reason || "";
  if (result.flag) {
    const f = document.createElement("span");
    f.className = "flag";
    f.textContent = "⚠ flagged: do not trust this answer";
    v.appendChild(f);
  }
  $("result").hidden = false;
}

async function send(file) {
  const status = $("status");
  status.className = "muted";
  status.textContent = `scoring ${file.name}…`;
  const body = new FormData();
  body.append("file", file);
  try {
    const r = await fetch("/predict?map=png", { method: "POST", body, headers: authorization() });
    const result = await r.json();
    if (!r.ok) throw new Error(result.error || `HTTP ${r.status}`);
    show(result, file);
    status.textContent = `${file.name}: ${result.width}×${result.height}`;
    document.body.dataset.state = "done";
  } catch (e) {
    status.className = "error";
    status.textContent = `${file.name}: ${e.message}`;
    document.body.dataset.state = "error";
  }
}

$("file").addEventListener("change", (e) => {
  if (e.target.files.length) send(e.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
});
$("token").value = localStorage.getItem(TOKEN_KEY) || "";
$("token").addEventListener("change", (e) => {
  localStorage.setItem(TOKEN_KEY, e.target.value.trim());
  loadModelInfo();
});
loadModelInfo();
