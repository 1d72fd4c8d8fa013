// The M99 dashboard: live by push (the operators' feed, GET /api/events, read with fetch() so it can send
// the Bearer header), every action through the same two-phase REST API the CLI uses.
//
// Every value that came from the server is inserted as text (textContent, text nodes, attributes of no
// consequence): agent names, kinds, hosts, reasons and error messages are attacker-controlled.
"use strict";

(() => {
  const TOKEN_KEY = "m99.token";
  const BY_KEY = "m99.by";
  const FEED_STALL_MS = 15000; // the feed ticks every 5 s: 15 s of silence is a dead connection
  const MAX_FRAME = 1 << 20; // bytes of one SSE frame we are willing to buffer
  const EXECUTIONS_SHOWN = 10;
  const AUDIT_SHOWN = 25;
  const NAMES_SHOWN = 20;
  const VERIFY_EVERY_MS = 5000;
  const AGENTS_SHOWN = 500; // rows rebuilt at every change and tick: held and silent agents come first

  const $ = (id) => document.getElementById(id);

  // -- DOM, as text only --------------------------------------------------------------------------
  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const kid of kids) {
      if (kid === undefined || kid === null) continue;
      node.append(kid instanceof Node ? kid : String(kid)); // a string becomes a text node
    }
    return node;
  }

  function fillTable(id, rows, columns, emptyText) {
    const body = $(id).tBodies[0];
    if (!rows.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: columns }, emptyText)));
    } else {
      body.replaceChildren(...rows);
    }
  }

  function say(text, kind) {
    const msg = $("msg");
    msg.textContent = text;
    msg.className = "msg " + (kind || "");
  }

  // -- time ----------------------------------------------------------------------------------------
  function human(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function localTime(iso) {
    const t = Date.parse(iso);
    return Number.isFinite(t) ? new Date(t).toLocaleString() : String(iso ?? "");
  }

  const ms = (value) => `${Number(value).toFixed(1)} ms`;

  // Cells that change every second: an age counts up from what the server said, a countdown down.
  // Both are measured on this machine's clock from the moment of the fetch, so a skewed clock does not
  // make a fresh heartbeat look old.
  function ageCell(secondsAtFetch, fetchedAt, render) {
    const cell = el("td", { "data-live": "1" });
    cell._live = () => render(cell, secondsAtFetch + (performance.now() - fetchedAt) / 1000);
    cell._live();
    return cell;
  }

  function tickCells() {
    for (const cell of document.querySelectorAll("td[data-live]")) if (cell._live) cell._live();
  }

  // -- the token, the API --------------------------------------------------------------------------
  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function errorOf(response) {
    let message = `${response.status} ${response.statusText || "error"}`;
    let code = "";
    try {
      const data = await response.json();
      if (data && data.error) {
        message = String(data.error.message || message);
        code = String(data.error.code || "");
      }
    } catch (_) {
      // not JSON: keep the status line
    }
    return new ApiError(response.status, message, code);
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${token()}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
    if (!response.ok) {
      const error = await errorOf(response);
      if (response.status === 401) refused(error.message);
      throw error;
    }
    return response.json();
  }

  // -- what the page shows -------------------------------------------------------------------------
  const view = {
    status: null,
    agents: [],
    agentsAt: 0,
    executions: [],
    drills: null,
    audit: [],
    chainDirty: true,
    verifiedAt: 0,
    role: "",
    name: "",
  };

  // -- the live feed -------------------------------------------------------------------------------
  let feedGeneration = 0;
  let feedAbort = null;
  let retries = 0;

  function setConn(state, detail) {
    const pill = $("conn");
    pill.dataset.state = state;
    pill.textContent = detail ? `${state}: ${detail}` : state;
  }

  function stopFeed() {
    feedGeneration += 1;
    if (feedAbort) feedAbort.abort();
    feedAbort = null;
  }

  async function connect() {
    stopFeed();
    const generation = feedGeneration;
    const abort = new AbortController();
    feedAbort = abort;
    setConn(retries ? "reconnecting" : "connecting");
    let stall = setTimeout(() => abort.abort(), FEED_STALL_MS);
    const alive = () => {
      clearTimeout(stall);
      stall = setTimeout(() => abort.abort(), FEED_STALL_MS);
    };
    try {
      const response = await fetch("/api/events", {
        headers: { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" },
        signal: abort.signal,
        cache: "no-store",
        credentials: "omit",
      });
      if (response.status === 401 || response.status === 403) {
        refused((await errorOf(response)).message); // retrying would not change the server's mind
        return;
      }
      if (!response.ok) throw await errorOf(response);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        alive();
        buffer += value;
        for (;;) {
          const end = buffer.indexOf("\n\n");
          if (end < 0) break;
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (generation === feedGeneration) onFrame(frame);
        }
        if (buffer.length > MAX_FRAME) throw new Error("the feed sent an oversized event");
      }
      throw new Error("the feed ended");
    } catch (error) {
      if (generation !== feedGeneration) return; // logged out or replaced on purpose
      retries += 1;
      const delay = Math.min(10, 2 ** Math.min(retries - 1, 4));
      const why = abort.signal.aborted ? "no event for 15 s" : error.message || String(error);
      setConn("reconnecting", `retry in ${delay} s (${why})`);
      setTimeout(() => {
        if (generation === feedGeneration) connect();
      }, delay * 1000);
    } finally {
      clearTimeout(stall);
    }
  }

  function onFrame(frame) {
    let event = "message";
    const data = [];
    for (const line of frame.split(/\r?\n/)) {
      if (line.startsWith(":")) continue;
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    let payload = {};
    if (data.length) {
      try {
        payload = JSON.parse(data.join("\n"));
      } catch (_) {
        return; // not ours: ignore
      }
    }
    if (event === "hello") {
      retries = 0;
      view.role = String(payload.role || "");
      view.name = String(payload.token || "");
      $("who").textContent = `token ${view.name} (${view.role})`;
      setConn("live");
      want(["all"]); // whatever happened while we were away
    } else if (event === "change") {
      const kinds = Array.isArray(payload.kinds) ? payload.kinds.map(String) : ["all"];
      if (kinds.includes("audit")) view.chainDirty = true;
      want(kinds);
    } else if (event === "tick") {
      want(["tick"]);
    }
  }

  // -- fetching what changed, coalesced ------------------------------------------------------------
  const pending = new Set();
  let refreshing = false;
  let refreshTimer = null;

  function want(kinds) {
    for (const kind of kinds) pending.add(kind);
    if (!refreshing && refreshTimer === null) refreshTimer = setTimeout(runRefresh, 30);
  }

  async function runRefresh() {
    refreshTimer = null;
    if (refreshing || !token()) return;
    refreshing = true;
    const kinds = new Set(pending);
    pending.clear();
    try {
      await refresh(kinds);
    } catch (error) {
      if (error.status !== 401) say(`could not read the control plane: ${error.message}`, "error");
    } finally {
      refreshing = false;
      if (pending.size && token()) refreshTimer = setTimeout(runRefresh, 30);
    }
  }

  async function refresh(kinds) {
    const all = kinds.has("all");
    const has = (k) => all || kinds.has(k);
    const jobs = [];
    const statusRead = api("GET", "/api/status").then((status) => {
      view.status = status;
      if (!$("show-stopped").checked) {
        view.agents = status.agents;
        view.agentsAt = performance.now();
      }
    });
    jobs.push(statusRead);
    if ($("show-stopped").checked) {
      jobs.push(
        api("GET", "/api/agents?all=true").then((agents) => {
          view.agents = agents;
          view.agentsAt = performance.now();
        }),
      );
    }
    if (has("executions") || has("directives")) jobs.push(loadExecutions());
    if (has("audit")) jobs.push(statusRead.then(loadAudit)); // the newest entries: up to the head just read
    const dueVerify = view.chainDirty && (all || performance.now() - view.verifiedAt >= VERIFY_EVERY_MS);
    if (dueVerify) jobs.push(loadChain());
    await Promise.all(jobs);
    render();
  }

  async function loadExecutions() {
    view.drills = await api("GET", "/api/drills").catch(() => null);
    const list = await api("GET", `/api/executions?limit=${EXECUTIONS_SHOWN}`);
    view.executions = await Promise.all(
      list.map((e) => api("GET", `/api/executions/${encodeURIComponent(e.id)}`).catch(() => e)),
    );
  }

  async function loadAudit() {
    const head = view.status ? view.status.audit_head.seq : -1;
    const after = head < 0 ? -1 : Math.max(-1, head - AUDIT_SHOWN);
    view.audit = (await api("GET", `/api/audit?after=${after}&limit=${AUDIT_SHOWN + 5}`)).reverse();
  }

  async function loadChain() {
    view.chainDirty = false;
    view.verifiedAt = performance.now();
    const result = await api("GET", "/api/audit/verify");
    const pill = $("chain");
    if (result.valid) {
      pill.className = "pill ok";
      pill.textContent = `verified: ${result.entries} entries, head #${result.head_seq} ${String(result.head_hash).slice(0, 12)}…`;
    } else {
      pill.className = "pill bad";
      pill.textContent = `DOES NOT VERIFY at entry ${result.bad_seq}: ${result.reason}`;
    }
  }

  // -- rendering -----------------------------------------------------------------------------------
  function render() {
    const status = view.status;
    if (!status) return;
    const pill = $("switch");
    pill.textContent = status.status;
    pill.className = "pill " + (status.status === "idle" ? "ok" : status.status === "armed" ? "warn" : "held");
    renderArmed(status.armed || []);
    renderDirectives(status.directives || []);
    renderAgents(view.agents, status.settings || {});
    renderExecutions(view.executions);
    renderAudit(view.audit);
    renderScopes(view.agents);
  }

  function levelPill(level) {
    return level ? el("span", { class: "pill held" }, `L${level}`) : el("span", { class: "pill ok" }, "running");
  }

  function renderArmed(armed) {
    const fetchedAt = performance.now();
    const rows = armed.map((a) =>
      el(
        "tr",
        { "data-auth": a.id },
        el("td", {}, a.id),
        el("td", {}, `L${a.level} ${a.level_name || ""}`),
        el("td", {}, a.scope),
        el("td", {}, a.by),
        el("td", {}, a.reason),
        ageCell(-Number(a.expires_in || 0), fetchedAt, (cell, negative) => {
          const left = -negative;
          cell.textContent = left > 0 ? human(left) : "expired";
          cell.className = left > 0 ? "countdown" : "countdown error";
        }),
        el(
          "td",
          {},
          el("button", { type: "button", class: "danger", "data-action": "execute", onclick: () => openExecute(a) }, "EXECUTE"),
          " ",
          el("button", { type: "button", class: "plain", "data-action": "disarm", onclick: () => disarm(a) }, "disarm"),
        ),
      ),
    );
    fillTable("armed", rows, 7, "nothing armed");
  }

  function renderDirectives(directives) {
    const rows = directives.map((d) =>
      el(
        "tr",
        { "data-directive": d.id },
        el("td", {}, d.id),
        el("td", {}, levelPill(d.level)),
        el("td", {}, d.scope),
        el("td", {}, d.origin),
        el("td", {}, d.by || ""),
        el("td", {}, d.execution_id || ""),
        el(
          "td",
          {},
          el(
            "button",
            { type: "button", class: "plain", onclick: () => prefillUndo(d.scope, d.level <= 3 ? "restore" : "lift") },
            d.level <= 3 ? "restore…" : "lift…",
          ),
        ),
      ),
    );
    fillTable("directives", rows, 7, "no directive is active");
  }

  function latestHalt(name) {
    for (const e of view.executions) {
      if (!Array.isArray(e.agents) || !e.agents.includes(name) || !e.time_to_halt) continue;
      const per = e.time_to_halt.per_agent || {};
      if (Object.prototype.hasOwnProperty.call(per, name)) return { execution: e, ms: per[name] };
      return { execution: e, ms: null };
    }
    return null;
  }

  const STATE_NAMES = { active: "alive", silent: "silent", stopped: "stopped", tombstoned: "tombstoned" };

  const urgency = (a) => (a.level ? 0 : a.status === "silent" ? 1 : a.status === "active" ? 2 : 3);

  function renderAgents(all, settings) {
    const lease = Number(settings.lease_seconds || 0);
    const agents =
      all.length > AGENTS_SHOWN
        ? [...all].sort((x, y) => urgency(x) - urgency(y) || (x.name < y.name ? -1 : 1)).slice(0, AGENTS_SHOWN)
        : all;
    const rows = agents.map((a) => {
      const frameworks = Array.isArray(a.frameworks) && a.frameworks.length ? a.frameworks.join(", ") : a.framework || "";
      const live = a.status === "active" || a.status === "silent";
      const policy = a.policy_hash ?? a.policy;
      const halt = a.level ? latestHalt(a.name) : null;
      let haltCell;
      if (!halt) haltCell = el("td", {}, a.level ? "held" : "");
      else if (halt.ms === null) haltCell = el("td", { class: "unconfirmed" }, `NOT confirmed (${halt.execution.id})`);
      else haltCell = el("td", { class: "halted" }, `halted in ${ms(halt.ms)} (${halt.execution.id})`);
      return el(
        "tr",
        { "data-agent": a.name },
        el("td", { class: "name" }, a.name),
        el("td", {}, a.kind),
        el("td", {}, frameworks),
        el("td", {}, a.host || ""),
        el(
          "td",
          { class: `state state-${a.status}`, title: a.status_reason || "" },
          STATE_NAMES[a.status] || a.status,
        ),
        el("td", { class: "level" }, levelPill(a.level)),
        ageCell(Number(a.seconds_since_heartbeat || 0), view.agentsAt, (cell, age) => {
          cell.textContent = `${human(age)} ago`;
        }),
        live && lease
          ? ageCell(Number(a.seconds_since_heartbeat || 0), view.agentsAt, (cell, age) => {
              const left = lease - age;
              cell.textContent = left > 0 ? `${human(left)} left` : "expired (agent fails closed)";
              cell.className = left > 0 ? "" : "error";
            })
          : el("td", {}, "—"),
        el(
          "td",
          { title: policy == null ? "" : typeof policy === "string" ? policy : JSON.stringify(policy) },
          policy == null ? "—" : typeof policy === "string" ? policy.slice(0, 16) : JSON.stringify(policy).slice(0, 40),
        ),
        haltCell,
      );
    });
    if (all.length > agents.length) {
      rows.push(
        el(
          "tr",
          { id: "agents-more" },
          el(
            "td",
            { class: "empty", colspan: 10 },
            `showing ${agents.length} of ${all.length} agents (held and silent first); m99 agents lists them all`,
          ),
        ),
      );
    }
    fillTable("agents", rows, 10, "no agent registered");
  }

  function haltSummary(e) {
    const halt = e.time_to_halt;
    const cell = el("td", { class: "halt" });
    if (!halt) return cell;
    const head =
      halt.p50_ms === null || halt.p50_ms === undefined
        ? `${halt.confirmed} of ${halt.in_scope} confirmed`
        : `${halt.confirmed} of ${halt.in_scope} confirmed, p50 ${ms(halt.p50_ms)}, max ${ms(halt.max_ms)}`;
    cell.append(el("div", {}, head));
    const entries = Object.entries(halt.per_agent || {}).sort((x, y) => x[1] - y[1]);
    const list = el("div", { class: "agent-list" });
    for (const [name, value] of entries.slice(0, NAMES_SHOWN)) {
      list.append(el("div", { class: "halted", "data-halted": name }, `${name}: halted in ${ms(value)}`));
    }
    for (const name of (halt.not_confirmed || []).slice(0, NAMES_SHOWN)) {
      list.append(el("div", { class: "unconfirmed", "data-unconfirmed": name }, `${name}: NOT confirmed`));
    }
    const hidden = Math.max(0, entries.length - NAMES_SHOWN) + Math.max(0, (halt.not_confirmed || []).length - NAMES_SHOWN);
    if (hidden) list.append(el("div", {}, `… and ${hidden} more (m99 executions ${e.id})`));
    cell.append(list);
    return cell;
  }

  function renderExecutions(executions) {
    const rows = executions.map((e) =>
      el(
        "tr",
        { "data-execution": e.id },
        el("td", {}, e.id),
        el("td", {}, localTime(e.started_at)),
        el("td", {}, `L${e.level}`),
        el("td", {}, e.scope),
        el("td", {}, e.origin),
        el("td", {}, e.by_email || ""),
        el("td", {}, e.reason || ""),
        haltSummary(e),
        el(
          "td",
          {},
          el("button", { type: "button", class: "link", "data-action": "casepack", onclick: () => downloadCasepack(e.id) }, "case pack"),
        ),
      ),
    );
    fillTable("executions", rows, 9, "no execution yet");
    renderDrills(view.drills);
  }

  // The drill schedule (m99 drill --every): when the last drill ran, when the next is due, overdue in red.
  function renderDrills(drills) {
    const node = $("drills");
    node.replaceChildren();
    node.classList.remove("bad");
    if (!drills) return;
    const last = drills.last ? `last drill ${localTime(drills.last)}` : "no drill yet";
    if (!drills.every_seconds) {
      node.append(`drills: ${last}; no schedule (m99 drill --every 7d sets one)`);
      return;
    }
    node.append(`drills: every ${human(drills.every_seconds)}; ${last}; next due ${drills.last ? localTime(drills.due) : drills.due}`);
    if (drills.overdue) {
      node.append(" — ", el("strong", {}, "OVERDUE"));
      node.classList.add("bad");
    }
  }

  function short(value, limit) {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    return text.length > limit ? text.slice(0, limit) + "…" : text;
  }

  function renderAudit(entries) {
    const rows = entries.map((entry) =>
      el(
        "tr",
        { "data-seq": entry.seq },
        el("td", {}, entry.seq),
        el("td", {}, localTime(entry.ts)),
        el("td", {}, entry.kind),
        el(
          "td",
          {},
          Object.entries(entry.actor || {})
            .map(([k, v]) => `${k}=${short(v, 60)}`)
            .join(" "),
        ),
        el("td", { class: "audit-data" }, short(entry.data || {}, 240)),
      ),
    );
    fillTable("audit", rows, 5, "no entries");
  }

  function renderScopes(agents) {
    const scopes = new Set(["global"]);
    for (const a of agents) {
      scopes.add(`agent:${a.name}`);
      scopes.add(`class:${a.kind}`);
      for (const f of a.frameworks || []) scopes.add(`framework:${f}`);
      if (scopes.size > 1000) break;
    }
    $("scopes").replaceChildren(...[...scopes].sort().map((s) => el("option", { value: s })));
  }

  // -- actions -------------------------------------------------------------------------------------
  function byValue(form) {
    const by = form.elements.by.value.trim();
    sessionStorage.setItem(BY_KEY, by);
    for (const input of document.querySelectorAll("input.by")) if (!input.value) input.value = by;
    return by;
  }

  async function act(describe, call) {
    try {
      const result = await call();
      say(describe(result), "ok");
      want(["all"]);
      return result;
    } catch (error) {
      say(`refused: ${error.message}`, "error");
      return null;
    }
  }

  // A form's buttons are off while its request is out: a double-click arms once.
  async function whileBusy(form, call) {
    if (form.dataset.busy) return;
    form.dataset.busy = "1";
    const buttons = [...form.querySelectorAll("button")];
    for (const button of buttons) button.disabled = true;
    try {
      await call();
    } finally {
      delete form.dataset.busy;
      for (const button of buttons) button.disabled = false;
    }
  }

  async function arm(form) {
    const data = form.elements;
    const body = {
      by: byValue(form),
      reason: data.reason.value,
      level: Number(data.level.value),
      scope: data.scope.value.trim(),
      window: Number(data.window.value || 300),
    };
    if (data.allow_empty.checked) body.allow_empty = true;
    await act(
      (a) =>
        `armed ${a.id}: L${a.level} (${a.level_name}) on ${a.scope}, ${(a.agents_in_scope || []).length} agent(s) in scope, ` +
        `expires in ${human(a.expires_in)}` +
        (a.requires_confirmation ? `; executing needs the typed confirmation '${a.confirmation_phrase}'` : ""),
      () => api("POST", "/api/arm", body),
    );
  }

  function ask(auth) {
    // The server's own account of what would fire on whom, and the phrase a level needs.
    const dialog = $("confirm-dialog");
    if (dialog.open) return Promise.resolve(null); // one confirmation at a time
    $("confirm-title").textContent = `Execute L${auth.level} (${auth.level_name}) on ${auth.scope}?`;
    const names = auth.agents_in_scope || [];
    $("confirm-body").textContent =
      `${names.length} agent(s) in scope: ${names.slice(0, NAMES_SHOWN).join(", ") || "none yet"}` +
      (names.length > NAMES_SHOWN ? ` and ${names.length - NAMES_SHOWN} more` : "") +
      `. Armed by ${auth.by}: ${auth.reason}`;
    $("confirm-steps").replaceChildren(...(auth.levels_to_fire || []).map((step) => el("li", {}, step)));
    const phrased = Boolean(auth.requires_confirmation);
    $("confirm-phrase-row").hidden = !phrased;
    $("confirm-phrase").textContent = phrased ? auth.confirmation_phrase : "";
    $("confirm-input").value = "";
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" ? $("confirm-input").value : null), {
        once: true,
      });
      dialog.showModal();
      (phrased ? $("confirm-input") : $("confirm-ok")).focus();
    });
  }

  async function openExecute(armed) {
    let auth;
    try {
      auth = await api("GET", `/api/authorizations/${encodeURIComponent(armed.id)}`);
    } catch (error) {
      say(`refused: ${error.message}`, "error");
      return;
    }
    const typed = await ask(auth);
    if (typed === null) {
      say(`not executed: ${auth.id}`);
      return;
    }
    const body = { authorization_id: auth.id };
    if (auth.requires_confirmation) body.confirm = typed;
    await act(
      (r) =>
        `executed ${r.execution_id}: ${r.levels_fired.join(", ")} on ${r.scope}, ${r.agents_terminated} agent(s) in scope ` +
        `(recorded in ${ms(r.committed_ms)}; each agent's confirmed time-to-halt appears under Executions as it arrives)`,
      () => api("POST", "/api/execute", body),
    );
  }

  async function disarm(armed) {
    const by = (document.querySelector("input.by").value || "").trim();
    const body = { authorization_id: armed.id };
    if (by) body.by = by;
    await act(
      (r) => (r.disarmed.length ? `disarmed ${r.disarmed.join(", ")}` : "nothing was armed"),
      () => api("POST", "/api/disarm", body),
    );
  }

  async function undo(form, verb) {
    const body = { scope: form.elements.scope.value.trim(), by: byValue(form), reason: form.elements.reason.value };
    await act(
      (r) =>
        verb === "restore"
          ? `restored ${body.scope}: ${r.lifted.length} directive(s) lifted, agents: ${r.agents.join(", ") || "-"}` +
            (r.still_held && r.still_held.length ? `; still held by other directives: ${r.still_held.join(", ")}` : "")
          : `lifted ${body.scope}: ${r.lifted.length} directive(s), tombstones lifted: ${(r.tombstones_lifted || []).join(", ") || "-"}`,
      () => api("POST", `/api/${verb}`, body),
    );
  }

  function prefillUndo(scope, verb) {
    const form = $("undo-form");
    form.elements.scope.value = scope;
    form.elements.reason.focus();
    say(`fill in by and reason, then press ${verb}`);
  }

  function filename(disposition, id, type) {
    const match = /filename="?([^";]+)"?/i.exec(disposition || "");
    const ext = /zip/.test(type || "") ? ".zip" : ".json";
    const name = match ? match[1] : `casepack-${id}${ext}`;
    return name.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 100);
  }

  async function downloadCasepack(id) {
    try {
      const response = await fetch(`/api/executions/${encodeURIComponent(id)}/casepack`, {
        headers: { Authorization: `Bearer ${token()}` },
        cache: "no-store",
        credentials: "omit",
      });
      if (!response.ok) throw await errorOf(response);
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const link = el("a", {
        href: url,
        download: filename(response.headers.get("Content-Disposition"), id, response.headers.get("Content-Type")),
      });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      say(`case pack of ${id} saved`, "ok");
    } catch (error) {
      say(`case pack of ${id}: ${error.message}`, "error");
    }
  }

  // -- log in, log out -----------------------------------------------------------------------------
  function showBoard(on) {
    $("login-view").hidden = on;
    $("board").hidden = !on;
    $("logout").hidden = !on;
  }

  function refused(message) {
    stopFeed();
    sessionStorage.removeItem(TOKEN_KEY);
    showBoard(false);
    setConn("refused");
    $("who").textContent = "";
    $("login-error").textContent = `the control plane refused the token: ${message}`;
  }

  async function login(candidate) {
    sessionStorage.setItem(TOKEN_KEY, candidate);
    try {
      await api("GET", "/api/status");
    } catch (error) {
      if (error.status !== 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        $("login-error").textContent = `cannot log in: ${error.message}`;
      }
      return;
    }
    $("login-error").textContent = "";
    showBoard(true);
    retries = 0;
    connect();
  }

  function start() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("login-token").value.trim();
      $("login-token").value = "";
      if (value) login(value);
    });
    $("logout").addEventListener("click", () => {
      stopFeed();
      sessionStorage.removeItem(TOKEN_KEY);
      showBoard(false);
      setConn("offline");
      $("who").textContent = "";
    });
    $("arm-form").addEventListener("submit", (event) => {
      event.preventDefault();
      whileBusy(event.target, () => arm(event.target));
    });
    $("undo-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const verb = event.submitter && event.submitter.value === "lift" ? "lift" : "restore";
      whileBusy(event.target, () => undo(event.target, verb));
    });
    $("show-stopped").addEventListener("change", () => want(["agents"]));
    const by = sessionStorage.getItem(BY_KEY) || "";
    for (const input of document.querySelectorAll("input.by")) input.value = by;
    setInterval(tickCells, 1000);
    if (token()) login(token());
    else showBoard(false);
  }

  start();
})();
