// drainwatch status page: sortable tables and refreshing in place.
// The page works without this script; with it, tables sort on a header click and the page
// fetches itself again (every second while a drain is in progress, every 2 s otherwise) and
// swaps its <main>, keeping open <details>, table sorts and the scroll position.
"use strict";

(function () {
  const sorts = new Map(); // table id -> [column index, direction]

  function cellValue(row, index, type) {
    const cell = row.children[index];
    if (!cell) return type === "number" ? -Infinity : "";
    const raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
    if (type === "number") {
      const value = parseFloat(raw);
      return Number.isNaN(value) ? -Infinity : value;
    }
    return raw.trim().toLowerCase();
  }

  function sortTable(table, index, direction) {
    const head = table.tHead.rows[0].cells;
    const type = head[index].getAttribute("data-type") || "text";
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      const x = cellValue(a, index, type);
      const y = cellValue(b, index, type);
      return (x < y ? -1 : x > y ? 1 : 0) * direction;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.from(head).forEach(function (th, i) {
      if (i === index) th.setAttribute("aria-sort", direction > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    });
    if (table.id) sorts.set(table.id, [index, direction]);
  }

  function wireTables(root) {
    root.querySelectorAll("table.sortable").forEach(function (table) {
      Array.from(table.tHead.rows[0].cells).forEach(function (th, index) {
        const button = th.querySelector("button.sort");
        if (!button) return;
        button.addEventListener("click", function () {
          const current = sorts.get(table.id);
          // numbers sort worst (largest) first on the first click
          const first = th.getAttribute("data-type") === "number" ? -1 : 1;
          const direction = current && current[0] === index ? -current[1] : first;
          sortTable(table, index, direction);
        });
      });
      const kept = sorts.get(table.id);
      if (kept) sortTable(table, kept[0], kept[1]);
    });
  }

  function openDetails(root) {
    const open = new Set();
    root.querySelectorAll("details[open]").forEach(function (item, index) {
      open.add(item.id || "details-" + index);
    });
    return open;
  }

  function restoreDetails(root, open) {
    root.querySelectorAll("details").forEach(function (item, index) {
      if (open.has(item.id || "details-" + index)) item.open = true;
    });
  }

  let timer = null;
  let fetching = false;

  function schedule() {
    const main = document.getElementById("content");
    if (!main) return;
    const every = parseInt(main.getAttribute("data-refresh-ms"), 10);
    if (every > 0) timer = setTimeout(refresh, every);
  }

  async function refresh() {
    timer = null;
    if (document.hidden || fetching) { if (!fetching) schedule(); return; }
    fetching = true;
    try {
      const response = await fetch(window.location.pathname + window.location.search, {
        cache: "no-store", credentials: "same-origin",
      });
      if (response.ok) {
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        const next = fresh.getElementById("content");
        const main = document.getElementById("content");
        if (next && main) {
          const open = openDetails(main);
          const x = window.scrollX, y = window.scrollY;
          main.replaceWith(document.adoptNode(next));
          restoreDetails(next, open);
          wireTables(next);
          window.scrollTo(x, y);
          const live = fresh.getElementById("live");
          const current = document.getElementById("live");
          if (live && current) current.replaceWith(document.adoptNode(live));
          const nav = fresh.querySelector("nav.services");
          const currentNav = document.querySelector("nav.services");
          if (nav && currentNav) currentNav.replaceWith(document.adoptNode(nav));
          document.documentElement.setAttribute("data-refreshed", String(Date.now()));
        }
      }
    } catch (error) {
      const live = document.getElementById("live");
      if (live) live.textContent = "agent unreachable, retrying";
    }
    fetching = false;
    schedule();
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && timer === null && !fetching) refresh();
  });
  wireTables(document);
  schedule();
})();
