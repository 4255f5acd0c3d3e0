// The live status page of flask-goelect: fetches this node's view of the cluster
// (GET <prefix>/ui/cluster.json) every second and redraws, without reloading.
"use strict";
(function () {
  const body = document.body;
  const url = body.dataset.clusterUrl;
  const params = new URLSearchParams(window.location.search);
  const every = Math.max(200, Number(params.get("interval")) || 1000);
  const colors = { leader: "#15803d", follower: "#1d4ed8", candidate: "#c2410c",
                   observer: "#4b5563", stopped: "#b91c1c", unreachable: "#b91c1c" };
  const svgNS = "http://www.w3.org/2000/svg";

  function el(tag, attrs, text) {
    const node = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function seconds(value) {
    return typeof value === "number" ? value.toFixed(2) + " s" : "–";
  }
  function stateOf(entry) {
    if (!entry.reachable) return "unreachable";
    return entry.state || "unknown";
  }

  function drawPicture(view) {
    const svg = document.getElementById("cluster");
    svg.replaceChildren();
    const ids = Object.keys(view.nodes);
    const cx = 320, cy = 180, r = ids.length > 1 ? 125 : 0;
    const place = {};
    ids.forEach((id, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / ids.length;
      place[id] = [cx + r * Math.cos(a), cy + r * Math.sin(a)];
    });
    const leader = view.leader;
    if (leader && place[leader]) {
      const contact = (view.nodes[leader].last_contact) || {};
      for (const id of ids) {
        if (id === leader) continue;
        const age = contact[id];
        const fresh = typeof age === "number" && age < view.elect_timeout;
        const [x1, y1] = place[leader], [x2, y2] = place[id];
        svg.appendChild(el("line", { x1, y1, x2, y2, class: "link " + (fresh ? "fresh" : "stale") }));
        svg.appendChild(el("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, "text-anchor": "middle",
                                     "font-size": "11", fill: "#374151" },
                           typeof age === "number" ? age.toFixed(2) + " s ago" : "never"));
      }
    }
    for (const id of ids) {
      const entry = view.nodes[id];
      const state = stateOf(entry);
      const [x, y] = place[id];
      const g = el("g", { class: "node", "data-node": id, "data-state": state });
      g.appendChild(el("circle", { cx: x, cy: y, r: 42, stroke: colors[state] || "#6b7280" }));
      g.appendChild(el("text", { x, y: y - 8, class: "name" }, (id === leader ? "★ " : "") + id));
      g.appendChild(el("text", { x, y: y + 10, fill: colors[state] || "#6b7280" }, state));
      g.appendChild(el("text", { x, y: y + 26, fill: "#6b7280" },
                       entry.reachable ? "term " + entry.term : ""));
      svg.appendChild(g);
    }
  }

  function card(id, entry, leader) {
    const div = document.createElement("div");
    const state = stateOf(entry);
    div.className = "node-card";
    div.dataset.node = id;
    div.dataset.state = state;
    const h = document.createElement("h3");
    h.textContent = (id === leader ? "★ " : "") + id + (entry.novote ? " (observer)" : "");
    div.appendChild(h);
    const rows = entry.reachable
      ? [["role", state], ["term", entry.term], ["leader", entry.leader_id || "none"],
         ["lease", entry.is_leader ? seconds(entry.lease_remaining) : "–"],
         ["address", entry.address]]
      : [["role", "unreachable"], ["error", entry.error || "?"], ["address", entry.address]];
    const contact = entry.last_contact || {};
    for (const peer of Object.keys(contact).sort()) {
      rows.push(["heard " + peer, contact[peer] === null ? "never" : seconds(contact[peer]) + " ago"]);
    }
    const dl = document.createElement("dl");
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = String(v);
      dl.append(dt, dd);
    }
    div.appendChild(dl);
    return div;
  }

  function render(view) {
    document.getElementById("leader").textContent = view.leader || "none";
    document.getElementById("term").textContent = view.term === null ? "–" : view.term;
    document.getElementById("updated").textContent =
      "updated " + new Date(view.time * 1000).toLocaleTimeString();
    drawPicture(view);
    const cards = Object.entries(view.nodes).map(([id, e]) => card(id, e, view.leader));
    document.getElementById("nodes").replaceChildren(...cards);
    const me = view.nodes[view.node_id] || {};
    const role = me.reachable ? me.state : null;
    document.querySelectorAll("#fsm g.state").forEach((g) => {
      const r = g.getAttribute("data-role");
      g.classList.toggle("current", r === role || (role === "candidate" && r === "pre-candidate"));
    });
    body.dataset.leader = view.leader || "";
  }

  let inFlight = false;
  async function refresh() {
    if (inFlight) return;
    inFlight = true;
    try {
      const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
    } catch (err) {
      document.getElementById("updated").textContent = "cannot refresh: " + err.message;
    } finally {
      inFlight = false;
    }
  }
  refresh();
  window.setInterval(refresh, every);
})();
