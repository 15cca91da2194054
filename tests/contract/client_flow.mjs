#!/usr/bin/env node
// Contract flow: drives the official npm client `veryfront@0.1.1031` (module `veryfront/runs`)
// against a running runs server and reports one JSON object per line on stdout.
//
// Env: RUNS_API_URL, RUNS_TOKEN, RUNS_PROJECT_ID (UUID), RUNS_PROJECT_SLUG,
//      RUNS_FOREIGN_RUN_ID (a run of ANOTHER project; must be invisible to RUNS_TOKEN here).
// Exit code: 0 when no step failed, 1 otherwise.
//
// The client's own logger writes info/debug lines with console.log; they are sent to stderr so
// that stdout carries only this script's JSON lines.
import { randomUUID } from "node:crypto";
import { isDeepStrictEqual } from "node:util";

const toStderr = (...args) => console.error(...args);
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

const POLL_INTERVAL_MS = 100;
const POLL_TIMEOUT_MS = 30_000;
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const ECHO_CONFIG = { hello: "world", n: 1 };

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class AssertionFailure extends Error {
  constructor(message, data) {
    super(message);
    this.name = "AssertionFailure";
    this.data = data;
  }
}

function check(condition, message, data) {
  if (!condition) throw new AssertionFailure(message, data);
}

/** Turn anything thrown (ZodError, VeryfrontError, fetch error, assertion) into plain JSON. */
function describeError(error, depth = 0) {
  if (error === null || typeof error !== "object") return { message: String(error) };
  const out = { name: error.name, message: error.message };
  if (error.status !== undefined) out.status = error.status;
  if (error.slug !== undefined) out.slug = error.slug;
  if (error.detail !== undefined) out.detail = error.detail;
  // ZodError (v3: .issues/.errors; v4: .issues). Report every issue with its path so a schema
  // drift names the offending field.
  const issues = Array.isArray(error.issues) ? error.issues : Array.isArray(error.errors) ? error.errors : null;
  if (issues) {
    out.zod_issues = issues.map((i) => ({
      path: Array.isArray(i.path) ? i.path.join(".") : i.path,
      code: i.code,
      message: i.message,
      expected: i.expected,
      received: i.received,
    }));
    out.message = `schema validation failed: ${out.zod_issues.map((i) => `${i.path || "(root)"}: ${i.message}`).join("; ")}`;
  }
  const responseText = error.context?.details?.responseText;
  if (typeof responseText === "string") out.response_text = responseText.slice(0, 500);
  if (error instanceof AssertionFailure && error.data !== undefined) out.data = error.data;
  if (error.cause && depth < 3) out.cause = describeError(error.cause, depth + 1);
  return out;
}

const results = [];

async function step(name, fn) {
  const started = Date.now();
  let record;
  try {
    const data = (await fn()) ?? {};
    if (data.skipped) {
      record = { step: name, ok: true, skipped: data.skipped, ...data.extra };
    } else {
      record = { step: name, ok: true, ...data };
    }
  } catch (error) {
    const described = describeError(error);
    record = { step: name, ok: false, error: described.message, error_detail: described };
  }
  record.ms = Date.now() - started;
  results.push(record);
  emit(record);
  return record;
}

function requireEnv() {
  const names = ["RUNS_API_URL", "RUNS_TOKEN", "RUNS_PROJECT_ID", "RUNS_PROJECT_SLUG", "RUNS_FOREIGN_RUN_ID"];
  const missing = names.filter((n) => !process.env[n]);
  if (missing.length > 0) {
    emit({ step: "setup", ok: false, error: `missing env: ${missing.join(", ")}` });
    emit({ summary: { passed: 0, failed: 1, skipped: 0 } });
    process.exit(1);
  }
  return Object.fromEntries(names.map((n) => [n, process.env[n]]));
}

/** Sortable key for an ISO-8601 timestamp, keeping sub-millisecond digits. */
function timeKey(iso) {
  const ms = Date.parse(iso);
  const frac = /\.(\d+)/.exec(iso)?.[1] ?? "";
  const subMs = Number((frac.slice(3) + "000000").slice(0, 6)); // digits past milliseconds
  return [ms, subMs];
}

function compareTime(a, b) {
  const [am, as] = timeKey(a);
  const [bm, bs] = timeKey(b);
  return am !== bm ? am - bm : as - bs;
}

