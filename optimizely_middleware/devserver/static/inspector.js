// The devserver inspector: long-polls /api/posts and renders what arrives.
// Everything from a payload is put on the page with textContent, never as HTML.
"use strict";

(() => {
  const MAX_POSTS = 500;
  const WAIT_SECONDS = 15;
  const FILTERS = ["visitor", "flag", "event"];

  const $ = (id) => document.getElementById(id);
  const state = {
    since: 0,
    generation: null,
    server: null, // when the devserver started: a new one numbers its POSTs from 1 again
    filters: { visitor: "", flag: "", event: "" },
    controller: null,
    ids: new Set(),
    listed: 0,
    loaded: false, // until the first answer, the page shows "Loading…", not "0" or "No events yet"
  };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function pad(n, width = 2) {
    return String(n).padStart(width, "0");
  }

  function clock(seconds) {
    const d = new Date(seconds * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function show(value) {
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function size(bytes) {
    if (bytes < 1024) return `${bytes} bytes`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  }

  // -- one post ------------------------------------------------------------------

  function renderImpression(impression) {
    const row = el("div", "event impression");
    row.append(el("span", "kind", "decision"));
    const flag = impression.flag_key || impression.rule_key || `experiment ${impression.experiment_id}`;
    row.append(el("span", "key", flag));
    row.append(el("span", "detail", "→"));
    row.append(el("span", "variation", impression.variation_key || `variation ${impression.variation_id}`));
    const rule = [];
    if (impression.flag_key && impression.rule_key) rule.push(`rule ${impression.rule_key}`);
    if (impression.rule_type) rule.push(impression.rule_type);
    if (rule.length) row.append(el("span", "detail", rule.join(" · ")));
    if (impression.flag_key) {
      row.append(el("span", impression.enabled ? "pill" : "pill flag-off", impression.enabled ? "enabled" : "flag off"));
    }
    return row;
  }

  function renderConversion(conversion) {
    const row = el("div", "event conversion");
    row.append(el("span", "kind", "conversion"));
    row.append(el("span", "key", conversion.event_key || `event ${conversion.event_id}`));
    if (conversion.revenue !== null && conversion.revenue !== undefined) {
      row.append(el("span", "pill", `revenue ${show(conversion.revenue)}`));
    }
    if (conversion.value !== null && conversion.value !== undefined) {
      row.append(el("span", "pill", `value ${show(conversion.value)}`));
    }
    for (const [key, value] of Object.entries(conversion.tags || {})) {
      if (key === "revenue" || key === "value") continue;
      row.append(el("span", "pill", `${key}=${show(value)}`));
    }
    return row;
  }

  function renderVisitor(visitor) {
    const item = el("li", "visitor");
    item.dataset.visitorId = visitor.visitor_id;
    const head = el("div", "visitor-head");
    head.append(el("span", "visitor-id", visitor.visitor_id || "(no visitor id)"));
    for (const [key, value] of Object.entries(visitor.attributes || {})) {
      head.append(el("span", key.startsWith("$opt_") ? "attr sdk" : "attr", `${key}=${show(value)}`));
    }
    item.append(head);
    for (const impression of visitor.impressions) item.append(renderImpression(impression));
    for (const conversion of visitor.conversions) item.append(renderConversion(conversion));
    return item;
  }

  function renderRaw(post) {
    const details = el("details", "raw");
    const summary = el("summary", null, "Raw JSON");
    const pre = el("pre", "mono");
    details.append(summary, pre);
    details.addEventListener("toggle", async () => {
      if (!details.open || details.dataset.loaded) return;
      pre.textContent = "Loading…";
      try {
        const response = await fetch(`/api/posts/${post.id}/raw`, { cache: "no-store" });
        if (!response.ok) throw new Error(response.status === 404 ? "This POST is no longer kept (cleared, or let go to bound memory)." : `HTTP ${response.status}`);
        const text = await response.text();
        try {
          pre.textContent = JSON.stringify(JSON.parse(text), null, 2);
        } catch (notJson) {
          pre.textContent = text;
        }
        details.dataset.loaded = "1";
      } catch (error) {
        pre.textContent = String(error.message || error);
      }
    });
    return details;
  }

  function renderPost(post) {
    const item = el("li", "post");
    item.dataset.id = String(post.id);
    const head = el("div", "post-head");
    const time = el("time", null, clock(post.time));
    time.dateTime = post.received_at;
    head.append(time, el("span", "path", `POST ${post.path}`));
    head.append(el("span", post.accepted ? "status" : "status bad", String(post.status)));
    head.append(
      el("span", "size", `${plural(post.visitor_count, "visitor")} · ${plural(post.event_count, "event")} · ${post.bytes} bytes`),
    );
    item.append(head);
    const env = post.envelope || {};
    if (env.account_id !== undefined || env.client_name !== undefined) {
      const parts = [`account ${show(env.account_id)}`, `project ${show(env.project_id)}`, `revision ${show(env.revision)}`];
      if (env.client_name) parts.push(`${env.client_name} ${env.client_version || ""}`.trim());
      item.append(el("p", "envelope muted", parts.join(" · ")));
    }
    const visitors = el("ul", "visitors");
    for (const visitor of post.visitors) visitors.append(renderVisitor(visitor));
    item.append(visitors);
    if (post.visitors.length < post.visitor_count) {
      item.append(el("p", "match-note muted", `${post.visitors.length} of ${plural(post.visitor_count, "visitor")} in this batch match the filters.`));
    }
    if (post.problems.length) {
      const problems = el("ul", "problems");
      for (const problem of post.problems) problems.append(el("li", null, problem));
      item.append(problems);
    }
    item.append(renderRaw(post));
    return item;
  }

  // -- the list ------------------------------------------------------------------

  function addPosts(posts, fresh) {
    const list = $("posts");
    // The API lists newest first; prepend oldest first so the newest ends on top.
    for (const post of [...posts].reverse()) {
      if (state.ids.has(post.id)) continue;
      state.ids.add(post.id);
      const item = renderPost(post);
      if (fresh) item.classList.add("fresh");
      list.prepend(item);
    }
    while (list.children.length > MAX_POSTS) {
      state.ids.delete(Number(list.lastElementChild.dataset.id));
      list.lastElementChild.remove();
    }
    updateShown();
  }

  function resetList() {
    $("posts").replaceChildren();
    state.ids.clear();
    state.since = 0;
    delete document.body.dataset.lastId;
    updateShown();
  }

  function filtering() {
    return FILTERS.some((name) => state.filters[name]);
  }

  function updateShown() {
    const n = $("posts").children.length;
    $("loading").hidden = state.loaded;
    $("empty").hidden = !state.loaded || n > 0 || filtering();
    $("no-match").hidden = !state.loaded || n > 0 || !filtering();
    if (!state.loaded) {
      $("shown").textContent = "";
      return;
    }
    $("shown").textContent = filtering()
      ? `${plural(n, "POST")} ${n === 1 ? "matches" : "match"} the filters, of ${state.listed} in the list.`
      : `${plural(n, "POST")} in the list, newest first.`;
  }

  // -- the counts ----------------------------------------------------------------

  function breakdownRow(name, count, share) {
    const row = el("div", "row");
    row.append(el("span", "name", name), el("span", "count", count));
    const bar = el("div", "bar");
    const fill = el("span");
    fill.style.width = `${Math.round(share * 100)}%`;
    bar.append(fill);
    row.append(bar);
    return row;
  }

  function renderStats(stats) {
    $("endpoint").textContent = stats.endpoint;
    $("since").textContent = `(${clock(Date.parse(stats.since) / 1000).slice(0, 8)})`;
    state.listed = stats.listed;
    const impressions = stats.impressions.reduce((sum, i) => sum + i.count, 0);
    const conversions = stats.conversions.reduce((sum, c) => sum + c.count, 0);
    $("count-visitors").textContent = stats.visitors;
    $("count-impressions").textContent = impressions;
    $("count-conversions").textContent = conversions;
    $("count-posts").textContent = stats.posts;
    $("count-posts").title = `${stats.accepted_posts} accepted, ${stats.rejected_posts} answered with an error`;
    const letGo = $("let-go");
    letGo.hidden = !stats.let_go;
    letGo.textContent = stats.let_go
      ? `${plural(stats.let_go, "older POST")} (${size(stats.let_go_bytes)}) let go to bound memory: ` +
        `the list keeps the newest ${stats.max_posts} within ${size(stats.max_bytes)}. The counts include them.`
      : "";

    const groups = new Map();
    for (const i of stats.impressions) {
      const name = i.flag_key || `${i.rule_key} (experiment)`;
      if (!groups.has(name)) groups.set(name, []);
      groups.get(name).push(i);
    }
    const byFlag = $("impressions");
    byFlag.replaceChildren();
    for (const [name, rows] of groups) {
      const group = el("div", "group");
      group.dataset.flag = name;
      group.append(el("div", "group-name", name));
      const total = rows.reduce((sum, i) => sum + i.count, 0);
      for (const i of rows) {
        const row = breakdownRow(i.variation_key || "(no variation)", i.count, i.count / total);
        row.dataset.variation = i.variation_key;
        group.append(row);
      }
      byFlag.append(group);
    }
    if (!groups.size) byFlag.append(el("p", "muted", "None yet."));

    const byEvent = $("conversions");
    byEvent.replaceChildren();
    for (const c of stats.conversions) {
      const label = c.revenue ? `${c.event_key} · revenue ${c.revenue}` : c.event_key;
      const row = breakdownRow(label, c.count, c.count / conversions);
      row.dataset.event = c.event_key;
      byEvent.append(row);
    }
    if (!stats.conversions.length) byEvent.append(el("p", "muted", "None yet."));
  }

  // -- talking to the devserver --------------------------------------------------

  function setLive(live) {
    const badge = $("live");
    badge.dataset.state = live;
    badge.textContent = live === "live" ? "live" : live === "offline" ? "devserver unreachable, retrying…" : "connecting…";
  }

  async function poll() {
    for (;;) {
      const controller = new AbortController();
      state.controller = controller;
      const params = new URLSearchParams({ since: String(state.since) });
      if (state.generation !== null) {
        params.set("generation", String(state.generation));
        params.set("wait", String(WAIT_SECONDS));
      }
      for (const name of FILTERS) if (state.filters[name]) params.set(name, state.filters[name]);
      try {
        const response = await fetch(`/api/posts?${params}`, { signal: controller.signal, cache: "no-store" });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const data = await response.json();
        if (controller !== state.controller) continue; // the filters changed meanwhile
        if (state.server !== null && data.stats.since !== state.server) {
          state.server = data.stats.since; // the devserver was restarted: start over
          state.generation = null;
          resetList();
          continue;
        }
        state.server = data.stats.since;
        if (state.generation !== null && data.generation !== state.generation) {
          state.generation = data.generation; // cleared (here or elsewhere): start over
          resetList();
          continue;
        }
        const fresh = state.generation !== null;
        state.generation = data.generation;
        state.loaded = true;
        document.body.dataset.loading = "false";
        renderStats(data.stats);
        addPosts(data.posts, fresh);
        state.since = data.last_id;
        // Scripts and tests can wait on this: every POST up to it has been shown or filtered out.
        document.body.dataset.lastId = String(data.last_id);
        setLive("live");
      } catch (error) {
        if (controller.signal.aborted) continue;
        setLive("offline");
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }
  }

  function restart() {
    resetList();
    const controller = state.controller;
    state.controller = null;
    if (controller) controller.abort();
  }

  function readFilters() {
    for (const name of FILTERS) state.filters[name] = $(`filter-${name}`).value.trim();
    const params = new URLSearchParams();
    for (const name of FILTERS) if (state.filters[name]) params.set(name, state.filters[name]);
    const query = params.toString();
    history.replaceState(null, "", query ? `?${query}` : location.pathname);
  }

  function start() {
    // A narrow window shows the totals; the breakdown is a click away.
    if (window.matchMedia("(max-width: 900px)").matches) $("breakdown").open = false;
    const query = new URLSearchParams(location.search);
    for (const name of FILTERS) $(`filter-${name}`).value = query.get(name) || "";
    readFilters();
    let timer = null;
    $("filters").addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        readFilters();
        restart();
      }, 150);
    });
    $("filters").addEventListener("submit", (event) => event.preventDefault());
    $("clear").addEventListener("click", async () => {
      const response = await fetch("/api/posts", { method: "DELETE" });
      if (response.ok) restart();
    });
    updateShown();
    poll();
  }

  start();
})();
