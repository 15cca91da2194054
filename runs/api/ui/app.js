// The web view of runs. Everything shown comes from the API, called with the token signed in
// (kept in this tab's sessionStorage, never in a URL). Values are set as text, never as HTML.
"use strict";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const TERMINAL_EVENTS = new Set(["RUN_FINISHED", "RUN_ERROR"]);
const STATUSES = ["pending", "running", "waiting", "completed", "failed", "cancelled"];
const PAGE_SIZE = 25;
const LIST_POLL_MS = 2000;
const RUN_POLL_MS = 3000;
const MAX_EVENTS_SHOWN = 2000;

const main = document.getElementById("main");
let live = new AbortController(); // ends the page's polls and streams on sign-out

// -- the session ----------------------------------------------------------------------------

const session = {
  get token() {
    return sessionStorage.getItem("runs.token");
  },
  get project() {
    return JSON.parse(sessionStorage.getItem("runs.project") || "null");
  },
  save(token, project) {
    sessionStorage.setItem("runs.token", token);
    sessionStorage.setItem("runs.project", JSON.stringify(project));
  },
  clear() {
    sessionStorage.removeItem("runs.token");
    sessionStorage.removeItem("runs.project");
  },
};

// -- DOM helpers ------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(
    ...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false),
  );
  return node;
}

function statusBadge(status, title) {
  return h("span", { class: `status status-${status}`, "data-status": status, title }, status);
}

function pad(n) {
  return String(n).padStart(2, "0");
}

// Times are shown in the browser's time zone, named after each time ("CET", "GMT+1",
// "UTC"); the tooltip holds the time as the API sent it, in UTC.
const ZONE_NAME = new Intl.DateTimeFormat("en-US", { timeZoneName: "short" });

function zoneOf(d) {
  const part = ZONE_NAME.formatToParts(d).find((p) => p.type === "timeZoneName");
  return part ? part.value : "local time";
}

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return `${day} ${clock} ${zoneOf(d)}`;
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function time(iso) {
  if (!iso) return "";
  return h("time", { datetime: iso, title: `${iso} (UTC)` }, fmtTime(iso));
}

function runLink(runId) {
  return h("a", { href: `/ui/runs/${encodeURIComponent(runId)}`, class: "mono" }, runId);
}

// A table of `rows` (or of a tbody the caller keeps to fill later).
function table(headings, rows, attrs) {
  const body = rows instanceof HTMLElement ? rows : h("tbody", {}, rows);
  const head = h(
    "thead",
    {},
    h(
      "tr",
      {},
      headings.map((t) => h("th", {}, t)),
    ),
  );
  return h("table", attrs, head, body);
}

function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

function notice(text, kind = "error") {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}

// Calls `step` every `ms` while the tab is visible, until the page's work ends.
async function every(ms, step, signal) {
  while (!signal.aborted) {
    await sleep(ms, signal);
    if (signal.aborted) return;
    if (document.hidden) continue;
    try {
      if ((await step()) === false) return;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return;
    }
  }
}

// -- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function authorization(token = session.token) {
  return { Authorization: `Bearer ${token}` };
}

async function api(path, { method = "GET", body, token } = {}) {
  const headers = authorization(token);
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    signal: live.signal,
  });
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  if (response.status === 401 && token === undefined)
    signOut("The server refused the token: sign in again.");
  throw new ApiError(response.status, (data && data.detail) || response.statusText);
}

function projectPath(rest) {
  return `/projects/${encodeURIComponent(session.project.id)}/${rest}`;
}

