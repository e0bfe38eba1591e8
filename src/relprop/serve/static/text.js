// relprop serve, the text page: one request per chosen method to POST /api/explain (JSON), the
// answer's coloured tokens shown per method; the target is the prediction unless one is clicked.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { text: "", target: null, answers: {}, run: 0 };

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function chosenMethods() {
  return [...document.querySelectorAll("#methods input:checked")].map((box) => box.value);
}

function panel(method) {
  let element = document.querySelector(`.text-panel[data-method="${method}"]`);
  if (!element) {
    element = document.createElement("section");
    element.className = "text-panel";
    element.dataset.method = method;
    $("text-panels").append(element);
  }
  return element;
}

function showPredictions(answer) {
  const list = $("predictions");
  list.classList.remove("muted");
  list.replaceChildren(...answer.predictions.map((p) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${p.name} ${(100 * p.probability).toFixed(1)} %`;
    button.classList.toggle("selected", p.index === answer.target.index);
    button.addEventListener("click", () => explainAll(p.index));
    item.append(button);
    return item;
  }));
  $("explained").textContent = answer.target.name;
}

async function explainAll(target) {
  const text = $("text").value;
  if (!text.trim()) { showError("type a text first"); return; }
  showError("");
  state.text = text;
  state.target = target;
  state.answers = {};
  const run = ++state.run;
  document.querySelectorAll(".text-panel").forEach((p) => p.remove());
  $("download-json").disabled = true;
  for (const method of chosenMethods()) {
    const element = panel(method);
    element.dataset.state = "loading";
    element.innerHTML = `<h3>${method}</h3><p class="muted">explaining…</p>`;
    try {
      const answer = await getJSON("/api/explain", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ text, method, target }),
      });
      if (run !== state.run) return;  // a newer request replaced this one
      state.answers[method] = answer;
      showPredictions(answer);
      element.dataset.state = "done";
      element.innerHTML = `<h3>${method}</h3>` +
        `<p class="numbers">score ${answer.score.toPrecision(4)} · ΣR ` +
        `${answer.relevance_sum.toPrecision(4)}</p>${answer.html}`;
      $("download-json").disabled = false;
    } catch (error) {
      if (run !== state.run) return;
      element.dataset.state = "failed";
      element.innerHTML = `<h3>${method}</h3>`;
      const message = document.createElement("p");
      message.className = "failed-text";
      message.textContent = error.message;
      element.append(message);
    }
  }
}

async function start() {
  try {
    const model = await getJSON("/api/models");
    $("model").textContent = `${model.loaded} (${model.architecture}, ` +
      (model.kind === "causal" ? "next token)" : `classes: ${model.classes.join(", ")})`);
    const { methods } = await getJSON("/api/methods");
    $("methods").replaceChildren(...methods.map((m) => {
      const label = document.createElement("label");
      label.innerHTML = `<input type="checkbox" value="${m.name}"${m.default ? " checked" : ""}> ${m.name}`;
      return label;
    }));
  } catch (error) {
    showError(`the server did not answer: ${error.message}`);
  }
  $("text-form").addEventListener("submit", (event) => { event.preventDefault(); explainAll(null); });
  $("class-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const raw = $("class-input").value;  // a token may begin with its space: " Paris"
    const value = raw.trim();
    explainAll(value === "" ? null : /^\d+$/.test(value) ? Number(value) : raw);
  });
  $("download-json").addEventListener("click", () => {
    const blob = new Blob([JSON.stringify({ text: state.text, target: state.target,
      methods: state.answers }, null, 1)], { type: "application/json" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "relprop-text.json";
    link.click();
  });
}

start();
