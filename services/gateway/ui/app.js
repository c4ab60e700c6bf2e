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
    return (await call(method, path, { json: body })).data;
  }

  /**
   * Call the API with options: `json` (a body to send as JSON), `raw` (a body as is,
   * with `type`), `headers`. Returns {data, headers}; throws ApiError.
   */
  async function call(method, path, opts = {}) {
    const headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    if (method !== "GET") headers["X-CSRF-Token"] = cookie("lattice_csrf");
    let body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    } else if (opts.raw !== undefined) {
      headers["Content-Type"] = opts.type || "application/octet-stream";
      body = opts.raw;
    }
    let resp;
    try {
      resp = await fetch(path, { method, headers, credentials: "same-origin", body });
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
      if (resp.status === 401 && !path.startsWith("/api/v1/auth/login") && location.pathname !== "/ui/login") {
        state.me = null;
        go("/ui/login?next=" + encodeURIComponent(location.pathname + location.search), true);
      }
      throw e;
    }
    return { data: data === null ? text : data, headers: resp.headers };
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

  /** Show `e` right after `el`, replacing the error shown there before. */
  function errorBeside(el, e) {
    const next = el.nextElementSibling;
    if (next && next.classList.contains("error")) next.remove();
    el.after(errorBox(e));
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
        // The API names the field ("spec.rules[0].ports: ..."): mark the first named.
        let field = null;
        let at = Infinity;
        for (const f of form.elements) {
          if (!f.name || !e.message) continue;
          const m = e.message.match(new RegExp("(^|[\\s(])" + f.name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "[:.\\[]"));
          if (m && m.index < at) { at = m.index; field = f; }
        }
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

  // gen: which navigation is current (a page that finishes loading after the user
  // moved on draws nothing); charts: the uPlot instances on the page.
  const state = { me: null, timers: [], gen: 0, charts: [] };

  const routes = [
    [/^\/ui\/login$/, pageLogin, { public: true }],
    [/^\/ui\/?$/, pageOverview],
    [/^\/ui\/nodes$/, pageNodes],
    [/^\/ui\/nodes\/([^/]+)$/, pageNode],
    [/^\/ui\/tasks$/, pageTasks],
    [/^\/ui\/tasks\/([^/]+)$/, pageTask],
    [/^\/ui\/account$/, pageAccount],
    [/^\/ui\/kv$/, () => pageStorage("kv")],
    [/^\/ui\/static$/, () => pageStorage("static")],
    [/^\/ui\/changes$/, pageChanges],
    [/^\/ui\/changes\/intents\/new$/, () => pageIntent(null)],
    [/^\/ui\/changes\/intents\/([^/]+)$/, pageIntent],
    [/^\/ui\/changes\/plans\/([^/]+)$/, pagePlan],
    [/^\/ui\/policies$/, pagePolicies],
    [/^\/ui\/policies\/new$/, () => pagePolicy(null)],
    [/^\/ui\/policies\/([^/]+)$/, pagePolicy],
    [/^\/ui\/settings\/users$/, pageUsers],
    [/^\/ui\/settings\/groups$/, pageGroups],
    [/^\/ui\/settings\/tokens$/, pageTokens],
    [/^\/ui\/settings\/sso$/, pageSso],
    [/^\/ui\/settings\/orgs$/, pageOrgs],
    [/^\/ui\/settings\/audit$/, pageAudit],
    [/^\/ui\/invitations$/, pageInvitation],
  ];

  const nav = [
    ["Fleet", [["/ui/", "Overview"], ["/ui/nodes", "Nodes"], ["/ui/tasks", "Tasks"]]],
    ["Changes", [["/ui/changes", "Reviewed changes"], ["/ui/policies", "Policies"]]],
    ["Platform", [["/ui/kv", "KV Store"], ["/ui/static", "Static"]]],
    ["Settings", [["/ui/settings/users", "Users"], ["/ui/settings/groups", "Groups"], ["/ui/settings/tokens", "API tokens"],
      ["/ui/settings/sso", "Single sign-on"], ["/ui/settings/orgs", "Organisations"], ["/ui/settings/audit", "Audit log"]]],
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
    for (const c of state.charts) c.destroy();
    state.charts = [];
  }
  function every(ms, fn) {
    state.timers.push(setInterval(fn, ms));
  }

  async function render() {
    stopTimers();
    state.gen++;
    const path = location.pathname;
    // An invitation link carries its code in the fragment: keep it through sign-in.
    if (path === "/ui/invitations" && location.hash.length > 1) {
      sessionStorage.setItem("lattice-invitation", location.hash.slice(1));
      history.replaceState(null, "", path);
    }
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
    const params = new URLSearchParams(location.search);
    // After a single sign-on with TOTP on, the callback sends the challenge in the
    // fragment (never sent to a server); take it out of the address bar at once.
    const fragment = new URLSearchParams(location.hash.slice(1));
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
    const next = fragment.get("next") || params.get("next") || "/ui/";
    const safeNext = next.startsWith("/ui") && !next.startsWith("/ui/login") ? next : "/ui/";
    const org = params.get("org") || "";
    const done = (answer) => {
      state.me = answer.user;
      go(safeNext, true);
    };
    const totpStep = (mfaToken) => submitting(h("form", { class: "stack" },
      h("p", {}, "Enter the code from your authenticator app, or a recovery code."),
      h("label", {}, "Code", h("input", { name: "code", inputmode: "numeric", autocomplete: "one-time-code", required: true, autofocus: true })),
      h("button", { type: "submit" }, "Verify")), async (d) => {
      done(await api("POST", "/api/v1/auth/login/totp", { mfa_token: mfaToken, code: d.get("code").trim() }));
    });
    if (fragment.get("mfa")) {
      const step = totpStep(fragment.get("mfa"));
      frame(h("div", { class: "signin" }, h("h1", { id: "signin-title" }, "Sign in to Lattice"),
        h("p", {}, "Single sign-on succeeded. Your account also has TOTP on."), step));
      step.querySelector("input").focus();
      return;
    }
    const step1 = submitting(h("form", { class: "stack", "aria-labelledby": "signin-title" },
      h("label", {}, "Username", h("input", { name: "username", autocomplete: "username", required: true, autofocus: true })),
      h("label", {}, "Password", h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
      h("button", { type: "submit" }, "Sign in")), async (data) => {
      const answer = await api("POST", "/api/v1/auth/login", {
        username: data.get("username"), password: data.get("password"), org,
      });
      if (!answer.mfa_required) return done(answer);
      const step2 = totpStep(answer.mfa_token);
      step1.replaceWith(step2);
      sso.hidden = true;
      step2.querySelector("input").focus();
    });
    const sso = h("div", { class: "sso", hidden: true });
    frame(h("div", { class: "signin" }, h("h1", { id: "signin-title" }, "Sign in to Lattice"), step1, sso));
    step1.querySelector("input").focus();
    try {
      const list = await api("GET", "/api/v1/auth/sso/providers" + (org ? "?org=" + encodeURIComponent(org) : ""));
      if (list.providers.length) {
        append(sso, h("p", { class: "hint" }, "Or sign in with"),
          list.providers.map((p) => h("a", { class: "button secondary", href: p.start_url.replace("return_to=/ui/", "return_to=" + encodeURIComponent(safeNext)) }, p.display_name || p.name)));
        sso.hidden = false;
      }
    } catch { /* no single sign-on offered */ }
  }

  // ------------------------------------------------------------------ overview

  function firstRunNotice() {
    if (state.me.totp_enabled) return null;
    return h("div", { class: "notice", role: "note" },
      h("strong", {}, "Secure your account. "),
      "Your account has no second factor. If you signed in with the password printed at the first start, change it, then enable TOTP: ",
      h("a", { href: "/ui/account" }, "Account and security"), ".");
  }

  /** Whether the signed-in user holds `scope` (so the page asks only what it may). */
  function can(scope) {
    const mine = state.me ? state.me.scopes : [];
    return mine.includes("*") || mine.includes(scope);
  }

  async function pageOverview() {
    const main = frame(h("h1", {}, "Overview"), firstRunNotice(), h("p", { class: "loading" }, "Loading…"));
    const missing = (scope) => Promise.resolve(new ApiError(403, "permission_denied", "Needs the scope " + scope + "."));
    const [nodes, failed, plans, audit] = await Promise.all([
      can("nodes:read") ? api("GET", "/api/v1/nodes").catch((e) => e) : missing("nodes:read"),
      can("tasks:read") ? api("GET", "/api/v1/tasks?state=failed&limit=5").catch((e) => e) : missing("tasks:read"),
      can("policy:read") ? api("GET", "/api/v1/plans?limit=50").catch((e) => e) : missing("policy:read"),
      can("audit:read") ? api("GET", "/api/v1/audit?newest=true&limit=8").catch((e) => e) : missing("audit:read"),
    ]);
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
    if (!(audit instanceof Error)) {
      sections.push(h("h2", {}, "Recent activity"), auditTable(audit.entries),
        h("p", {}, h("a", { href: "/ui/settings/audit" }, "The whole audit log")));
    }
    main.querySelector(".loading").replaceWith(cards, ...sections);
  }

  // ------------------------------------------------------------------ nodes

  async function pageNodes() {
    const main = frame(h("h1", {}, "Nodes"),
      h("div", { class: "row" }, h("button", { type: "button", onclick: addNode }, "Add node")),
      h("div", { id: "join" }),
      h("div", { id: "node-list" }, h("p", { class: "loading" }, "Loading…")));
    drawNodeList($("#node-list", main), await api("GET", "/api/v1/nodes"));
  }

  function drawNodeList(box, list) {
    const rows = list.nodes.map((n) => h("tr", {},
      h("td", {}, h("a", { href: "/ui/nodes/" + encodeURIComponent(n.id) }, n.hostname || n.id)),
      h("td", {}, badge(n.status)),
      h("td", {}, Object.entries(n.labels).map(([k, v]) => h("span", { class: "tag" }, k + "=" + v))),
      h("td", {}, n.agent_version),
      h("td", { title: fmt.time(n.last_seen_ms) }, fmt.ago(n.last_seen_ms))));
    box.replaceChildren(rows.length
      ? h("table", {}, h("caption", { class: "sr-only" }, "Nodes"),
        h("thead", {}, h("tr", {}, ["Node", "Status", "Labels", "Agent", "Last seen"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows))
      : h("p", { class: "empty" }, "No nodes yet. Add one: it needs the agent installed with a join token."));
  }

  function addNode() {
    const box = $("#join");
    let poll = null;
    const stopPolling = () => {
      if (poll) { clearInterval(poll); state.timers = state.timers.filter((t) => t !== poll); poll = null; }
    };
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
      const known = new Set((await api("GET", "/api/v1/nodes")).nodes.map((n) => n.id));
      const t = await api("POST", "/api/v1/nodes/join-tokens", { labels, expires_in_s: Math.round(Number(data.get("hours")) * 3600) });
      box.replaceChildren(h("div", { class: "panel" },
        h("h2", {}, "Install the agent"),
        h("p", {}, "On the node, with lattice-agent and its systemd unit installed (deploy/install-agent.sh does both), run the command below. The token works once, until " + fmt.time(t.expires_at_ms) + ", and is not shown again."),
        h("div", { class: "secret" }, h("pre", { "aria-label": "Install command" }, t.install_command), copyButton(t.install_command)),
        h("p", { role: "status" }, "The node appears in the list below when its agent connects."),
        h("button", { type: "button", class: "secondary", onclick: () => { stopPolling(); box.replaceChildren(); pageNodes(); } }, "Done")));
      // The list follows until the new node is there and connected.
      stopPolling();
      poll = setInterval(async () => {
        const list = await api("GET", "/api/v1/nodes").catch(() => null);
        const listBox = $("#node-list");
        if (!list || !listBox) return;
        const fresh = list.nodes.filter((n) => !known.has(n.id));
        if (!fresh.length) return;
        drawNodeList(listBox, list);
        if (fresh.every((n) => n.status === "connected")) stopPolling();
      }, 3000);
      state.timers.push(poll);
    });
    box.replaceChildren(form);
    form.querySelector("input").focus();
  }

  async function pageNode(id) {
    const gen = state.gen;
    const n = await api("GET", "/api/v1/nodes/" + encodeURIComponent(id));
    if (gen !== state.gen) return;
    const main = frame(
      h("h1", {}, n.hostname || n.id),
      h("p", { class: "sub" }, badge(n.status), " ", n.status_reason || "", " · agent ", n.agent_version || "unknown",
        " · last seen ", h("span", { title: fmt.time(n.last_seen_ms) }, fmt.ago(n.last_seen_ms))),
      h("div", { class: "grid2" },
        h("section", { class: "panel", "aria-labelledby": "facts-h" }, h("h2", { id: "facts-h" }, "Host facts"), factsList(n.facts)),
        h("section", { class: "panel", "aria-labelledby": "caps-h" }, h("h2", { id: "caps-h" }, "Capabilities"), capabilitiesForm(n))),
      h("section", { "aria-labelledby": "artifacts-h" }, h("h2", { id: "artifacts-h" }, "Managed artifacts"), artifactsView(n)),
      h("section", { "aria-labelledby": "metrics-h" }, h("h2", { id: "metrics-h" }, "Metrics"), h("div", { id: "charts", class: "charts" }, h("p", { class: "loading" }, "Loading…"))),
      h("section", { "aria-labelledby": "logs-h" }, h("h2", { id: "logs-h" }, "Logs"), logViewer(n.id)),
      h("section", { "aria-labelledby": "tasks-h" }, h("h2", { id: "tasks-h" }, "Tasks"), h("div", { id: "node-tasks" }, h("p", { class: "loading" }, "Loading…"))),
      h("section", { class: "panel", "aria-labelledby": "danger-h" }, h("h2", { id: "danger-h" }, "Remove"),
        h("p", {}, "Deleting the node revokes its credential and closes its stream; to bring it back, enroll it again."),
        h("button", { class: "danger", type: "button", onclick: async (ev) => {
          if (!(await confirmDialog("Delete node " + (n.hostname || n.id) + "? Its agent is cut off at once.", "Delete node"))) return;
          try { await api("DELETE", "/api/v1/nodes/" + encodeURIComponent(n.id)); go("/ui/nodes"); } catch (e) { errorBeside(ev.target, e); }
        } }, "Delete node")));
    const tasks = await api("GET", "/api/v1/tasks?limit=20&node=" + encodeURIComponent(n.id)).catch((e) => e);
    $("#node-tasks", main).replaceChildren(tasks instanceof Error ? errorBox(tasks) : tasks.tasks.length ? taskTable(tasks.tasks) : h("p", { class: "empty" }, "No tasks for this node."));
    if (gen !== state.gen) return;
    const chartBox = $("#charts", main);
    await charts(n.id, chartBox);
    if (gen !== state.gen) return;
    every(15000, () => charts(n.id, chartBox));
  }

  /** What the agent reports of each artifact Lattice manages here; drift shows on a plan. */
  function artifactsView(n) {
    const list = n.artifacts || [];
    if (!list.length) return h("p", { class: "empty" }, "No managed artifacts reported (the agent reports those of the capabilities its configuration allows).");
    return h("div", {}, list.map((a) => h("details", { class: "panel" },
      h("summary", {}, h("strong", {}, a.name), " ", a.error ? h("span", { class: "badge bad" }, "unreadable") : a.hash === "none" ? h("span", { class: "badge" }, "absent") : h("code", {}, a.hash.slice(0, 23) + "…")),
      a.error ? h("p", { class: "error" }, a.error) : a.content ? h("pre", {}, a.content) : null)),
      h("p", { class: "hint" }, "A plan for this node shows the diff from this state, and drift when it is not what Lattice last applied."));
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
  async function charts(id, box) {
    if (!box.isConnected) return;
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
    for (const c of state.charts) c.destroy();
    state.charts = [];
    box.replaceChildren();
    const colors = ["#2563eb", "#db2777"];
    // Lay every figure out first, so each chart takes its own cell's width.
    const figs = specs.map(([title, unit, series]) => {
      const last = series.map(([name, v]) => name + " " + formatValue(v[v.length - 1], unit)).join(", ");
      return h("figure", { class: "chart", "aria-label": title + ", last hour; latest: " + last },
        h("h3", {}, title), h("figcaption", { class: "sr-only" }, "Latest: " + last));
    });
    box.append(...figs);
    for (const [i, [, unit, series]] of specs.entries()) {
      const fig = figs[i];
      // eslint-disable-next-line no-undef
      state.charts.push(new uPlot({
        width: Math.max(220, fig.clientWidth - 20), height: 160,
        scales: unit === "%" ? { y: { range: [0, 100] } } : {},
        axes: [{}, { values: (_, ticks) => ticks.map((v) => formatValue(v, unit)), size: 70 }],
        series: [{}, ...series.map(([label], i) => ({ label, stroke: colors[i], width: 1.5 }))],
      }, [t, ...series.map(([, v]) => v)], fig));
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
        if (entries.length) out.querySelector(".empty")?.remove();
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
        try { await api("POST", "/api/v1/tasks/" + encodeURIComponent(t.id) + "/cancel"); render(); } catch (e) { errorBeside(ev.target, e); }
      } }, "Cancel task") : null);
  }

  // ------------------------------------------------------------------ reviewed changes

  function diffView(diff) {
    const pre = h("pre", { class: "diff", "aria-label": "Diff" });
    for (const line of diff.split("\n")) {
      const cls = line.startsWith("+++") || line.startsWith("---") ? "meta" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : "";
      // The sign stays in the text, so the change reads without colour too.
      pre.append(h("span", { class: "dl " + cls }, line), "\n");
    }
    return pre;
  }

  async function pageChanges() {
    const main = frame(h("h1", {}, "Reviewed changes"),
      h("p", { class: "sub" }, "Intent, plan, approval of the reviewed hash, apply on the nodes, audit."),
      h("div", { class: "row" }, h("a", { class: "button", href: "/ui/changes/intents/new" }, "New intent")),
      h("h2", {}, "Plans"), h("div", { id: "plans" }, h("p", { class: "loading" }, "Loading…")),
      h("h2", {}, "Intents"), h("div", { id: "intents" }, h("p", { class: "loading" }, "Loading…")),
      h("h2", {}, "Agent releases"), h("div", { id: "releases" }, h("p", { class: "loading" }, "Loading…")));
    const [plans, intents, releases] = await Promise.all([
      api("GET", "/api/v1/plans?limit=50").catch((e) => e),
      api("GET", "/api/v1/intents").catch((e) => e),
      api("GET", "/api/v1/agent-releases").catch((e) => e),
    ]);
    $("#plans", main).replaceChildren(plans instanceof Error ? errorBox(plans) : plans.plans.length
      ? h("table", {}, h("caption", { class: "sr-only" }, "Plans"),
        h("thead", {}, h("tr", {}, ["Plan", "Intent", "Kind", "State", "Author", "Created"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, plans.plans.map((p) => h("tr", {},
          h("td", {}, h("a", { class: "mono", href: "/ui/changes/plans/" + encodeURIComponent(p.id) }, p.id.slice(0, 13))),
          h("td", {}, p.intent + " v" + p.intent_version), h("td", {}, p.kind), h("td", {}, badge(p.state)),
          h("td", {}, p.author), h("td", { title: fmt.time(p.created_at_ms) }, fmt.ago(p.created_at_ms))))))
      : h("p", { class: "empty" }, "No plans yet: plan an intent."));
    $("#intents", main).replaceChildren(intents instanceof Error ? errorBox(intents) : intents.intents.length
      ? h("table", {}, h("caption", { class: "sr-only" }, "Intents"),
        h("thead", {}, h("tr", {}, ["Intent", "Kind", "Targets", "Version", "Changed"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, intents.intents.map((i) => h("tr", {},
          h("td", {}, h("a", { href: "/ui/changes/intents/" + encodeURIComponent(i.name) }, i.name)), h("td", {}, i.kind),
          h("td", {}, selectorText(i.selector)), h("td", { class: "num" }, i.version),
          h("td", { title: fmt.time(i.created_at_ms) }, fmt.ago(i.created_at_ms) + " by " + i.created_by)))))
      : h("p", { class: "empty" }, "No intents yet."));
    const uploadRelease = uploading(h("form", { class: "panel stack", "aria-labelledby": "release-h" },
      h("h3", { id: "release-h" }, "Upload an agent release"),
      h("p", { class: "hint" }, "The server signs it; agents verify the signature before they run it."),
      h("label", {}, "Version", h("span", { class: "hint" }, "What its lattice-agent version prints"), h("input", { name: "version", required: true, placeholder: "1.4.0" })),
      h("label", {}, "Architecture", h("select", { name: "arch" }, ["x86_64", "aarch64"].map((a) => h("option", { value: a }, a)))),
      h("label", {}, "Binary", h("input", { type: "file", name: "binary", required: true })),
      h("progress", { max: 100, value: 0, hidden: true, "aria-label": "Upload progress" }),
      h("div", {}, h("button", { type: "submit" }, "Upload release"))), "binary",
    () => {
      const d = new FormData(uploadRelease);
      return "/api/v1/agent-releases?version=" + encodeURIComponent(d.get("version")) + "&arch=" + encodeURIComponent(d.get("arch"));
    }, (r) => "Release " + r.version + " (" + r.arch + ", " + fmt.bytes(r.size) + ") stored and signed.");
    $("#releases", main).after(uploadRelease);
    $("#releases", main).replaceChildren(releases instanceof Error ? errorBox(releases) : (releases.releases || []).length
      ? h("table", {}, h("caption", { class: "sr-only" }, "Agent releases"),
        h("thead", {}, h("tr", {}, ["Version", "Architecture", "Size", "Uploaded"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, releases.releases.map((r) => h("tr", {}, h("td", {}, r.version), h("td", {}, r.arch),
          h("td", { class: "num" }, fmt.bytes(r.size)), h("td", {}, fmt.time(r.uploaded_at_ms) + " by " + r.uploaded_by)))))
      : h("p", { class: "empty" }, "No agent releases uploaded (lattice releases upload)."));
  }

  function selectorText(s) {
    if (!s) return "";
    if (s.node) return "node " + s.node.slice(0, 13);
    return Object.entries(s.labels || {}).map(([k, v]) => k + "=" + v).join(", ") || "every node";
  }

  const SPEC_EXAMPLES = {
    firewall: { default: "drop", rules: [{ action: "accept", protocol: "tcp", ports: "22", from: "10.0.0.0/8", comment: "ssh" }] },
    dns: { zone: "example.com", ttl: 3600, soa: { mname: "ns1.example.com.", rname: "hostmaster@example.com" },
      records: [{ name: "@", type: "NS", value: "ns1" }, { name: "ns1", type: "A", value: "192.0.2.53" }] },
    proxy: { listen: { address: "0.0.0.0", http: 80, https: 443 }, certificates: "/etc/haproxy/certs", routes: [] },
    "agent.update": { version: "1.0.0", mode: "manual" },
  };

  async function pageIntent(name) {
    let current = null;
    if (name) current = await api("GET", "/api/v1/intents/" + encodeURIComponent(name));
    const sel = current ? current.selector : { labels: {} };
    const form = submitting(h("form", { class: "stack panel", "aria-labelledby": "intent-h" },
      h("label", {}, "Name", h("input", { name: "name", required: true, value: current ? current.name : "", readonly: !!current })),
      h("label", {}, "Kind", h("select", { name: "kind", disabled: !!current, onchange: (ev) => {
        const spec = form.elements.spec;
        if (!spec.value.trim() || spec.dataset.example === "1") { spec.value = JSON.stringify(SPEC_EXAMPLES[ev.target.value] || {}, null, 2); spec.dataset.example = "1"; }
      } }, ["firewall", "dns", "proxy", "agent.update"].map((k) => h("option", { value: k, selected: current ? current.kind === k : k === "firewall" }, k)))),
      h("label", {}, "Targets", h("span", { class: "hint" }, "A node id, or labels as key=value separated by commas (every node with all of them)"),
        h("input", { name: "selector", required: true, value: sel.node ? sel.node : Object.entries(sel.labels || {}).map(([k, v]) => k + "=" + v).join(", ") })),
      h("label", {}, "Spec (JSON)", h("span", { class: "hint" }, "See docs/changes.md for each kind's fields; every field is checked."),
        h("textarea", { name: "spec", spellcheck: "false", rows: 14, "data-example": current ? null : "1", text: JSON.stringify(current ? current.spec : SPEC_EXAMPLES.firewall, null, 2) })),
      h("div", { class: "row" }, h("button", { type: "submit" }, current ? "Save new version" : "Create intent"),
        current ? h("button", { type: "button", class: "secondary", onclick: async (ev) => {
          try {
            const plan = await api("POST", "/api/v1/plans", { intent: current.name });
            go("/ui/changes/plans/" + encodeURIComponent(plan.id));
          } catch (e) { errorBeside(ev.target, e); }
        } }, "Plan this intent") : null)), async (d) => {
      let spec;
      try { spec = JSON.parse(d.get("spec")); } catch (e) { throw new Error("spec: not JSON (" + e.message + ")"); }
      const raw = String(d.get("selector")).trim();
      const selector = raw.includes("=") ? { labels: Object.fromEntries(raw.split(",").map((p) => p.trim()).filter(Boolean).map((p) => { const [k, ...v] = p.split("="); return [k.trim(), v.join("=").trim()]; })) } : { node: raw };
      const body = { name: d.get("name"), kind: current ? current.kind : d.get("kind"), selector, spec };
      const saved = current
        ? await api("PUT", "/api/v1/intents/" + encodeURIComponent(current.name), body)
        : await api("POST", "/api/v1/intents", body);
      go("/ui/changes/intents/" + encodeURIComponent(saved.name), true);
    });
    form.elements.spec.addEventListener("input", (ev) => { ev.target.dataset.example = "0"; });
    frame(h("h1", { id: "intent-h" }, current ? "Intent " + current.name : "New intent"),
      current ? h("p", { class: "sub" }, current.kind + " · version " + current.version + " · " + fmt.time(current.created_at_ms) + " by " + current.created_by) : null,
      form);
  }

  async function pagePlan(id) {
    const p = await api("GET", "/api/v1/plans/" + encodeURIComponent(id));
    const main = frame(h("h1", {}, "Plan for " + p.intent),
      h("p", { class: "sub" }, badge(p.state), " ", p.kind, " · intent version ", p.intent_version, " · by ", p.author, " · ", fmt.time(p.created_at_ms),
        p.decided_by ? " · decided by " + p.decided_by + (p.reason ? ": " + p.reason : "") : ""),
      h("div", { class: "panel" }, h("p", {}, "Hash of what you review: ", h("code", { id: "plan-hash" }, p.hash))),
      h("div", { id: "decision" }),
      h("h2", {}, "Nodes"),
      h("div", { id: "targets" }));
    const targets = $("#targets", main);
    for (const t of p.targets) {
      append(targets, h("section", { class: "panel", "aria-label": "Node " + t.node },
        h("h3", {}, h("a", { href: "/ui/nodes/" + encodeURIComponent(t.node), class: "mono" }, t.node), " ",
          badge(t.state), " ", t.wave === 0 ? h("span", { class: "tag" }, "canary") : h("span", { class: "tag" }, "wave " + t.wave),
          t.drift ? [" ", h("span", { class: "badge warn" }, "drift: hand edits on the node")] : null),
        t.diff ? diffView(t.diff) : h("p", { class: "empty" }, "No change on this node."),
        t.result ? h("details", {}, h("summary", {}, "Result"), h("pre", {}, JSON.stringify(t.result, null, 2))) : null,
        t.task_id ? h("p", {}, h("a", { href: "/ui/tasks/" + encodeURIComponent(t.task_id) }, "The apply task")) : null));
    }
    const decision = $("#decision", main);
    if (p.state === "pending") {
      const approve = submitting(h("form", { class: "panel stack", "aria-labelledby": "approve-h" },
        h("h2", { id: "approve-h" }, "Approve"),
        h("p", {}, "Approving applies exactly the plan with hash ", h("code", {}, p.hash.slice(0, 23) + "…"), " to the nodes above, the canary first."),
        state.me.totp_enabled ? h("label", {}, "TOTP code", h("span", { class: "hint" }, "A fresh code confirms it is you"),
          h("input", { name: "totp_code", inputmode: "numeric", autocomplete: "one-time-code", required: true })) : null,
        h("div", { class: "row" }, h("button", { type: "submit" }, "Approve and apply"))), async (d) => {
        const body = { hash: p.hash };
        if (d.get("totp_code")) body.totp_code = String(d.get("totp_code")).trim();
        await api("POST", "/api/v1/plans/" + encodeURIComponent(p.id) + "/approve", body);
        render();
      });
      const reject = submitting(h("form", { class: "panel stack", "aria-labelledby": "reject-h" },
        h("h2", { id: "reject-h" }, "Reject"),
        h("label", {}, "Reason", h("input", { name: "reason", required: true })),
        h("div", { class: "row" }, h("button", { type: "submit", class: "danger" }, "Reject plan"),
          h("button", { type: "button", class: "secondary", onclick: async (ev) => {
            if (!(await confirmDialog("Cancel this plan? It cannot be approved afterwards.", "Cancel plan"))) return;
            try { await api("POST", "/api/v1/plans/" + encodeURIComponent(p.id) + "/cancel"); render(); } catch (e) { errorBeside(ev.target, e); }
          } }, "Cancel plan"))), async (d) => {
        await api("POST", "/api/v1/plans/" + encodeURIComponent(p.id) + "/reject", { reason: d.get("reason") });
        render();
      });
      decision.replaceChildren(h("div", { class: "grid2" }, approve, reject));
    }
    if (p.state === "applying" || p.state === "approved") {
      decision.replaceChildren(h("p", { role: "status" }, "Rolling out: this page follows the nodes' progress."));
      every(3000, async () => {
        const now = await api("GET", "/api/v1/plans/" + encodeURIComponent(p.id)).catch(() => null);
        if (now && JSON.stringify(now.targets.map((t) => t.state)) + now.state !== JSON.stringify(p.targets.map((t) => t.state)) + p.state) render();
      });
    }
  }

  // ------------------------------------------------------------------ policies

  async function pagePolicies() {
    const list = await api("GET", "/api/v1/policies");
    frame(h("h1", {}, "Policies"),
      h("p", { class: "sub" }, "Cedar policies decide who may reach which node and port, run which task kind, read which secret and approve which plan. Default deny."),
      h("div", { class: "row" }, h("a", { class: "button", href: "/ui/policies/new" }, "New policy")),
      list.policies.length ? h("table", {}, h("caption", { class: "sr-only" }, "Policies"),
        h("thead", {}, h("tr", {}, ["Policy", "Enabled", "Priority", "Description", "Updated"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, list.policies.map((p) => h("tr", {},
          h("td", {}, h("a", { href: "/ui/policies/" + encodeURIComponent(p.name) }, p.name)),
          h("td", {}, p.enabled ? badge("active") : h("span", { class: "badge" }, "off")), h("td", { class: "num" }, p.priority),
          h("td", {}, p.description), h("td", { title: fmt.time(p.updated_at_ms) }, fmt.ago(p.updated_at_ms) + " by " + p.updated_by)))))
        : h("p", { class: "empty" }, "No policies: everything is denied."),
      explainForm());
  }

  function explainForm() {
    const out = h("div", { "aria-live": "polite" });
    const form = submitting(h("form", { class: "panel stack", "aria-labelledby": "explain-h" },
      h("h2", { id: "explain-h" }, "Explain a decision"),
      h("label", {}, "Principal", h("input", { name: "principal", required: true, value: 'Lattice::User::"' + state.me.username + '"' })),
      h("label", {}, "Action", h("select", { name: "action" }, ["AccessNode", "RunTask", "ReadSecret", "ApprovePlan"].map((a) => h("option", { value: a }, a)))),
      h("label", {}, "Resource", h("input", { name: "resource", required: true, placeholder: 'Lattice::Node::"<node id>"' })),
      h("label", {}, "Context (JSON)", h("input", { name: "context", value: '{"port": 22, "protocol": "tcp"}' })),
      h("div", {}, h("button", { type: "submit" }, "Explain")), out), async (d) => {
      let context;
      try { context = JSON.parse(d.get("context") || "{}"); } catch (e) { throw new Error("context: not JSON (" + e.message + ")"); }
      const r = await api("POST", "/api/v1/policies/explain", { principal: d.get("principal"), action: d.get("action"), resource: d.get("resource"), context });
      out.replaceChildren(h("div", { class: r.decision === "allow" ? "success" : "error", role: "status" },
        h("strong", {}, r.decision === "allow" ? "Allowed" : "Denied"),
        r.determining.length ? " by " + r.determining.join(", ") : " (no policy allows it)"));
    });
    return form;
  }

  async function pagePolicy(name) {
    const p = name ? await api("GET", "/api/v1/policies/" + encodeURIComponent(name)) : null;
    const problems = h("div", { id: "policy-problems", "aria-live": "polite" });
    const preview = h("div", { id: "policy-preview", "aria-live": "polite" });
    const form = h("form", { class: "stack panel", "aria-labelledby": "policy-h" },
      h("label", {}, "Name", h("input", { name: "name", required: true, value: p ? p.name : "", readonly: !!p })),
      h("label", {}, "Description", h("input", { name: "description", value: p ? p.description : "" })),
      h("div", { class: "row" },
        h("label", {}, "Priority", h("input", { name: "priority", type: "number", value: p ? p.priority : 0 })),
        h("label", { class: "inline" }, h("input", { name: "enabled", type: "checkbox", checked: p ? p.enabled : true }), "Enabled")),
      h("label", {}, "Cedar", h("textarea", { name: "policies", spellcheck: "false", rows: 16, "aria-describedby": "policy-problems",
        text: p ? p.policies : 'permit(\n  principal in Lattice::Group::"admins",\n  action == Lattice::Action::"AccessNode",\n  resource\n) when { context.port == 22 };\n' })),
      problems,
      h("div", { class: "row" },
        h("button", { type: "button", class: "secondary", onclick: () => check() }, "Check"),
        h("button", { type: "submit" }, "Preview and save")),
      preview);
    const input = () => {
      const d = new FormData(form);
      return { name: d.get("name"), policies: d.get("policies"), enabled: d.get("enabled") === "on", priority: Number(d.get("priority")) || 0, description: d.get("description") || "", expires_at: p ? p.expires_at || null : null };
    };
    async function check() {
      const text = form.elements.policies;
      text.removeAttribute("aria-invalid");
      let v;
      try { v = await api("POST", "/api/v1/policies/validate", { policies: text.value }); } catch (e) { problems.replaceChildren(errorBox(e)); return false; }
      if (v.valid) { problems.replaceChildren(h("div", { class: "success", role: "status" }, "Valid: " + v.statements + " statement" + (v.statements === 1 ? "" : "s") + ".")); return true; }
      text.setAttribute("aria-invalid", "true");
      const lines = text.value.split("\n");
      problems.replaceChildren(...v.problems.map((pr) => h("div", { class: "error", role: "alert" },
        pr.line ? h("button", { type: "button", class: "link", onclick: () => goToLine(text, pr.line, pr.column) }, "Line " + pr.line + (pr.column ? ", column " + pr.column : "")) : null,
        pr.line ? ": " : "", pr.message,
        pr.line && lines[pr.line - 1] !== undefined ? h("pre", {}, lines[pr.line - 1] + "\n" + " ".repeat(Math.max(0, (pr.column || 1) - 1)) + "^") : null)));
      const first = v.problems.find((pr) => pr.line);
      if (first) goToLine(text, first.line, first.column);
      return false;
    }
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (!(await check())) return;
      let report;
      try { report = await api("POST", "/api/v1/policies/dry-run", { put: [input()], delete: [], last: 1000 }); } catch (e) { preview.replaceChildren(errorBox(e)); return; }
      const save = h("button", { type: "button", onclick: async () => {
        try {
          if (p) await api("PUT", "/api/v1/policies/" + encodeURIComponent(p.name), input());
          else await api("POST", "/api/v1/policies", input());
          go("/ui/policies/" + encodeURIComponent(input().name), true);
        } catch (e) { errorBeside(save, e); }
      } }, "Save policy");
      preview.replaceChildren(h("div", { class: "panel" }, h("h2", {}, "What would change"),
        h("p", {}, "Replayed the last " + report.replayed + " decisions: " + report.allow_to_deny + " would become denied, " + report.deny_to_allow + " would become allowed."),
        report.flips.length ? h("table", {}, h("caption", { class: "sr-only" }, "Decisions that change"),
          h("thead", {}, h("tr", {}, ["Principal", "Action", "Resource", "Before", "After"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, report.flips.map((f) => h("tr", {}, h("td", { class: "mono" }, f.principal), h("td", {}, f.action), h("td", { class: "mono" }, f.resource),
            h("td", {}, f.before), h("td", {}, f.after))))) : null,
        h("div", { class: "row" }, save)));
      save.focus();
    });
    frame(h("h1", { id: "policy-h" }, p ? "Policy " + p.name : "New policy"),
      p ? h("p", { class: "sub" }, "Updated " + fmt.time(p.updated_at_ms) + " by " + p.updated_by) : null,
      form,
      p ? h("div", { class: "panel" }, h("button", { type: "button", class: "danger", onclick: async (ev) => {
        if (!(await confirmDialog("Delete policy " + p.name + "? What it allows is denied from then on.", "Delete policy"))) return;
        try { await api("DELETE", "/api/v1/policies/" + encodeURIComponent(p.name)); go("/ui/policies"); } catch (e) { errorBeside(ev.target, e); }
      } }, "Delete policy")) : null);
  }

  function goToLine(textarea, line, column) {
    const lines = textarea.value.split("\n");
    let pos = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) pos += lines[i].length + 1;
    pos += Math.max(0, (column || 1) - 1);
    textarea.focus();
    textarea.setSelectionRange(pos, Math.min(textarea.value.length, pos + 1));
  }

  // ------------------------------------------------------------------ storage (seed 002)
  // Platform -> KV Store and Platform -> Static: the object editor on top, then
  // "Publishing and access" (buckets, host bindings, storage tokens).

  async function pageStorage(surface) {
    const title = surface === "kv" ? "KV Store" : "Static";
    const params = new URLSearchParams(location.search);
    frame(h("h1", {}, title), h("p", { class: "loading" }, "Loading…"));
    const buckets = (await api("GET", "/api/v1/buckets?surface=" + surface)).buckets;
    const chosen = buckets.find((b) => b.name === params.get("bucket")) || buckets[0];
    const editor = h("div", { id: "editor" });
    const [bucketsBox, bindingsBox, tokensBox] = ["buckets", "bindings", "tokens"].map((id) => h("div", { class: "panel", id }));
    // Every part loads before the page is drawn, once: nothing moves after.
    const loading = [];
    if (!chosen) editor.replaceChildren(h("p", { class: "empty" }, "No " + (surface === "kv" ? "KV" : "static") + " bucket yet: create one under Publishing and access."));
    else {
      const picker = h("label", {}, "Bucket", h("select", { name: "bucket", onchange: (ev) => go("/ui/" + surface + "?bucket=" + encodeURIComponent(ev.target.value)) },
        buckets.map((b) => h("option", { value: b.name, selected: b === chosen }, b.name + (b.secret ? " (secret)" : "")))));
      const body = h("div", {});
      editor.replaceChildren(h("div", { class: "row" }, picker), body);
      loading.push(surface === "kv" ? kvEditor(body, chosen, params.get("key")) : staticEditor(body, chosen));
    }
    bucketsPanel(bucketsBox, surface, buckets);
    loading.push(bindingsPanel(bindingsBox, surface, buckets), tokensPanel(tokensBox, surface, buckets));
    await Promise.all(loading);
    frame(h("h1", {}, title),
      h("section", { "aria-labelledby": "editor-h" }, h("h2", { id: "editor-h" }, "Object editor"), editor),
      h("section", { "aria-labelledby": "pub-h" }, h("h2", { id: "pub-h" }, "Publishing and access"),
        h("div", { class: "grid2" }, bucketsBox, bindingsBox), tokensBox));
  }

  // ---- KV

  function kvEditor(box, bucket, openKey) {
    const base = "/api/v1/kv/" + encodeURIComponent(bucket.name);
    const keyUrl = (k) => base + "/" + k.split("/").map(encodeURIComponent).join("/");
    const list = h("div", { class: "panel" });
    const detail = h("div", { class: "panel", id: "kv-entry" });
    const search = h("form", { class: "row", role: "search" },
      h("label", {}, "Key prefix", h("input", { name: "prefix" })),
      h("button", { type: "submit" }, "List"),
      h("button", { type: "button", class: "secondary", onclick: () => openEntry(null) }, "New key"));
    let cursor = null;
    const listKeys = async (more) => {
      const prefix = new FormData(search).get("prefix") || "";
      try {
        const page = await api("GET", base + "?limit=100&prefix=" + encodeURIComponent(prefix) + (more && cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
        cursor = page.next_cursor;
        const rows = page.entries.map((e) => h("tr", {},
          h("td", {}, h("button", { type: "button", class: "link mono", onclick: () => openEntry(e.key) }, e.key)),
          h("td", { class: "num" }, e.version),
          h("td", { title: fmt.time(e.updated_at_ms) }, fmt.ago(e.updated_at_ms)),
          h("td", {}, e.expires_at_ms ? fmt.time(e.expires_at_ms) : "never")));
        const table = more && list.querySelector("tbody");
        if (table) append(table, rows);
        else list.replaceChildren(rows.length
          ? h("table", {}, h("caption", { class: "sr-only" }, "Keys"),
            h("thead", {}, h("tr", {}, ["Key", "Version", "Updated", "Expires"].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows))
          : h("p", { class: "empty" }, "No keys" + (prefix ? " with this prefix." : " yet.")));
        list.querySelector(".more")?.remove();
        if (cursor) list.append(h("button", { type: "button", class: "secondary more", onclick: () => listKeys(true) }, "More keys"));
      } catch (e) { list.replaceChildren(errorBox(e)); }
    };
    search.addEventListener("submit", (ev) => { ev.preventDefault(); listKeys(false); });

    async function openEntry(key) {
      if (key !== null) history.replaceState(null, "", "/ui/kv?bucket=" + encodeURIComponent(bucket.name) + "&key=" + encodeURIComponent(key));
      let entry = null;
      if (key !== null) {
        try {
          const r = await call("GET", keyUrl(key));
          entry = r.data;
        } catch (e) { detail.replaceChildren(errorBox(e)); return; }
      }
      const form = h("form", { class: "stack", "aria-labelledby": "entry-h" },
        h("h3", { id: "entry-h" }, entry ? "Key " + entry.key : "New key"),
        entry ? h("p", { class: "hint" }, "Version " + entry.version + " · updated " + fmt.time(entry.updated_at_ms) + (entry.expires_at_ms ? " · expires " + fmt.time(entry.expires_at_ms) : "")) : null,
        entry ? null : h("label", {}, "Key", h("input", { name: "key", required: true, maxlength: 512 })),
        h("label", {}, "Value (JSON)", h("textarea", { name: "value", spellcheck: "false", required: true, text: entry ? JSON.stringify(entry.value, null, 2) : "" })),
        h("label", {}, "Expires after (seconds)", h("span", { class: "hint" }, "0: never. Every save sets the expiry again."), h("input", { name: "ttl_s", type: "number", min: 0, value: 0 })),
        h("div", { class: "row" },
          h("button", { type: "submit" }, entry ? "Save" : "Create"),
          entry ? h("button", { type: "button", class: "danger", onclick: async (ev) => {
            if (!(await confirmDialog("Delete key " + entry.key + "?", "Delete key"))) return;
            try {
              await call("DELETE", keyUrl(entry.key), { headers: { "If-Match": '"' + entry.version + '"' } });
              detail.replaceChildren(h("div", { class: "success", role: "status" }, "Deleted " + entry.key + "."));
              listKeys(false);
            } catch (e) { errorBeside(ev.target, e); }
          } }, "Delete") : null));
      submitting(form, async (d) => {
        let value;
        try { value = JSON.parse(d.get("value")); } catch (e) { throw new Error("value: not JSON (" + e.message + ")"); }
        const k = entry ? entry.key : d.get("key");
        const headers = entry ? { "If-Match": '"' + entry.version + '"' } : { "If-None-Match": "*" };
        try {
          const r = await call("PUT", keyUrl(k), { json: { value, ttl_s: Number(d.get("ttl_s")) || 0 }, headers });
          entry = r.data;
          await openEntry(k);
          $("#kv-entry").prepend(h("div", { class: "success", role: "status" }, "Saved version " + r.data.version + "."));
          listKeys(false);
        } catch (e) {
          if (e.status !== 412) throw e;
          // Somebody else wrote first: show it instead of overwriting.
          let now = null;
          try { now = (await call("GET", keyUrl(k))).data; } catch { /* deleted meanwhile */ }
          const conflict = h("div", { class: "error", role: "alert", id: "kv-conflict" },
            h("strong", {}, "Not saved: the key changed since you opened it. "),
            now ? "It is now at version " + now.version + ":" : (entry ? "It was deleted." : "It exists already."),
            now ? h("pre", {}, JSON.stringify(now.value, null, 2)) : null,
            h("div", { class: "row" },
              h("button", { type: "button", onclick: () => openEntry(k) }, "Load the current value"),
              now ? h("button", { type: "button", class: "secondary", onclick: async () => {
                entry = now;
                form.requestSubmit();
              } }, "Save mine over it") : null));
          form.querySelector(".form-error").replaceChildren(conflict);
        }
      });
      detail.replaceChildren(form);
      form.querySelector("textarea, input").focus();
    }

    box.replaceChildren(search, h("div", { class: "grid2" }, list, detail));
    detail.append(h("p", { class: "empty" }, "Choose a key, or create one."));
    return Promise.all([listKeys(false), openKey ? openEntry(openKey) : null]);
  }

  // ---- Static

  function staticEditor(box, bucket) {
    const base = "/api/v1/static/" + encodeURIComponent(bucket.name);
    const files = h("div", { class: "panel" });
    const deployments = h("div", { class: "panel" });
    const viewer = h("div", { id: "file-view" });
    const objectUrl = (p) => base + "/objects/" + p.split("/").map(encodeURIComponent).join("/");

    const upload = h("form", { class: "panel stack", "aria-labelledby": "upload-h" },
      h("h3", { id: "upload-h" }, "Upload a site"),
      h("label", {}, "Archive", h("span", { class: "hint" }, "A tar, tar.gz or zip of the site's files; it becomes the active deployment."),
        h("input", { type: "file", name: "archive", required: true, accept: ".tar,.tgz,.gz,.zip,application/gzip,application/zip,application/x-tar" })),
      h("progress", { max: 100, value: 0, hidden: true, "aria-label": "Upload progress" }),
      h("div", {}, h("button", { type: "submit" }, "Upload and activate")));
    uploading(upload, "archive", () => base + "/deployments", (d) => {
      refresh();
      return "Deployed " + d.file_count + " files (" + fmt.bytes(d.total_bytes) + ") as " + d.id + "; it is active.";
    });

    const addFile = submitting(h("form", { class: "panel stack", "aria-labelledby": "put-h" },
      h("h3", { id: "put-h" }, "Add or replace one file"),
      h("label", {}, "Path", h("input", { name: "path", required: true, placeholder: "about/index.html" })),
      h("label", {}, "File", h("input", { type: "file", name: "file", required: true })),
      h("div", {}, h("button", { type: "submit" }, "Publish file"))), async (d) => {
      const f = d.get("file");
      await call("PUT", objectUrl(String(d.get("path")).replace(/^\/+/, "")), { raw: f, type: f.type || "application/octet-stream" });
      addFile.reset();
      addFile.querySelector(".form-error").replaceChildren(h("div", { class: "success", role: "status" }, "Published: a new deployment with the file is active."));
      refresh();
    });

    function showFile(o) {
      const remove = h("button", { type: "button", class: "danger", onclick: async (ev) => {
        if (!(await confirmDialog("Remove " + o.path + " from the site? A new deployment without it becomes active.", "Remove file"))) return;
        try { await call("DELETE", objectUrl(o.path)); viewer.replaceChildren(h("div", { class: "success", role: "status" }, "Removed " + o.path + ".")); refresh(); } catch (e) { errorBeside(ev.target, e); }
      } }, "Remove file");
      const replace = h("button", { type: "button", class: "secondary", onclick: () => {
        addFile.elements.path.value = o.path;
        addFile.elements.file.focus();
      } }, "Replace file");
      viewer.replaceChildren(h("div", { class: "panel" }, h("h3", {}, o.path),
        h("p", { class: "hint" }, o.content_type + " · " + fmt.bytes(o.size) + ". The site serves it on its bound hosts; to change it, publish a new version of the file."),
        h("div", { class: "row" }, replace, remove)));
    }

    async function refresh() {
      try {
        const [objs, deps] = await Promise.all([api("GET", base + "/objects"), api("GET", base + "/deployments")]);
        files.replaceChildren(h("h3", {}, "Files of the active deployment"), objs.objects.length
          ? h("table", {}, h("caption", { class: "sr-only" }, "Files"),
            h("thead", {}, h("tr", {}, ["Path", "Type", "Size"].map((t) => h("th", { scope: "col" }, t)))),
            h("tbody", {}, objs.objects.map((o) => h("tr", {},
              h("td", {}, h("button", { type: "button", class: "link mono", onclick: () => showFile(o) }, o.path)),
              h("td", {}, o.content_type), h("td", { class: "num" }, fmt.bytes(o.size))))))
          : h("p", { class: "empty" }, "Nothing published yet: upload a site."));
        deployments.replaceChildren(h("h3", {}, "Deployments"), deps.deployments.length
          ? h("table", { id: "deployments" }, h("caption", { class: "sr-only" }, "Deployments"),
            h("thead", {}, h("tr", {}, ["Deployment", "Created", "Files", "Size", ""].map((t) => h("th", { scope: "col" }, t)))),
            h("tbody", {}, deps.deployments.map((d) => h("tr", {},
              h("td", { class: "mono" }, d.id.slice(0, 13), d.active ? [" ", badge("active")] : null),
              h("td", { title: fmt.time(d.created_at_ms) }, fmt.ago(d.created_at_ms) + " by " + d.created_by),
              h("td", { class: "num" }, d.file_count), h("td", { class: "num" }, fmt.bytes(d.total_bytes)),
              h("td", {}, d.active ? null : h("button", { type: "button", class: "secondary", "aria-label": "Activate deployment " + d.id, onclick: async (ev) => {
                if (!(await confirmDialog("Make deployment " + d.id.slice(0, 13) + " the live site?", "Activate"))) return;
                try { await api("POST", base + "/deployments/" + encodeURIComponent(d.id) + "/activate"); refresh(); } catch (e) { errorBeside(ev.target, e); }
              } }, "Activate"))))))
          : h("p", { class: "empty" }, "No deployments yet."));
      } catch (e) { files.replaceChildren(errorBox(e)); }
    }

    box.replaceChildren(h("div", { class: "grid2" }, upload, addFile), h("div", { class: "grid2" }, files, deployments), viewer);
    return refresh();
  }

  /**
   * A form that uploads its file input `field` to `url()` with a progress bar (its
   * <progress>), showing the API's error or `done(answer)`'s message beside it.
   */
  function uploading(form, field, url, done) {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const file = form.elements[field].files[0];
      if (!file) return;
      const bar = form.querySelector("progress");
      const out = form.querySelector(".form-error") || form.appendChild(h("div", { class: "form-error", "aria-live": "polite" }));
      out.replaceChildren();
      bar.hidden = false;
      bar.value = 0;
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      // XMLHttpRequest, not fetch: it reports upload progress.
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url());
      xhr.setRequestHeader("X-CSRF-Token", cookie("lattice_csrf"));
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.upload.addEventListener("progress", (p) => { if (p.lengthComputable) bar.value = Math.round(100 * p.loaded / p.total); });
      xhr.addEventListener("loadend", () => { button.disabled = false; });
      xhr.addEventListener("load", () => {
        bar.hidden = true;
        if (xhr.status === 201) {
          out.replaceChildren(h("div", { class: "success", role: "status" }, done(JSON.parse(xhr.responseText))));
          form.reset();
        } else {
          let msg = xhr.statusText;
          try { msg = JSON.parse(xhr.responseText).error.message; } catch { /* keep the status text */ }
          out.replaceChildren(errorBox(msg));
        }
      });
      xhr.addEventListener("error", () => { bar.hidden = true; out.replaceChildren(errorBox("The upload failed: the server did not answer.")); });
      xhr.send(file);
    });
    return form;
  }

  // ---- Publishing and access

  function bucketsPanel(box, surface, buckets) {
    const form = submitting(h("form", { class: "stack" },
      h("label", {}, "Name", h("span", { class: "hint" }, "a-z, 0-9 and -, up to 63"), h("input", { name: "name", required: true, pattern: "[a-z0-9]([a-z0-9\\-]{0,61}[a-z0-9])?" })),
      surface === "kv" ? h("label", { class: "inline" }, h("input", { type: "checkbox", name: "secret" }), "Secret (values sealed at rest, never cached, readable only where a policy allows)") : null,
      h("div", {}, h("button", { type: "submit" }, "Create bucket"))), async (d) => {
      const b = await api("POST", "/api/v1/buckets", { name: d.get("name"), surface, secret: d.get("secret") === "on" });
      go("/ui/" + surface + "?bucket=" + encodeURIComponent(b.name));
    });
    box.replaceChildren(h("h3", {}, "Buckets"),
      buckets.length ? h("ul", {}, buckets.map((b) => h("li", {},
        h("a", { href: "/ui/" + surface + "?bucket=" + encodeURIComponent(b.name) }, b.name), b.secret ? [" ", badge("secret")] : null, " ",
        h("button", { type: "button", class: "link", "aria-label": "Delete bucket " + b.name, onclick: async (ev) => {
          if (!(await confirmDialog("Delete bucket " + b.name + " with everything in it? Its hosts stop serving and the storage tokens that name it are revoked.", "Delete bucket"))) return;
          try { await api("DELETE", "/api/v1/buckets/" + encodeURIComponent(b.name)); go("/ui/" + surface, true); } catch (e) { errorBeside(ev.target, e); }
        } }, "delete")))) : h("p", { class: "empty" }, "No buckets yet."),
      form);
  }

  async function bindingsPanel(box, surface, buckets) {
    box.replaceChildren(h("h3", {}, "Host bindings"), h("p", { class: "loading" }, "Loading…"));
    let list;
    try { list = (await api("GET", "/api/v1/bindings")).bindings.filter((b) => b.surface === surface); } catch (e) { box.replaceChildren(h("h3", {}, "Host bindings"), errorBox(e)); return; }
    const form = submitting(h("form", { class: "stack" },
      h("label", {}, "Host", h("span", { class: "hint" }, "The name this gateway serves the bucket on (DNS must point here)"), h("input", { name: "host", required: true, placeholder: "www.example.com" })),
      h("label", {}, "Bucket", h("select", { name: "bucket" }, buckets.map((b) => h("option", { value: b.name }, b.name)))),
      h("div", {}, h("button", { type: "submit", disabled: !buckets.length }, "Bind host"))), async (d) => {
      await api("POST", "/api/v1/bindings", { host: d.get("host"), bucket: d.get("bucket") });
      bindingsPanel(box, surface, buckets);
    });
    box.replaceChildren(h("h3", {}, "Host bindings"),
      list.length ? h("table", {}, h("caption", { class: "sr-only" }, "Host bindings"),
        h("thead", {}, h("tr", {}, ["Host", "Bucket", "Serving", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, list.map((b) => h("tr", {},
          h("td", { class: "mono" }, b.host), h("td", {}, b.bucket),
          h("td", {}, h("label", { class: "inline" }, h("input", { type: "checkbox", checked: b.enabled, "aria-label": "Serve " + b.host, onchange: async (ev) => {
            try { await api("PATCH", "/api/v1/bindings/" + encodeURIComponent(b.host), { enabled: ev.target.checked }); } catch (e) { ev.target.checked = !ev.target.checked; errorBeside(ev.target, e); }
            ev.target.nextElementSibling.textContent = ev.target.checked ? "on" : "off";
          } }), h("span", {}, b.enabled ? "on" : "off"))),
          h("td", {}, h("button", { type: "button", class: "link", "aria-label": "Unbind " + b.host, onclick: async (ev) => {
            if (!(await confirmDialog("Stop serving " + b.host + " and delete the binding?", "Unbind"))) return;
            try { await api("DELETE", "/api/v1/bindings/" + encodeURIComponent(b.host)); bindingsPanel(box, surface, buckets); } catch (e) { errorBeside(ev.target, e); }
          } }, "unbind"))))))
        : h("p", { class: "empty" }, "No host serves these buckets yet."),
      form);
  }

  async function tokensPanel(box, surface, buckets, created = null) {
    const headTitle = () => h("h3", {}, "Storage tokens");
    box.replaceChildren(headTitle(), h("p", { class: "loading" }, "Loading…"));
    const shown = h("div", {});
    let list;
    try { list = (await api("GET", "/api/v1/storage-tokens")).tokens.filter((t) => t.surface === surface); } catch (e) {
      box.replaceChildren(headTitle(), errorBox(e));
      if (created) box.append(h("div", { class: "secret" }, h("pre", { "aria-label": "The new token" }, created), copyButton(created)));
      return;
    }
    const form = submitting(h("form", { class: "stack" },
      h("label", {}, "Name", h("input", { name: "name", maxlength: 64, placeholder: "ci-deploy" })),
      h("label", {}, "Access", h("select", { name: "access" }, ["read", "write", "admin"].map((a) => h("option", { value: a }, a)))),
      h("label", {}, "Buckets", h("span", { class: "hint" }, "Comma-separated names, or * for every " + surface + " bucket"), h("input", { name: "buckets", required: true, value: buckets[0] ? buckets[0].name : "*" })),
      h("label", {}, "Expires after (days)", h("span", { class: "hint" }, "0: never"), h("input", { name: "days", type: "number", min: 0, value: 90 })),
      h("div", {}, h("button", { type: "submit" }, "Create token"))), async (d) => {
      const t = await api("POST", "/api/v1/storage-tokens", {
        surface, access: d.get("access"), name: d.get("name"),
        buckets: String(d.get("buckets")).split(",").map((s) => s.trim()).filter(Boolean),
        expires_in_s: Math.round(Number(d.get("days")) * 86400),
      });
      await tokensPanel(box, surface, buckets, t.token);
    });
    if (created) {
      shown.replaceChildren(h("div", { class: "success", role: "status" }, "Token created. Copy it now: it is not shown again."),
        h("div", { class: "secret" }, h("pre", { id: "new-storage-token", "aria-label": "The new token" }, created), copyButton(created)));
    }
    box.replaceChildren();
    append(box, headTitle(),
      list.length ? h("table", {}, h("caption", { class: "sr-only" }, "Storage tokens"),
        h("thead", {}, h("tr", {}, ["Name", "Access", "Buckets", "Expires", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, list.map((t) => h("tr", {},
          h("td", {}, t.name || h("span", { class: "mono" }, t.id.slice(0, 13))), h("td", {}, t.access), h("td", {}, t.buckets.join(", ")),
          h("td", {}, t.expires_at_ms ? fmt.time(t.expires_at_ms) : "never"),
          h("td", {}, h("button", { type: "button", class: "link", "aria-label": "Revoke token " + (t.name || t.id), onclick: async (ev) => {
            if (!(await confirmDialog("Revoke this token? Clients using it are refused at once.", "Revoke"))) return;
            try { await api("DELETE", "/api/v1/storage-tokens/" + encodeURIComponent(t.id)); tokensPanel(box, surface, buckets); } catch (e) { errorBeside(ev.target, e); }
          } }, "revoke"))))))
        : h("p", { class: "empty" }, "No live " + surface + " tokens."),
      shown, form);
  }

  // ------------------------------------------------------------------ settings

  function table(caption, headers, rows, empty) {
    if (!rows.length) return h("p", { class: "empty" }, empty);
    return h("table", {}, h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows));
  }

  /** A button that asks, calls the API, then redraws the page (or shows the error beside it). */
  function action(label, question, fn, cls = "link") {
    return h("button", { type: "button", class: cls, onclick: async (ev) => {
      if (question && !(await confirmDialog(question, label[0].toUpperCase() + label.slice(1)))) return;
      try { await fn(); render(); } catch (e) { errorBeside(ev.target, e); }
    } }, label);
  }

  const scopeList = (v) => String(v || "").split(/[\s,]+/).filter(Boolean);

  async function pageInvitation() {
    const code = sessionStorage.getItem("lattice-invitation");
    if (!code) {
      frame(h("h1", {}, "Invitation"), h("p", {}, "No invitation code here: open the link you were given."));
      return;
    }
    const accept = submitting(h("form", { class: "panel stack" },
      h("p", {}, "You (" + state.me.username + ") were invited into another organisation. Accepting makes you a member with the scopes the invitation gives."),
      h("div", { class: "row" }, h("button", { type: "submit" }, "Accept invitation"),
        h("button", { type: "button", class: "secondary", onclick: () => { sessionStorage.removeItem("lattice-invitation"); go("/ui/"); } }, "Not now"))), async () => {
      const m = await api("POST", "/api/v1/invitations/accept", { code });
      sessionStorage.removeItem("lattice-invitation");
      accept.replaceWith(h("div", { class: "success", role: "status" }, "You are a member of " + m.org + " (" + m.scopes.join(", ") + "). ",
        h("a", { href: "/ui/login?org=" + encodeURIComponent(m.org) }, "Sign in to " + m.org)));
    });
    frame(h("h1", {}, "Invitation"), accept);
  }

  async function pageUsers() {
    const list = await api("GET", "/api/v1/users");
    const rows = list.users.map((u) => h("tr", {},
      h("td", {}, u.username), h("td", {}, u.scopes.join(", ")),
      h("td", {}, u.totp_enabled ? badge("active") : "off"),
      h("td", {}, u.disabled ? h("span", { class: "badge bad" }, "disabled") : u.locked_until_ms ? h("span", { class: "badge warn" }, "locked") : badge("active")),
      h("td", {}, u.locked_until_ms ? action("unlock", null, () => api("POST", "/api/v1/users/" + encodeURIComponent(u.id) + "/unlock")) : null, " ",
        u.disabled ? action("enable", null, () => api("POST", "/api/v1/users/" + encodeURIComponent(u.id) + "/enable"))
          : u.id === state.me.user_id ? null : action("disable", "Disable " + u.username + "? Their sessions and tokens stop working at once.", () => api("POST", "/api/v1/users/" + encodeURIComponent(u.id) + "/disable")))));
    const form = submitting(h("form", { class: "panel stack", "aria-labelledby": "new-user-h" },
      h("h2", { id: "new-user-h" }, "New user"),
      h("label", {}, "Username", h("input", { name: "username", required: true, autocomplete: "off" })),
      h("label", {}, "Password", h("span", { class: "hint" }, "At least 12 characters; they can change it after signing in"), h("input", { name: "password", type: "password", required: true, minlength: 12, autocomplete: "new-password" })),
      h("label", {}, "Scopes", h("span", { class: "hint" }, "Separated by spaces or commas, such as nodes:read tasks:read"), h("input", { name: "scopes" })),
      h("div", {}, h("button", { type: "submit" }, "Create user"))), async (d) => {
      await api("POST", "/api/v1/users", { username: d.get("username"), password: d.get("password"), scopes: scopeList(d.get("scopes")) });
      render();
    });
    const invite = submitting(h("form", { class: "panel stack", "aria-labelledby": "invite-h" },
      h("h2", { id: "invite-h" }, "Invite a user of another organisation"),
      h("label", {}, "Username", h("input", { name: "username", required: true, autocomplete: "off" })),
      h("label", {}, "Scopes here", h("span", { class: "hint" }, "Never more than yours"), h("input", { name: "scopes" })),
      h("div", {}, h("button", { type: "submit" }, "Create invitation"))), async (d) => {
      const i = await api("POST", "/api/v1/invitations", { username: d.get("username"), scopes: scopeList(d.get("scopes")), expires_in_s: 0 });
      invite.querySelector(".form-error").replaceChildren(h("div", { class: "success", role: "status" },
        "Hand this link to " + d.get("username") + "; it works once, until " + fmt.time(i.expires_at_ms) + ", and is not shown again."),
        h("div", { class: "secret" }, h("pre", { "aria-label": "Invitation link" }, i.link), copyButton(i.link)));
    });
    frame(h("h1", {}, "Users"), table("Users", ["User", "Scopes", "TOTP", "State", ""], rows, "No users."), form, invite);
  }

  async function pageGroups() {
    const list = await api("GET", "/api/v1/groups");
    const details = await Promise.all(list.groups.map((g) => api("GET", "/api/v1/groups/" + encodeURIComponent(g.name)).catch(() => g)));
    const sections = details.map((g) => {
      const add = submitting(h("form", { class: "row" },
        h("label", {}, "Add member", h("input", { name: "username", required: true })),
        h("button", { type: "submit" }, "Add")), async (d) => {
        await api("PUT", "/api/v1/groups/" + encodeURIComponent(g.name) + "/members/" + encodeURIComponent(d.get("username")));
        render();
      });
      return h("section", { class: "panel", "aria-label": "Group " + g.name },
        h("h2", {}, g.name, " ", h("span", { class: "hint" }, g.description)),
        (g.members || []).length ? h("ul", {}, g.members.map((m) => h("li", {}, m, " ",
          action("remove", "Remove " + m + " from " + g.name + "?", () => api("DELETE", "/api/v1/groups/" + encodeURIComponent(g.name) + "/members/" + encodeURIComponent(m)))))) : h("p", { class: "empty" }, "No members."),
        add, h("p", {}, action("delete group", "Delete group " + g.name + "? Policies naming it stop matching anyone.", () => api("DELETE", "/api/v1/groups/" + encodeURIComponent(g.name)), "danger")));
    });
    const form = submitting(h("form", { class: "panel stack", "aria-labelledby": "new-group-h" },
      h("h2", { id: "new-group-h" }, "New group"),
      h("label", {}, "Name", h("input", { name: "name", required: true })),
      h("label", {}, "Description", h("input", { name: "description" })),
      h("div", {}, h("button", { type: "submit" }, "Create group"))), async (d) => {
      await api("POST", "/api/v1/groups", { name: d.get("name"), description: d.get("description") || "" });
      render();
    });
    frame(h("h1", {}, "Groups"), h("p", { class: "sub" }, "Groups are what Cedar policies name (principal in Lattice::Group::\"...\")."), sections, form);
  }

  async function pageTokens(created = null) {
    const shown = h("div", { id: "token-shown" });
    if (created) {
      shown.append(h("div", { class: "success", role: "status" }, "Token " + created.name + " created. Copy it now: it is not shown again."),
        h("div", { class: "secret" }, h("pre", { "aria-label": "The new token" }, created.token), copyButton(created.token)));
    }
    let list;
    try { list = await api("GET", "/api/v1/tokens"); } catch (e) { frame(h("h1", {}, "API tokens"), shown, errorBox(e)); return; }
    const rows = list.tokens.map((t) => h("tr", {},
      h("td", {}, t.name), h("td", {}, t.scopes.join(", ")),
      h("td", {}, t.expires_at_ms ? fmt.time(t.expires_at_ms) : "never"),
      h("td", {}, t.last_used_at_ms ? fmt.ago(t.last_used_at_ms) : "never"),
      h("td", {}, action("revoke", "Revoke token " + t.name + "? Clients using it are refused at once.", () => api("DELETE", "/api/v1/tokens/" + encodeURIComponent(t.id))))));
    const form = submitting(h("form", { class: "panel stack", "aria-labelledby": "new-token-h" },
      h("h2", { id: "new-token-h" }, "New API token"),
      h("label", {}, "Name", h("input", { name: "name", required: true })),
      h("label", {}, "Scopes", h("span", { class: "hint" }, "At most your own: " + state.me.scopes.join(", ")), h("input", { name: "scopes", required: true })),
      h("label", {}, "Expires after (days)", h("span", { class: "hint" }, "0: never"), h("input", { name: "days", type: "number", min: 0, value: 90 })),
      h("div", {}, h("button", { type: "submit" }, "Create token"))), async (d) => {
      const t = await api("POST", "/api/v1/tokens", { name: d.get("name"), scopes: scopeList(d.get("scopes")), expires_in_s: Math.round(Number(d.get("days")) * 86400) });
      await pageTokens(t);
    });
    frame(h("h1", {}, "API tokens"), h("p", { class: "sub" }, "Your operator tokens, for the CLI and scripts (Authorization: Bearer)."),
      shown, table("API tokens", ["Name", "Scopes", "Expires", "Last used", ""], rows, "No tokens."), form);
  }

  async function pageSso() {
    const list = await api("GET", "/api/v1/sso/providers");
    const cards = list.providers.map((p) => h("section", { class: "panel", "aria-label": "Provider " + p.name },
      h("h2", {}, p.display_name || p.name, " ", h("span", { class: "hint mono" }, p.name)),
      h("dl", { class: "facts" },
        [["Issuer", p.issuer], ["Client id", p.client_id], ["Scopes", p.scopes.join(" ")], ["Username from", p.username_claim],
          ["Verified e-mail required", p.require_verified_email ? "yes" : "no"],
          ["New users", p.create_users ? "created on first sign-in, with " + (p.new_user_scopes.join(", ") || "no scopes") : "only existing users"]]
          .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      h("p", {}, "Redirect URL to register at the provider:"),
      h("div", { class: "secret" }, h("pre", {}, p.redirect_url), copyButton(p.redirect_url)),
      h("p", {}, action("delete provider", "Delete provider " + p.name + "? Its users can no longer sign in through it.", () => api("DELETE", "/api/v1/sso/providers/" + encodeURIComponent(p.name)), "danger"))));
    const form = submitting(h("form", { class: "panel stack", "aria-labelledby": "new-sso-h" },
      h("h2", { id: "new-sso-h" }, "New OpenID Connect provider"),
      h("label", {}, "Name", h("span", { class: "hint" }, "In URLs: a-z, 0-9, -"), h("input", { name: "name", required: true })),
      h("label", {}, "Display name", h("input", { name: "display_name", placeholder: "Company SSO" })),
      h("label", {}, "Issuer URL", h("input", { name: "issuer", type: "url", required: true, placeholder: "https://login.example.com/realms/main" })),
      h("label", {}, "Client id", h("input", { name: "client_id", required: true })),
      h("label", {}, "Client secret", h("span", { class: "hint" }, "Sealed at rest; never shown again"), h("input", { name: "client_secret", type: "password", required: true, autocomplete: "off" })),
      h("label", { class: "inline" }, h("input", { type: "checkbox", name: "create_users" }), "Create users on their first sign-in"),
      h("label", {}, "Scopes for new users", h("input", { name: "new_user_scopes" })),
      h("div", {}, h("button", { type: "submit" }, "Add provider"))), async (d) => {
      await api("POST", "/api/v1/sso/providers", {
        name: d.get("name"), display_name: d.get("display_name") || "", issuer: d.get("issuer"), client_id: d.get("client_id"),
        client_secret: d.get("client_secret"), create_users: d.get("create_users") === "on", new_user_scopes: scopeList(d.get("new_user_scopes")), new_user_groups: [],
      });
      render();
    });
    frame(h("h1", {}, "Single sign-on"), h("p", { class: "sub" }, "The provider is checked by discovery when you add it."), cards.length ? cards : h("p", { class: "empty" }, "No providers."), form);
  }

  async function pageOrgs() {
    let list;
    try { list = await api("GET", "/api/v1/orgs"); } catch (e) {
      frame(h("h1", {}, "Organisations"), e.status === 403 ? h("p", {}, "Managing organisations needs the platform scope orgs:admin.") : errorBox(e));
      return;
    }
    const rows = list.orgs.map((o) => h("tr", {}, h("td", {}, o.name), h("td", {}, badge(o.state)), h("td", { class: "num" }, o.member_count),
      h("td", {}, Object.entries(o.limits).filter(([, v]) => v).map(([k, v]) => k.replace("max_", "") + " " + v).join(", ") || "none"),
      h("td", {}, fmt.time(o.created_at_ms))));
    const form = submitting(h("form", { class: "panel stack", "aria-labelledby": "new-org-h" },
      h("h2", { id: "new-org-h" }, "New organisation"),
      h("label", {}, "Name", h("input", { name: "name", required: true })),
      h("div", {}, h("button", { type: "submit" }, "Create organisation"))), async (d) => {
      await api("POST", "/api/v1/orgs", { name: d.get("name") });
      render();
    });
    frame(h("h1", {}, "Organisations"), table("Organisations", ["Organisation", "State", "Members", "Limits", "Created"], rows, "No organisations."), form);
  }

  async function pageAudit() {
    const params = new URLSearchParams(location.search);
    const oldestFirst = params.has("after");
    const page = await api("GET", oldestFirst ? "/api/v1/audit?limit=100&after=" + Number(params.get("after")) : "/api/v1/audit?newest=true&limit=100");
    const result = h("div", { "aria-live": "polite" });
    const verify = h("button", { type: "button", onclick: async () => {
      verify.disabled = true;
      result.replaceChildren(h("p", { role: "status" }, "Verifying…"));
      try {
        const v = await api("GET", "/api/v1/audit/verify");
        result.replaceChildren(v.ok
          ? h("div", { class: "success", role: "status" }, "The chain is intact: " + v.entries + " entries, each linked to the one before. Head " + v.head_hash.slice(0, 16) + "…")
          : h("div", { class: "error", role: "alert" }, "The chain is broken at entry " + v.broken_seq + ": " + v.reason));
      } catch (e) { result.replaceChildren(errorBox(e)); }
      verify.disabled = false;
    } }, "Verify chain");
    frame(h("h1", {}, "Audit log"), h("p", { class: "sub" }, "Every change, by whom, from where; hash-chained. " + (oldestFirst ? "Oldest first." : "The newest 100.")),
      h("div", { class: "row" }, verify), result,
      auditTable(page.entries),
      h("div", { class: "row" },
        oldestFirst ? h("a", { href: "/ui/settings/audit" }, "The newest") : h("a", { href: "/ui/settings/audit?after=0" }, "From the start"),
        oldestFirst && page.entries.length === 100 ? h("a", { href: "/ui/settings/audit?after=" + page.next_after }, "Next page") : null));
  }

  function auditTable(entries) {
    const rows = entries.map((e) => h("tr", {},
      h("td", { class: "num" }, e.seq), h("td", { title: fmt.time(e.at_ms) }, fmt.ago(e.at_ms)), h("td", {}, e.actor), h("td", {}, e.action),
      h("td", { class: "mono" }, e.target), h("td", {}, badge(e.outcome === "success" ? "succeeded" : e.outcome)), h("td", {}, e.client_ip)));
    return table("Audit entries", ["#", "When", "Who", "Action", "Target", "Outcome", "From"], rows, "No entries.");
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
    const orgs = h("section", { class: "panel", "aria-labelledby": "orgs-h" }, h("h2", { id: "orgs-h" }, "Your organisations"));
    frame(h("h1", {}, "Account and security"), firstRunNotice(),
      h("p", { class: "sub" }, me.username + " in " + me.org_name + " · scopes: " + me.scopes.join(", ")),
      totp, h("section", { class: "panel" }, pw), orgs);
    try {
      const mine = await api("GET", "/api/v1/auth/orgs");
      append(orgs, h("p", { class: "hint" }, "A session acts in one organisation; sign in to another to act there."),
        h("ul", {}, mine.memberships.map((m) => h("li", {}, m.org, m.home ? " (home)" : "", " · ", m.scopes.join(", "), " ",
          m.current ? h("span", { class: "badge ok" }, "current") : h("a", { href: "/ui/login?org=" + encodeURIComponent(m.org) }, "sign in to " + m.org)))));
    } catch (e) { append(orgs, errorBox(e)); }
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
