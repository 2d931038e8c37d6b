// The dashboard page: polls the JSON API every two seconds and redraws.
"use strict";
const body = document.body;
let run = body.dataset.run;
let sampleSteps = [];
let followLatest = true;

async function api(path, init) {
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.detail || r.statusText);
  return data;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;  // always text, never HTML: names come from students
  if (cls) td.className = cls;
  row.append(td);
  return td;
}

function fmtSeconds(s) {
  if (s == null) return "–";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

async function pickRun() {
  const runs = await api("/api/runs");
  const picker = document.getElementById("run-picker");
  picker.replaceChildren(...runs.map(r => {
    const o = document.createElement("option");
    o.value = r.name; o.textContent = `${r.name} (${r.status})`;
    return o;
  }));
  if (!run && runs.length) run = runs[0].name;
  picker.value = run;
  picker.onchange = () => { location.search = "?run=" + encodeURIComponent(picker.value); };
  document.getElementById("run-name").textContent = run || "no run yet";
}

async function refresh() {
  if (!run) { await pickRun(); if (!run) return; }
  const base = "/api/runs/" + encodeURIComponent(run);
  const [p, board, metrics, steps, workers, quality] = await Promise.all([
    api(base + "/progress"), api(base + "/leaderboard"), api(base + "/metrics"),
    api(base + "/samples"), api(base + "/workers"), api(base + "/quality"),
  ]);
  document.getElementById("status").textContent = p.status;
  document.getElementById("step").textContent = p.target_steps ? `${p.step} / ${p.target_steps}` : p.step;
  document.getElementById("epoch").textContent = p.epochs.toFixed(2);
  document.getElementById("rate").textContent = p.images_per_s.toFixed(1);
  document.getElementById("online").textContent = p.workers_online;
  const coordinator = document.getElementById("coordinator");
  coordinator.textContent = p.coordinator_alive ? "coordinator running" : "no coordinator";
  coordinator.className = "badge " + (p.coordinator_alive ? "online" : "offline");
  document.getElementById("eta").textContent = fmtSeconds(p.eta_s);
  document.getElementById("epoch-bar").style.width = (100 * p.epoch_progress).toFixed(1) + "%";

  const tbody = document.querySelector("#leaderboard tbody");
  tbody.replaceChildren(...board.map((r, i) => {
    const tr = document.createElement("tr");
    cell(tr, i + 1);
    cell(tr, r.name, r.online ? "online" : "offline");
    cell(tr, r.images); cell(tr, r.units);
    cell(tr, (100 * r.share).toFixed(1) + "%");
    cell(tr, r.rejected);
    cell(tr, r.reasons.join(" · "), "reasons");
    return tr;
  }));

  const wbody = document.querySelector("#workers tbody");
  wbody.replaceChildren(...workers.map(w => {
    const tr = document.createElement("tr");
    cell(tr, w.name, w.present && w.last_heartbeat_s < 30 ? "online" : "offline");
    cell(tr, w.device); cell(tr, fmtSeconds(w.last_heartbeat_s) + " ago");
    cell(tr, w.current_unit == null ? "–" : w.current_unit);
    cell(tr, w.images_per_s.toFixed(1));
    return tr;
  }));

  lineChart(document.getElementById("loss-chart"), metrics, [
    {key: "g_loss", label: "G loss", color: "#5ec4ff"},
    {key: "d_loss", label: "D loss", color: "#ff8a5e"},
  ], {title: "losses"});
  lineChart(document.getElementById("d-chart"), metrics, [
    {key: "d_real", label: "D(x)", color: "#54d98c"},
    {key: "d_fake", label: "D(G(z))", color: "#d98cff"},
  ], {title: "discriminator outputs", min: 0, max: 1});

  const qchart = document.getElementById("quality-chart");
  qchart.hidden = quality.length === 0;
  if (quality.length) {
    lineChart(qchart, quality, [{key: "kid", label: "KID (lower is better)", color: "#ffd75e"}],
      {title: "quality", min: 0});
  }

  if (steps.length !== sampleSteps.length) {
    sampleSteps = steps;
    const slider = document.getElementById("sample-slider");
    slider.max = Math.max(0, steps.length - 1);
    if (followLatest) slider.value = slider.max;
    showSample();
  }
}

function showSample() {
  const slider = document.getElementById("sample-slider");
  const step = sampleSteps[Number(slider.value)];
  if (step == null) return;
  document.getElementById("sample").src =
    "/api/runs/" + encodeURIComponent(run) + "/samples/" + step + ".png";
  document.getElementById("sample-version").textContent = "step " + step;
}

document.getElementById("sample-slider").addEventListener("input", e => {
  followLatest = Number(e.target.value) === sampleSteps.length - 1;
  showSample();
});

const message = document.getElementById("control-message");
document.getElementById("login-form").addEventListener("submit", async e => {
  e.preventDefault();
  try {
    const r = await api("/api/login", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({password: document.getElementById("password").value})});
    message.textContent = r.message;
  } catch (err) { message.textContent = err.message; }
});
for (const b of document.querySelectorAll("[data-action]")) {
  b.addEventListener("click", async () => {
    // Stopping ends the run for good (it cannot be resumed): ask first.
    if (b.dataset.confirm && !window.confirm(b.dataset.confirm.replace("RUN", run))) return;
    try {
      const r = await api("/api/runs/" + encodeURIComponent(run) + "/" + b.dataset.action, {method: "POST"});
      message.textContent = r.message;
    } catch (err) { message.textContent = err.message; }
  });
}
document.getElementById("disable-student").addEventListener("click", async () => {
  const name = document.getElementById("student-name").value;
  try {
    const r = await api("/api/students/" + encodeURIComponent(name) + "/disable", {method: "POST"});
    message.textContent = r.message;
  } catch (err) { message.textContent = err.message; }
});

pickRun().then(refresh).catch(err => { message.textContent = err.message; });
setInterval(() => refresh().catch(err => { message.textContent = err.message; }), 2000);
