// The chat page: one image per conversation (VisualGLM's chat shows the first image on every turn), the
// conversation kept here and sent whole with each question to /v1/chat/completions, answers read as they stream.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { model: null, image: null, messages: [], busy: false };
const KEY = "porter-api-key";

// A server started with --api-key answers 401 to the API: ask for the key once, keep it for this tab
// (sessionStorage: gone when the tab closes), and send it as OpenAI clients do.
async function api(path, options = {}) {
  for (;;) {
    const key = sessionStorage.getItem(KEY);
    const headers = { ...(options.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    const given = window.prompt(key ? "That API key was refused. API key:" : "This server wants an API key:");
    if (!given) return response;
    sessionStorage.setItem(KEY, given.trim());
  }
}

async function loadModel() {
  try {
    const response = await api("/v1/models");
    if (response.status === 401) { $("model").textContent = "API key needed: reload to enter it"; return; }
    state.model = (await response.json()).data[0].id;
    $("model").textContent = state.model;
  } catch (err) {
    $("model").textContent = "server unreachable";
  }
}

function showImage(file) {
  if (!file || !file.type.startsWith("image/")) { setStatus("That is not an image."); return; }
  const reader = new FileReader();
  reader.onload = () => {
    startOver();
    state.image = reader.result;  // a data: URI, what the API takes
    $("preview").src = state.image;
    $("preview").hidden = false;
    $("hint").hidden = true;
    setStatus(`${file.name || "pasted image"}: ask a question about it.`);
  };
  reader.readAsDataURL(file);
}

function startOver() {
  state.messages = [];
  $("log").replaceChildren();
  setStatus("");
}

function setStatus(text) { $("status").textContent = text; }

function addTurn(role, text) {
  const item = document.createElement("li");
  item.className = role;
  item.textContent = text;
  $("log").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function userMessage(text) {
  const first = !state.messages.some((m) => m.role === "user");
  if (!first || !state.image) return { role: "user", content: text };
  return { role: "user", content: [{ type: "image_url", image_url: { url: state.image } }, { type: "text", text }] };
}

async function ask(question) {
  state.busy = true;
  $("send").disabled = true;
  const pending = [...state.messages, userMessage(question)];
  addTurn("user", question);
  const answer = addTurn("assistant pending", "");
  let text = "";
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: state.model, messages: pending, stream: true }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      const events = buffered.split("\n\n");
      buffered = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices.length ? chunk.choices[0].delta.content : null;
        if (delta) { text += delta; answer.textContent = text; }
      }
    }
    state.messages = [...pending, { role: "assistant", content: text }];
    setStatus("");
  } catch (err) {
    answer.remove();
    addTurn("error", `Error: ${err.message}`);
  } finally {
    answer.classList.remove("pending");
    state.busy = false;
    $("send").disabled = false;
  }
}

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || state.busy) return;
  $("question").value = "";
  ask(question);
});
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("ask").requestSubmit(); }
});
$("file").addEventListener("change", (event) => showImage(event.target.files[0]));
$("reset").addEventListener("click", () => {
  startOver();
  state.image = null;
  $("preview").hidden = true;
  $("hint").hidden = false;
  $("file").value = "";
});
document.addEventListener("paste", (event) => {
  const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
  if (item) showImage(item.getAsFile());
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  showImage(event.dataTransfer.files[0]);
});
loadModel();