async function main() {
  const env = requireEnv();
  const apiUrl = env.RUNS_API_URL.replace(/\/+$/, "");
  const projectId = env.RUNS_PROJECT_ID;

  // Contract §15: veryfront/runs alone has no SchemaValidator; veryfront/task registers the
  // package's zod validator as an import side effect.
  await import("veryfront/task");
  const contracts = await import("veryfront/extensions/contracts");
  const { createRunsClient, VeryfrontRunsClient } = await import("veryfront/runs");

  if (!contracts.tryResolve("SchemaValidator")) {
    results.push({ step: "setup", ok: false });
    emit({ step: "setup", ok: false, error: "SchemaValidator contract is not registered after importing veryfront/task" });
    return;
  }

  const makeClient = (authToken) =>
    createRunsClient({
      apiUrl,
      authToken,
      projectReference: env.RUNS_PROJECT_SLUG,
      retry: { maxRetries: 0 },
    });
  const client = makeClient(env.RUNS_TOKEN);

  const createEcho = (extra = {}) =>
    client.createTaskRun({
      projectId,
      target: "task:echo",
      name: "contract echo",
      config: ECHO_CONFIG,
      timeoutSeconds: 60,
      backoffLimit: 0,
      ...extra,
    });

  async function pollUntil(runId, predicate, timeoutMs = POLL_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    const seen = [];
    for (;;) {
      const run = await client.get(runId);
      if (seen.at(-1) !== run.status) seen.push(run.status);
      if (predicate(run)) return { run, seen };
      if (Date.now() >= deadline) {
        throw new AssertionFailure(`run ${runId} did not reach the expected state within ${timeoutMs} ms`, {
          statuses_seen: seen,
        });
      }
      await sleep(POLL_INTERVAL_MS);
    }
  }

  // a. create an echo task run
  let echoRunId = null;
  await step("a", async () => {
    const res = await createEcho();
    check(res.accepted === true, "accepted is not true", { accepted: res.accepted });
    check(res.duplicate !== true, "a fresh run must not be reported as duplicate", { duplicate: res.duplicate });
    const run = res.run;
    echoRunId = run.run_id;
    check(typeof run.run_id === "string" && run.run_id.length > 0, "run.run_id is empty");
    check(run.kind === "task", `run.kind is ${run.kind}, expected task`);
    check(run.target === "task:echo", `run.target is ${run.target}`);
    check(run.owner.kind === "project" && run.owner.id === projectId, "run.owner is not the project UUID", {
      owner: run.owner,
    });
    check(run.root_run_id === run.run_id, "root_run_id of a root run must equal run_id", {
      root_run_id: run.root_run_id,
    });
    check(run.parent_run_id === null, "parent_run_id of a root run must be null");
    check(isDeepStrictEqual(run.config, ECHO_CONFIG), "run.config does not echo the request", { config: run.config });
    check(run.timeout_seconds === 60, `timeout_seconds is ${run.timeout_seconds}, expected 60`);
    check(run.backoff_limit === 0, `backoff_limit is ${run.backoff_limit}, expected 0`);
    return { run_id: run.run_id, status: run.status, duplicate: res.duplicate ?? null };
  });

  // b. poll until terminal; expect completed with output == config
  await step("b", async () => {
    check(echoRunId, "no run id from step a");
    const { run, seen } = await pollUntil(echoRunId, (r) => TERMINAL.has(r.status));
    check(run.status === "completed", `run ended ${run.status}, expected completed`, {
      statuses_seen: seen,
      error: run.error,
    });
    check(isDeepStrictEqual(run.output, ECHO_CONFIG), "run.output does not deep-equal the config", {
      output: run.output,
    });
    check(run.started_at !== null, "started_at is null on a completed run");
    check(run.completed_at !== null, "completed_at is null on a completed run");
    check(run.error === null, "error is set on a completed run", { error: run.error });
    return { run_id: run.run_id, statuses_seen: seen, duration_ms: run.duration_ms };
  });

  // c. page the events two at a time with afterEventId
  await step("c", async () => {
    check(echoRunId, "no run id from step a");
    const events = [];
    const pages = [];
    let afterEventId;
    for (let page = 0; ; page++) {
      check(page < 50, "events paging did not terminate after 50 pages", { pages });
      const res = await client.events(echoRunId, { afterEventId, limit: 2 });
      pages.push({ after: afterEventId ?? null, ids: res.data.map((e) => e.event_id), next: res.page_info.next });
      check(res.data.length <= 2, `page returned ${res.data.length} events for limit 2`, { pages });
      events.push(...res.data);
      if (res.page_info.next === null) break;
      check(res.data.length > 0, "page_info.next is set on an empty page", { pages });
      afterEventId = res.data.at(-1).event_id;
    }
    const ids = events.map((e) => e.event_id);
    const types = events.map((e) => e.event_type);
    check(events.length >= 2, `only ${events.length} events for a completed run`, { ids, types });
    ids.forEach((id, i) => {
      check(Number.isSafeInteger(id) && id > 0, `event_id ${id} is not a positive integer`, { ids });
      if (i > 0) check(id > ids[i - 1], "event ids are not strictly ascending", { ids, pages });
    });
    check(types[0] === "RUN_STARTED", `first event is ${types[0]}, expected RUN_STARTED`, { types });
    check(types.at(-1) === "RUN_FINISHED", `last event is ${types.at(-1)}, expected RUN_FINISHED`, { types });
    return { event_ids: ids, event_types: types, pages: pages.length };
  });

  // d. idempotent create with a caller-chosen public id
  const createAcceptsPublicId = /\bpublicId\b/.test(VeryfrontRunsClient.prototype.createTaskRun.toString());
  let publicRunId = null;
  await step("d", async () => {
    if (!createAcceptsPublicId) {
      return { skipped: "createTaskRun in this client version takes no publicId" };
    }
    const publicId = `run_${randomUUID()}`;
    const first = await createEcho({ publicId });
    check(first.accepted === true, "first create: accepted is not true");
    check(first.duplicate !== true, "first create reported duplicate", { duplicate: first.duplicate });
    check(first.run.run_id === publicId, "first create: run_id differs from public_id", {
      public_id: publicId,
      run_id: first.run.run_id,
    });
    publicRunId = first.run.run_id;
    const second = await createEcho({ publicId });
    check(second.accepted === true, "second create: accepted is not true");
    check(second.duplicate === true, `second create: duplicate is ${second.duplicate}, expected true`);
    check(second.run.run_id === first.run.run_id, "second create returned another run", {
      first: first.run.run_id,
      second: second.run.run_id,
    });
    const fetched = await client.get(publicId);
    check(fetched.run_id === publicId, "get(public_id) returned another run");
    return { public_id: publicId, first_duplicate: first.duplicate ?? null, second_duplicate: second.duplicate };
  });

  // e. list newest first, one per page, following page_info.next
  await step("e", async () => {
    const created = await createEcho({ name: "contract list" });
    check(created.accepted === true, "create for listing: accepted is not true");
    const known = [echoRunId, publicRunId, created.run.run_id].filter(Boolean);
    const listed = [];
    const pages = [];
    let cursor;
    for (let page = 0; page < 3; page++) {
      const res = await client.list({ limit: 1, cursor });
      pages.push({ cursor: cursor ?? null, ids: res.data.map((r) => r.run_id), next: res.page_info.next });
      check(res.data.length <= 1, `list returned ${res.data.length} runs for limit 1`, { pages });
      listed.push(...res.data);
      if (res.page_info.next === null) break;
      check(res.data.length > 0, "page_info.next is set on an empty page", { pages });
      cursor = res.page_info.next;
    }
    const ids = listed.map((r) => r.run_id);
    check(new Set(ids).size === ids.length, "a run id repeats across pages", { pages });
    const expectedAtLeast = Math.min(3, new Set(known).size);
    check(listed.length >= expectedAtLeast, `listed ${listed.length} runs, expected at least ${expectedAtLeast}`, {
      pages,
    });
    for (const run of listed) {
      check(run.owner.id === projectId, "listed a run of another project", { run_id: run.run_id, owner: run.owner });
    }
    for (let i = 1; i < listed.length; i++) {
      const prev = listed[i - 1];
      const cur = listed[i];
      const cmp = compareTime(prev.created_at, cur.created_at);
      const ordered = cmp > 0 || (cmp === 0 && prev.run_id > cur.run_id);
      check(ordered, "runs are not newest first (created_at desc, run_id desc)", {
        runs: listed.map((r) => ({ run_id: r.run_id, created_at: r.created_at })),
      });
    }
    return {
      created_run_id: created.run.run_id,
      listed: listed.map((r) => ({ run_id: r.run_id, created_at: r.created_at })),
      first_is_latest_created: ids[0] === created.run.run_id,
      pages: pages.length,
    };
  });

  // f. cancel a sleeping task twice
  await step("f", async () => {
    const created = await client.createTaskRun({
      projectId,
      target: "task:sleep",
      name: "contract sleep",
      config: { seconds: 30 },
      timeoutSeconds: 120,
      backoffLimit: 0,
    });
    check(created.accepted === true, "create sleep: accepted is not true");
    const runId = created.run.run_id;
    // Give the worker a moment to pick it up, so the cancel usually hits a running task; a
    // pending run must be cancellable as well, so this is not asserted.
    const { run: before } = await pollUntil(runId, (r) => r.status !== "pending", 10_000).catch(() => ({
      run: { status: "pending" },
    }));
    check(!TERMINAL.has(before.status), `sleep run already ${before.status} before cancel`, { error: before.error });

    const first = await client.cancel(runId);
    check(first.cancelled === true, `first cancel: cancelled is ${first.cancelled}, expected true`, {
      status: first.run.status,
    });
    check(first.run.status === "cancelled", `first cancel: run.status is ${first.run.status}`);
    check(first.run.completed_at !== null, "first cancel: completed_at is null on a cancelled run");

    const second = await client.cancel(runId);
    check(second.cancelled === false, `second cancel: cancelled is ${second.cancelled}, expected false`);
    check(second.run.status === "cancelled", `second cancel: run.status is ${second.run.status}`);

    await sleep(1_000);
    const later = await client.get(runId);
    check(later.status === "cancelled", `run is ${later.status} 1 s after cancel, expected cancelled`);
    return { run_id: runId, status_before_cancel: before.status, error: later.error };
  });

  // g. error statuses
  await step("g", async () => {
    const expectStatus = async (name, status, call) => {
      try {
        const value = await call();
        return { name, ok: false, expected: status, got: "resolved", value_run_id: value?.run_id };
      } catch (error) {
        const got = error?.status;
        const entry = { name, ok: got === status, expected: status, got: got ?? null };
        if (got !== status) entry.error = describeError(error);
        return entry;
      }
    };
    const badClient = makeClient("runs_invalid");
    const checks = [
      await expectStatus("invalid_token", 401, () => badClient.get(echoRunId ?? env.RUNS_FOREIGN_RUN_ID)),
      await expectStatus("unknown_run", 404, () => client.get("run_does-not-exist")),
      await expectStatus("foreign_run", 404, () => client.get(env.RUNS_FOREIGN_RUN_ID)),
    ];
    const failed = checks.filter((c) => !c.ok);
    check(failed.length === 0, failed.map((c) => `${c.name}: expected ${c.expected}, got ${c.got}`).join("; "), {
      checks,
    });
    return { checks };
  });

  // h. a workflow run: createWorkflowRun -> poll -> events
  await step("h", async () => {
    const res = await client.createWorkflowRun({
      projectId,
      workflowId: "demo-pipeline",
      target: "workflow:demo-pipeline",
      input: { text: "one two three" },
      startMode: "manual",
    });
    check(res.accepted === true, "accepted is not true");
    check(res.run.kind === "workflow", `run.kind is ${res.run.kind}, expected workflow`);
    check(res.run.workflow_id === "demo-pipeline", `workflow_id is ${res.run.workflow_id}`);
    const { run, seen } = await pollUntil(res.run.run_id, (r) => TERMINAL.has(r.status));
    check(run.status === "completed", `workflow ended ${run.status}`, { statuses_seen: seen, error: run.error });
    check(isDeepStrictEqual(run.input, { text: "one two three" }), "run.input does not echo the request");
    const events = [];
    let afterEventId;
    for (let page = 0; page < 50; page++) {
      const list = await client.events(run.run_id, { afterEventId, limit: 3 });
      events.push(...list.data);
      if (list.page_info.next === null) break;
      afterEventId = list.data.at(-1).event_id;
    }
    const types = events.map((e) => e.event_type);
    check(types[0] === "RUN_STARTED", `first event is ${types[0]}`, { types });
    check(types.at(-1) === "RUN_FINISHED", `last event is ${types.at(-1)}`, { types });
    const stepNames = events.filter((e) => e.event_type === "STEP_FINISHED").map((e) => e.payload.stepName);
    check(isDeepStrictEqual(stepNames, ["fetch", "analyze", "summarize"]), "steps did not finish in order", {
      stepNames,
    });
    return { run_id: run.run_id, output: run.output, event_types: types };
  });
}

try {
  await main();
} catch (error) {
  const described = describeError(error);
  results.push({ step: "fatal", ok: false });
  emit({ step: "fatal", ok: false, error: described.message, error_detail: described });
}

const summary = {
  passed: results.filter((r) => r.ok && !r.skipped).length,
  failed: results.filter((r) => !r.ok).length,
  skipped: results.filter((r) => r.skipped).length,
};
emit({ summary });
process.exitCode = summary.failed > 0 ? 1 : 0;
