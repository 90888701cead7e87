// The circuit viewer of report.html (circuits/export/viewer.py writes the data it reads). Sites sit on
// a grid: rows are submodules from the embeddings (bottom) to the metric (top), columns are
// prompt positions. Click a site to show or hide its features — or, for a circuit with feature
// families, its families: click a family to show or hide its latents; click a feature or a
// family for its card. The filters hide features by |effect| and edges by |weight|. Edges of
// features not shown are summed into their family or site, so a collapsed site's edges are
// the site-level circuit's.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("circuit-data").textContent);
  const SITE_W = 170, SITE_H = 58, F_W = 128, F_H = 46, FAM_W = 190, GAP = 12, PAD = 14, HEAD = 26;
  const COL_GAP = 60, ROW_GAP = 50, LABEL_W = 120, GRID_MAX = 5;

  const state = { expanded: new Set(), open: new Set(), effectMin: 0, edgeMin: 0, perSite: 24 };
  const byAbs = (a, b) => Math.abs(data.nodes[b].effect) - Math.abs(data.nodes[a].effect);
  const members = data.sites.map(() => []);
  data.nodes.forEach((n, i) => members[n.site].push(i));
  members.forEach((list) => list.sort(byAbs));
  const siteEffect = members.map((list) => list.reduce((s, i) => s + data.nodes[i].effect, 0));
  const fams = data.families || [];
  fams.forEach((f) => f.members.sort(byAbs));
  const siteFams = data.sites.map(() => []);
  fams.forEach((f, fi) => siteFams[f.site].push(fi));
  const loose = members.map((list) => list.filter((j) => data.nodes[j].family == null)); // in no family
  const inner = data.nodes.filter((n) => n.kind !== "embed").map((n) => Math.abs(n.effect));
  const maxEffect = Math.max(1e-12, ...inner);
  const maxSite = Math.max(1e-12, ...data.sites.map((s, i) => (s.embed ? 0 : Math.abs(siteEffect[i]))));
  const maxEdge = Math.max(1e-12, ...data.edges.map((e) => Math.abs(e[2])));

  const fmt = (x) => (x >= 0 ? "+" : "") + x.toFixed(3);
  const short = (s, n) => (s.length > n ? s.slice(0, n - 1) + "…" : s);
  function colour(effect, scale) {
    // blue: the behaviour relies on it (negative effect); red: it works against the behaviour
    const t = Math.min(Math.abs(effect) / scale, 1);
    const level = Math.round(255 - 175 * t).toString(16).padStart(2, "0");
    return effect < 0 ? "#" + level + level + "ff" : "#ff" + level + level;
  }

  function items(site) {
    // what an expanded site holds: its families and the nodes in none, strongest first, filtered, capped
    if (!state.expanded.has(site)) return [];
    const out = siteFams[site].map((fi) => ({ fam: fi, abs: Math.abs(fams[fi].effect) }))
      .concat(loose[site].map((j) => ({ node: j, abs: Math.abs(data.nodes[j].effect) })));
    out.sort((a, b) => b.abs - a.abs);
    return out.filter((it) => it.abs >= state.effectMin).slice(0, state.perSite);
  }

  function inFamily(fi) {
    // the latents drawn inside an open family: strongest first, filtered, capped
    if (!state.open.has(fi)) return [];
    return fams[fi].members.filter((j) => Math.abs(data.nodes[j].effect) >= state.effectMin).slice(0, state.perSite);
  }

  function grid(k) {
    const cols = Math.min(GRID_MAX, Math.ceil(Math.sqrt(k)));
    const rows = Math.ceil(k / cols);
    return { cols: cols, rows: rows, w: cols * F_W + (cols - 1) * GAP + 2 * PAD, h: rows * F_H + (rows - 1) * GAP + 2 * PAD + HEAD };
  }

  function itemSize(it) {
    if (it.node !== undefined) return [F_W, F_H];
    const k = inFamily(it.fam).length;
    if (!k) return [FAM_W, F_H];
    const g = grid(k);
    return [Math.max(FAM_W, g.w), g.h];
  }

  function layout(site) {
    // the site's items in rows; its cell's size
    const its = items(site);
    if (!its.length) return { rows: [], w: SITE_W, h: SITE_H, count: 0 };
    const per = Math.min(GRID_MAX, Math.ceil(Math.sqrt(its.length)));
    const rows = [];
    for (let i = 0; i < its.length; i += per) {
      const row = its.slice(i, i + per).map((it) => ({ it: it, size: itemSize(it) }));
      rows.push({ cells: row, w: row.reduce((a, c) => a + c.size[0], 0) + (row.length - 1) * GAP, h: Math.max(...row.map((c) => c.size[1])) });
    }
    const w = Math.max(SITE_W, Math.max(...rows.map((r) => r.w)) + 2 * PAD);
    const h = rows.reduce((a, r) => a + r.h, 0) + (rows.length - 1) * GAP + 2 * PAD + HEAD;
    return { rows: rows, w: w, h: h, count: its.length };
  }

  function siteLabel(i, k) {
    const s = data.sites[i];
    const col = data.columns[s.col];
    if (s.embed) return "embedding " + (col.token !== null ? JSON.stringify(col.token) : col.slot) + "\n" + fmt(siteEffect[i]);
    const n = members[i].filter((j) => data.nodes[j].kind === "feature").length;
    const total = siteFams[i].length + loose[i].length;
    if (state.expanded.has(i)) return s.label + " — " + k + " of " + total + (siteFams[i].length ? " families and nodes" : " nodes") + " shown";
    return s.label + "\n" + n + " feature" + (n === 1 ? "" : "s") + ", Σ effect " + fmt(siteEffect[i]);
  }

  function familyLabel(f) {
    return short(f.name, 44) + "\n" + f.size + " latent" + (f.size === 1 ? "" : "s") + " · Σ " + fmt(f.effect);
  }

  function nodeLabel(n) {
    if (n.kind === "error") return "SAE error\n" + fmt(n.effect);
    const card = n.card ? data.cards[n.card] : null;
    return "#" + n.latent + (card ? "\n" + short(card.description, 20) : "") + "\n" + fmt(n.effect);
  }

  function elements() {
    const cells = data.sites.map((_, i) => layout(i));
    const colW = data.columns.map(() => SITE_W), rowH = data.rows.map(() => SITE_H);
    data.sites.forEach((s, i) => {
      colW[s.col] = Math.max(colW[s.col], cells[i].w);
      rowH[s.row] = Math.max(rowH[s.row], cells[i].h);
    });
    const colX = [], rowY = [];
    let x = 0;
    colW.forEach((w, c) => { colX[c] = x + w / 2; x += w + COL_GAP; });
    let y = 0;
    rowH.forEach((h, r) => { rowY[r] = y - h / 2; y -= h + ROW_GAP; });
    const metricY = y - SITE_H / 2;
    const els = [];
    data.rows.forEach((label, r) => els.push({ group: "nodes", data: { id: "row" + r, label: label, type: "axis" }, position: { x: -LABEL_W, y: rowY[r] }, classes: "axis", selectable: false, grabbable: false }));
    data.columns.forEach((c, i) => {
      const label = (c.token !== null ? JSON.stringify(c.token) + "\n" : "") + c.slot;
      els.push({ group: "nodes", data: { id: "col" + i, label: label, type: "axis" }, position: { x: colX[i], y: rowH[0] / 2 + 40 }, classes: "axis", selectable: false, grabbable: false });
    });
    const where = new Map(); // node index -> the element its edges attach to
    const addNode = (j, parent, px, py) => {
      const n = data.nodes[j];
      where.set(j, "n" + j);
      els.push({ group: "nodes", data: { id: "n" + j, parent: parent, label: nodeLabel(n), type: n.kind, index: j, fill: colour(n.effect, maxEffect) }, position: { x: px, y: py }, classes: n.kind });
    };
    data.sites.forEach((s, i) => {
      const id = "s" + i, cell = cells[i];
      els.push({ group: "nodes", data: { id: id, label: siteLabel(i, cell.count), type: "site", index: i, fill: s.embed ? "#eeeeee" : colour(siteEffect[i], maxSite) }, position: { x: colX[s.col], y: rowY[s.row] }, classes: s.embed ? "site embed" : "site" });
      members[i].forEach((j) => where.set(j, id));
      let top = rowY[s.row] - cell.h / 2 + PAD + HEAD;
      cell.rows.forEach((row) => {
        let left = colX[s.col] - row.w / 2;
        row.cells.forEach(({ it, size }) => {
          const cx = left + size[0] / 2, cy0 = top + row.h / 2;
          left += size[0] + GAP;
          if (it.node !== undefined) return addNode(it.node, id, cx, cy0);
          const f = fams[it.fam], fid = "f" + it.fam;
          f.members.forEach((j) => where.set(j, fid));
          els.push({ group: "nodes", data: { id: fid, parent: id, label: familyLabel(f), type: "family", index: it.fam, fill: colour(f.effect, maxSite) }, position: { x: cx, y: cy0 }, classes: "family" });
          const inside = inFamily(it.fam);
          if (!inside.length) return;
          const g = grid(inside.length);
          const x0 = cx - ((g.cols - 1) * (F_W + GAP)) / 2, y0 = cy0 - ((g.rows - 1) * (F_H + GAP)) / 2 + HEAD / 2;
          inside.forEach((j, m) => addNode(j, fid, x0 + (m % g.cols) * (F_W + GAP), y0 + Math.floor(m / g.cols) * (F_H + GAP)));
        });
        top += row.h + GAP;
      });
    });
    const lastCol = data.columns.length - 1;
    els.push({ group: "nodes", data: { id: "metric", label: "metric\n" + data.metric, type: "metric" }, position: { x: colX[lastCol] || 0, y: metricY }, classes: "metric" });
    const sums = new Map();
    data.edges.forEach(([u, v, w]) => {
      const a = u < 0 ? "metric" : where.get(u), b = v < 0 ? "metric" : where.get(v);
      if (a === b) return;
      const key = a + ">" + b;
      sums.set(key, (sums.get(key) || 0) + w);
    });
    let top = 1e-12;
    sums.forEach((w) => { top = Math.max(top, Math.abs(w)); });
    sums.forEach((w, key) => {
      const [a, b] = key.split(">");
      els.push({ group: "edges", data: { id: "e" + key, source: a, target: b, weight: w, width: 0.8 + 7 * Math.abs(w) / top, colour: w < 0 ? "#3060d0" : "#d04040" }, classes: Math.abs(w) < state.edgeMin ? "hidden" : "" });
    });
    return els;
  }

  const cy = cytoscape({
    container: document.getElementById("cy"),
    minZoom: 0.05,
    maxZoom: 4,
    boxSelectionEnabled: false,
    style: [
      { selector: "node", style: { shape: "round-rectangle", width: F_W, height: F_H, "border-width": 1, "border-color": "#777", label: "data(label)", "text-wrap": "wrap", "text-max-width": F_W - 6, "text-valign": "center", "text-halign": "center", "font-size": 11, "font-family": "Helvetica, Arial, sans-serif" } },
      { selector: "node[fill]", style: { "background-color": "data(fill)" } },
      { selector: "node.site", style: { width: SITE_W, height: SITE_H, "text-max-width": SITE_W - 8, "border-width": 2, "border-color": "#555" } },
      { selector: "node.site:parent", style: { "text-valign": "top", "text-margin-y": HEAD - 4, "background-opacity": 0.35, padding: PAD, "font-weight": "bold" } },
      { selector: "node.family", style: { width: FAM_W, height: F_H, "text-max-width": FAM_W - 8, "border-width": 2, "border-color": "#7b1fa2", "font-size": 10 } },
      { selector: "node.family:parent", style: { "text-valign": "top", "text-margin-y": HEAD - 4, "background-opacity": 0.3, padding: PAD } },
      { selector: "node.embed", style: { shape: "round-tag", "background-color": "#eeeeee" } },
      { selector: "node.error", style: { "border-style": "dashed", "background-color": "#ffffff", "border-color": "#555" } },
      { selector: "node.metric", style: { shape: "octagon", width: SITE_W, height: SITE_H, "background-color": "#f0e68c", "border-width": 2 } },
      { selector: "node.axis", style: { "background-opacity": 0, "border-width": 0, "font-size": 13, color: "#444", events: "no", width: 10, height: 10 } },
      { selector: "node:selected", style: { "border-width": 4, "border-color": "#ff9800" } },
      { selector: "edge", style: { width: "data(width)", "line-color": "data(colour)", "target-arrow-color": "data(colour)", "target-arrow-shape": "triangle", "arrow-scale": 0.8, "curve-style": "bezier", opacity: 0.75 } },
      { selector: ".hidden", style: { display: "none" } },
    ],
  });

  const status = document.getElementById("viewer-status");
  function render(fit) {
    cy.batch(() => {
      cy.elements().remove();
      cy.add(elements());
    });
    if (fit) cy.fit(undefined, 30);
    const feats = cy.nodes(".feature").length, edges = cy.edges().not(".hidden").length;
    status.textContent = data.sites.length + " sites · " + feats + " features shown of " + data.nodes.filter((n) => n.kind === "feature").length + " · " + edges + " edges shown";
  }

  // ------------------------------------------------------------------ the side panel
  const panel = document.getElementById("card");
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function show(children) {
    panel.replaceChildren(...children);
  }
  function histogram(counts) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", String(12 * counts.length));
    svg.setAttribute("height", "44");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "activation histogram");
    const peak = Math.max(1, ...counts);
    counts.forEach((c, i) => {
      const r = document.createElementNS(ns, "rect");
      const h = (40 * c) / peak;
      r.setAttribute("x", String(i * 12));
      r.setAttribute("y", String(42 - h));
      r.setAttribute("width", "11");
      r.setAttribute("height", String(h));
      r.setAttribute("fill", "#5c7cfa");
      svg.appendChild(r);
    });
    return svg;
  }
  function featureCard(n) {
    const site = data.sites[n.site];
    const out = [el("h3", n.id), el("div", site.label + " · effect " + fmt(n.effect) + (n.activation !== null ? " · mean activation " + n.activation.toFixed(3) : ""))];
    if (n.kind === "error") {
      out.push(el("p", "The SAE's error term at this site: what its latents do not reconstruct.", "muted"));
      return out;
    }
    const card = n.card ? data.cards[n.card] : null;
    if (!card) {
      out.push(el("p", "No feature card in this report for this latent.", "muted"));
      return out;
    }
    out.push(el("div", card.description, "muted"));
    out.push(el("div", "active on " + (100 * card.frequency).toFixed(1) + "% of corpus tokens, max " + card.max.toFixed(2)));
    out.push(el("div", "top contexts:"));
    if (!card.contexts.length) out.push(el("div", "never active on the corpus sample", "muted"));
    card.contexts.forEach((c) => {
      const line = el("div", undefined, "ctx");
      c.tokens.forEach((t, i) => {
        line.appendChild(i === c.index ? el("span", t, "hi") : document.createTextNode(t));
        line.appendChild(document.createTextNode(" "));
      });
      line.appendChild(el("span", "(" + c.activation.toFixed(2) + ")", "muted"));
      out.push(line);
    });
    out.push(el("div", "activations (non-zero):"));
    out.push(histogram(card.histogram));
    out.push(el("div", "promotes: " + card.promoted.map(([t, v]) => t + " (" + fmt(v) + ")").join(", ")));
    out.push(el("div", "suppresses: " + card.suppressed.map(([t, v]) => t + " (" + fmt(v) + ")").join(", ")));
    return out;
  }
  function familyCard(fi) {
    const f = fams[fi];
    const ratio = f.ablation_ratio == null ? "not measured" : f.ablation_ratio.toFixed(2);
    const out = [
      el("h3", f.id + ": " + f.name),
      el("div", data.sites[f.site].label + " · " + f.size + " latents, " + f.members.length + " of them in the feature circuit · Σ effect " + fmt(f.effect)),
      el("div", f.variable == null ? "tracks no task variable (best ε² " + f.tracking.toFixed(2) + ")" : "tracks " + f.variable + " (mean ε² " + f.tracking.toFixed(2) + ")"),
      el("div", "ablation ratio (patched together / recorded effect): " + ratio, "validation"),
    ];
    if (f.interchange != null) out.push(el("div", "interchange: flips the answer on " + (100 * f.interchange).toFixed(0) + "% of held-out prompts (other latents of the site: " + (100 * f.interchange_random).toFixed(0) + "%)", "validation"));
    out.push(el("p", state.open.has(fi) ? "Expanded: its latents are drawn inside it." : "Collapsed: click it to show its latents.", "muted"));
    out.push(el("div", "members: " + f.members.slice(0, 12).map((j) => "#" + data.nodes[j].latent).join(", ") + (f.members.length > 12 ? ", …" : ""), "members"));
    return out;
  }

  function siteCard(i) {
    const s = data.sites[i];
    const errors = members[i].filter((j) => data.nodes[j].kind === "error").map((j) => data.nodes[j].effect);
    const err = errors.reduce((a, b) => a + b, 0);
    return [
      el("h3", s.id),
      el("div", "Σ effect " + fmt(siteEffect[i]) + " · " + members[i].length + " nodes" + (errors.length ? " · error term " + fmt(err) : "")),
      el("p", state.expanded.has(i) ? "Expanded: its strongest nodes are drawn inside it." : "Collapsed: click it to show its features.", "muted"),
    ];
  }

  cy.on("tap", (e) => {
    const t = e.target;
    if (t === cy || !t.isNode || !t.isNode()) return;
    const type = t.data("type");
    if (type === "site") {
      const i = t.data("index");
      if (!data.sites[i].embed) {
        if (state.expanded.has(i)) state.expanded.delete(i);
        else state.expanded.add(i);
        render(false);
      }
      show(siteCard(i));
    } else if (type === "family") {
      const fi = t.data("index");
      if (state.open.has(fi)) state.open.delete(fi);
      else state.open.add(fi);
      render(false);
      show(familyCard(fi));
    } else if (type === "feature" || type === "error") {
      show(featureCard(data.nodes[t.data("index")]));
    } else if (type === "metric") {
      show([el("h3", "metric"), el("div", data.metric + " · total effect " + fmt(data.total_effect))]);
    }
  });

  // ------------------------------------------------------------------ hover
  const tip = document.getElementById("tip");
  const box = document.getElementById("cy");
  cy.on("mouseover", (e) => {
    const t = e.target;
    if (t === cy || t.hasClass("axis")) return;
    let text;
    if (t.isEdge()) text = t.source().id() + " → " + t.target().id() + "\nweight " + fmt(t.data("weight"));
    else if (t.data("type") === "site") text = data.sites[t.data("index")].id + "\nΣ effect " + fmt(siteEffect[t.data("index")]);
    else if (t.data("type") === "metric") text = "metric " + data.metric;
    else if (t.data("type") === "family") text = fams[t.data("index")].name + "\nΣ effect " + fmt(fams[t.data("index")].effect);
    else {
      const n = data.nodes[t.data("index")];
      text = n.id + "\neffect " + fmt(n.effect) + (n.activation !== null ? "\nactivation " + n.activation.toFixed(3) : "");
    }
    tip.textContent = text;
    tip.hidden = false;
    tip.style.left = box.offsetLeft + e.renderedPosition.x + 14 + "px";
    tip.style.top = box.offsetTop + e.renderedPosition.y + 14 + "px";
  });
  cy.on("mouseout", () => { tip.hidden = true; });

  // ------------------------------------------------------------------ controls
  const slider = (id, out, top, apply) => {
    const input = document.getElementById(id), value = document.getElementById(out);
    input.addEventListener("input", () => {
      const x = top * Math.pow(Number(input.value) / 1000, 2); // finer steps near zero
      value.textContent = x.toPrecision(2);
      apply(x);
    });
  };
  slider("effect-filter", "effect-value", maxEffect, (x) => { state.effectMin = x; render(false); });
  slider("edge-filter", "edge-value", maxEdge, (x) => {
    state.edgeMin = x;
    cy.batch(() => cy.edges().forEach((edge) => edge.toggleClass("hidden", Math.abs(edge.data("weight")) < x)));
    status.textContent = status.textContent.replace(/\d+ edges shown/, cy.edges().not(".hidden").length + " edges shown");
  });
  document.getElementById("per-site").addEventListener("change", (e) => {
    state.perSite = Math.max(1, Number(e.target.value) || 1);
    render(false);
  });
  document.getElementById("expand-all").addEventListener("click", () => {
    data.sites.forEach((s, i) => { if (!s.embed) state.expanded.add(i); });
    render(true);
  });
  document.getElementById("collapse-all").addEventListener("click", () => { state.expanded.clear(); render(true); });
  document.getElementById("fit").addEventListener("click", () => cy.fit(undefined, 30));

  // ------------------------------------------------------------------ faithfulness curves
  function curve(c) {
    const ns = "http://www.w3.org/2000/svg", W = 390, H = 190, L = 40, R = 10, T = 22, B = 46;
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", String(W));
    svg.setAttribute("height", String(H));
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "faithfulness curve: " + c.name);
    const xs = c.points.map((p) => Math.max(p[0], 1));
    const logx = c.unit === "nodes" && Math.max(...xs) / Math.min(...xs) > 20;
    const fx = logx ? Math.log : (v) => v;
    const x0 = fx(Math.min(...xs)), x1 = fx(Math.max(...xs, 2));
    const ys = c.points.flatMap((p) => [p[1], p[2]]).concat([0, 1]);
    const y0 = Math.min(...ys), y1 = Math.max(...ys) + 0.05;
    const px = (v) => L + ((fx(Math.max(v, 1)) - x0) / (x1 - x0 || 1)) * (W - L - R);
    const py = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
    const add = (tag, attrs, text) => {
      const e = document.createElementNS(ns, tag);
      Object.entries(attrs).forEach(([k, v]) => e.setAttribute(k, String(v)));
      if (text !== undefined) e.textContent = text;
      svg.appendChild(e);
      return e;
    };
    add("text", { x: L, y: 13 }, c.name + " (" + c.ablation + " ablation, held-out)");
    add("line", { x1: L, y1: py(y0), x2: W - R, y2: py(y0), stroke: "#999" });
    add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" });
    [0, 0.5, 1].filter((v) => v >= y0 && v <= y1).forEach((v) => add("text", { x: 4, y: py(v) + 3 }, v.toFixed(1)));
    add("text", { x: L, y: H - B + 14 }, Math.min(...xs) + " " + c.unit + (logx ? " (log scale)" : ""));
    add("text", { x: W - R - 40, y: H - B + 14 }, String(Math.max(...xs)));
    if (c.target !== null) add("line", { x1: L, y1: py(c.target), x2: W - R, y2: py(c.target), stroke: "#c62828", "stroke-dasharray": "2 3" });
    add("line", { x1: px(c.chosen), y1: T, x2: px(c.chosen), y2: H - B, stroke: "#2e7d32", "stroke-dasharray": "4 3" });
    const path = (i) => c.points.map((p, k) => (k ? "L" : "M") + px(p[0]).toFixed(1) + " " + py(p[i]).toFixed(1)).join(" ");
    add("path", { d: path(2), fill: "none", stroke: "#999", "stroke-dasharray": "4 3", "stroke-width": 1.5 });
    add("path", { d: path(1), fill: "none", stroke: "#1565c0", "stroke-width": 2 });
    add("text", { x: L, y: H - 6, fill: "#1565c0" }, "— circuit");
    add("text", { x: L + 70, y: H - 6, fill: "#777" }, "- - random same size");
    add("text", { x: L + 200, y: H - 6, fill: "#c62828" }, "··· target");
    add("text", { x: Math.min(px(c.chosen) + 4, W - R - 90), y: H - B - 6, fill: "#2e7d32" }, "chosen: " + c.chosen);
    return svg;
  }
  const curves = document.getElementById("curves");
  if (data.curves.length) {
    curves.appendChild(el("div", "Faithfulness against size (target dotted red, chosen size dashed green):"));
    data.curves.forEach((c) => curves.appendChild(curve(c)));
  } else {
    curves.appendChild(el("p", "No faithfulness curves: this circuit was not found with a target faithfulness.", "muted"));
  }

  render(true);
  window.circuitViewer = { cy: cy, state: state, render: render, data: data, readyAt: performance.now() };
})();