// The events of a run as they come: GET /runs/{id}/stream read with fetch (EventSource cannot
// send the token), its Server-Sent Events parsed here, resumed after the last id seen.
async function followEvents(runId, { onEvent, onState, signal }) {
  let last = 0;
  let delay = 500;
  while (!signal.aborted) {
    let ended = false;
    let closed = false;
    try {
      const headers = { ...authorization(), Accept: "text/event-stream" };
      if (last) headers["Last-Event-ID"] = String(last);
      const response = await fetch(`/runs/${encodeURIComponent(runId)}/stream`, {
        headers,
        cache: "no-store",
        signal,
      });
      if (response.status === 401) return signOut("The server refused the token: sign in again.");
      if (!response.ok) {
        const problem = await response.json().catch(() => null);
        return onState("error", (problem && problem.detail) || response.statusText);
      }
      onState("live");
      for await (const frame of sseFrames(response.body)) {
        if (frame.data === undefined) continue;
        const event = JSON.parse(frame.data);
        last = event.event_id;
        delay = 500;
        onEvent(event);
        ended = ended || TERMINAL_EVENTS.has(event.event_type);
      }
      closed = true;
    } catch (error) {
      if (signal.aborted) return;
    }
    if (ended) return onState("ended");
    if (closed) {
      // Closed before a terminal event: the server stopped, or has no more of an ended run.
      const run = await api(`/runs/${encodeURIComponent(runId)}`).catch(() => null);
      if (run && TERMINAL.has(run.status)) return onState("ended");
    }
    onState("reconnecting");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 10000);
  }
}

async function* sseFrames(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let frame = {};
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const raw of lines) {
        const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        if (line === "") {
          if (Object.keys(frame).length) yield frame;
          frame = {};
          continue;
        }
        if (line.startsWith(":")) continue; // a heartbeat
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let field = colon < 0 ? "" : line.slice(colon + 1);
        if (field.startsWith(" ")) field = field.slice(1);
        frame[name] =
          name === "data" && frame.data !== undefined ? `${frame.data}\n${field}` : field;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// -- sign-in ----------------------------------------------------------------------------------

function signOut(message) {
  live.abort();
  live = new AbortController();
  session.clear();
  showSignIn(message);
}

function showSignIn(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  const token = h("input", {
    id: "token",
    type: "password",
    name: "token",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "runs_…",
  });
  const error = h("div", { class: "form-error" });
  const form = h(
    "form",
    { class: "card sign-in", id: "sign-in" },
    h("h1", {}, "Sign in"),
    h("label", { for: "token" }, "Project API token"),
    token,
    h(
      "p",
      { class: "hint" },
      "Made with ",
      h("code", {}, "runs tokens create PROJECT"),
      ". Kept in this tab only, until it closes or you sign out.",
    ),
    error,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.replaceChildren();
    const secret = token.value.trim();
    try {
      const me = await api("/whoami", { token: secret });
      session.save(secret, me.project);
      route();
    } catch (err) {
      const text = err.status === 401 ? "This token is not valid." : err.message;
      error.replaceChildren(notice(text));
    }
  });
  main.replaceChildren(...(message ? [notice(message, "info")] : []), form);
  token.focus();
}

// -- pages ------------------------------------------------------------------------------------

function route() {
  if (!session.token || !session.project) return showSignIn();
  const path = location.pathname.replace(/\/+$/, "");
  const runMatch = path.match(/^\/ui\/runs\/([^/]+)$/);
  const name = runMatch
    ? "run"
    : { "/ui": "runs", "/ui/definitions": "definitions", "/ui/schedules": "schedules" }[path];
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("project-name").textContent =
    session.project.name || session.project.slug;
  document.getElementById("project-name").title = `${session.project.slug} (${session.project.id})`;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.page === (name === "run" ? "runs" : name));
  }
  const pages = { runs: runsPage, definitions: definitionsPage, schedules: schedulesPage };
  const shown = runMatch ? runPage(runMatch[1]) : (pages[name] || missingPage)();
  shown.catch((error) => {
    if (!(error instanceof ApiError && error.status === 401) && !live.signal.aborted) {
      main.replaceChildren(notice(error.message));
    }
  });
}

async function missingPage() {
  document.title = "runs";
  main.replaceChildren(notice("No such page."));
}

