// The mesh's topology as an SVG drawing: nodes placed by a force layout
// (repulsion between nearby nodes, springs along reported paths, a pull to
// the centre), coloured online/offline, lines drawn per path kind.
//
// Positions are kept across updates, so a change moves only what changed;
// repulsion looks only at nodes in neighbouring grid cells, so a layout
// step costs O(nodes + edges). Nodes are drawn at once where they start;
// the layout then settles over animation frames, a few milliseconds each,
// so a large mesh shows at once and the page never freezes. An update that
// changes no node or path (a node going offline) only recolours.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const CELL = 90; // repulsion reaches this far
  const SPRING = 0.02;
  const REST = 80;
  const GRAVITY = 0.004;
  const DAMPING = 0.6;
  const MIN_VIEW = 500;
  const FRAME_BUDGET_MS = 8; // layout per animation frame

  function element(name, attributes) {
    const made = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes || {})) made.setAttribute(key, value);
    return made;
  }

  class Topology {
    constructor(svg, handlers) {
      this.svg = svg;
      this.handlers = handlers; // {select(node), hoverEdge(edge, event), leaveEdge()}
      this.positions = new Map();
      this.edgeLayer = element("g", { class: "edges" });
      this.nodeLayer = element("g", { class: "nodes" });
      svg.append(this.edgeLayer, this.nodeLayer);
      this.nodeElements = new Map();
      this.edgeElements = new Map();
      this.nodes = [];
      this.edges = [];
    }

    update(nodes, edges) {
      this.nodes = nodes;
      this.edges = edges;
      const known = new Set(nodes.map((n) => n.node_id));
      for (const id of [...this.positions.keys()]) if (!known.has(id)) this.positions.delete(id);
      let fresh = 0;
      const neighbours = new Map();
      for (const e of edges) {
        if (!neighbours.has(e.a)) neighbours.set(e.a, []);
        if (!neighbours.has(e.b)) neighbours.set(e.b, []);
        neighbours.get(e.a).push(e.b);
        neighbours.get(e.b).push(e.a);
      }
      nodes.forEach((node, index) => {
        if (this.positions.has(node.node_id)) return;
        fresh += 1;
        // New nodes start near a reported neighbour, else on a spiral.
        const neighbour = (neighbours.get(node.node_id) || []).find((id) => this.positions.has(id));
        if (neighbour) {
          const at = this.positions.get(neighbour);
          this.positions.set(node.node_id, { x: at.x + (Math.random() - 0.5) * 40, y: at.y + (Math.random() - 0.5) * 40, vx: 0, vy: 0 });
        } else {
          const angle = index * 2.399963; // the golden angle
          const radius = 14 * Math.sqrt(index + 1);
          this.positions.set(node.node_id, { x: radius * Math.cos(angle), y: radius * Math.sin(angle), vx: 0, vy: 0 });
        }
      });
      const shape = nodes.map((n) => n.node_id).join(" ") + "|" + edges.map((e) => `${e.a} ${e.b}`).join(" ");
      if (shape !== this.shape) {
        this.shape = shape;
        this.stepsLeft = Math.max(this.stepsLeft || 0, fresh > 0 ? Math.min(300, 60 + 2 * fresh) : 20);
        this.settle();
      }
      this.draw();
    }

    // The layout's remaining steps, a frame's budget at a time, redrawn after each.
    settle() {
      if (this.settling) return;
      this.settling = true;
      const frame = () => {
        this.stepsLeft -= this.layout(this.stepsLeft, performance.now() + FRAME_BUDGET_MS);
        this.place();
        if (this.stepsLeft > 0) window.requestAnimationFrame(frame);
        else this.settling = false;
      };
      window.requestAnimationFrame(frame);
    }

    // Up to ``steps`` layout steps, as many as fit before ``until``: how many ran.
    layout(steps, until) {
      const points = this.nodes.map((n) => this.positions.get(n.node_id));
      const links = [];
      for (const e of this.edges) {
        const a = this.positions.get(e.a), b = this.positions.get(e.b);
        if (a && b) links.push([a, b]);
      }
      // A cell's key as one number: x and y cells within ±32,768.
      const cellOf = (cx, cy) => (cx + 32768) * 65536 + (cy + 32768);
      let step = 0;
      for (; step < steps && performance.now() < until; step++) {
        const grid = new Map();
        for (const p of points) {
          p.cx = Math.floor(p.x / CELL); p.cy = Math.floor(p.y / CELL);
          const key = cellOf(p.cx, p.cy);
          const there = grid.get(key);
          if (there) there.push(p); else grid.set(key, [p]);
        }
        for (const p of points) {
          const cx = p.cx, cy = p.cy;
          for (let dx = -1; dx <= 1; dx++) {
            for (let dy = -1; dy <= 1; dy++) {
              const near = grid.get(cellOf(cx + dx, cy + dy));
              if (!near) continue;
              for (const q of near) {
                if (q === p) continue;
                let ex = p.x - q.x, ey = p.y - q.y;
                let d2 = ex * ex + ey * ey;
                if (d2 < 0.01) { ex = Math.random() - 0.5; ey = Math.random() - 0.5; d2 = 0.5; }
                if (d2 > CELL * CELL) continue;
                const push = 300 / d2;
                p.vx += ex * push; p.vy += ey * push;
              }
            }
          }
          p.vx -= p.x * GRAVITY; p.vy -= p.y * GRAVITY;
        }
        for (const [a, b] of links) {
          const ex = b.x - a.x, ey = b.y - a.y;
          const d = Math.sqrt(ex * ex + ey * ey) || 1;
          const pull = (d - REST) * SPRING / d;
          a.vx += ex * pull; a.vy += ey * pull;
          b.vx -= ex * pull; b.vy -= ey * pull;
        }
        for (const p of points) {
          p.vx *= DAMPING; p.vy *= DAMPING;
          p.x += Math.max(-10, Math.min(10, p.vx));
          p.y += Math.max(-10, Math.min(10, p.vy));
        }
      }
      return step;
    }

    // Every node and path made or recoloured as the mesh says; then placed.
    draw() {
      const few = this.nodes.length <= 150;
      const radius = few ? 8 : 5;
      this.radius = radius;
      const shown = new Set();
      for (const node of this.nodes) {
        shown.add(node.node_id);
        let group = this.nodeElements.get(node.node_id);
        if (!group) {
          group = element("g", { class: "node", "data-node-id": node.node_id, tabindex: "0" });
          group.circle = element("circle", { r: radius });
          group.label = element("text", { dy: -radius - 3, "text-anchor": "middle" });
          group.title = element("title");
          group.append(group.circle, group.label, group.title);
          group.addEventListener("click", () => this.handlers.select(this.byId(node.node_id)));
          group.addEventListener("keydown", (event) => { if (event.key === "Enter") this.handlers.select(this.byId(node.node_id)); });
          this.nodeLayer.append(group);
          this.nodeElements.set(node.node_id, group);
        }
        const online = node.online ? "true" : "false";
        if (group.getAttribute("data-online") !== online) {
          group.setAttribute("class", `node ${node.online ? "online" : "offline"}`);
          group.setAttribute("data-online", online);
        }
        if (group.circle.getAttribute("r") !== String(radius)) group.circle.setAttribute("r", radius);
        const label = few ? node.node_name : "";
        if (group.label.textContent !== label) group.label.textContent = label;
        const title = `${node.node_name} (${node.vpn_ip}) ${node.online ? "online" : "offline"}`;
        if (group.title.textContent !== title) group.title.textContent = title;
      }
      for (const [id, group] of this.nodeElements) {
        if (!shown.has(id)) { group.remove(); this.nodeElements.delete(id); }
      }
      const drawn = new Set();
      for (const edge of this.edges) {
        if (!this.positions.has(edge.a) || !this.positions.has(edge.b)) continue;
        const key = `${edge.a} ${edge.b}`;
        drawn.add(key);
        let line = this.edgeElements.get(key);
        if (!line) {
          line = element("line", { "data-a": edge.a, "data-b": edge.b });
          line.addEventListener("mouseenter", (event) => this.handlers.hoverEdge(this.edgeByKey(key), event));
          line.addEventListener("mouseleave", () => this.handlers.leaveEdge());
          this.edgeLayer.append(line);
          this.edgeElements.set(key, line);
        }
        if (line.getAttribute("data-kind") !== edge.kind) {
          line.setAttribute("class", `edge edge-${edge.kind}`);
          line.setAttribute("data-kind", edge.kind);
        }
      }
      for (const [key, line] of this.edgeElements) {
        if (!drawn.has(key)) { line.remove(); this.edgeElements.delete(key); }
      }
      this.place();
    }

    // Nodes and lines where the layout has them now.
    place() {
      for (const [id, group] of this.nodeElements) {
        const p = this.positions.get(id);
        if (p) group.setAttribute("transform", `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})`);
      }
      for (const line of this.edgeElements.values()) {
        const a = this.positions.get(line.getAttribute("data-a")), b = this.positions.get(line.getAttribute("data-b"));
        if (!a || !b) continue;
        line.setAttribute("x1", a.x.toFixed(1)); line.setAttribute("y1", a.y.toFixed(1));
        line.setAttribute("x2", b.x.toFixed(1)); line.setAttribute("y2", b.y.toFixed(1));
      }
      this.fit(this.radius || 8);
    }

    fit(margin) {
      if (!this.positions.size) { this.svg.setAttribute("viewBox", "-100 -100 200 200"); return; }
      let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
      for (const p of this.positions.values()) {
        minX = Math.min(minX, p.x); minY = Math.min(minY, p.y);
        maxX = Math.max(maxX, p.x); maxY = Math.max(maxY, p.y);
      }
      const pad = margin + 30;
      // A small mesh stays small: the view is never closer than MIN_VIEW across.
      const width = Math.max(maxX - minX + 2 * pad, MIN_VIEW), height = Math.max(maxY - minY + 2 * pad, MIN_VIEW * 0.6);
      const left = (minX + maxX) / 2 - width / 2, top = (minY + maxY) / 2 - height / 2;
      this.svg.setAttribute("viewBox", `${left.toFixed(0)} ${top.toFixed(0)} ${width.toFixed(0)} ${height.toFixed(0)}`);
    }

    byId(id) { return this.nodes.find((n) => n.node_id === id); }

    edgeByKey(key) { return this.edges.find((e) => `${e.a} ${e.b}` === key); }
  }

  window.WireTopology = Topology;
})();
