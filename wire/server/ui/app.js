// The dashboard: the admin API (/api/v1) as pages, updated live.
//
// Every request carries the session cookie (same origin) and, if it changes
// anything, the session's CSRF token from the page's <meta>. The mesh view
// is a long-poll (/api/v1/mesh?since=VERSION): it answers as soon as the
// mesh changes, so a node going offline shows within a second or two.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="wire-csrf"]').content;
  const $ = (selector) => document.querySelector(selector);
  let mesh = { nodes: [], edges: [], version: null };
  let selected = null;
  let sortKey = "node_name", sortUp = true;

  // -- the API -------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const options = { method, credentials: "same-origin", headers: {} };
    if (method !== "GET") options.headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(`/api/v1${path}`, options);
    const answer = await response.json().catch(() => ({}));
    if (response.status === 401) {
      window.location.replace("/ui/"); // the session ended: the login page
      throw new ApiError(401, answer.error || "logged out");
    }
    if (!response.ok) throw new ApiError(response.status, answer.error || `HTTP ${response.status}`);
    return answer;
  }

  function say(text, kind) {
    const box = $("#message");
    box.textContent = text;
    box.className = kind || "info";
    box.hidden = !text;
  }

  async function act(what, action) {
    try {
      const answer = await action();
      say(`${what}: done`, "info");
      return answer;
    } catch (error) {
      say(`${what}: ${error.message}`, "error");
      return null;
    }
  }

  // -- formatting ----------------------------------------------------------

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 90) return `${Math.round(seconds)} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} d ago`;
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function button(label, onClick, className) {
    const made = document.createElement("button");
    made.type = "button";
    made.textContent = label;
    if (className) made.className = className;
    if (onClick) made.addEventListener("click", onClick);
    return made;
  }

  function nameOf(id) {
    const node = mesh.nodes.find((n) => n.node_id === id);
    return node ? node.node_name : id;
  }

  // -- tabs ----------------------------------------------------------------

  const loaders = { keys: loadKeys, policy: loadPolicy, audit: loadAudit };

  function showTab() {
    const tab = (window.location.hash || "#topology").slice(1);
    for (const section of document.querySelectorAll(".tab")) section.hidden = section.id !== `tab-${tab}`;
    for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("current", link.dataset.tab === tab);
    if (loaders[tab]) loaders[tab]();
  }

  // -- topology ------------------------------------------------------------

  const tooltip = $("#tooltip");
  const topology = new window.WireTopology($("#topology"), {
    select(node) { selected = node ? node.node_id : null; showDetails(); },
    hoverEdge(edge, event) {
      if (!edge) return;
      tooltip.replaceChildren();
      const title = document.createElement("strong");
      title.textContent = `${nameOf(edge.a)} ↔ ${nameOf(edge.b)}: ${edge.kind}`;
      tooltip.append(title);
      for (const [id, side] of Object.entries(edge.sides)) {
        const line = document.createElement("div");
        const where = side.endpoint ? ` via ${side.endpoint}` : "";
        line.textContent = `${nameOf(id)}: ${side.path} (${side.endpoint_kind}${where}), handshake ${ago(side.handshake_age)}, ↓${bytes(side.rx_bytes)} ↑${bytes(side.tx_bytes)}`;
        tooltip.append(line);
      }
      const box = $(".topology-wrap").getBoundingClientRect();
      tooltip.style.left = `${event.clientX - box.left + 12}px`;
      tooltip.style.top = `${event.clientY - box.top + 12}px`;
      tooltip.hidden = false;
    },
    leaveEdge() { tooltip.hidden = true; },
  });

  function showDetails() {
    const panel = $("#node-details");
    const node = mesh.nodes.find((n) => n.node_id === selected);
    panel.replaceChildren();
    if (!node) {
      const hint = document.createElement("p");
      hint.className = "hint";
      hint.textContent = "Click a node for its details; hover a line for its path.";
      panel.append(hint);
      return;
    }
    const title = document.createElement("h2");
    title.textContent = node.node_name;
    const list = document.createElement("dl");
    const facts = [
      ["State", node.online ? "online" : "offline"],
      ["Addresses", [node.vpn_ip, node.vpn_ip6].filter(Boolean).join(", ")],
      ["Public", node.public_ip ? `${node.public_ip}:${node.nat_port || node.port}` : "unknown"],
      ["NAT", node.nat_type || "unknown"],
      ["Tags", (node.tags || []).join(" ") || "none"],
      ["Last seen", ago(mesh.timestamp - node.last_seen)],
      ["Node id", node.node_id],
    ];
    for (const [key, value] of facts) {
      const dt = document.createElement("dt"); dt.textContent = key;
      const dd = document.createElement("dd"); dd.textContent = value;
      list.append(dt, dd);
    }
    const paths = document.createElement("ul");
    for (const edge of mesh.edges.filter((e) => e.a === node.node_id || e.b === node.node_id)) {
      const item = document.createElement("li");
      item.textContent = `${nameOf(edge.a === node.node_id ? edge.b : edge.a)}: ${edge.kind}`;
      paths.append(item);
    }
    panel.append(title, list, paths);
  }

  // -- the node table ------------------------------------------------------

  function sortValue(node, key) {
    if (key === "tags") return (node.tags || []).join(" ");
    if (key === "online") return node.online ? 1 : 0;
    const value = node[key];
    return value === undefined || value === null ? "" : value;
  }

  // One row per node, made once and kept: an update rewrites only the cells
  // that changed and reorders only when the order did (1,000 rows would
  // otherwise be rebuilt on every change of the mesh).
  const rows = new Map();
  let rowOrder = "";

  function rowFor(node) {
    let row = rows.get(node.node_id);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.nodeId = node.node_id;
      row.cells_ = ["name", "", "", "tags", "", "", "", "", ""].map((className) => cell(row, "", className));
      row.cells_[8].append(
        button("Rename", null, "rename"),
        button("Tags", null, "tag"),
        button("Remove", null, "remove danger"),
      );
      rows.set(node.node_id, row);
    }
    const texts = [
      node.node_name, node.dns_name || "", [node.vpn_ip, node.vpn_ip6].filter(Boolean).join(" "), (node.tags || []).join(" "),
      node.nat_type || "", node.version || "", ago(mesh.timestamp - node.last_seen), node.online ? "yes" : "no",
    ];
    texts.forEach((text, i) => { if (row.cells_[i].textContent !== text) row.cells_[i].textContent = text; });
    const state = node.online ? "online" : "offline";
    if (row.cells_[7].className !== state) row.cells_[7].className = state;
    return row;
  }

  function renderNodes() {
    const query = $("#node-search").value.trim().toLowerCase();
    const shown = mesh.nodes.filter((node) => !query || [node.node_name, node.dns_name, node.vpn_ip, node.vpn_ip6, node.public_ip, ...(node.tags || [])]
      .some((field) => field && String(field).toLowerCase().includes(query)));
    shown.sort((x, y) => {
      const a = sortValue(x, sortKey), b = sortValue(y, sortKey);
      return (a < b ? -1 : a > b ? 1 : 0) * (sortUp ? 1 : -1);
    });
    const known = new Set(mesh.nodes.map((n) => n.node_id));
    for (const id of [...rows.keys()]) if (!known.has(id)) rows.delete(id);
    const made = shown.map(rowFor);
    const order = shown.map((n) => n.node_id).join(" ");
    if (order !== rowOrder) {
      rowOrder = order;
      const fragment = document.createDocumentFragment();
      fragment.append(...made);
      $("#node-table tbody").replaceChildren(fragment);
    }
  }

  // The rows' buttons, through one listener: which node and which action.
  $("#node-table tbody").addEventListener("click", (event) => {
    const clicked = event.target.closest("button");
    const row = clicked && clicked.closest("tr");
    const node = row && mesh.nodes.find((n) => n.node_id === row.dataset.nodeId);
    if (!node) return;
    if (clicked.classList.contains("rename")) rename(node);
    else if (clicked.classList.contains("tag")) retag(node);
    else if (clicked.classList.contains("remove")) remove(node);
  });

  async function rename(node) {
    const name = window.prompt(`New name for ${node.node_name}:`, node.node_name);
    if (!name || name === node.node_name) return;
    await act(`rename ${node.node_name}`, () => api("POST", `/nodes/${encodeURIComponent(node.node_id)}/rename`, { new_name: name }));
  }

  async function retag(node) {
    const text = window.prompt(`Tags of ${node.node_name} (space-separated, tag:NAME; empty: none):`, (node.tags || []).join(" "));
    if (text === null) return;
    const tags = text.split(/[\s,]+/).filter(Boolean);
    await act(`tag ${node.node_name}`, () => api("PUT", `/nodes/${encodeURIComponent(node.node_id)}/tags`, { tags }));
  }

  async function remove(node) {
    if (!window.confirm(`Remove ${node.node_name} from the mesh? Its credential stops working at once.`)) return;
    await act(`remove ${node.node_name}`, () => api("DELETE", `/nodes/${encodeURIComponent(node.node_id)}`));
  }

  // -- join keys -----------------------------------------------------------

  async function loadKeys() {
    const answer = await act("join keys", () => api("GET", "/keys"));
    if (!answer) return;
    say("", "info");
    const body = $("#key-table tbody");
    body.replaceChildren();
    for (const key of answer.keys || []) {
      const row = document.createElement("tr");
      row.dataset.keyId = key.key_id;
      cell(row, key.key_id);
      cell(row, key.note || "");
      cell(row, (key.tags || []).join(" "));
      cell(row, `${key.uses}${key.reusable ? " (reusable)" : ""}`);
      cell(row, key.expires ? new Date(key.expires * 1000).toLocaleString() : "never");
      cell(row, key.state || (key.revoked ? "revoked" : "usable"));
      const actions = cell(row, "");
      if (!key.revoked) actions.append(button("Revoke", () => revoke(key), "revoke danger"));
      body.append(row);
    }
  }

  async function revoke(key) {
    if (!window.confirm(`Revoke join key ${key.key_id}?`)) return;
    if (await act(`revoke ${key.key_id}`, () => api("DELETE", `/keys/${encodeURIComponent(key.key_id)}`))) loadKeys();
  }

  async function createKey(event) {
    event.preventDefault();
    const form = event.target;
    const body = {
      tags: form.tags.value.split(/[\s,]+/).filter(Boolean),
      expires_in: Number(form.expires_in.value),
      reusable: form.reusable.checked,
      note: form.note.value,
    };
    if (form.ephemeral.checked) body.ephemeral_after = 600;
    const made = await act("new join key", () => api("POST", "/keys", body));
    if (!made) return;
    $("#key-command").textContent = made.command || made.join_command || made.token;
    $("#key-created").hidden = false;
    loadKeys();
  }

  // -- the policy ----------------------------------------------------------

  function gutter() {
    const lines = $("#policy-text").value.split("\n").length;
    const bad = Number($("#policy-gutter").dataset.bad || 0);
    const numbers = [];
    for (let i = 1; i <= lines; i++) numbers.push(i === bad ? `▶${i}` : String(i));
    $("#policy-gutter").textContent = numbers.join("\n");
  }

  async function loadPolicy() {
    const answer = await act("the policy", () => api("GET", "/policy"));
    if (!answer) return;
    say("", "info");
    $("#policy-text").value = answer.text || "";
    $("#policy-gutter").dataset.bad = "";
    gutter();
  }

  async function policy(save) {
    const text = $("#policy-text").value;
    const result = $("#policy-result");
    try {
      const checked = await api("POST", "/policy/check", { text });
      $("#policy-gutter").dataset.bad = "";
      result.className = "ok";
      result.textContent = `Valid: ${checked.rules} rules, ${checked.tests} tests passed.`;
      if (save) {
        const saved = await api("PUT", "/policy", { text });
        result.textContent += ` Saved as version ${saved.version}.`;
      }
    } catch (error) {
      const line = /line (\d+)/.exec(error.message);
      $("#policy-gutter").dataset.bad = line ? line[1] : "";
      result.className = "error";
      result.textContent = error.message;
    }
    gutter();
  }

  // -- the audit log -------------------------------------------------------

  async function loadAudit() {
    const answer = await act("the audit log", () => api("GET", "/audit?limit=200"));
    if (!answer) return;
    say("", "info");
    const body = $("#audit-table tbody");
    body.replaceChildren();
    for (const entry of answer.events || answer.entries || []) {
      const row = document.createElement("tr");
      cell(row, new Date(entry.at * 1000).toLocaleString());
      cell(row, entry.actor || "");
      cell(row, entry.event);
      cell(row, entry.detail);
      body.append(row);
    }
  }

  // -- live ----------------------------------------------------------------

  function render() {
    $("#summary").textContent = `${mesh.online} of ${mesh.total} nodes online, ${mesh.edges.length} paths`;
    topology.update(mesh.nodes, mesh.edges);
    renderNodes();
    showDetails();
  }

  async function live() {
    for (;;) {
      const since = mesh.version === null ? "" : `&since=${mesh.version}`;
      try {
        mesh = await api("GET", `/mesh?wait=25${since}`);
        $("#connection").textContent = "live";
        $("#connection").className = "ok";
        render();
      } catch (error) {
        $("#connection").textContent = `reconnecting: ${error.message}`;
        $("#connection").className = "error";
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }
  }

  // -- wiring --------------------------------------------------------------

  window.addEventListener("hashchange", showTab);
  $("#node-search").addEventListener("input", renderNodes);
  for (const header of document.querySelectorAll("#node-table th[data-sort]")) {
    header.addEventListener("click", () => {
      sortUp = sortKey === header.dataset.sort ? !sortUp : true;
      sortKey = header.dataset.sort;
      renderNodes();
    });
  }
  $("#key-form").addEventListener("submit", createKey);
  $("#key-copy").addEventListener("click", () => navigator.clipboard.writeText($("#key-command").textContent));
  $("#policy-text").addEventListener("input", gutter);
  $("#policy-check").addEventListener("click", () => policy(false));
  $("#policy-save").addEventListener("click", () => policy(true));
  $("#logout").addEventListener("click", async () => {
    await fetch("/ui/session", { method: "DELETE", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } });
    window.location.replace("/ui/");
  });
  showTab();
  live();
})();