// The runs list: filters in the query string, newest first, "More" follows the API's cursor;
// the rows shown are read again every few seconds, so new runs and status changes appear.
async function runsPage() {
  document.title = "Runs · runs";
  const params = new URLSearchParams(location.search);
  const filters = {
    status: select("status", ["", ...STATUSES], params.get("status")),
    kind: select("kind", ["", "task", "workflow"], params.get("kind")),
    target: select("target", [""], params.get("target")),
    schedule_id: select("schedule_id", [""], params.get("schedule_id")),
  };
  const labels = { status: "Status", kind: "Kind", target: "Target", schedule_id: "Schedule" };
  const form = h(
    "form",
    { class: "filters", id: "filters" },
    Object.entries(filters).map(([key, input]) => h("label", {}, labels[key], input)),
  );
  const tbody = h("tbody", { id: "runs" });
  const more = h("button", { type: "button", id: "more", hidden: true }, "More");
  const empty = h("p", { class: "empty", hidden: true }, "No runs.");
  const headings = ["Run", "Target", "Status", "Created", "Duration", "Attempt"];
  main.replaceChildren(
    h("h1", {}, "Runs"),
    form,
    h("div", { class: "card flush" }, table(headings, tbody, { class: "runs" }), empty),
    h("div", { class: "more" }, more),
  );
  fillChoices(filters);

  let shown = 0;
  let next = null;
  let rows = new Map(); // run_id -> [the run's JSON, its row]: unchanged runs keep their row
  const query = (cursor) => {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    for (const [key, input] of Object.entries(filters)) if (input.value) q.set(key, input.value);
    if (cursor) q.set("cursor", cursor);
    return projectPath(`runs?${q}`);
  };
  const render = (runs) => {
    const drawn = new Map();
    for (const run of runs) {
      const text = JSON.stringify(run);
      const known = rows.get(run.run_id);
      drawn.set(run.run_id, [text, known && known[0] === text ? known[1] : runRow(run)]);
    }
    rows = drawn;
    tbody.replaceChildren(...[...drawn.values()].map(([, row]) => row));
    shown = runs.length;
    empty.hidden = runs.length > 0;
    more.hidden = next === null;
  };
  // The first `count` runs of the listing, as it is now.
  const read = async (count) => {
    const runs = [];
    let cursor = null;
    do {
      const page = await api(query(cursor));
      runs.push(...page.data);
      cursor = page.page_info.next;
    } while (cursor && runs.length < count);
    next = cursor;
    return runs;
  };
  let loaded = [];
  const reload = async () => {
    loaded = await read(Math.max(shown, PAGE_SIZE));
    render(loaded);
  };
  const loadMore = async () => {
    const page = await api(query(next));
    next = page.page_info.next;
    const seen = new Set(loaded.map((run) => run.run_id));
    loaded = [...loaded, ...page.data.filter((run) => !seen.has(run.run_id))];
    render(loaded);
  };
  // One read at a time: a poll, a filter change and "More" never interleave.
  let chain = Promise.resolve();
  const serial = (step) => (chain = chain.catch(() => {}).then(step));
  form.addEventListener("change", () => {
    const q = new URLSearchParams();
    for (const [key, input] of Object.entries(filters)) if (input.value) q.set(key, input.value);
    history.replaceState(null, "", q.toString() ? `/ui?${q}` : "/ui");
    shown = 0;
    serial(reload).catch((error) => main.append(notice(error.message)));
  });
  more.addEventListener("click", () =>
    serial(loadMore).catch((error) => main.append(notice(error.message))),
  );
  await serial(reload);
  every(LIST_POLL_MS, () => serial(reload), live.signal);
}

function select(name, values, current) {
  const input = h("select", { name });
  for (const value of values) input.append(h("option", { value }, value || "any"));
  if (current && !values.includes(current)) input.append(h("option", { value: current }, current));
  input.value = current || "";
  return input;
}

