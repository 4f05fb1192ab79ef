// The review page: show a pair, send the reviewer's decision, undo. One pair per keypress: keys pressed while a
// request is in flight, auto-repeated keys of a held key (event.repeat) and decisions before both images of a new
// pair have loaded and then stayed on screen for MIN_DISPLAY_MS are ignored, so neither a held nor a doubled key
// decides a pair nobody saw (the server refuses such decisions too). data-state is "ready" only once a pair may be
// decided.
"use strict";

const root = document.getElementById("review");
const reviewer = root.dataset.reviewer;
const KEYS = { ArrowLeft: "left", 1: "left", ArrowRight: "right", 2: "right", n: "neither", b: "both", f: "flag" };
const MIN_DISPLAY_MS = Number(root.dataset.minDisplayMs);
let busy = false;
let decidableAt = 0; // performance.now() from which the pair on screen may be decided; Infinity while loading
let readyTimer = null;

function element(id) {
  return document.getElementById(id);
}

function say(text) {
  element("message").textContent = text;
}

function show(state) {
  const pair = state.pair;
  root.dataset.pairId = pair ? pair.pair_id : "";
  element("progress").textContent = `${state.progress.reviewed} / ${state.progress.total}`;
  element("pair").hidden = !pair;
  element("done").hidden = Boolean(pair);
  if (pair) {
    element("prompt").textContent = pair.prompt;
    element("relations").replaceChildren(
      ...pair.relations.map((text) => {
        const item = document.createElement("li");
        item.textContent = text;
        return item;
      }),
    );
    const images = [element("image-left"), element("image-right")];
    images[0].src = pair.images.left;
    images[1].src = pair.images.right;
    if (pair.pair_id !== images[0].dataset.pairId) {
      images[0].dataset.pairId = pair.pair_id;
      decidableAt = Infinity;
      // a broken image counts as shown: the reviewer can still flag the pair
      Promise.all(images.map((image) => image.decode().catch(() => null))).then(() => {
        if (root.dataset.pairId !== pair.pair_id) return;
        decidableAt = performance.now() + MIN_DISPLAY_MS;
        markReady();
      });
    }
  } else {
    element("image-left").dataset.pairId = ""; // a pair an undo brings back is new on screen
    decidableAt = 0;
  }
  if (state.upcoming) {
    for (const url of Object.values(state.upcoming)) new Image().src = url; // preload the next pair
  }
  if (state.undone) say(`undid your decision "${state.undone.choice}" on ${state.undone.pair_id}`);
  else if (state.last) say(`last decision: "${state.last.choice}" on ${state.last.pair_id} (U to undo)`);
  else say("");
}

async function request(method, url, body) {
  busy = true;
  root.dataset.state = "busy";
  try {
    const options = { method, credentials: "same-origin" };
    if (body) {
      options.headers = { "Content-Type": "application/json" };
      options.body = JSON.stringify(body);
    }
    const response = await fetch(url, options);
    const data = await response.json();
    if (response.ok) show(data);
    else say(`${data.error} (HTTP ${response.status})`);
  } catch (error) {
    say(`request failed: ${error.message}`);
  } finally {
    busy = false;
    markReady();
  }
}

function markReady() {
  clearTimeout(readyTimer);
  if (busy || decidableAt === Infinity) return;
  readyTimer = setTimeout(() => {
    if (!busy) root.dataset.state = "ready";
  }, Math.max(0, decidableAt - performance.now()));
}

function refresh() {
  return request("GET", `/api/state?reviewer=${encodeURIComponent(reviewer)}`);
}

function decide(choice) {
  const pairId = root.dataset.pairId;
  if (busy || !pairId || performance.now() < decidableAt) return;
  request("POST", "/api/decide", { reviewer, pair_id: pairId, choice });
}

function undo() {
  if (!busy) request("POST", "/api/undo", { reviewer });
}

document.addEventListener("keydown", (event) => {
  if (event.repeat || event.altKey || event.metaKey || event.target.matches("input, textarea")) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (key === "u" || key === "Backspace" || (event.ctrlKey && key === "z")) {
    event.preventDefault();
    undo();
  } else if (!event.ctrlKey && key in KEYS) {
    event.preventDefault();
    decide(KEYS[key]);
  }
});
for (const button of document.querySelectorAll("button[data-choice]")) {
  button.addEventListener("click", () => decide(button.dataset.choice));
}
element("undo").addEventListener("click", undo);
element("undo-done").addEventListener("click", undo);
refresh();
