// Lattice dashboard. Draws every page in the browser from the public API
// (/api/v1), with the session cookie and its CSRF header: it can do nothing the API
// does not let this user do. No framework, no build step; text is always set as
// text (never parsed as HTML), so API values cannot inject markup.
"use strict";

(() => {
  // ------------------------------------------------------------------ helpers

  /** Create an element: h("a", {href: "/x", onclick: f}, "text", child, ...). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    append(el, children);
    return el;
  }
  function append(el, ...children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const $ = (sel, root = document) => root.querySelector(sel);

  function cookie(name) {
    for (const part of document.cookie.split(";")) {
      const [k, ...v] = part.trim().split("=");
      if (k === name) return decodeURIComponent(v.join("="));
    }
    return "";
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Call the API; JSON in and out. Throws ApiError with the server's message. */
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = cookie("lattice_csrf");
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers,
        credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, "network", "The server did not answer (" + e.message + ").");
    }
    const text = await resp.text();
    let data = null;
    if (text && (resp.headers.get("content-type") || "").includes("json")) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (!resp.ok) {
      const err = (data && data.error) || {};
      const e = new ApiError(resp.status, err.code || "http_" + resp.status, err.message || text || resp.statusText);
      if (resp.status === 401 && !path.startsWith("/api/v1/auth/login")) {
        state.me = null;
        go("/ui/login?next=" + encodeURIComponent(location.pathname + location.search), true);
      }
      throw e;
    }
    return data === null ? text : data;
  }

  const fmt = {
    time(ms) {
      if (!ms) return "never";
      return new Date(ms).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
    },
    ago(ms) {
      if (!ms) return "never";
      const s = Math.round((Date.now() - ms) / 1000);
      if (s < 5) return "just now";
      if (s < 60) return s + " s ago";
      if (s < 3600) return Math.round(s / 60) + " min ago";
      if (s < 86400) return Math.round(s / 3600) + " h ago";
      return Math.round(s / 86400) + " d ago";
    },
    bytes(n) {
      if (n === null || n === undefined) return "";
      const u = ["B", "KiB", "MiB", "GiB", "TiB"];
      let i = 0;
      while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
      return (i ? n.toFixed(1) : n) + " " + u[i];
    },
  };

  function badge(status) {
    const cls = {
      connected: "ok", succeeded: "ok", approved: "ok", applied: "ok", active: "ok",
      disconnected: "bad", failed: "bad", dead: "bad", rejected: "bad",
      never_connected: "warn", queued: "warn", running: "warn", pending: "warn", cancelled: "",
    }[status];
    return h("span", { class: "badge " + (cls || "") }, String(status).replace(/_/g, " "));
  }

  function errorBox(e) {
    return h("div", { class: "error", role: "alert" }, e instanceof ApiError || e instanceof Error ? e.message : String(e));
  }

  /** A form's submit handler that shows the API's error next to the form and keeps its input. */
  function submitting(form, fn) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = form.querySelector(".form-error") || form.appendChild(h("div", { class: "form-error", "aria-live": "polite" }));
      out.replaceChildren();
      const button = form.querySelector("button[type=submit]");
      if (button) button.disabled = true;
      try {
        await fn(new FormData(form));
      } catch (e) {
        out.replaceChildren(errorBox(e));
        const field = e.message && [...form.elements].find((f) => f.name && e.message.startsWith(f.name + ":"));
        if (field) { field.setAttribute("aria-invalid", "true"); field.focus(); }
      } finally {
        if (button) button.disabled = false;
      }
    });
    return form;
  }

  function confirmDialog(question, action = "Delete") {
    return new Promise((resolve) => {
      const dlg = h("dialog", { "aria-labelledby": "confirm-q" },
        h("p", { id: "confirm-q" }, question),
        h("div", { class: "row" },
          h("button", { class: "danger", value: "yes", onclick: () => { dlg.close(); resolve(true); } }, action),
          h("button", { class: "secondary", value: "no", onclick: () => { dlg.close(); resolve(false); } }, "Cancel")));
      dlg.addEventListener("cancel", () => resolve(false));
      dlg.addEventListener("close", () => dlg.remove());
      document.body.append(dlg);
      dlg.showModal();
    });
  }

  function copyButton(text) {
    const b = h("button", { class: "secondary", type: "button" }, "Copy");
    b.addEventListener("click", async () => {
      try { await navigator.clipboard.writeText(text); b.textContent = "Copied"; } catch { b.textContent = "Select and copy"; }
    });
    return b;
  }

  /** Load a script or stylesheet named on <body> (data-*), once. */
  const loaded = {};
  function load(key) {
    if (!loaded[key]) {
      const url = document.body.dataset[key];
      loaded[key] = new Promise((resolve, reject) => {
        const el = key.endsWith("Css")
          ? h("link", { rel: "stylesheet", href: url })
          : h("script", { src: url });
        el.addEventListener("load", resolve);
        el.addEventListener("error", () => reject(new Error("could not load " + url)));
        document.head.append(el);
      });
    }
    return loaded[key];
  }

  // ------------------------------------------------------------------ state and routing

  const state = { me: null, timers: [] };

  const routes = [
    [/^\/ui\/login$/, pageLogin, { public: true }],
    [/^\/ui\/?$/, pageOverview],
    [/^\/ui\/nodes$/, pageNodes],
    [/^\/ui\/nodes\/([^/]+)$/, pageNode],
    [/^\/ui\/tasks$/, pageTasks],
    [/^\/ui\/tasks\/([^/]+)$/, pageTask],
    [/^\/ui\/account$/, pageAccount],
  ];

  const nav = [
    ["Fleet", [["/ui/", "Overview"], ["/ui/nodes", "Nodes"], ["/ui/tasks", "Tasks"]]],
    ["You", [["/ui/account", "Account and security"]]],
  ];

  function go(path, replace = false) {
    if (replace) history.replaceState(null, "", path);
    else history.pushState(null, "", path);
    render();
  }

  document.addEventListener("click", (ev) => {
    const a = ev.target.closest("a");
    if (!a || a.target || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || !url.pathname.startsWith("/ui")) return;
    ev.preventDefault();
    go(url.pathname + url.search);
  });
  window.addEventListener("popstate", render);

  function stopTimers() {
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
  }
  function every(ms, fn) {
    state.timers.push(setInterval(fn, ms));
  }

  async function render() {
    stopTimers();
    const path = location.pathname;
    const match = routes.map(([re, page, opts]) => [path.match(re), page, opts || {}]).find(([m]) => m);
    if (!match) return frame(h("h1", {}, "Not found"), h("p", {}, "No dashboard page at " + path + "."), h("a", { href: "/ui/" }, "To the overview"));
    const [m, page, opts] = match;
    if (!opts.public && !state.me) {
      try {
        state.me = await api("GET", "/api/v1/auth/me");
      } catch (e) {
        if (e.status !== 401) frame(errorBox(e));
        return;
      }
    }
    try {
      await page(...m.slice(1).map(decodeURIComponent));
    } catch (e) {
      if (e.status !== 401) frame(h("h1", {}, "Something went wrong"), errorBox(e));
    }
  }

  /** Put a page in the layout (header, navigation, main) and move focus to it. */
  function frame(...content) {
    const app = $("#app");
    const main = h("main", { id: "main", tabindex: "-1" }, content);
    if (!state.me) {
      app.replaceChildren(main);
    } else {
      const here = location.pathname;
      const links = nav.map(([group, items]) => [
        h("li", { class: "group", "aria-hidden": "true" }, group),
        items.map(([href, label]) => h("li", {}, h("a", {
          href,
          "aria-current": (href === "/ui/" ? here === "/ui/" || here === "/ui" : here.startsWith(href)) ? "page" : null,
        }, label))),
      ]);
      app.replaceChildren(h("div", { class: "layout" },
        h("header", { class: "top" },
          h("a", { class: "brand", href: "/ui/" }, "Lattice"),
          h("span", { class: "who" }, state.me.org_name),
          h("span", { class: "spacer" }),
          h("a", { href: "/ui/account", class: "who" }, state.me.username),
          h("button", { class: "secondary", type: "button", onclick: logout }, "Sign out")),
        h("nav", { class: "side", "aria-label": "Main" }, h("ul", {}, links)),
        main));
    }
    const title = main.querySelector("h1");
    document.title = (title ? title.textContent + " · " : "") + "Lattice";
    main.focus({ preventScroll: true });
    return main;
  }

  async function logout() {
    try { await api("POST", "/api/v1/auth/logout"); } catch { /* the session may be gone already */ }
    state.me = null;
    go("/ui/login", true);
  }

  // ------------------------------------------------------------------ sign-in

  async function pageLogin() {
    const next = new URLSearchParams(location.search).get("next") || "/ui/";
    const safeNext = next.startsWith("/ui") ? next : "/ui/";
    const done = (answer) => {
      state.me = answer.user;
      go(safeNext, true);
    };
    const step1 = submitting(h("form", { class: "stack", "aria-labelledby": "signin-title" },
      h("label", {}, "Username", h("input", { name: "username", autocomplete: "username", required: true, autofocus: true })),
      h("label", {}, "Password", h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
      h("button", { type: "submit" }, "Sign in")), async (data) => {
      const answer = await api("POST", "/api/v1/auth/login", {
        username: data.get("username"), password: data.get("password"),
      });
      if (!answer.mfa_required) return done(answer);
      const step2 = submitting(h("form", { class: "stack" },
        h("p", {}, "Enter the code from your authenticator app, or a recovery code."),
        h("label", {}, "Code", h("input", { name: "code", inputmode: "numeric", autocomplete: "one-time-code", required: true, autofocus: true })),
        h("button", { type: "submit" }, "Verify")), async (d) => {
        done(await api("POST", "/api/v1/auth/login/totp", { mfa_token: answer.mfa_token, code: d.get("code").trim() }));
      });
      step1.replaceWith(step2);
      step2.querySelector("input").focus();
    });
    frame(h("div", { class: "signin" }, h("h1", { id: "signin-title" }, "Sign in to Lattice"), step1));
    step1.querySelector("input").focus();
  }

  // ------------------------------------------------------------------ overview

  function firstRunNotice() {
    if (state.me.totp_enabled) return null;
    return h("div", { class: "notice", role: "note" },
      h("strong", {}, "Secure your account. "),
      "Your account has no second factor. If you signed in with the password printed at the first start, change it, then enable TOTP: ",
      h("a", { href: "/ui/account" }, "Account and security"), ".");
  }

  async function pageOverview() {
    const main = frame(h("h1", {}, "Overview"), firstRunNotice(), h("p", { class: "loading" }, "Loading…"));
    const [nodes, failed] = await Promise.all([
      api("GET", "/api/v1/nodes").catch((e) => e),
      api("GET", "/api/v1/tasks?state=failed&limit=5").catch((e) => e),
    ]);
    const plans = await api("GET", "/api/v1/plans?limit=50").catch((e) => e);
    const cards = h("div", { class: "cards" });
    const sections = [];
    if (nodes instanceof Error) sections.push(h("h2", {}, "Nodes"), errorBox(nodes));
    else {
      const count = (s) => nodes.nodes.filter((n) => n.status === s).length;
      append(cards, [
        h("a", { class: "card", href: "/ui/nodes" }, h("div", { class: "n" }, count("connected")), h("div", { class: "l" }, "nodes connected")),
        h("a", { class: "card", href: "/ui/nodes" }, h("div", { class: "n" }, count("disconnected") + count("never_connected")), h("div", { class: "l" }, "nodes not connected")),
      ]);
    }
    if (!(plans instanceof Error)) {
      const pending = plans.plans.filter((p) => p.state === "pending");
      append(cards, h("div", { class: "card" }, h("div", { class: "n" }, pending.length), h("div", { class: "l" }, "plans waiting for approval")));
    }
    sections.push(h("h2", {}, "Recent failures"));
    if (failed instanceof Error) sections.push(errorBox(failed));
    else if (!failed.tasks.length) sections.push(h("p", { class: "empty" }, "No failed tasks."));
    else sections.push(taskTable(failed.tasks));
    main.querySelector(".loading").replaceWith(cards, ...sections);
  }

  // ------------------------------------------------------------------ nodes

  async function pageNodes() {
    const main = frame(h("h1", {}, "Nodes"),
      h("div", { class: "row" }, h("button", { type: "button", onclick: addNode }, "Add node")),
      h("div", { id: "join" }),
      h("div", { id: "node-list" }, h("p", { class: "loading" }, "Loading…")));
    const list = await api("GET", "/api/v1/nodes");
    const rows = list.nodes.map((n) => h("tr", {},
      h("td", {}, h("a", { href: "/ui/nodes/" + encodeURIComponent(n.id) }, n.hostname || n.id)),
      h("td", {}, badge(n.status)),
      h("td", {}, Object.entries(n.labels).map(([k, v]) => h("span", { class: "tag" }, k + "=" + v))),
      h("td", {}, n.agent_version),
      h("td", { title: fmt.time(n.last_seen_ms) }, fmt.ago(n.last_seen_ms))));
    $("#node-list", main).replaceChildren(rows.length
      ? h("table", {}, h("caption", { class: "sr-only" }, "Nodes"),
        h("thead", {}, h("tr", {}, ["Node", "Status", "Labels", "Agent", "Last seen"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows))
      : h("p", { class: "empty" }, "No nodes yet. Add one: it needs the agent installed with a join token."));
  }

  function addNode() {
    const box = $("#join");
    const form = submitting(h("form", { class: "panel stack", "aria-labelledby": "join-title" },
      h("h2", { id: "join-title" }, "Add a node"),
      h("label", {}, "Labels", h("span", { class: "hint" }, "Optional, key=value separated by commas (env=prod, role=web)"),
        h("input", { name: "labels", placeholder: "env=prod" })),
      h("label", {}, "Valid for (hours)", h("input", { name: "hours", type: "number", min: 1, max: 168, value: 1 })),
      h("div", { class: "row" }, h("button", { type: "submit" }, "Create join token"),
        h("button", { type: "button", class: "secondary", onclick: () => box.replaceChildren() }, "Cancel"))), async (data) => {
      const labels = {};
      for (const pair of String(data.get("labels")).split(",").map((s) => s.trim()).filter(Boolean)) {
        const [k, ...v] = pair.split("=");
        if (!v.length) throw new Error("labels: " + JSON.stringify(pair) + " is not key=value");
        labels[k.trim()] = v.join("=").trim();
      }
      const t = await api("POST", "/api/v1/nodes/join-tokens", { labels, expires_in_s: Math.round(Number(data.get("hours")) * 3600) });
      box.replaceChildren(h("div", { class: "panel" },
        h("h2", {}, "Install the agent"),
        h("p", {}, "On the node, with lattice-agent and its systemd unit installed (deploy/install-agent.sh does both), run the command below. The token works once, until " + fmt.time(t.expires_at_ms) + ", and is not shown again."),
        h("div", { class: "secret" }, h("pre", { "aria-label": "Install command" }, t.install_command), copyButton(t.install_command)),
        h("p", {}, "The node appears in the list below when its agent connects."),
        h("button", { type: "button", class: "secondary", onclick: () => { box.replaceChildren(); pageNodes(); } }, "Done")));
      every(5000, async () => {
        const list = await api("GET", "/api/v1/nodes").catch(() => null);
        if (list && !$("#node-list table")) pageNodesRefresh(list);
      });
    });
    box.replaceChildren(form);
    form.querySelector("input").focus();
  }

  function pageNodesRefresh(list) {
    if (list.nodes.length) {
      const keep = $("#join").firstChild;
      pageNodes().then(() => { if (keep) $("#join").replaceChildren(keep); });
    }
  }

  async function pageNode(id) {
    const n = await api("GET", "/api/v1/nodes/" + encodeURIComponent(id));
    const main = frame(
      h("h1", {}, n.hostname || n.id),
      h("p", { class: "sub" }, badge(n.status), " ", n.status_reason || "", " · agent ", n.agent_version || "unknown",
        " · last seen ", h("span", { title: fmt.time(n.last_seen_ms) }, fmt.ago(n.last_seen_ms))),
      h("div", { class: "grid2" },
        h("section", { class: "panel", "aria-labelledby": "facts-h" }, h("h2", { id: "facts-h" }, "Host facts"), factsList(n.facts)),
        h("section", { class: "panel", "aria-labelledby": "caps-h" }, h("h2", { id: "caps-h" }, "Capabilities"), capabilitiesForm(n))),
      h("section", { "aria-labelledby": "metrics-h" }, h("h2", { id: "metrics-h" }, "Metrics"), h("div", { id: "charts", class: "charts" }, h("p", { class: "loading" }, "Loading…"))),
      h("section", { "aria-labelledby": "logs-h" }, h("h2", { id: "logs-h" }, "Logs"), logViewer(n.id)),
      h("section", { "aria-labelledby": "tasks-h" }, h("h2", { id: "tasks-h" }, "Tasks"), h("div", { id: "node-tasks" }, h("p", { class: "loading" }, "Loading…"))),
      h("section", { class: "panel", "aria-labelledby": "danger-h" }, h("h2", { id: "danger-h" }, "Remove"),
        h("p", {}, "Deleting the node revokes its credential and closes its stream; to bring it back, enroll it again."),
        h("button", { class: "danger", type: "button", onclick: async (ev) => {
          if (!(await confirmDialog("Delete node " + (n.hostname || n.id) + "? Its agent is cut off at once.", "Delete node"))) return;
          try { await api("DELETE", "/api/v1/nodes/" + encodeURIComponent(n.id)); go("/ui/nodes"); } catch (e) { ev.target.after(errorBox(e)); }
        } }, "Delete node")));
    const tasks = await api("GET", "/api/v1/tasks?limit=20&node=" + encodeURIComponent(n.id)).catch((e) => e);
    $("#node-tasks", main).replaceChildren(tasks instanceof Error ? errorBox(tasks) : tasks.tasks.length ? taskTable(tasks.tasks) : h("p", { class: "empty" }, "No tasks for this node."));
    await charts(n.id);
    every(15000, () => charts(n.id));
  }

  function factsList(facts) {
    if (!facts || typeof facts !== "object") return h("p", { class: "empty" }, "The agent has not sent facts yet.");
    const show = (v) => typeof v === "object" && v !== null ? JSON.stringify(v) : String(v);
    return h("dl", { class: "facts" }, Object.entries(facts).map(([k, v]) => [h("dt", {}, k.replace(/_/g, " ")), h("dd", {}, show(v))]));
  }

  function capabilitiesForm(n) {
    const all = ["exec", "firewall", "dns", "proxy", "update"];
    const form = submitting(h("form", { class: "stack" },
      h("p", { class: "hint" }, "A privileged task runs only when it is enabled here and in the agent's own configuration. The agent allows: " + (n.agent_capabilities.join(", ") || "nothing") + "."),
      h("fieldset", {}, h("legend", {}, "Enabled on the server"),
        all.map((c) => h("label", { class: "inline" }, h("input", { type: "checkbox", name: "cap", value: c, checked: n.capabilities.includes(c) }), c,
          n.agent_capabilities.includes(c) ? "" : h("span", { class: "hint" }, " (not allowed by the agent)")))),
      h("div", {}, h("button", { type: "submit" }, "Save capabilities"))), async (data) => {
      await api("PATCH", "/api/v1/nodes/" + encodeURIComponent(n.id), { capabilities: data.getAll("cap") });
      form.querySelector(".form-error").replaceChildren(h("div", { class: "success", role: "status" }, "Saved."));
    });
    return form;
  }

  /** Charts of the node's samples: CPU, memory, disk and network, with uPlot. */
  async function charts(id) {
    const box = $("#charts");
    if (!box) return;
    const since = Date.now() - 3600 * 1000;
    let samples;
    try {
      samples = (await api("GET", "/api/v1/nodes/" + encodeURIComponent(id) + "/metrics?since=" + since)).samples;
      await Promise.all([load("uplotJs"), load("uplotCss")]);
    } catch (e) {
      box.replaceChildren(errorBox(e));
      return;
    }
    if (!samples.length) {
      box.replaceChildren(h("p", { class: "empty" }, "No samples yet: the agent sends one a minute."));
      return;
    }
    samples.sort((a, b) => a.at_ms - b.at_ms);
    const t = samples.map((s) => s.at_ms / 1000);
    const cpu = samples.map((s) => s.cpu_percent);
    const mem = samples.map((s) => s.memory_total_bytes ? 100 * (1 - s.memory_available_bytes / s.memory_total_bytes) : null);
    const disk = samples.map((s) => {
      const d = s.disks.find((x) => x.mount === "/") || s.disks[0];
      return d && d.total_bytes ? 100 * d.used_bytes / d.total_bytes : null;
    });
    const sum = (s, f) => s.net.reduce((a, n) => a + n[f], 0);
    const rate = (f) => samples.map((s, i) => {
      if (!i) return null;
      const dt = (s.at_ms - samples[i - 1].at_ms) / 1000;
      const d = sum(s, f) - sum(samples[i - 1], f);
      return dt > 0 && d >= 0 ? d / dt : null;
    });
    const specs = [
      ["CPU", "%", [["cpu", cpu]]],
      ["Memory used", "%", [["memory", mem]]],
      ["Disk used (/)", "%", [["disk", disk]]],
      ["Network", "B/s", [["received", rate("rx_bytes")], ["sent", rate("tx_bytes")]]],
    ];
    box.replaceChildren();
    const width = Math.max(280, Math.min(560, box.clientWidth / 2 - 24));
    const colors = ["#2563eb", "#db2777"];
    for (const [title, unit, series] of specs) {
      const last = series.map(([name, v]) => name + " " + formatValue(v[v.length - 1], unit)).join(", ");
      const fig = h("figure", { class: "chart", "aria-label": title + ", last hour; latest: " + last },
        h("h3", {}, title), h("figcaption", { class: "sr-only" }, "Latest: " + last));
      box.append(fig);
      // eslint-disable-next-line no-undef
      new uPlot({
        width, height: 160,
        scales: unit === "%" ? { y: { range: [0, 100] } } : {},
        axes: [{}, { values: (_, ticks) => ticks.map((v) => formatValue(v, unit)), size: 70 }],
        series: [{}, ...series.map(([label], i) => ({ label, stroke: colors[i], width: 1.5 }))],
      }, [t, ...series.map(([, v]) => v)], fig);
    }
  }

  function formatValue(v, unit) {
    if (v === null || v === undefined) return "–";
    if (unit === "%") return v.toFixed(1) + " %";
    return fmt.bytes(Math.round(v)) + "/s";
  }

  function logViewer(id) {
    const out = h("div", { class: "logs", role: "log", "aria-live": "off", tabindex: "0", "aria-label": "Log lines" });
    let newest = 0;
    let follow = null;
    const form = h("form", { class: "row", role: "search" },
      h("label", {}, "Unit or file", h("input", { name: "unit", placeholder: "nginx.service" })),
      h("label", {}, "Text", h("input", { name: "q", placeholder: "error" })),
      h("button", { type: "submit" }, "Show"),
      h("label", { class: "inline" }, h("input", { type: "checkbox", name: "follow" }), "Follow"));
    const query = () => {
      const d = new FormData(form);
      return "&unit=" + encodeURIComponent(d.get("unit") || "") + "&q=" + encodeURIComponent(d.get("q") || "");
    };
    const line = (e) => h("div", { class: "line p" + e.priority }, h("span", { class: "t" }, new Date(e.at_ms).toISOString().replace("T", " ").slice(0, 19) + " " + e.unit + " "), e.message);
    const fetchLines = async (append_) => {
      const since = append_ ? newest + 1 : Date.now() - 3600 * 1000;
      try {
        const r = await api("GET", "/api/v1/nodes/" + encodeURIComponent(id) + "/logs?limit=500&since=" + since + query());
        const entries = r.entries.sort((a, b) => a.at_ms - b.at_ms);
        if (!append_) out.replaceChildren();
        for (const e of entries) { out.append(line(e)); newest = Math.max(newest, e.at_ms); }
        if (!out.childElementCount) out.append(h("p", { class: "empty" }, "No log lines in the last hour (the agent sends logs only for the units its configuration names)."));
        out.scrollTop = out.scrollHeight;
      } catch (e) {
        out.replaceChildren(errorBox(e));
      }
    };
    form.addEventListener("submit", (ev) => { ev.preventDefault(); newest = 0; fetchLines(false); });
    form.elements.follow.addEventListener("change", (ev) => {
      if (follow) { clearInterval(follow); state.timers = state.timers.filter((t) => t !== follow); follow = null; }
      if (ev.target.checked) { follow = setInterval(() => fetchLines(true), 3000); state.timers.push(follow); }
    });
    fetchLines(false);
    return h("div", {}, form, out);
  }

  // ------------------------------------------------------------------ tasks

  function taskTable(tasks) {
    return h("table", {}, h("caption", { class: "sr-only" }, "Tasks"),
      h("thead", {}, h("tr", {}, ["Task", "Kind", "Node", "State", "Attempts", "Created"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, tasks.map((t) => h("tr", {},
        h("td", {}, h("a", { href: "/ui/tasks/" + encodeURIComponent(t.id), class: "mono" }, t.id.slice(0, 13))),
        h("td", {}, t.kind),
        h("td", {}, h("a", { href: "/ui/nodes/" + encodeURIComponent(t.node), class: "mono" }, t.node.slice(0, 13))),
        h("td", {}, badge(t.state), t.error ? h("div", { class: "hint" }, t.error) : null),
        h("td", { class: "num" }, t.attempts + "/" + t.max_attempts),
        h("td", { title: fmt.time(t.created_at_ms) }, fmt.ago(t.created_at_ms))))));
  }

  async function pageTasks() {
    const params = new URLSearchParams(location.search);
    const filters = h("form", { class: "row", role: "search" },
      h("label", {}, "State", h("select", { name: "state" },
        ["", "queued", "running", "succeeded", "failed", "cancelled", "dead"].map((s) => h("option", { value: s, selected: params.get("state") === s }, s || "any")))),
      h("label", {}, "Node id", h("input", { name: "node", value: params.get("node") || "" })),
      h("button", { type: "submit" }, "Filter"));
    filters.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const d = new FormData(filters);
      const q = new URLSearchParams();
      for (const k of ["state", "node"]) if (d.get(k)) q.set(k, d.get(k));
      go("/ui/tasks" + (q.toString() ? "?" + q : ""));
    });
    const main = frame(h("h1", {}, "Tasks"), filters, h("div", { id: "task-list" }, h("p", { class: "loading" }, "Loading…")));
    const q = new URLSearchParams({ limit: "100" });
    for (const k of ["state", "node"]) if (params.get(k)) q.set(k, params.get(k));
    try {
      const r = await api("GET", "/api/v1/tasks?" + q);
      $("#task-list", main).replaceChildren(r.tasks.length ? taskTable(r.tasks) : h("p", { class: "empty" }, "No tasks match."));
    } catch (e) {
      $("#task-list", main).replaceChildren(errorBox(e));
    }
  }

  async function pageTask(id) {
    const t = await api("GET", "/api/v1/tasks/" + encodeURIComponent(id));
    const cancellable = t.state === "queued" || t.state === "running";
    frame(h("h1", {}, "Task " + t.kind),
      h("p", { class: "sub" }, badge(t.state), " on ", h("a", { href: "/ui/nodes/" + encodeURIComponent(t.node) }, t.node)),
      h("div", { class: "panel" }, h("dl", { class: "facts" },
        [["Id", t.id], ["Created", fmt.time(t.created_at_ms) + " by " + t.created_by], ["Started", fmt.time(t.started_at_ms)],
          ["Finished", fmt.time(t.finished_at_ms)], ["Attempts", t.attempts + " of " + t.max_attempts], ["Epoch", t.epoch],
          ["Error", t.error ? (t.error_code || "") + " " + t.error : "none"]].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
      h("h2", {}, "Payload"), h("pre", {}, JSON.stringify(t.payload, null, 2)),
      h("h2", {}, "Result"), t.result ? h("pre", {}, JSON.stringify(t.result, null, 2)) : h("p", { class: "empty" }, "No result yet."),
      cancellable ? h("button", { class: "danger", type: "button", onclick: async (ev) => {
        if (!(await confirmDialog("Cancel this task?", "Cancel task"))) return;
        try { await api("POST", "/api/v1/tasks/" + encodeURIComponent(t.id) + "/cancel"); render(); } catch (e) { ev.target.after(errorBox(e)); }
      } }, "Cancel task") : null);
  }

  // ------------------------------------------------------------------ account

  async function pageAccount() {
    const me = state.me;
    const pw = submitting(h("form", { class: "stack", "aria-labelledby": "pw-h" },
      h("h2", { id: "pw-h" }, "Change password"),
      h("label", {}, "Current password", h("input", { name: "current_password", type: "password", autocomplete: "current-password", required: true })),
      h("label", {}, "New password", h("span", { class: "hint" }, "At least 12 characters"),
        h("input", { name: "new_password", type: "password", autocomplete: "new-password", required: true, minlength: 12 })),
      h("div", {}, h("button", { type: "submit" }, "Change password"))), async (d) => {
      await api("POST", "/api/v1/auth/password", { current_password: d.get("current_password"), new_password: d.get("new_password") });
      pw.reset();
      pw.querySelector(".form-error").replaceChildren(h("div", { class: "success", role: "status" }, "Password changed. Your other sessions were signed out."));
    });
    const totp = h("section", { class: "panel", "aria-labelledby": "totp-h" }, h("h2", { id: "totp-h" }, "Two-factor authentication (TOTP)"));
    if (me.totp_enabled) {
      append(totp, h("p", {}, "TOTP is on: signing in asks for a code from your authenticator app."),
        submitting(h("form", { class: "stack" },
          h("label", {}, "Code or recovery code", h("input", { name: "code", autocomplete: "one-time-code", required: true })),
          h("div", {}, h("button", { type: "submit", class: "danger" }, "Turn TOTP off"))), async (d) => {
          await api("POST", "/api/v1/auth/totp/disable", { code: d.get("code").trim() });
          state.me = await api("GET", "/api/v1/auth/me");
          pageAccount();
        }));
    } else {
      append(totp, h("p", {}, "TOTP is off. Turn it on to protect your account with a code from an authenticator app."),
        h("button", { type: "button", onclick: () => enrollTotp(totp) }, "Set up TOTP"));
    }
    frame(h("h1", {}, "Account and security"), firstRunNotice(),
      h("p", { class: "sub" }, me.username + " in " + me.org_name + " · scopes: " + me.scopes.join(", ")),
      totp, h("section", { class: "panel" }, pw));
  }

  async function enrollTotp(box) {
    let e;
    try { e = await api("POST", "/api/v1/auth/totp/enroll"); await load("qrcodeJs"); } catch (err) { box.append(errorBox(err)); return; }
    // eslint-disable-next-line no-undef
    const qr = qrcode(0, "M");
    qr.addData(e.otpauth_uri);
    qr.make();
    const n = qr.getModuleCount();
    let d = "";
    for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) if (qr.isDark(r, c)) d += "M" + c + " " + r + "h1v1h-1z";
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 " + n + " " + n);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "QR code of the TOTP secret");
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", d);
    path.setAttribute("fill", "#000");
    svg.append(path);
    const form = submitting(h("form", { class: "stack" },
      h("label", {}, "Code from the app", h("input", { name: "code", inputmode: "numeric", autocomplete: "one-time-code", required: true })),
      h("div", {}, h("button", { type: "submit" }, "Turn TOTP on"))), async (d2) => {
      const r = await api("POST", "/api/v1/auth/totp/confirm", { code: d2.get("code").trim() });
      state.me = await api("GET", "/api/v1/auth/me");
      const codes = r.recovery_codes.join("\n");
      box.replaceChildren(h("h2", { id: "totp-h" }, "TOTP is on"),
        h("div", { class: "success", role: "status" }, "Keep these recovery codes somewhere safe. Each works once, instead of a code, and they are not shown again."),
        h("div", { class: "secret" }, h("pre", { "aria-label": "Recovery codes", id: "recovery-codes" }, codes), copyButton(codes)),
        h("button", { type: "button", onclick: () => go("/ui/") }, "I have saved them"));
    });
    box.replaceChildren(h("h2", { id: "totp-h" }, "Set up TOTP"),
      h("p", {}, "Scan the code with your authenticator app, or type the secret into it, then enter the code it shows."),
      h("div", { class: "qr" }, svg),
      h("p", {}, "Secret: ", h("code", { id: "totp-secret" }, e.secret)),
      form);
    form.querySelector("input").focus();
  }

  render();
})();