// Targets from /definitions and schedules from the project's first page of them.
async function fillChoices(filters) {
  const add = (input, value, label) => {
    if (![...input.options].some((o) => o.value === value))
      input.append(h("option", { value }, label));
  };
  const [definitions, schedules] = await Promise.all([
    api("/definitions").catch(() => ({ data: [] })),
    api(projectPath("schedules?limit=100")).catch(() => ({ schedules: [], source_schedules: [] })),
  ]);
  for (const d of definitions.data) add(filters.target, d.target, d.target);
  for (const s of [...schedules.schedules, ...schedules.source_schedules]) {
    add(filters.schedule_id, s.id, `${s.name} (${s.id})`);
  }
}

function runRow(run) {
  return h(
    "tr",
    { "data-run-id": run.run_id },
    h("td", {}, runLink(run.run_id), run.name ? h("div", { class: "sub" }, run.name) : null),
    h("td", { class: "mono" }, run.target || ""),
    h("td", {}, statusBadge(run.status, run.waiting_reason || (run.error && run.error.message))),
    h("td", {}, time(run.created_at)),
    h("td", {}, fmtDuration(run.duration_ms)),
    h("td", { class: "num" }, String(run.attempt)),
  );
}

// One run: its record, attempts, workflow nodes and live events, with the actions that apply.
async function runPage(encodedId) {
  const runId = decodeURIComponent(encodedId);
  document.title = `${runId} · runs`;
  const path = `/runs/${encodeURIComponent(runId)}`;
  let run = await api(path);
  let nodes = run.kind === "workflow" ? (await api(`${path}/nodes`)).data : [];
  const header = h("div", { class: "run-head" });
  const message = h("div", { class: "action-message", id: "action-message" });
  const record = h("div");
  const eventsState = h("span", { class: "stream-state", id: "stream-state" });
  const eventList = h("ol", { class: "events", id: "events" });
  const events = section(h("span", {}, "Events ", eventsState), eventList);
  main.replaceChildren(header, message, record, events);
  const page = { message, refresh };
  let drawn = null;
  // Redraws only what changed, so that a comment being typed survives the polls.
  const draw = () => {
    const now = JSON.stringify([run, nodes]);
    if (now === drawn) return;
    drawn = now;
    header.replaceChildren(...runHeader(run, page));
    record.replaceChildren(...runSections(run, nodes, page));
  };
  let pending = null;
  // Reads the run (and its nodes) again; many calls close together make one read.
  async function refresh() {
    if (pending) return pending;
    pending = (async () => {
      await sleep(150, live.signal);
      run = await api(path);
      if (run.kind === "workflow") nodes = (await api(`${path}/nodes`)).data;
      draw();
    })().finally(() => {
      pending = null;
    });
    return pending;
  }
  draw();
  const signal = live.signal;
  followEvents(run.run_id, {
    signal,
    onEvent(event) {
      eventList.append(eventItem(event));
      if (eventList.children.length > MAX_EVENTS_SHOWN) eventList.firstElementChild.remove();
      if (!event.event_type.startsWith("PROGRESS")) refresh().catch(() => {});
    },
    onState(state, detail) {
      const text = { live: "live", reconnecting: "reconnecting…", ended: "ended", error: detail }[
        state
      ];
      eventsState.textContent = text;
      eventsState.dataset.state = state;
      if (state === "ended") refresh().catch(() => {});
    },
  });
  // Waits and resumes change the run without an event of their own: read it now and then.
  every(
    RUN_POLL_MS,
    async () => {
      if (TERMINAL.has(run.status)) return false;
      await refresh();
    },
    signal,
  );
}

