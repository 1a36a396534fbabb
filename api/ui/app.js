// The diffq dashboard: plain JavaScript, no build step. It talks to the API with the key the user
// logged in with (Authorization: Bearer), and follows jobs and batches through their Server-Sent Event
// streams. EventSource cannot send that header, so streams are read with fetch() and parsed here.
"use strict";

const FINISHED = ["succeeded", "failed", "canceled"];
const KEY = "diffq-api-key";
const $ = (selector) => document.querySelector(selector);
let streams = []; // the AbortControllers of the current view's streams
let objectUrls = [];

function key() { return localStorage.getItem(KEY) || ""; }

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${key()}`, ...(options.body ? { "Content-Type": "application/json" } : {}) },
  });
  if (response.status === 401) { logout(); throw new Error("the API key was refused"); }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const detail = body?.detail;
    throw new Error(Array.isArray(detail) ? detail.map((d) => `${d.loc.join(".")}: ${d.msg}`).join("\n") : detail || response.statusText);
  }
  return body;
}

// An image the browser may show: API URLs need the key, so they are fetched into a blob URL;
// presigned storage URLs are used as they are.
async function imageSrc(url) {
  if (!url.startsWith(location.origin + "/") && !url.startsWith("/")) return url;
  const response = await fetch(url, { headers: { Authorization: `Bearer ${key()}` } });
  if (!response.ok) throw new Error(`${response.status} for ${url}`);
  const src = URL.createObjectURL(await response.blob());
  objectUrls.push(src);
  return src;
}

async function showImage(img, url) {
  try { img.src = await imageSrc(url); } catch (error) { img.alt = String(error); }
}

// Follow a Server-Sent Events stream until the server ends it (or the view changes); reconnects with
// Last-Event-ID after a network error, so no event is lost.
function follow(path, onEvent, onEnd) {
  const controller = new AbortController();
  streams.push(controller);
  let lastId = null;
  (async () => {
    for (let attempt = 0; attempt < 20 && !controller.signal.aborted; attempt++) {
      try {
        const headers = { Authorization: `Bearer ${key()}`, Accept: "text/event-stream" };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const response = await fetch(path, { headers, signal: controller.signal });
        if (!response.ok) throw new Error(`${response.status}`);
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) { onEnd?.(); return; }
          buffer += value.replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const event = { event: "message", data: [] };
            for (const line of block.split("\n")) {
              const colon = line.indexOf(":");
              if (colon === 0) continue; // a comment: the server's ping
              const field = colon < 0 ? line : line.slice(0, colon);
              const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
              if (field === "event") event.event = text;
              else if (field === "data") event.data.push(text);
              else if (field === "id") lastId = text;
            }
            if (event.data.length) onEvent(event.event, JSON.parse(event.data.join("\n")));
          }
        }
      } catch (error) {
        if (controller.signal.aborted) return;
        await new Promise((resolve) => setTimeout(resolve, Math.min(2000, 200 * (attempt + 1))));
      }
    }
  })();
  return controller;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function svgEl(tag, attributes = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function statusBadge(status) { return el("span", { class: `status ${status}`, "data-status": status }, status); }

function progressText(progress) {
  if (!progress || !progress.total) return "";
  let text = `step ${progress.step}/${progress.total}`;
  if (progress.eta_s != null) text += `, ${progress.eta_s.toFixed(1)} s left`;
  if (progress.loss != null) text += `, loss ${progress.loss.toFixed(4)}`;
  return text;
}

// ---- views

async function jobsView(view) {
  view.append(el("h1", {}, "Jobs"));
  const table = el("table", { id: "jobs" },
    el("tr", {}, ...["job", "type", "model", "status", "progress", "preview", "created"].map((h) => el("th", {}, h))));
  view.append(table);
  const { data } = await api("/v1/jobs?limit=50");
  if (!data.length) view.append(el("p", { class: "muted" }, "No jobs yet: submit one."));
  let live = 0;
  for (const job of data) {
    const bar = el("progress", { max: job.progress?.total || 1, value: job.progress?.step || 0 });
    const text = el("span", { class: "muted" }, " ", progressText(job.progress));
    const status = el("td", {}, statusBadge(job.status));
    const preview = el("img", { class: "thumb", hidden: "" });
    table.append(el("tr", { "data-job": job.id },
      el("td", {}, el("a", { href: `#/jobs/${job.id}` }, job.id.slice(0, 8))),
      el("td", {}, job.type), el("td", {}, job.model || job.output_model || ""), status,
      el("td", {}, bar, text), el("td", {}, preview), el("td", { class: "muted" }, new Date(job.created_at).toLocaleString())));
    if (FINISHED.includes(job.status)) {
      const first = job.outputs.find((o) => o.content_type?.startsWith("image/"));
      if (first) { preview.hidden = false; showImage(preview, first.url); }
      continue;
    }
    if (live++ >= 20) continue; // at most 20 live streams per page
    follow(`/v1/jobs/${job.id}/events`, (kind, event) => {
      if (kind === "progress") { bar.max = event.total; bar.value = event.step; text.textContent = " " + progressText(event); status.replaceChildren(statusBadge("running")); }
      else if (kind === "status") {
        status.replaceChildren(statusBadge(event.status));
        const first = (event.outputs || []).find((o) => o.content_type?.startsWith("image/"));
        if (first) { preview.hidden = false; showImage(preview, first.url); }
      } else if (kind === "preview" && event.url) { preview.hidden = false; showImage(preview, event.url); }
    });
  }
}

