// The mesh's topology as an SVG drawing: nodes placed by a force layout
// (repulsion between nearby nodes, springs along reported paths, a pull to
// the centre), coloured online/offline, lines drawn per path kind.
//
// Positions are kept across updates, so a change moves only what changed;
// repulsion looks only at nodes in neighbouring grid cells, so a layout
// step costs O(nodes + edges) and 1,000 nodes lay out in well under a second.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const CELL = 90; // repulsion reaches this far
  const SPRING = 0.02;
  const REST = 80;
  const GRAVITY = 0.004;
  const DAMPING = 0.6;
  const MIN_VIEW = 500;

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
      this.layout(fresh > 0 ? Math.min(300, 60 + 2 * fresh) : 20);
      this.draw();
    }

    layout(steps) {
      const ids = this.nodes.map((n) => n.node_id);
      const links = this.edges.filter((e) => this.positions.has(e.a) && this.positions.has(e.b));
      for (let step = 0; step < steps; step++) {
        const grid = new Map();
        for (const id of ids) {
          const p = this.positions.get(id);
          const key = `${Math.floor(p.x / CELL)},${Math.floor(p.y / CELL)}`;
          if (!grid.has(key)) grid.set(key, []);
          grid.get(key).push(p);
        }
        for (const id of ids) {
          const p = this.positions.get(id);
          const cx = Math.floor(p.x / CELL), cy = Math.floor(p.y / CELL);
          for (let dx = -1; dx <= 1; dx++) {
            for (let dy = -1; dy <= 1; dy++) {
              for (const q of grid.get(`${cx + dx},${cy + dy}`) || []) {
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
        for (const e of links) {
          const a = this.positions.get(e.a), b = this.positions.get(e.b);
          const ex = b.x - a.x, ey = b.y - a.y;
          const d = Math.sqrt(ex * ex + ey * ey) || 1;
          const pull = (d - REST) * SPRING / d;
          a.vx += ex * pull; a.vy += ey * pull;
          b.vx -= ex * pull; b.vy -= ey * pull;
        }
        for (const id of ids) {
          const p = this.positions.get(id);
          p.vx *= DAMPING; p.vy *= DAMPING;
          p.x += Math.max(-10, Math.min(10, p.vx));
          p.y += Math.max(-10, Math.min(10, p.vy));
        }
      }
    }

    draw() {
      const few = this.nodes.length <= 150;
      const radius = few ? 8 : 5;
      // Nodes.
      const shown = new Set();
      for (const node of this.nodes) {
        shown.add(node.node_id);
        let group = this.nodeElements.get(node.node_id);
        if (!group) {
          group = element("g", { class: "node", "data-node-id": node.node_id, tabindex: "0" });
          group.append(element("circle", { r: radius }), element("text", { dy: -radius - 3, "text-anchor": "middle" }));
          group.addEventListener("click", () => this.handlers.select(this.byId(node.node_id)));
          group.addEventListener("keydown", (event) => { if (event.key === "Enter") this.handlers.select(this.byId(node.node_id)); });
          this.nodeLayer.append(group);
          this.nodeElements.set(node.node_id, group);
        }
        const p = this.positions.get(node.node_id);
        group.setAttribute("transform", `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})`);
        group.setAttribute("class", `node ${node.online ? "online" : "offline"}`);
        group.setAttribute("data-online", node.online ? "true" : "false");
        group.querySelector("circle").setAttribute("r", radius);
        const label = group.querySelector("text");
        label.textContent = few ? node.node_name : "";
        let title = group.querySelector("title");
        if (!title) { title = element("title"); group.append(title); }
        title.textContent = `${node.node_name} (${node.vpn_ip}) ${node.online ? "online" : "offline"}`;
      }
      for (const [id, group] of this.nodeElements) {
        if (!shown.has(id)) { group.remove(); this.nodeElements.delete(id); }
      }
      // Edges.
      const drawn = new Set();
      for (const edge of this.edges) {
        const a = this.positions.get(edge.a), b = this.positions.get(edge.b);
        if (!a || !b) continue;
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
        line.setAttribute("x1", a.x.toFixed(1)); line.setAttribute("y1", a.y.toFixed(1));
        line.setAttribute("x2", b.x.toFixed(1)); line.setAttribute("y2", b.y.toFixed(1));
        line.setAttribute("class", `edge edge-${edge.kind}`);
        line.setAttribute("data-kind", edge.kind);
      }
      for (const [key, line] of this.edgeElements) {
        if (!drawn.has(key)) { line.remove(); this.edgeElements.delete(key); }
      }
      this.fit(radius);
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