function runHeader(run, page) {
  const actions = h("div", { class: "actions" });
  if (!TERMINAL.has(run.status)) {
    actions.append(
      h(
        "button",
        {
          type: "button",
          class: "danger",
          id: "cancel",
          onclick: act(page, async () => {
            if (!confirm(`Cancel run ${run.run_id}?`)) return;
            const answer = await api(`/runs/${encodeURIComponent(run.run_id)}/cancel`, {
              method: "POST",
            });
            return answer.cancelled ? "Cancelled." : "The run had ended already.";
          }),
        },
        "Cancel run",
      ),
    );
  }
  return [
    h("p", { class: "crumbs" }, h("a", { href: "/ui" }, "Runs"), " / ", run.kind),
    h(
      "div",
      { class: "title-row" },
      h("h1", { class: "mono" }, run.run_id),
      statusBadge(run.status),
      actions,
    ),
    h("p", { class: "subtitle mono" }, run.target || "", run.name ? ` · ${run.name}` : ""),
  ];
}

// A button's click: runs `call`, shows what it answered, then reads the run again.
function act(page, call) {
  return async (e) => {
    const button = e.currentTarget;
    button.disabled = true;
    try {
      const said = await call();
      if (said) page.message.replaceChildren(notice(said, "info"));
      await page.refresh();
    } catch (error) {
      page.message.replaceChildren(notice(error.message));
    } finally {
      button.disabled = false;
    }
  };
}

function runSections(run, nodes, page) {
  const fields = [
    ["Kind", run.kind],
    ["Status", run.status + (run.waiting_reason ? ` (${run.waiting_reason})` : "")],
    ["Created", time(run.created_at)],
    ["Started", time(run.started_at)],
    ["Completed", time(run.completed_at)],
    ["Duration", fmtDuration(run.duration_ms)],
    [
      "Attempt",
      `${run.attempt}${run.backoff_limit !== null ? ` of at most ${run.backoff_limit + 1}` : ""}`,
    ],
    ["Timeout", run.timeout_seconds ? `${run.timeout_seconds} s` : ""],
    ["Exit code", run.exit_code],
    ["Parent run", run.parent_run_id && runLink(run.parent_run_id)],
    ["Root run", run.root_run_id !== run.run_id && runLink(run.root_run_id)],
    [
      "Schedule",
      run.schedule_id &&
        h("a", { href: `/ui?schedule_id=${encodeURIComponent(run.schedule_id)}` }, run.schedule_id),
    ],
    ["Trigger", run.trigger_kind],
    ["Cancel requested", run.cancellation && time(run.cancellation.requested_at)],
    ["Stopped", run.cancellation && time(run.cancellation.stopped_at)],
  ].filter(([, value]) => value !== null && value !== undefined && value !== "" && value !== false);
  const blocks = [
    ["Error", run.error],
    ["Output", run.output],
    ["Input", run.input],
    ["Config", run.config],
  ].filter(([, value]) => value !== null && value !== undefined);
  const sections = [
    section(
      "Record",
      h(
        "dl",
        { class: "fields" },
        fields.map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]),
      ),
      blocks.map(([name, value]) =>
        h(
          "details",
          { open: name !== "Config" },
          h("summary", {}, name),
          h("pre", {}, json(value)),
        ),
      ),
      run.logs
        ? h("details", {}, h("summary", {}, "Logs"), h("pre", { class: "logs" }, run.logs))
        : null,
      run.artifacts.length
        ? h("details", {}, h("summary", {}, "Artifacts"), h("pre", {}, json(run.artifacts)))
        : null,
    ),
  ];
  if (run.attempts.length) {
    sections.push(
      section(
        "Attempts",
        table(
          ["Attempt", "Status", "Started", "Finished", "Error"],
          run.attempts.map((a) =>
            h(
              "tr",
              {},
              h("td", { class: "num" }, String(a.attempt)),
              h("td", {}, statusBadge(a.status)),
              h("td", {}, time(a.started_at)),
              h("td", {}, time(a.finished_at)),
              h(
                "td",
                {},
                a.error ? `${a.error.code ? `${a.error.code}: ` : ""}${a.error.message}` : "",
              ),
            ),
          ),
          { id: "attempts" },
        ),
      ),
    );
  }
  if (run.kind === "workflow") {
    sections.push(
      section(
        "Nodes",
        table(
          ["Node", "Status", "Attempt", "Started", "Completed", "Detail"],
          nodes.map((n) => nodeRow(run, n, page)),
          { id: "nodes" },
        ),
      ),
    );
  }
  return sections;
}