async function batchesView(view) {
  view.append(el("h1", {}, "Batches"));
  const table = el("table", { id: "batches" },
    el("tr", {}, ...["batch", "name", "status", "progress", "counts", "created"].map((h) => el("th", {}, h))));
  view.append(table);
  const { data } = await api("/v1/batches?limit=50");
  if (!data.length) view.append(el("p", { class: "muted" }, "No batches yet: POST /v1/batches or diffq batch."));
  for (const batch of data) {
    const counts = Object.entries(batch.counts).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`).join(", ");
    table.append(el("tr", { "data-batch": batch.id },
      el("td", {}, el("a", { href: `#/batches/${batch.id}` }, batch.id.slice(0, 8))),
      el("td", {}, batch.name || ""), el("td", {}, statusBadge(batch.status)),
      el("td", {}, el("progress", { max: batch.progress.total || 1, value: batch.progress.finished })),
      el("td", { class: "muted" }, counts), el("td", { class: "muted" }, new Date(batch.created_at).toLocaleString())));
  }
}

// A training job's loss by step, as SVG: a line through every point, and a dot (with its step and
// loss on hover) for each of at most MAX_DOTS points spread over the run.
const MAX_DOTS = 200;
function lossCurve(points) {
  const width = 560, height = 200, left = 56, right = 12, top = 22, bottom = 24;
  const svg = svgEl("svg", { class: "loss", width, height, "data-points": points.length });
  if (!points.length) { svg.append(svgEl("text", { x: left, y: top + 20 }, "no loss yet")); return svg; }
  const xs = points.map((p) => p.step), ys = points.map((p) => p.loss);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const x = (step) => left + (step - x0) / (x1 - x0 || 1) * (width - left - right);
  const y = (loss) => height - bottom - (loss - y0) / (y1 - y0 || 1) * (height - top - bottom);
  svg.append(
    svgEl("line", { x1: left, y1: top, x2: left, y2: height - bottom, class: "axis" }),
    svgEl("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, class: "axis" }),
    svgEl("text", { x: left - 4, y: top + 4, "text-anchor": "end" }, y1.toPrecision(3)),
    svgEl("text", { x: left - 4, y: height - bottom, "text-anchor": "end" }, y0.toPrecision(3)),
    svgEl("text", { x: left, y: height - 6 }, `step ${x0}`),
    svgEl("text", { x: width - right, y: height - 6, "text-anchor": "end" }, `step ${x1}`),
    svgEl("text", { x: left, y: 14 }, `loss ${ys[0].toFixed(4)} → ${ys[ys.length - 1].toFixed(4)}`),
    svgEl("polyline", { points: points.map((p) => `${x(p.step)},${y(p.loss)}`).join(" "), class: "line" }));
  const every = Math.ceil(points.length / MAX_DOTS);
  points.forEach((p, i) => {
    if (i % every && i !== points.length - 1) return;
    svg.append(svgEl("circle", { cx: x(p.step), cy: y(p.loss), r: 3, "data-step": p.step },
      svgEl("title", {}, `step ${p.step}: loss ${p.loss.toFixed(4)}`)));
  });
  return svg;
}

async function jobView(view, jobId) {
  let job = await api(`/v1/jobs/${jobId}`);
  const training = job.type.startsWith("train");
  const status = el("span", { id: "status" }, statusBadge(job.status));
  const bar = el("progress", { id: "progress", max: job.progress?.total || 1, value: job.progress?.step || 0 });
  const text = el("div", { id: "progress-text", class: "muted" }, progressText(job.progress));
  const preview = el("img", { id: "preview", class: "preview", alt: "preview", hidden: "" });
  const previewNote = el("div", { class: "muted" });
  const outputs = el("div", { id: "outputs", class: "outputs panel" });
  const errorBox = el("div", { id: "error", class: "error" });
  const cancel = el("button", { id: "cancel", type: "button" }, "Cancel");
  const again = el("button", { id: "run-again", type: "button" }, "Run again");
  const actionError = el("div", { class: "error" });
  const loss = el("div", { id: "loss" });
  const lossPoints = new Map(); // step -> loss, from the metrics history and then the live steps
  let lossDrawn = 0;
  const grids = el("div", { id: "sample-grids", class: "panel" });

  const showOutputs = (list) => {
    outputs.replaceChildren(); grids.replaceChildren();
    for (const output of list || []) {
      if (!output.content_type?.startsWith("image/")) {
        const what = [output.kind || output.content_type, output.name, output.step != null ? `step ${output.step}` : null];
        outputs.append(el("div", { class: "card file", "data-key": output.key }, what.filter(Boolean).join(", "), el("br"), el("code", {}, output.key)));
        continue;
      }
      const img = el("img", { alt: output.key, "data-key": output.key });
      showImage(img, output.url);
      const caption = output.kind ? `${output.kind}${output.epoch != null ? ` epoch ${output.epoch + 1}` : ""}` : `seed ${output.seed}`;
      (output.kind === "sample_grid" ? grids : outputs).append(el("figure", {}, img, el("figcaption", { class: "muted" }, caption)));
    }
  };
  const showError = (error) => { errorBox.textContent = error ? `${error.code}: ${error.message}` : ""; };
  const drawLoss = () => {
    lossDrawn = Date.now();
    const points = [...lossPoints].sort((a, b) => a[0] - b[0]).map(([step, value]) => ({ step, loss: value }));
    loss.replaceChildren(lossCurve(points));
  };
  const refreshLoss = async () => {
    if (!training) return;
    for (const metric of (await api(`/v1/jobs/${jobId}/metrics`)).data) lossPoints.set(metric.step, metric.loss);
    drawLoss();
  };
  const ended = (status) => { cancel.disabled = FINISHED.includes(status); };

  cancel.addEventListener("click", async () => {
    actionError.textContent = "";
    try { const canceled = await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" }); status.replaceChildren(statusBadge(canceled.status)); ended(canceled.status); }
    catch (error) { actionError.textContent = String(error.message); }
  });
  again.addEventListener("click", async () => {
    const spec = { type: job.type, params: job.params };
    if (job.model) spec.model = job.model;
    if (job.output_model) spec.output_model = job.output_model;
    try { const created = await api("/v1/jobs", { method: "POST", body: JSON.stringify(spec) }); location.hash = `#/jobs/${created.id}`; }
    catch (error) { actionError.textContent = String(error.message); }
  });

  const shown = Object.fromEntries(Object.entries({ model: job.model, output_model: job.output_model, ...job.params }).filter(([, value]) => value !== null));
  view.append(...[
    el("h1", {}, `${job.type} job `, el("code", {}, job.id)),
    el("div", { class: "panel" },
      el("div", { class: "card wide", style: "flex:1; min-width: 300px" },
        el("div", {}, "Status: ", status, job.worker ? el("span", { class: "muted" }, ` on ${job.worker}`) : null),
        job.batch_id ? el("div", {}, "Batch: ", el("a", { id: "batch-link", href: `#/batches/${job.batch_id}` }, job.batch_id.slice(0, 8)), ` #${job.batch_index}`) : null,
        el("p", {}, bar, text), el("p", {}, cancel, " ", again), actionError, errorBox,
        el("h2", {}, "Parameters"), el("pre", { id: "params" }, JSON.stringify(shown, null, 2))),
      training ? null : el("div", { class: "card" }, el("h2", {}, "Preview"), preview, previewNote)),
    el("h2", {}, "Outputs"), outputs,
    training ? el("h2", {}, "Loss") : null, training ? loss : null,
    training ? el("h2", {}, "Sample grids") : null, training ? grids : null,
  ].filter(Boolean));
  showOutputs(job.outputs); showError(job.error); ended(job.status); refreshLoss();

  follow(`/v1/jobs/${jobId}/events`, (kind, event) => {
    if (kind === "status") {
      status.replaceChildren(statusBadge(event.status)); ended(event.status);
      if (event.progress) { bar.max = event.progress.total || 1; bar.value = event.progress.step || 0; text.textContent = progressText(event.progress); }
      if (event.outputs) showOutputs(event.outputs);
      showError(event.error);
      if (FINISHED.includes(event.status)) refreshLoss();
    } else if (kind === "progress") {
      status.replaceChildren(statusBadge("running"));
      bar.max = event.total; bar.value = event.step; text.textContent = progressText(event);
      if (training && event.loss != null) {
        lossPoints.set(event.step, event.loss);
        if (Date.now() - lossDrawn > 250 || event.step === event.total) drawLoss();
      }
    } else if (kind === "preview") {
      if (event.url) { preview.hidden = false; preview.dataset.step = event.step; showImage(preview, event.url); previewNote.textContent = `step ${event.step}`; }
      else previewNote.textContent = event.unavailable;
    } else if (kind === "outputs") showOutputs(event.outputs);
  });
}

// A batch: a grid cell per job that fills in with its first image as the job ends, and the counts by
// status, tallied from the cells. The cells start from the job list and follow the batch's stream
// (which replays from its first event, so a replayed older event must not take a cell back: a finished
// job stays finished). When the stream says the batch is done, the list is read again: the database
// has the last word.
async function batchView(view, batchId) {
  const batch = await api(`/v1/batches/${batchId}`);
  const bar = el("progress", { id: "batch-progress", max: batch.total, value: 0 });
  const counts = el("div", { id: "counts", class: "counts" });
  const status = el("span", { id: "batch-status" }, statusBadge(batch.status));
  const grid = el("div", { id: "grid", class: "grid" });
  view.append(el("h1", {}, `Batch ${batch.name || ""} `, el("code", {}, batch.id)),
    el("div", { class: "card wide" }, el("div", {}, "Status: ", status), el("p", {}, bar), counts), el("h2", {}, "Images"), grid);
  const cells = new Map();
  const showCounts = () => {
    const tally = Object.fromEntries(Object.keys(batch.counts).map((name) => [name, 0]));
    for (const cell of cells.values()) tally[cell.dataset.status] = (tally[cell.dataset.status] || 0) + 1;
    counts.replaceChildren(...Object.entries(tally).map(([name, count]) =>
      el("span", { class: `status ${count ? name : ""}`, "data-count": name, "data-n": count }, `${name}: ${count}`)));
    bar.value = FINISHED.reduce((sum, name) => sum + (tally[name] || 0), 0);
  };
  const fill = (jobId, job) => {
    const cell = cells.get(jobId);
    const was = cell?.dataset.status;
    if (!cell || FINISHED.includes(was) && (!FINISHED.includes(job.status) || was === job.status)) return;
    cell.dataset.status = job.status;
    const first = (job.outputs || []).find((o) => o.content_type?.startsWith("image/"));
    if (first) { const img = el("img", { alt: jobId }); showImage(img, first.url); cell.replaceChildren(img); }
    else if (job.status === "running" && job.progress?.total) step({ job_id: jobId, ...job.progress });
    else cell.replaceChildren(job.status);
  };
  // A running job's cell shows its progress (the batch stream carries a step every half second per job).
  const step = (event) => {
    const cell = cells.get(event.job_id);
    if (!cell || FINISHED.includes(cell.dataset.status) || !event.total) return;
    cell.dataset.status = "running";
    cell.replaceChildren(el("progress", { max: event.total, value: event.step }), `${event.step}/${event.total}`);
  };
  const load = async () => {
    for (let offset = 0; offset < batch.total; offset += 1000) {
      const { data } = await api(`/v1/jobs?batch_id=${batchId}&limit=1000&offset=${offset}`);
      for (const job of data) {
        if (!cells.has(job.id)) {
          const cell = el("a", { class: "cell", href: `#/jobs/${job.id}`, title: `#${job.batch_index}` });
          cells.set(job.id, cell); grid.append(cell);
        }
        fill(job.id, job);
      }
    }
    showCounts();
  };
  await load();
  follow(`/v1/batches/${batchId}/events`, async (kind, event) => {
    if (kind === "counts") {
      status.replaceChildren(statusBadge(event.status));
      if (event.done) await load();
    } else if (kind === "job") { fill(event.job_id, event); showCounts(); }
    else if (kind === "progress") { step(event); showCounts(); }
  });
}

function submitView(view) {
  const form = el("form", { class: "submit card", id: "submit-form" },
    el("label", {}, "Model ", el("input", { name: "model", value: "tiny-sd", required: "" })),
    el("label", {}, "Prompt ", el("textarea", { name: "prompt", rows: 2, required: "" }, "a squirrel in Picasso style")),
    el("label", {}, "Steps ", el("input", { name: "num_inference_steps", type: "number", value: 20, min: 1, max: 1000 })),
    el("label", {}, "Width ", el("input", { name: "width", type: "number", value: 64, step: 8, min: 16 })),
    el("label", {}, "Height ", el("input", { name: "height", type: "number", value: 64, step: 8, min: 16 })),
    el("label", {}, "Seed (empty: random) ", el("input", { name: "seed", type: "number", min: 0 })),
    el("label", {}, "Preview every N steps (0: none) ", el("input", { name: "preview_every", type: "number", value: 5, min: 0 })),
    el("button", { id: "submit" }, "Submit"));
  const error = el("div", { class: "error", id: "submit-error" });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form));
    const params = { prompt: values.prompt };
    for (const name of ["num_inference_steps", "width", "height", "seed", "preview_every"]) {
      if (values[name] !== "") params[name] = Number(values[name]);
    }
    try {
      const job = await api("/v1/jobs", { method: "POST", body: JSON.stringify({ type: "text2img", model: values.model, params }) });
      location.hash = `#/jobs/${job.id}`;
    } catch (problem) { error.textContent = String(problem.message); }
  });
  view.append(el("h1", {}, "Submit a text-to-image job"), form, error);
}

