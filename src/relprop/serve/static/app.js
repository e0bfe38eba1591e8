// relprop serve's page: every map comes from POST /api/explain, the API scripts call too.
// Requests go one at a time (the server runs one model pass at a time anyway), so a change
// of class, layer or sign never leaves a queue of outdated computations behind it.
"use strict";

const DEFAULT_METHODS = ["rap", "rap-stable", "lrp-epsilon-plus", "gradient-x-input", "grad-cam"];
const $ = (selector) => document.querySelector(selector);

const state = {
  image: null,          // the picture (a File or a Blob), sent with every request
  imageName: "",
  target: null,         // what the user asked to explain (index or name); null: the predicted
  explained: null,      // {index, name} of the class the maps explain
  predictions: [],
  layer: "",            // "" is the input
  sign: "both",
  opacity: 0.6,
  view: "overlay",
  globalError: "",
};
let model = "", classes = [], layers = [], propagation = new Set();
const panels = new Map();  // method -> {element, token, controller, answer, error}
const queue = [];
let working = false, fetchingSample = false;

async function start() {
  bindControls();
  try {
    const [models, methods, samples] = await Promise.all(
      ["/api/models", "/api/methods", "/api/samples"].map((url) => fetchJSON(url)));
    model = models.loaded;
    classes = models.classes;
    $("#model").textContent = `${models.loaded}: ${models.description}`;
    $("#classes").replaceChildren(...classes.map((name) => new Option(name)));
    layers = methods.layers;
    propagation = new Set(methods.methods.filter((m) => m.family === "propagation")
                                         .map((m) => m.name));
    showMethods(methods.methods);
    showLayers();
    for (const s of samples.samples) {
      $("#sample").append(new Option(`${s.name} (${s.source})`, s.name));
    }
  } catch (error) {
    state.globalError = `The page could not start: ${words(error)}`;
  }
  showErrors();
  ensureInputPanel();
  for (const method of DEFAULT_METHODS.filter((m) => allMethods().includes(m))) addPanel(method);
  setBusy();
}

function allMethods() {
  return [...document.querySelectorAll("#methods input")].map((box) => box.value);
}

function bindControls() {
  $("#file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";  // choosing the same file again is a change too
    $("#sample").value = "";
    if (file) setImage(file, file.name);
  });
  $("#sample").addEventListener("change", async (event) => {
    const name = event.target.value;
    if (!name) return;
    fetchingSample = true;
    setBusy();
    try {
      const response = await fetch(`/api/samples/${encodeURIComponent(name)}`);
      if (!response.ok) await readAnswer(response);  // throws the server's words
      setImage(await response.blob(), name);
    } catch (error) {
      state.globalError = `Sample ${name}: ${words(error)}`;
      showErrors();
    } finally {
      fetchingSample = false;
      setBusy();
    }
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) setImage(file, file.name);
  });
  $("#class-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("#class-input").value.trim();
    const index = classes.findIndex((c) => c.toLowerCase() === text.toLowerCase());
    explainClass(text === "" ? null : index >= 0 ? String(index) : text);
  });
  $("#layer").addEventListener("change", (event) => setLayer(event.target.value));
  $("#layer-slider").addEventListener("change", (event) => {
    setLayer(event.target.value === "0" ? "" : layers[Number(event.target.value) - 1]);
  });
  for (const radio of document.querySelectorAll("input[name=sign]")) {
    radio.addEventListener("change", () => {
      state.sign = radio.value;
      request([...panels.keys()]);
    });
  }
  for (const radio of document.querySelectorAll("input[name=view]")) {
    radio.addEventListener("change", () => { state.view = radio.value; showView(); });
  }
  $("#opacity").addEventListener("input", (event) => {
    state.opacity = Number(event.target.value);
    showView();
  });
  $("#download-json").addEventListener("click", downloadJSON);
  showView();
}