function nodeRow(run, node, page) {
  const cell = h("td", { class: "node-detail" });
  const runPath = `/runs/${encodeURIComponent(run.run_id)}`;
  if (node.error) cell.append(h("div", { class: "error-text" }, node.error.message));
  if (node.arm) cell.append(h("div", {}, `branch: ${node.arm}`));
  if (node.status === "waiting" && !TERMINAL.has(run.status)) {
    const comment = h("input", {
      type: "text",
      placeholder: "comment (optional)",
      class: "comment",
    });
    const payload = h("input", {
      type: "text",
      placeholder: "payload JSON (optional)",
      class: "payload",
    });
    const approval = (approved) =>
      act(page, async () => {
        if (!approved && !confirm(`Reject ${node.node_id}?`)) return;
        const body = { node_id: node.node_id, approved, comment: comment.value || null };
        await api(`${runPath}/approvals`, { method: "POST", body });
        return approved ? `Approved ${node.node_id}.` : `Rejected ${node.node_id}.`;
      });
    const send = act(page, async () => {
      const body = {
        event: node.wait_event,
        payload: payload.value ? JSON.parse(payload.value) : null,
      };
      await api(`${runPath}/signals`, { method: "POST", body });
      return `Sent ${node.wait_event}.`;
    });
    cell.append(
      node.wait_event === null
        ? h(
            "div",
            { class: "wait" },
            "waits for an approval ",
            comment,
            h(
              "button",
              { type: "button", class: "primary approve", onclick: approval(true) },
              "Approve",
            ),
            h("button", { type: "button", class: "reject", onclick: approval(false) }, "Reject"),
          )
        : h(
            "div",
            { class: "wait" },
            "waits for the event ",
            h("code", {}, node.wait_event),
            " ",
            payload,
            h("button", { type: "button", class: "primary signal", onclick: send }, "Signal"),
          ),
      node.deadline ? h("div", { class: "sub" }, "until ", time(node.deadline)) : null,
    );
  } else if (node.output !== null && node.status === "completed") {
    cell.append(h("details", {}, h("summary", {}, "output"), h("pre", {}, json(node.output))));
  }
  return h(
    "tr",
    { "data-node-id": node.node_id },
    h("td", { class: "mono" }, node.node_id),
    h("td", {}, statusBadge(node.status)),
    // Steps run in attempts; groups, branches and waits never do (their attempt stays 0).
    h("td", { class: "num" }, node.attempt ? String(node.attempt) : ""),
    h("td", {}, time(node.started_at)),
    h("td", {}, time(node.completed_at)),
    cell,
  );
}

// An event's payload as its fields, without the "type" that repeats the event's type.
function eventFields(payload) {
  if (payload === null || typeof payload !== "object" || Array.isArray(payload))
    return [["value", payload]];
  return Object.entries(payload).filter(([key]) => key !== "type");
}

function fieldText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function eventItem(event) {
  const fields = eventFields(event.payload);
  const line = fields.map(([key, value]) => `${key}: ${fieldText(value)}`).join("  ·  ");
  const shown =
    line.length > 160
      ? h(
          "details",
          { class: "payload" },
          h("summary", {}, `${line.slice(0, 120)}…`),
          h(
            "dl",
            { class: "fields" },
            fields.flatMap(([key, value]) => [
              h("dt", {}, key),
              h("dd", {}, typeof value === "string" ? value : h("pre", {}, json(value))),
            ]),
          ),
        )
      : h(
          "span",
          { class: "payload fields" },
          fields.map(([key, value]) =>
            h("span", { class: "field" }, h("span", { class: "key" }, key), ` ${fieldText(value)}`),
          ),
        );
  return h(
    "li",
    { "data-event-id": event.event_id, "data-event-type": event.event_type },
    h("span", { class: "event-id num" }, `#${event.event_id}`),
    time(event.created_at),
    h("span", { class: "event-type" }, event.event_type),
    shown,
  );
}