// ---- routing and login

function logout() {
  localStorage.removeItem(KEY);
  route();
}

async function route() {
  for (const controller of streams) controller.abort();
  streams = [];
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls = [];
  const view = $("#view");
  view.replaceChildren();
  if (!key()) { $("#login-view").hidden = false; $("#nav").hidden = true; return; }
  $("#login-view").hidden = true; $("#nav").hidden = false;
  const [, page, id] = (location.hash || "#/jobs").split("/");
  try {
    if (page === "jobs" && id) await jobView(view, id);
    else if (page === "batches" && id) await batchView(view, id);
    else if (page === "batches") await batchesView(view);
    else if (page === "submit") submitView(view);
    else await jobsView(view);
  } catch (error) {
    view.append(el("p", { class: "error" }, String(error.message)));
  }
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  localStorage.setItem(KEY, $("#key").value.trim());
  try {
    const me = await api("/v1/me");
    $("#whoami").textContent = `${me.owner}`;
    $("#login-error").textContent = "";
    location.hash = "#/jobs";
    route();
  } catch (error) {
    localStorage.removeItem(KEY);
    $("#login-error").textContent = `Could not log in: ${error.message}`;
  }
});
$("#logout").addEventListener("click", logout);
$("#batch-form").addEventListener("submit", (event) => {
  event.preventDefault();
  location.hash = `#/batches/${$("#batch-id").value.trim()}`;
});
window.addEventListener("hashchange", route);
if (key()) api("/v1/me").then((me) => { $("#whoami").textContent = me.owner; }).catch(() => {});
route();
