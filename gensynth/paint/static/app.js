// gensynth paint: the page. The label map is an integer grid of class ids (Uint16Array, one per pixel) drawn
// into the canvas with putImageData, so a stroke can never produce a blended (antialiased) colour.
// The noise is a seed map: `seeds` plus a per-pixel index into it (`noise`), so re-sampling a region is giving
// its pixels a new seed, and undo restores labels and noise together.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const HISTORY = 200; // undo steps kept
  const DEBOUNCE_MS = 40; // coalesce quick successive strokes

  const S = {
    info: null, W: 0, H: 0, ids: null, noise: null, seeds: [0], lut: null, names: {},
    cls: 0, eraserCls: 0, tool: "brush", size: 8, zoom: 4,
    undo: [], redo: [], lastRegion: null,
    drag: null, poly: [], style: null,
    inflight: false, pending: false, timer: null, markTime: null, imageUrl: null,
  };
  // what tests and benchmarks read: generations done, timings (ms from stroke end to image shown), errors
  const probe = window.gensynthPaint = { generations: 0, timings: [], errors: [], lastRequestMs: null, busy: false };

  // ---------------------------------------------------------------------------------------------- helpers
  function setStatus(text, error) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", !!error);
    if (error) probe.errors.push(text);
  }

  function b64FromU16(arr) {
    const bytes = new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  function u16FromB64(text) {
    const s = atob(text);
    const bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    return new Uint16Array(bytes.buffer);
  }

  async function jsonOrError(resp) {
    if (resp.ok) return resp;
    let msg = resp.status + " " + resp.statusText;
    try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }

  function randomSeed() { return Math.floor(Math.random() * 2147483647); }

  // ---------------------------------------------------------------------------------------------- canvas
  function setGrid(w, h, ids) {
    S.W = w; S.H = h;
    S.ids = ids;
    S.noise = new Uint16Array(w * h);
    S.seeds = [Number($("seed").value) || 0];
    S.lastRegion = null;
    for (const c of [$("labels"), $("overlay")]) { c.width = w; c.height = h; }
    applyZoom();
    render();
  }

  function applyZoom() {
    for (const el of [$("labels"), $("overlay"), $("image")]) {
      el.style.width = (S.W * S.zoom) + "px";
      el.style.height = (S.H * S.zoom) + "px";
    }
  }

  function render() {
    const ctx = $("labels").getContext("2d");
    const img = ctx.createImageData(S.W, S.H);
    const d = img.data, lut = S.lut, ids = S.ids;
    for (let i = 0, n = ids.length; i < n; i++) {
      const c = ids[i] * 3, o = i * 4;
      d[o] = lut[c]; d[o + 1] = lut[c + 1]; d[o + 2] = lut[c + 2]; d[o + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  function pixelAt(ev) {
    const r = $("labels").getBoundingClientRect();
    const x = Math.floor((ev.clientX - r.left) * S.W / r.width);
    const y = Math.floor((ev.clientY - r.top) * S.H / r.height);
    return [Math.min(Math.max(x, 0), S.W - 1), Math.min(Math.max(y, 0), S.H - 1)];
  }

  function pointAt(ev) { // continuous pixel coordinates (for polygon vertices)
    const r = $("labels").getBoundingClientRect();
    return [(ev.clientX - r.left) * S.W / r.width, (ev.clientY - r.top) * S.H / r.height];
  }

  // ---------------------------------------------------------------------------------------------- history
  function snapshot() {
    return { W: S.W, H: S.H, ids: S.ids.slice(), noise: S.noise.slice(), seeds: S.seeds.slice() };
  }

  function restore(s) {
    if (s.W !== S.W || s.H !== S.H) { setGrid(s.W, s.H, s.ids); } else { S.ids = s.ids; }
    S.noise = s.noise; S.seeds = s.seeds; S.lastRegion = null;
    render();
  }

  function pushHistory() {
    S.undo.push(snapshot());
    if (S.undo.length > HISTORY) S.undo.shift();
    S.redo = [];
  }

  function undo() {
    if (!S.undo.length) return;
    S.redo.push(snapshot());
    restore(S.undo.pop());
    changed();
  }

  function redo() {
    if (!S.redo.length) return;
    S.undo.push(snapshot());
    restore(S.redo.pop());
    changed();
  }

  // ---------------------------------------------------------------------------------------------- painting
  function stampOffsets(size) {
    const lo = -Math.floor((size - 1) / 2), hi = lo + size - 1, c = (lo + hi) / 2, r2 = (size / 2) * (size / 2);
    const out = [];
    for (let dy = lo; dy <= hi; dy++)
      for (let dx = lo; dx <= hi; dx++)
        if ((dx - c) * (dx - c) + (dy - c) * (dy - c) <= r2) out.push([dx, dy]);
    return out;
  }

  function setPixel(x, y, cls, region) {
    if (x < 0 || y < 0 || x >= S.W || y >= S.H) return;
    const i = y * S.W + x;
    S.ids[i] = cls;
    region[i] = 1;
  }

  function stampLine(x0, y0, x1, y1, cls, region, offsets) {
    const n = Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0), 1);
    for (let k = 0; k <= n; k++) {
      const x = Math.round(x0 + (x1 - x0) * k / n), y = Math.round(y0 + (y1 - y0) * k / n);
      for (const [dx, dy] of offsets) setPixel(x + dx, y + dy, cls, region);
    }
  }

  function fillRect(x0, y0, x1, y1, cls, region) {
    for (let y = Math.min(y0, y1); y <= Math.max(y0, y1); y++)
      for (let x = Math.min(x0, x1); x <= Math.max(x0, x1); x++) setPixel(x, y, cls, region);
  }

  function fillPolygon(pts, cls, region) { // pixels whose centre is inside (even-odd rule)
    for (let y = 0; y < S.H; y++) {
      const yc = y + 0.5, xs = [];
      for (let i = 0, j = pts.length - 1; i < pts.length; j = i++) {
        const [xi, yi] = pts[i], [xj, yj] = pts[j];
        if ((yi > yc) !== (yj > yc)) xs.push(xi + (yc - yi) * (xj - xi) / (yj - yi));
      }
      xs.sort((a, b) => a - b);
      for (let k = 0; k + 1 < xs.length; k += 2) {
        const from = Math.max(0, Math.ceil(xs[k] - 0.5)), to = Math.min(S.W - 1, Math.floor(xs[k + 1] - 0.5));
        for (let x = from; x <= to; x++) setPixel(x, y, cls, region);
      }
    }
  }

  function floodFill(x, y, cls, region) { // the 4-connected region of the clicked pixel's class
    const W = S.W, H = S.H, ids = S.ids, target = ids[y * W + x];
    const seen = new Uint8Array(ids.length), stack = [y * W + x];
    while (stack.length) {
      const i = stack.pop();
      if (seen[i] || ids[i] !== target) continue;
      seen[i] = 1;
      region[i] = 1;
      const px = i % W, py = (i - px) / W;
      if (px > 0) stack.push(i - 1);
      if (px < W - 1) stack.push(i + 1);
      if (py > 0) stack.push(i - W);
      if (py < H - 1) stack.push(i + W);
    }
    for (let i = 0; i < ids.length; i++) if (seen[i]) ids[i] = cls;
  }

  function drawOverlay() {
    const c = $("overlay"), ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    const col = S.lut.slice(S.cls * 3, S.cls * 3 + 3);
    ctx.fillStyle = `rgba(${col[0]},${col[1]},${col[2]},0.6)`;
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = Math.max(1 / S.zoom, 0.25);
    if (S.drag && S.tool === "rect" && S.drag.cur) {
      const [x0, y0] = S.drag.start, [x1, y1] = S.drag.cur;
      ctx.fillRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0) + 1, Math.abs(y1 - y0) + 1);
    }
    if (S.tool === "polygon" && S.poly.length) {
      ctx.beginPath();
      ctx.moveTo(S.poly[0][0], S.poly[0][1]);
      for (const p of S.poly.slice(1)) ctx.lineTo(p[0], p[1]);
      if (S.drag && S.drag.hover) ctx.lineTo(S.drag.hover[0], S.drag.hover[1]);
      ctx.closePath();
      ctx.fill();
      ctx.stroke();
    }
  }

  function finishOperation(region) {
    S.lastRegion = region;
    render();
    drawOverlay();
    strokeEnded();
  }

  function onDown(ev) {
    if (!S.ids || ev.button !== 0) return;
    ev.preventDefault();
    $("labels").setPointerCapture(ev.pointerId);
    const [x, y] = pixelAt(ev);
    const region = new Uint8Array(S.W * S.H);
    if (S.tool === "brush" || S.tool === "eraser") {
      pushHistory();
      const cls = S.tool === "eraser" ? S.eraserCls : S.cls;
      const offsets = stampOffsets(S.size);
      stampLine(x, y, x, y, cls, region, offsets);
      S.drag = { last: [x, y], cls, region, offsets };
      render();
    } else if (S.tool === "rect") {
      S.drag = { start: [x, y], cur: [x, y] };
      drawOverlay();
    } else if (S.tool === "fill") {
      pushHistory();
      floodFill(x, y, S.cls, region);
      finishOperation(region);
    } else if (S.tool === "polygon") {
      const p = pointAt(ev);
      if (S.poly.length >= 3) {
        const [fx, fy] = S.poly[0];
        if (Math.hypot((p[0] - fx) * S.zoom, (p[1] - fy) * S.zoom) < 8) { closePolygon(); return; }
      }
      S.poly.push(p);
      S.drag = { hover: p };
      drawOverlay();
    }
  }

  function onMove(ev) {
    if (!S.ids) return;
    if (S.tool === "polygon" && S.poly.length) { S.drag = { hover: pointAt(ev) }; drawOverlay(); return; }
    if (!S.drag) return;
    const [x, y] = pixelAt(ev);
    if (S.tool === "brush" || S.tool === "eraser") {
      const [lx, ly] = S.drag.last;
      if (lx === x && ly === y) return;
      stampLine(lx, ly, x, y, S.drag.cls, S.drag.region, S.drag.offsets);
      S.drag.last = [x, y];
      render();
    } else if (S.tool === "rect") {
      S.drag.cur = [x, y];
      drawOverlay();
    }
  }

  function onUp(ev) {
    if (!S.drag || S.tool === "polygon") return;
    const d = S.drag;
    S.drag = null;
    if (S.tool === "brush" || S.tool === "eraser") {
      finishOperation(d.region);
    } else if (S.tool === "rect") {
      pushHistory();
      const region = new Uint8Array(S.W * S.H);
      const [x, y] = pixelAt(ev);
      fillRect(d.start[0], d.start[1], x, y, S.cls, region);
      finishOperation(region);
    }
  }

  function closePolygon() {
    if (S.poly.length >= 3) {
      pushHistory();
      const region = new Uint8Array(S.W * S.H);
      fillPolygon(S.poly, S.cls, region);
      S.poly = []; S.drag = null;
      finishOperation(region);
    } else {
      S.poly = []; S.drag = null;
      drawOverlay();
    }
  }

  // ---------------------------------------------------------------------------------------------- noise
  function newSeedFor(mask) {
    let any = false;
    for (let i = 0; i < mask.length; i++) if (mask[i]) { any = true; break; }
    if (!any) { setStatus("nothing to re-sample: the region is empty", true); return; }
    pushHistory();
    S.seeds.push(randomSeed());
    const k = S.seeds.length - 1;
    for (let i = 0; i < mask.length; i++) if (mask[i]) S.noise[i] = k;
    compactSeeds();
    S.markTime = performance.now();
    requestUpdate(true);
  }

  function compactSeeds() { // drop seeds no pixel uses any more (index 0, the base seed, stays)
    if (S.seeds.length < 64) return;
    const used = new Int32Array(S.seeds.length).fill(-1);
    used[0] = 0;
    const seeds = [S.seeds[0]];
    for (let i = 0; i < S.noise.length; i++) {
      const k = S.noise[i];
      if (used[k] < 0) { used[k] = seeds.length; seeds.push(S.seeds[k]); }
      S.noise[i] = used[k];
    }
    S.seeds = seeds;
  }

  function setBaseSeed(seed) {
    pushHistory();
    $("seed").value = seed;
    S.seeds = [seed];
    S.noise = new Uint16Array(S.W * S.H);
    S.markTime = performance.now();
    requestUpdate(true);
  }

  // ---------------------------------------------------------------------------------------------- generation
  function strokeEnded() {
    if (S.markTime === null) S.markTime = performance.now();
    if (!$("auto-update").checked) return;
    clearTimeout(S.timer);
    probe.busy = true; // an update is due: the image shown is not yet the painted map's
    S.timer = setTimeout(() => { S.timer = null; requestUpdate(false); }, DEBOUNCE_MS);
  }

  function changed() { S.markTime = performance.now(); requestUpdate(false); }

  function requestUpdate(force) {
    if (!force && !$("auto-update").checked) { probe.busy = S.inflight || S.timer !== null; return; }
    if (S.inflight) { S.pending = true; return; }
    sendGenerate();
  }

  async function sendGenerate() {
    S.inflight = true; probe.busy = true;
    S.pending = false;
    const mark = S.markTime; S.markTime = null;
    const body = { width: S.W, height: S.H, ids: b64FromU16(S.ids), seeds: S.seeds };
    if (S.info.spatial_noise && S.seeds.length > 1) body.noise = b64FromU16(S.noise);
    if (S.style) body.style = S.style;
    const t0 = performance.now();
    try {
      const resp = await jsonOrError(await fetch("/api/generate", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }));
      const blob = await resp.blob();
      const modelMs = Number(resp.headers.get("X-Model-Ms"));
      const url = URL.createObjectURL(blob);
      await new Promise((ok, fail) => { const im = $("image"); im.onload = ok; im.onerror = fail; im.src = url; });
      if (S.imageUrl) URL.revokeObjectURL(S.imageUrl);
      S.imageUrl = url;
      const now = performance.now();
      probe.lastRequestMs = now - t0;
      probe.generations += 1;
      if (mark !== null) probe.timings.push({ total: now - mark, request: now - t0, model: modelMs });
      $("timing").textContent = `(${Math.round(now - (mark ?? t0))} ms; model ${Math.round(modelMs)} ms)`;
      setStatus("ready");
    } catch (e) {
      setStatus("error: " + e.message, true);
    } finally {
      S.inflight = false;
      if (S.pending) { sendGenerate(); } else { probe.busy = S.timer !== null; }
    }
  }

  // ---------------------------------------------------------------------------------------------- downloads
  function saveBlob(blob, name) {
    const a = document.createElement("a");
    const url = URL.createObjectURL(blob);
    a.href = url; a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  async function downloadLabels() {
    try {
      const resp = await jsonOrError(await fetch("/api/labelmap", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ width: S.W, height: S.H, ids: b64FromU16(S.ids) }) }));
      saveBlob(await resp.blob(), "gensynth_labels.png");
      setStatus("label map saved (id PNG)");
    } catch (e) { setStatus("error: " + e.message, true); }
  }

  async function downloadImage() {
    if (!S.imageUrl) { setStatus("no image yet", true); return; }
    saveBlob(await (await fetch(S.imageUrl)).blob(), "gensynth_image.png");
  }

  // ---------------------------------------------------------------------------------------------- loading
  async function loadSample(i) {
    try {
      const r = await (await jsonOrError(await fetch("/api/sample/" + i))).json();
      pushHistory();
      setGrid(r.width, r.height, u16FromB64(r.ids));
      changed();
      setStatus("started from " + r.name);
    } catch (e) { setStatus("error: " + e.message, true); }
  }

  async function uploadLabels(file) {
    try {
      const resp = await jsonOrError(await fetch("/api/labels", {
        method: "POST", headers: { "X-Filename": file.name.replace(/[^\x20-\x7e]/g, "?") }, body: file }));
      const r = await resp.json();
      pushHistory();
      setGrid(r.width, r.height, u16FromB64(r.ids));
      changed();
      setStatus("opened " + file.name);
    } catch (e) { setStatus("error: " + e.message, true); }
  }

  function readStyle(file) {
    const reader = new FileReader();
    reader.onload = () => {
      S.style = reader.result;
      $("style-preview").src = reader.result;
      $("style-preview").style.display = "block";
      changed();
    };
    reader.readAsDataURL(file);
  }

  // ---------------------------------------------------------------------------------------------- palette
  function selectClass(id) {
    S.cls = id;
    for (const li of $("palette").children) li.classList.toggle("selected", Number(li.dataset.id) === id);
    const col = S.lut.slice(id * 3, id * 3 + 3);
    $("current-class").innerHTML = "";
    const sw = document.createElement("span");
    sw.className = "swatch"; sw.style.background = `rgb(${col[0]},${col[1]},${col[2]})`;
    $("current-class").append(sw, document.createTextNode(`${S.names[id]} (${id})`));
    drawOverlay();
  }

  function buildPalette(classes) {
    const ul = $("palette"), sel = $("eraser-class");
    for (const c of classes) {
      const li = document.createElement("li");
      li.dataset.id = c.id;
      li.dataset.name = c.name.toLowerCase();
      li.className = "class-item";
      li.title = `${c.name}: class ${c.id}, raw id ${c.raw_id}`;
      const sw = document.createElement("span");
      sw.className = "swatch"; sw.style.background = `rgb(${c.color.join(",")})`;
      const name = document.createElement("span"); name.textContent = c.name;
      const cid = document.createElement("span"); cid.className = "cid"; cid.textContent = c.id;
      li.append(sw, name, cid);
      li.addEventListener("click", () => selectClass(c.id));
      ul.append(li);
      const opt = document.createElement("option");
      opt.value = c.id; opt.textContent = `${c.name} (${c.id})`;
      sel.append(opt);
    }
  }

  function filterPalette(q) {
    q = q.trim().toLowerCase();
    for (const li of $("palette").children)
      li.classList.toggle("hidden", !!q && !li.dataset.name.includes(q) && li.dataset.id !== q);
  }

  function setTool(tool) {
    if (S.poly.length) { S.poly = []; S.drag = null; drawOverlay(); }
    S.tool = tool;
    for (const b of document.querySelectorAll("button.tool")) b.classList.toggle("active", b.dataset.tool === tool);
  }

  // ---------------------------------------------------------------------------------------------- start
  async function init() {
    const info = S.info = await (await jsonOrError(await fetch("/api/info"))).json();
    $("model-info").textContent = `${info.generator} · ${info.dataset} · ${info.height}x${info.width}`;
    S.lut = new Uint8Array(3 * Math.max(info.num_classes, 1) + 3);
    for (const c of info.classes) { S.lut.set(c.color, c.id * 3); S.names[c.id] = c.name; }
    buildPalette(info.classes);
    // side by side: both views fit between the two panels
    const room = Math.min(512, (window.innerWidth - 2 * 240 - 100) / 2);
    S.zoom = Math.max(1, Math.floor(room / Math.max(info.width, info.height)));
    const zoom = $("zoom");
    zoom.innerHTML = "";
    for (const z of [...new Set([1, 2, 4, 8, 16, 32, S.zoom])].sort((a, b) => a - b)) {
      const o = document.createElement("option"); o.value = o.textContent = z; zoom.append(o);
    }
    zoom.value = S.zoom;
    S.eraserCls = info.default_class;
    $("eraser-class").value = info.default_class;
    const firstOther = info.classes.find((c) => c.id !== info.default_class) || info.classes[0];
    selectClass(firstOther.id);
    $("spatial-tools").classList.toggle("hidden", !info.spatial_noise);
    $("style-tools").classList.toggle("hidden", !info.style_image);
    $("seed").closest("section").querySelector("#new-sample").disabled = !info.takes_noise;
    $("seed").disabled = !info.takes_noise;
    const samples = $("samples");
    samples.classList.toggle("hidden", !info.samples.length);
    samples.innerHTML = "";
    info.samples.forEach((name, i) => {
      const o = document.createElement("option"); o.value = i; o.textContent = name; samples.append(o);
    });
    if (info.samples.length) {
      const r = await (await jsonOrError(await fetch("/api/sample/0"))).json();
      setGrid(r.width, r.height, u16FromB64(r.ids));
    } else {
      setGrid(info.width, info.height, new Uint16Array(info.width * info.height).fill(info.default_class));
    }
    wire();
    S.markTime = performance.now();
    requestUpdate(true);
  }

  function wire() {
    const cv = $("labels");
    cv.addEventListener("pointerdown", onDown);
    cv.addEventListener("pointermove", onMove);
    cv.addEventListener("pointerup", onUp);
    cv.addEventListener("pointercancel", onUp);
    cv.addEventListener("dblclick", (e) => { e.preventDefault(); if (S.tool === "polygon") closePolygon(); });
    for (const b of document.querySelectorAll("button.tool")) b.addEventListener("click", () => setTool(b.dataset.tool));
    $("brush-size").addEventListener("input", (e) => { S.size = Number(e.target.value); $("brush-size-value").value = S.size; });
    S.size = Number($("brush-size").value);
    $("eraser-class").addEventListener("change", (e) => { S.eraserCls = Number(e.target.value); });
    $("class-search").addEventListener("input", (e) => filterPalette(e.target.value));
    $("class-search").addEventListener("keydown", (e) => {
      if (e.key !== "Enter") return;
      const first = [...$("palette").children].find((li) => !li.classList.contains("hidden"));
      if (first) selectClass(Number(first.dataset.id));
    });
    $("undo").addEventListener("click", undo);
    $("redo").addEventListener("click", redo);
    $("clear").addEventListener("click", () => {
      pushHistory();
      S.ids.fill(S.cls);
      S.lastRegion = new Uint8Array(S.W * S.H).fill(1);
      render();
      changed();
    });
    $("samples").addEventListener("change", (e) => loadSample(Number(e.target.value)));
    $("upload-labels").addEventListener("change", (e) => { if (e.target.files[0]) uploadLabels(e.target.files[0]); e.target.value = ""; });
    $("seed").addEventListener("change", (e) => setBaseSeed(Math.max(0, Math.floor(Number(e.target.value) || 0))));
    $("new-sample").addEventListener("click", () => setBaseSeed(randomSeed()));
    $("resample-class").addEventListener("click", () => {
      const m = new Uint8Array(S.W * S.H);
      for (let i = 0; i < m.length; i++) m[i] = S.ids[i] === S.cls ? 1 : 0;
      newSeedFor(m);
    });
    $("resample-region").addEventListener("click", () => {
      if (!S.lastRegion) { setStatus("paint something first: the last stroke's pixels are re-sampled", true); return; }
      newSeedFor(S.lastRegion);
    });
    $("reset-noise").addEventListener("click", () => setBaseSeed(S.seeds[0]));
    $("style-image").addEventListener("change", (e) => { if (e.target.files[0]) readStyle(e.target.files[0]); e.target.value = ""; });
    $("clear-style").addEventListener("click", () => { S.style = null; $("style-preview").style.display = "none"; changed(); });
    $("generate").addEventListener("click", () => { S.markTime = performance.now(); requestUpdate(true); });
    $("download-image").addEventListener("click", downloadImage);
    $("download-labels").addEventListener("click", downloadLabels);
    $("zoom").addEventListener("change", (e) => { S.zoom = Number(e.target.value); applyZoom(); drawOverlay(); });
    document.addEventListener("keydown", (e) => {
      if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
      const k = e.key.toLowerCase();
      if ((e.ctrlKey || e.metaKey) && k === "z") { e.preventDefault(); e.shiftKey ? redo() : undo(); }
      else if ((e.ctrlKey || e.metaKey) && k === "y") { e.preventDefault(); redo(); }
      else if (k === "enter" && S.tool === "polygon") closePolygon();
      else if (k === "escape") { S.poly = []; S.drag = null; drawOverlay(); }
      else if (!e.ctrlKey && !e.metaKey && !e.altKey) {
        const tool = { b: "brush", r: "rect", p: "polygon", f: "fill", e: "eraser" }[k];
        if (tool) setTool(tool);
      }
    });
  }

  init().catch((e) => setStatus("error: " + e.message, true));
})();