async function definitionsPage() {
  document.title = "Definitions · runs";
  const { data } = await api("/definitions");
  main.replaceChildren(
    h("h1", {}, "Definitions"),
    h(
      "div",
      { class: "card flush" },
      table(
        ["Target", "Kind", "Name", "Description", "Input schema"],
        data.map((d) =>
          h(
            "tr",
            { "data-target": d.target },
            h(
              "td",
              {},
              h(
                "a",
                {
                  href: `/ui?target=${encodeURIComponent(d.target)}`,
                  class: "mono",
                  title: "its runs",
                },
                d.target,
              ),
            ),
            h("td", {}, d.kind),
            h("td", {}, d.name || ""),
            h("td", {}, d.description || ""),
            h(
              "td",
              {},
              d.input_schema
                ? h("details", {}, h("summary", {}, "schema"), h("pre", {}, json(d.input_schema)))
                : "",
            ),
          ),
        ),
        { id: "definitions" },
      ),
      data.length
        ? null
        : h("p", { class: "empty" }, "No definitions: no worker has registered any yet."),
    ),
  );
}

async function schedulesPage() {
  document.title = "Schedules · runs";
  const manual = h("tbody", { id: "schedules" });
  const source = h("tbody", { id: "source-schedules" });
  const more = h("button", { type: "button", id: "more", hidden: true }, "More");
  const headings = [
    "Schedule",
    "Target",
    "When",
    "Status",
    "Next run",
    "Last success",
    "Last failure",
    "Runs",
  ];
  const head = () =>
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        headings.map((t) => h("th", {}, t)),
      ),
    );
  main.replaceChildren(
    h("h1", {}, "Schedules"),
    h("div", { class: "card flush" }, h("table", {}, head(), manual)),
    h("div", { class: "more" }, more),
    h("h2", {}, "Defined in code"),
    h("div", { class: "card flush" }, h("table", {}, head(), source)),
  );
  let next = null;
  const load = async () => {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (next) q.set("cursor", next);
    const page = await api(projectPath(`schedules?${q}`));
    // The page holds every schedule; those written in code have a table of their own.
    const written = new Set(page.source_schedules.map((s) => s.id));
    manual.append(...page.schedules.filter((s) => !written.has(s.id)).map(scheduleRow));
    if (!next) source.append(...page.source_schedules.map(scheduleRow));
    next = page.page_info.next;
    more.hidden = next === null;
  };
  more.addEventListener("click", load);
  await load();
  for (const body of [manual, source]) {
    if (!body.children.length)
      body.append(h("tr", {}, h("td", { colspan: headings.length, class: "empty" }, "None.")));
  }
}

function scheduleRow(s) {
  const when = s.schedule
    ? `cron ${s.schedule}`
    : s.interval_seconds
      ? `every ${s.interval_seconds} s`
      : `once at ${fmtTime(s.run_at)}`;
  return h(
    "tr",
    { "data-schedule-id": s.id },
    h("td", {}, s.name, h("div", { class: "sub mono" }, s.id)),
    h("td", { class: "mono" }, `${s.target.kind}:${s.target.id}`),
    h("td", {}, when, h("div", { class: "sub" }, s.timezone)),
    h("td", {}, statusBadge(s.status, s.paused_reason)),
    h("td", {}, time(s.next_run_at)),
    h("td", {}, time(s.last_successful_at)),
    h(
      "td",
      {},
      time(s.last_failure_at),
      s.last_failure_message ? h("div", { class: "sub error-text" }, s.last_failure_message) : null,
    ),
    h(
      "td",
      { class: "num" },
      h(
        "a",
        { href: `/ui?schedule_id=${encodeURIComponent(s.id)}`, title: "its runs" },
        String(s.run_count),
      ),
    ),
  );
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
route();
