#!/usr/bin/env node
// The SSE stream and the official client's /events paging, side by side: drives the official npm
// client `veryfront@0.1.1031` (module `veryfront/runs`) and plain fetch against a running runs
// server, and prints one JSON object on stdout for tests/test_contract.py to compare.
//
// Env: RUNS_API_URL, RUNS_TOKEN, RUNS_PROJECT_ID (UUID), RUNS_PROJECT_SLUG.
//
// live:   createTaskRun(task:test/ticker) -> GET /runs/{id}/stream at once, read until it closes
//         -> events(runId, {afterEventId, limit: 2}) until page_info.next is null.
// resume: the same, but the first stream is dropped after two PROGRESS_REPORTED frames and a
//         second one is opened with `Last-Event-ID: <last id seen>`.
// Each part reports the run's status right after its stream(s) opened (the server reads the run
// before the response starts, so a non-terminal status there means the stream followed it live).
// Exit code: 0 when everything was collected, 1 otherwise (stdout then carries {"error": ...}).
const toStderr = (...args) => console.error(...args);
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;

const TICKER = { n: 5, interval: 0.1 };
const STREAM_TIMEOUT_MS = 30_000;
const MAX_PAGES = 50;

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function requireEnv() {
  const names = ["RUNS_API_URL", "RUNS_TOKEN", "RUNS_PROJECT_ID", "RUNS_PROJECT_SLUG"];
  const missing = names.filter((n) => !process.env[n]);
  if (missing.length > 0) throw new Error(`missing env: ${missing.join(", ")}`);
  return Object.fromEntries(names.map((n) => [n, process.env[n]]));
}

/**
 * One event-stream frame from its lines, per the SSE spec: `field: value` (one optional space
 * after the colon), data lines joined with "\n", lines starting with ":" are comments.
 */
function parseFrame(block) {
  const fields = {};
  const data = [];
  let comments = 0;
  for (const line of block.split(/\r\n|\r|\n/)) {
    if (line === "") continue;
    if (line.startsWith(":")) {
      comments++;
      continue;
    }
    const colon = line.indexOf(":");
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") data.push(value);
    else fields[name] = value;
  }
  if (data.length > 0) fields.data = data.join("\n");
  return { fields, comments };
}

/**
 * Open GET /runs/{id}/stream and read frames until the server closes it, or until `stopWhen`
 * (given the frames so far) says to drop the connection. Returns the frames as
 * {id, event, data: <parsed JSON>}, the number of heartbeat comments, and whether it closed.
 */
async function openStream(apiUrl, token, runId, { lastEventId, onOpen, stopWhen } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error("stream timed out")), STREAM_TIMEOUT_MS);
  const headers = { Authorization: `Bearer ${token}`, Accept: "text/event-stream" };
  if (lastEventId !== undefined) headers["Last-Event-ID"] = String(lastEventId);
  try {
    const response = await fetch(`${apiUrl}/runs/${encodeURIComponent(runId)}/stream`, {
      headers,
      signal: controller.signal,
    });
    const contentType = response.headers.get("content-type") ?? "";
    if (response.status !== 200 || !contentType.startsWith("text/event-stream")) {
      throw new Error(`stream answered ${response.status} ${contentType}: ${(await response.text()).slice(0, 500)}`);
    }
    const opened = onOpen ? await onOpen() : undefined;
    const frames = [];
    let heartbeats = 0;
    let buffer = "";
    let closed = false;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    reading: for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        closed = true;
        break;
      }
      buffer += value;
      for (;;) {
        const end = /\r\n\r\n|\n\n|\r\r/.exec(buffer);
        if (end === null) break;
        const block = buffer.slice(0, end.index);
        buffer = buffer.slice(end.index + end[0].length);
        const { fields, comments } = parseFrame(block);
        if (Object.keys(fields).length === 0) {
          heartbeats += comments;
          continue;
        }
        frames.push({
          id: fields.id ?? null,
          event: fields.event ?? null,
          data: fields.data === undefined ? null : JSON.parse(fields.data),
        });
        if (stopWhen?.(frames)) {
          await reader.cancel(); // the follower drops the connection mid-run
          break reading;
        }
      }
    }
    return { frames, heartbeats, closed, leftover: buffer, opened };
  } finally {
    clearTimeout(timer);
  }
}