function showMethods(methods) {
  const box = $("#methods");
  box.replaceChildren();
  for (const family of ["propagation", "gradient"]) {
    const title = document.createElement("div");
    title.className = "family";
    title.textContent = family === "propagation" ? "propagation (RAP, LRP)" : "gradients (Captum)";
    box.append(title);
    for (const m of methods.filter((m) => m.family === family)) {
      const label = document.createElement("label");
      const check = document.createElement("input");
      check.type = "checkbox";
      check.value = m.name;
      check.checked = DEFAULT_METHODS.includes(m.name);
      check.addEventListener("change", () => (check.checked ? addPanel(m.name)
                                                            : removePanel(m.name)));
      label.append(check, ` ${m.name}`);
      box.append(label);
    }
  }
}

function showLayers() {
  $("#layer").replaceChildren(new Option("input (pixels)", ""),
    ...layers.map((name, i) => new Option(`${i + 1}/${layers.length}: ${name}`, name)));
  $("#layer-slider").max = String(layers.length);
}

function setLayer(layer) {
  state.layer = layer;
  $("#layer").value = layer;
  $("#layer-slider").value = String(layer === "" ? 0 : layers.indexOf(layer) + 1);
  request([...panels.keys()].filter((m) => propagation.has(m)));
}

function setImage(blob, name) {
  state.image = blob;
  state.imageName = name;
  state.target = null;
  state.explained = null;
  state.predictions = [];
  state.globalError = "";
  $("#image-name").textContent = name;
  $("#class-input").value = "";
  $("#panels .panel.input img").hidden = true;
  $("#panels .panel.input h3").textContent = `input: ${name}`;
  showPredictions();
  request([...panels.keys()]);
}

function explainClass(target) {
  state.target = target;
  request([...panels.keys()]);
}

// ---- panels -------------------------------------------------------------------------------

function ensureInputPanel() {
  const element = document.createElement("figure");
  element.className = "panel input";
  element.innerHTML = `<h3>input</h3><div class="stack"><img class="view" alt="the input"></div>
    <figcaption class="numbers muted">as the model sees it</figcaption>`;
  element.querySelector("img").hidden = true;
  $("#panels").prepend(element);
}

function addPanel(method) {
  if (panels.has(method)) return;
  const element = document.createElement("figure");
  element.className = "panel";
  element.dataset.method = method;
  element.innerHTML = `<h3></h3><div class="stack">
      <img class="grey" alt=""><img class="layer" alt=""><img class="heatmap" alt="">
      <div class="status"></div></div>
    <figcaption class="numbers"></figcaption>
    <div class="links"><a class="heatmap-link" href="#">heat map PNG</a>
      <a class="overlay-link" href="#">overlay PNG</a></div>`;
  element.querySelector(".overlay-link").addEventListener("click", (event) => {
    event.preventDefault();
    downloadOverlay(method);
  });
  element.querySelector(".heatmap-link").addEventListener("click", (event) => {
    event.preventDefault();
    const answer = panels.get(method).answer;
    if (!answer) return;
    save(`data:image/png;base64,${answer.png.heatmap}`, fileName(answer, "heatmap.png"));
  });
  const order = allMethods();
  const after = [...panels.keys()].filter((m) => order.indexOf(m) < order.indexOf(method)).pop();
  (after ? panels.get(after).element : $("#panels .panel.input")).after(element);
  panels.set(method, {element, token: 0, controller: null, answer: null, error: ""});
  setStatus(method, "waiting", state.image ? "waiting…" : "choose an image");
  if (state.image) request([method]);
}

function removePanel(method) {
  const panel = panels.get(method);
  if (!panel) return;
  if (panel.controller) panel.controller.abort();
  panel.element.remove();
  panels.delete(method);
  showErrors();
  setBusy();
}

function setStatus(method, status, text) {
  const panel = panels.get(method);
  panel.element.dataset.state = status;
  panel.element.classList.toggle("loading", status === "loading");
  panel.element.classList.toggle("failed", status === "failed");
  const box = panel.element.querySelector(".status");
  box.textContent = text;
  box.hidden = status === "done";
  const where = state.layer && propagation.has(method) ? state.layer : "input";
  panel.element.querySelector("h3").innerHTML = "";
  panel.element.querySelector("h3").append(method, " ", Object.assign(
    document.createElement("span"), {className: "where", textContent: `at ${where}`}));
}

// ---- requests -----------------------------------------------------------------------------

function request(methods) {
  if (!state.image) return;
  for (const method of methods) {
    const panel = panels.get(method);
    panel.token += 1;
    panel.error = "";
    if (panel.controller) panel.controller.abort();
    setStatus(method, "waiting", "waiting…");
    if (!queue.includes(method)) queue.push(method);
  }
  showErrors();
  work();
}

async function work() {
  if (working) return;
  working = true;
  setBusy();
  while (queue.length) {
    const method = queue.shift();
    const panel = panels.get(method);
    if (!panel) continue;  // unticked meanwhile
    const token = panel.token;
    panel.controller = new AbortController();
    setStatus(method, "loading", "computing…");
    try {
      const answer = await explain(method, panel.controller.signal);
      if (panel.token === token && panels.get(method) === panel) show(method, answer);
    } catch (error) {
      if (error.name !== "AbortError" && panel.token === token && panels.get(method) === panel) {
        panel.error = words(error);
        panel.answer = null;
        setStatus(method, "failed", panel.error);
        panel.element.querySelector(".numbers").textContent = "";
        showErrors();
      }
    } finally {
      panel.controller = null;
    }
  }
  working = false;
  setBusy();
}

async function explain(method, signal) {
  const form = new FormData();
  form.append("image", state.image, state.imageName || "image");
  form.append("method", method);
  if (state.target !== null) form.append("target", state.target);
  if (state.layer && propagation.has(method)) form.append("layer", state.layer);
  form.append("sign", state.sign);
  form.append("relevance", "none");
  const response = await fetch("/api/explain", {method: "POST", body: form, signal});
  return readAnswer(response);
}

async function fetchJSON(url) {
  return readAnswer(await fetch(url));
}

async function readAnswer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : "";
    throw new Error(detail || `the server answered HTTP ${response.status}`);
  }
  if (body === null) throw new Error("the server's answer was not JSON");
  return body;
}

function words(error) {
  if (error instanceof TypeError) return "the server did not answer; is relprop serve running?";
  return error.message || String(error);
}

// ---- showing answers ----------------------------------------------------------------------

function show(method, answer) {
  const panel = panels.get(method);
  panel.answer = answer;
  panel.error = "";
  const images = panel.element;
  images.querySelector(".grey").src = `data:image/png;base64,${answer.png.grey}`;
  images.querySelector(".layer").src = `data:image/png;base64,${answer.png.overlay_layer}`;
  images.querySelector(".heatmap").src = `data:image/png;base64,${answer.png.heatmap}`;
  const inLayer = answer.layer ? " (this layer)" : "";
  images.querySelector(".numbers").innerHTML = "";
  images.querySelector(".numbers").append(
    `Σ R${inLayer} = ${number(answer.relevance_sum)} · score ${number(answer.score)}`,
    document.createElement("br"),
    `R+ ${number(answer.positive)} · R− ${number(answer.negative)}`,
    document.createElement("br"),
    `Δ = Σ R − score = ${number(answer.delta)}`);
  images.querySelector(".numbers").title =
    `colour limit ${number(answer.colour_limit)}; map ${answer.map_shape.join(" × ")}`;
  setStatus(method, "done", "");
  const input = $("#panels .panel.input img");
  input.src = `data:image/png;base64,${answer.png.input}`;
  input.hidden = false;
  state.explained = answer.target;
  state.predictions = answer.predictions;
  showPredictions();
  showErrors();
}