async function main() {
  const env = requireEnv();
  const apiUrl = env.RUNS_API_URL.replace(/\/+$/, "");

  // veryfront/runs alone has no SchemaValidator; veryfront/task registers the package's zod
  // validator as an import side effect (as in client_flow.mjs).
  await import("veryfront/task");
  const { createRunsClient } = await import("veryfront/runs");
  const client = createRunsClient({
    apiUrl,
    authToken: env.RUNS_TOKEN,
    projectReference: env.RUNS_PROJECT_SLUG,
    retry: { maxRetries: 0 },
  });

  const createTicker = async (name) => {
    const res = await client.createTaskRun({
      projectId: env.RUNS_PROJECT_ID,
      target: "task:test/ticker",
      name,
      config: TICKER,
      timeoutSeconds: 60,
      backoffLimit: 0,
    });
    if (res.accepted !== true) throw new Error(`create ${name}: accepted is ${res.accepted}`);
    return res.run;
  };
  const statusNow = async (runId) => (await client.get(runId)).status;

  async function pageEvents(runId) {
    const events = [];
    const pages = [];
    let afterEventId;
    for (;;) {
      if (pages.length >= MAX_PAGES) throw new Error(`events paging did not end after ${MAX_PAGES} pages`);
      const res = await client.events(runId, { afterEventId, limit: 2 });
      pages.push({ after: afterEventId ?? null, ids: res.data.map((e) => e.event_id), next: res.page_info.next });
      events.push(...res.data);
      if (res.page_info.next === null) break;
      if (res.data.length === 0) throw new Error(`page_info.next is set on an empty page: ${JSON.stringify(pages)}`);
      afterEventId = res.data.at(-1).event_id;
    }
    return { events, pages };
  }

  // live: one stream from the first event to the terminal one
  const liveRun = await createTicker("contract stream live");
  const live = await openStream(apiUrl, env.RUNS_TOKEN, liveRun.run_id, {
    onOpen: () => statusNow(liveRun.run_id),
  });
  const livePaged = await pageEvents(liveRun.run_id);

  // resume: drop the stream after two PROGRESS_REPORTED frames, resume with Last-Event-ID
  const resumeRun = await createTicker("contract stream resume");
  const first = await openStream(apiUrl, env.RUNS_TOKEN, resumeRun.run_id, {
    onOpen: () => statusNow(resumeRun.run_id),
    stopWhen: (frames) => frames.filter((f) => f.event === "PROGRESS_REPORTED").length === 2,
  });
  if (first.frames.length === 0) throw new Error("the first stream of the resume part carried no frame");
  const lastEventId = first.frames.at(-1).id;
  const rest = await openStream(apiUrl, env.RUNS_TOKEN, resumeRun.run_id, {
    lastEventId,
    onOpen: () => statusNow(resumeRun.run_id),
  });
  const resumePaged = await pageEvents(resumeRun.run_id);

  emit({
    live: {
      run_id: liveRun.run_id,
      status_at_open: live.opened,
      frames: live.frames,
      heartbeats: live.heartbeats,
      closed: live.closed,
      leftover: live.leftover,
      events: livePaged.events,
      pages: livePaged.pages,
    },
    resume: {
      run_id: resumeRun.run_id,
      last_event_id: lastEventId,
      first: {
        status_at_open: first.opened,
        frames: first.frames,
        closed: first.closed,
      },
      rest: {
        status_at_open: rest.opened,
        frames: rest.frames,
        heartbeats: rest.heartbeats,
        closed: rest.closed,
        leftover: rest.leftover,
      },
      events: resumePaged.events,
      pages: resumePaged.pages,
    },
  });
}

try {
  await main();
} catch (error) {
  emit({ error: String(error?.stack ?? error), cause: error?.cause ? String(error.cause) : undefined });
  process.exitCode = 1;
}