function showPredictions() {
  const list = $("#predictions");
  list.replaceChildren();
  list.classList.toggle("muted", state.predictions.length === 0);
  if (state.predictions.length === 0) {
    const text = !state.image ? "no image yet"
      : working ? "computing…" : "none: see the message above";
    list.append(Object.assign(document.createElement("li"), {textContent: text}));
  }
  for (const p of state.predictions) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = state.explained && state.explained.index === p.index ? "selected" : "";
    button.dataset.index = p.index;
    const bar = Object.assign(document.createElement("span"), {className: "bar"});
    bar.style.width = `${(100 * p.probability).toFixed(1)}%`;
    const label = document.createElement("span");
    label.textContent = `${p.name} · ${(100 * p.probability).toFixed(1)} %`;
    button.append(bar, label);
    button.addEventListener("click", () => explainClass(String(p.index)));
    const item = document.createElement("li");
    item.append(button);
    list.append(item);
  }
  $("#explained").textContent = state.explained
    ? `${state.explained.name} (${state.explained.index})` : "the predicted class";
  $("#download-json").disabled = ![...panels.values()].some((p) => p.answer);
}

function showView() {
  document.body.classList.toggle("view-overlay", state.view === "overlay");
  document.body.classList.toggle("view-heatmap", state.view === "heatmap");
  document.body.style.setProperty("--opacity", String(state.opacity));
  $("#opacity-value").textContent = state.opacity.toFixed(2);
}

function showErrors() {
  const messages = new Map();  // one line per distinct message, naming the methods it concerns
  for (const [method, panel] of panels) {
    if (panel.error) messages.set(panel.error, [...(messages.get(panel.error) || []), method]);
  }
  const lines = [...messages].map(([text, methods]) => `${methods.join(", ")}: ${text}`);
  if (state.globalError) lines.unshift(state.globalError);
  $("#error").textContent = lines.join("\n");
  $("#error").hidden = lines.length === 0;
}

function setBusy() {
  document.body.dataset.busy = String(working || fetchingSample || queue.length > 0);
  showPredictions();
}

function number(value) {
  if (value === null || value === undefined) return "n/a";
  const size = Math.abs(value);
  return size !== 0 && (size >= 1e5 || size < 1e-3) ? value.toExponential(2) : value.toFixed(3);
}

// ---- downloads ----------------------------------------------------------------------------

function fileName(answer, suffix) {
  const stem = state.imageName.replace(/\.[^.]*$/, "");
  const parts = [stem, answer.method, answer.layer, answer.target.name, state.sign];
  return `${parts.filter(Boolean).join("_").replace(/[^A-Za-z0-9._-]+/g, "-")}_${suffix}`;
}

function save(url, name) {
  const link = Object.assign(document.createElement("a"), {href: url, download: name});
  document.body.append(link);
  link.click();
  link.remove();
}

function downloadOverlay(method) {
  // The picture as shown: the grey input, the coloured layer at the slider's opacity.
  const answer = panels.get(method) && panels.get(method).answer;
  if (!answer) return;
  const panel = panels.get(method).element;
  const grey = panel.querySelector(".grey"), layer = panel.querySelector(".layer");
  const canvas = Object.assign(document.createElement("canvas"),
    {width: grey.naturalWidth, height: grey.naturalHeight});
  const context = canvas.getContext("2d");
  context.drawImage(grey, 0, 0);
  context.globalAlpha = state.opacity;
  context.drawImage(layer, 0, 0);
  save(canvas.toDataURL("image/png"), fileName(answer, `overlay-${state.opacity}.png`));
}

function downloadJSON() {
  const inPageOrder = [...document.querySelectorAll("#panels .panel[data-method]")];
  const shown = inPageOrder.map((e) => panels.get(e.dataset.method).answer).filter(Boolean)
    .map(({png, predictions, model: m, relevance_format: f, ...numbers}) => numbers);
  const record = {model, image: state.imageName, explained: state.explained,
                  asked: state.target, sign: state.sign, view: state.view,
                  opacity: state.opacity, layer: state.layer || null,
                  predictions: state.predictions, panels: shown};
  const blob = new Blob([JSON.stringify(record, null, 2)], {type: "application/json"});
  const url = URL.createObjectURL(blob);
  save(url, `${state.imageName.replace(/\.[^.]*$/, "") || "relprop"}_shown.json`);
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

start();
