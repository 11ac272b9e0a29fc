import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { openRaw, pragmaValue } from "./helpers/sqlite.js";
import { afterEach, describe, expect, it } from "vitest";
import { KaosError } from "../src/core/errors.js";
import { FreshRows, StatCacheRows, type RowRun } from "../src/core/hash.js";
import { StatCacheColumns, StatCacheMap, encodeStatCache } from "../src/core/stat-cache.js";
import { INTERRUPTED_REASON, SCHEMA_VERSION, StateStore, type JobRecord, type NewJob, type StatCacheEntry } from "../src/core/state.js";

const repoRoot = fileURLToPath(new URL("..", import.meta.url));
const stateSource = join(repoRoot, "src", "core", "state.ts");

const roots: string[] = [];
const children: ChildProcessWithoutNullStreams[] = [];
const stores: StateStore[] = [];

afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  for (const store of stores.splice(0)) store.close();
  for (const root of roots.splice(0)) rmSync(root, { recursive: true, force: true });
});

function makeRoot(): string {
  const root = mkdtempSync(join(tmpdir(), "kaos-state-"));
  roots.push(root);
  return root;
}

function open(root: string, options?: { readonly?: boolean }): StateStore {
  const store = StateStore.open(root, options);
  stores.push(store);
  return store;
}

function dbPath(root: string): string {
  return join(root, ".kaos", "state.db");
}

function job(runId: string, overrides: Partial<NewJob> = {}): NewJob {
  return {
    runId,
    stack: "local",
    pipeline: "svm",
    stage: "train",
    key: "a".repeat(64),
    params: { kernel: "poly", degree: 3 },
    envKey: "e".repeat(64),
    sourceKey: "s".repeat(64),
    dataKey: "d".repeat(64),
    paramsKey: "p".repeat(64),
    sweepIndex: 1,
    sweepSize: 1,
    outputDir: "/tmp/out",
    logFile: "/tmp/out/log",
    ...overrides,
  };
}

function expectKaosError(action: () => unknown, code: string): KaosError {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(KaosError);
    expect((error as KaosError).code).toBe(code);
    return error as KaosError;
  }
  throw new Error(`expected KaosError ${code}, nothing was thrown`);
}

/**
 * A separate node process running the real src/state.ts (through jiti, which the
 * project already uses to load kaos.config.ts). `StateStore` is in scope in body.
 */
function startChild(body: string): {
  child: ChildProcessWithoutNullStreams;
  lines: string[];
  waitFor(line: string): Promise<void>;
  exited: Promise<number | null>;
} {
  const script = `import { createJiti } from "jiti";
const { StateStore } = await createJiti(import.meta.url).import(${JSON.stringify(stateSource)});
const say = (line) => process.stdout.write(line + "\\n");
${body}`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], { cwd: repoRoot });
  children.push(child);
  const lines: string[] = [];
  let stderr = "";
  let pending = "";
  const waiters: { line: string; resolve: () => void; reject: (error: Error) => void }[] = [];
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (text: string) => (stderr += text));
  child.stdout.on("data", (text: string) => {
    pending += text;
    for (let newline = pending.indexOf("\n"); newline >= 0; newline = pending.indexOf("\n")) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      lines.push(line);
      for (const waiter of waiters.filter((w) => w.line === line)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => {
    child.on("exit", (code) => {
      for (const waiter of waiters.splice(0)) waiter.reject(new Error(`child exited (${code}) before '${waiter.line}': ${stderr}`));
      resolve(code);
    });
  });
  return {
    child,
    lines,
    exited,
    waitFor: (line) =>
      lines.includes(line) ? Promise.resolve() : new Promise<void>((resolve, reject) => waiters.push({ line, resolve, reject })),
  };
}

describe("opening", () => {
  it("creates .kaos/state.db, migrates it to the current schema and uses WAL", () => {
    const root = makeRoot();
    const store = open(root);
    expect(store.path).toBe(dbPath(root));
    store.close();
    const db = openRaw(dbPath(root), { readOnly: true });
    try {
      expect(pragmaValue(db, "user_version")).toBe(SCHEMA_VERSION);
      expect(pragmaValue(db, "journal_mode")).toBe("wal");
      const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map(
        (row) => row.name,
      );
      expect(tables).toEqual(["applied", "jobs", "meta", "revision", "runs", "stat_cache", "stat_cache_chunks", "writer_locks"]);
    } finally {
      db.close();
    }
  });

  it("keeps runs, jobs, applied plans, meta and the stat cache across reopening", () => {
    const root = makeRoot();
    const first = open(root);
    const run = first.beginRun("local", "kaos up");
    const created = first.createJob(job(run.id));
    first.finishJob(created.id, { state: "succeeded", exitCode: 0 });
    first.updateApplied("local", (applied) => {
      applied["svm"] = { envKey: "e", sourceKey: "s", dataKey: null, params: [{ n: 1 }] };
    });
    first.setMeta("manifest-pin", "abc");
    first.statCache().save("/data", [entry(0)], 42n);
    first.close();

    const second = open(root);
    expect(second.getJob(created.id)).toMatchObject({ state: "succeeded", exitCode: 0, runId: run.id });
    expect(second.getRun(run.id)).toMatchObject({ stack: "local", command: "kaos up", state: "running", pid: process.pid });
    expect(second.getApplied("local")).toEqual({ svm: { envKey: "e", sourceKey: "s", dataKey: null, params: [{ n: 1 }] } });
    expect(second.getMeta("manifest-pin")).toBe("abc");
    expect(second.statCache().savedAt?.("/data")).toBe(42n);
    expect(second.statCache().load("/data")).toBeInstanceOf(Map);
  });

  it("refuses a database written by a newer kaos, telling to upgrade", () => {
    const root = makeRoot();
    open(root).close();
    const db = openRaw(dbPath(root));
    db.exec(`PRAGMA user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    for (const options of [undefined, { readonly: true }]) {
      const error = expectKaosError(() => open(root, options), "STATE_CORRUPT");
      expect(error.message).toContain(dbPath(root));
      expect(error.message).toContain(`version ${SCHEMA_VERSION + 1}`);
      expect(error.message).toContain("upgrade kaos");
    }
  });

  it("refuses a file that is not SQLite, naming it and how to move it away", () => {
    const root = makeRoot();
    mkdirSync(join(root, ".kaos"));
    writeFileSync(dbPath(root), "these are notes, not a database\n".repeat(200));
    for (const options of [undefined, { readonly: true }]) {
      const error = expectKaosError(() => open(root, options), "STATE_CORRUPT");
      expect(error.message).toContain(dbPath(root));
      expect(error.message).toContain("move it away");
      expect(error.message).toContain(`mv ${dbPath(root)} ${dbPath(root)}.broken`);
    }
  });

  it("read-only on a project without state reads as empty and creates nothing", () => {
    const root = makeRoot();
    const store = open(root, { readonly: true });
    expect(store.listJobs()).toEqual([]);
    expect(store.getJob("abc")).toBeUndefined();
    expect(store.latestSucceeded("train", "k")).toBeUndefined();
    expect(store.sweepMembers("r", "svm")).toEqual([]);
    expect(store.getApplied("local")).toEqual({});
    expect(store.getMeta("x")).toBeUndefined();
    expect(store.statCache().savedAt?.("/data")).toBeUndefined();
    expect((store.statCache().load("/data") as Map<string, StatCacheEntry>).size).toBe(0);
    expectKaosError(() => store.resolveJob("abc"), "JOB_NOT_FOUND");
    expect(() => store.setMeta("x", "y")).toThrow(/read-only/);
    expect(existsSync(join(root, ".kaos"))).toBe(false);
    expect(readdirSync(root)).toEqual([]);
  });

  it("read-only on a database from before the current schema migrates it first", () => {
    const root = makeRoot();
    mkdirSync(join(root, ".kaos"));
    writeFileSync(dbPath(root), "");
    const store = open(root, { readonly: true });
    expect(store.listJobs()).toEqual([]);
    const db = openRaw(dbPath(root), { readOnly: true });
    expect(pragmaValue(db, "user_version")).toBe(SCHEMA_VERSION);
    db.close();
  });

  it("read-only on an existing database sees what the writer committed and cannot write", () => {
    const root = makeRoot();
    const writer = open(root);
    const run = writer.beginRun("local", "kaos up");
    const created = writer.createJob(job(run.id));
    const reader = open(root, { readonly: true });
    expect(reader.listJobs().map((j) => j.id)).toEqual([created.id]);
    const later = writer.createJob(job(run.id));
    expect(reader.listJobs().map((j) => j.id)).toEqual([later.id, created.id]);
    expect(() => reader.createJob(job(run.id))).toThrow(/read-only/);
  });
});

describe("runs and jobs", () => {
  it("records a job through queued, running and finished, with params as canonical JSON", () => {
    const store = open(makeRoot());
    const run = store.beginRun("local", "kaos up");
    const created = store.createJob(job(run.id, { params: { kernel: "poly", degree: 3, nested: { b: 1, a: 2 } } }));
    expect(created.id).toMatch(/^[0-9a-z]{10}$/);
    expect(created).toMatchObject({ state: "queued", pid: null, startedAt: null, finishedAt: null, exitCode: null, reason: null });
    expect(Object.keys(created.params)).toEqual(["degree", "kernel", "nested"]);
    expect(store.getJob(created.id)).toEqual(created);

    store.markRunning(created.id, 4242);
    const running = store.getJob(created.id);
    expect(running).toMatchObject({ state: "running", pid: 4242 });
    expect(Date.parse(running?.startedAt ?? "")).not.toBeNaN();

    expect(store.finishJob(created.id, { state: "failed", exitCode: 137, reason: "OOMKilled: exceeded memory limit 512Mi" })).toBe(true);
    // The first ending wins: a later exit report does not overwrite it.
    expect(store.finishJob(created.id, { state: "succeeded", exitCode: 0 })).toBe(false);
    const finished = store.getJob(created.id);
    expect(finished).toMatchObject({ state: "failed", exitCode: 137, reason: "OOMKilled: exceeded memory limit 512Mi" });
    expect(finished?.finishedAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);

    expectKaosError(() => store.markRunning("nosuchjob0", 1), "JOB_NOT_FOUND");
    expectKaosError(() => store.finishJob("nosuchjob0", { state: "succeeded", exitCode: 0 }), "JOB_NOT_FOUND");
    store.finishRun(run.id, "failed");
    expect(store.getRun(run.id)).toMatchObject({ state: "failed" });
    expect(store.getRun(run.id)?.finishedAt).not.toBeNull();
  });

  it("refuses a job whose run does not exist", () => {
    const store = open(makeRoot());
    expect(() => store.createJob(job("norun"))).toThrow(/FOREIGN KEY/);
  });

  it("lists newest first, filtered by stack, pipeline and run, with a limit", () => {
    const store = open(makeRoot());
    const runA = store.beginRun("local", "kaos up");
    const runB = store.beginRun("cluster", "kaos up");
    const ids: string[] = [];
    // Many jobs share a millisecond here: the insertion order breaks the tie.
    for (let i = 0; i < 30; i++) {
      const run = i % 3 === 0 ? runB : runA;
      ids.push(store.createJob(job(run.id, { stack: i % 3 === 0 ? "cluster" : "local", pipeline: i % 2 === 0 ? "svm" : "cnn" })).id);
    }
    const newestFirst = [...ids].reverse();
    expect(store.listJobs().map((j) => j.id)).toEqual(newestFirst);
    expect(store.listJobs({ limit: 5 }).map((j) => j.id)).toEqual(newestFirst.slice(0, 5));
    const cluster = store.listJobs({ stack: "cluster" });
    expect(cluster).toHaveLength(10);
    expect(cluster.every((j) => j.stack === "cluster" && j.runId === runB.id)).toBe(true);
    expect(store.listJobs({ runId: runA.id }).map((j) => j.id)).toEqual(newestFirst.filter((id) => ids.indexOf(id) % 3 !== 0));
    expect(store.listJobs({ pipeline: "cnn", stack: "local" }).every((j) => j.pipeline === "cnn" && j.stack === "local")).toBe(true);
    expect(store.listJobs({ pipeline: "cnn", stack: "local" })).toHaveLength(10);
    expect(store.listJobs({ state: "queued" })).toHaveLength(30);
    expect(store.listJobs({ state: "running" })).toEqual([]);
  });

  it("resolves a job by id or unique prefix and explains none and several", () => {
    const store = open(makeRoot());
    const run = store.beginRun("local", "kaos up");
    const jobs: JobRecord[] = [];
    // 161 ids over a 32-letter alphabet: some first letter is shared by at least 6.
    for (let i = 0; i < 161; i++) jobs.push(store.createJob(job(run.id, { sweepIndex: i })));
    const byFirst = new Map<string, JobRecord[]>();
    for (const j of jobs) byFirst.set(j.id[0]!, [...(byFirst.get(j.id[0]!) ?? []), j]);

    const target = jobs[17]!;
    expect(store.resolveJob(target.id).id).toBe(target.id);
    expect(store.resolveJob(target.id.toUpperCase()).id).toBe(target.id);
    const unique = [...Array(10).keys()]
      .map((n) => target.id.slice(0, n + 1))
      .find((prefix) => jobs.filter((j) => j.id.startsWith(prefix)).length === 1)!;
    expect(store.resolveJob(unique).id).toBe(target.id);

    const none = expectKaosError(() => store.resolveJob("uuu"), "JOB_NOT_FOUND");
    expect(none.message).toBe("no job matches 'uuu'");
    expectKaosError(() => store.resolveJob("no/such"), "JOB_NOT_FOUND");

    const [letter, crowd] = [...byFirst].sort((a, b) => b[1].length - a[1].length)[0]!;
    expect(crowd.length).toBeGreaterThanOrEqual(6);
    const ambiguous = expectKaosError(() => store.resolveJob(letter), "JOB_AMBIGUOUS");
    expect(ambiguous.message.split("\n")[0]).toBe(`'${letter}' matches ${crowd.length} jobs:`);
    const listed = crowd.map((j) => j.id).filter((id) => ambiguous.message.includes(id));
    expect(listed).toHaveLength(5);
    expect(ambiguous.message).toContain(`... and ${crowd.length - 5} more`);
  });

  it("finds the latest success and the last failure of a job key", async () => {
    const store = open(makeRoot());
    const run = store.beginRun("local", "kaos up");
    const key = "k".repeat(64);
    expect(store.latestSucceeded("train", key)).toBeUndefined();
    const older = store.createJob(job(run.id, { key }));
    store.finishJob(older.id, { state: "succeeded", exitCode: 0 });
    await new Promise((resolve) => setTimeout(resolve, 5));
    const failed = store.createJob(job(run.id, { key }));
    store.finishJob(failed.id, { state: "failed", exitCode: 1 });
    const newer = store.createJob(job(run.id, { key }));
    store.finishJob(newer.id, { state: "succeeded", exitCode: 0 });
    store.createJob(job(run.id, { key })); // queued: not a result

    expect(store.latestSucceeded("train", key)?.id).toBe(newer.id);
    expect(store.lastFailed("train", key)?.id).toBe(failed.id);
    expect(store.latestSucceeded("build", key)).toBeUndefined();
    expect(store.latestSucceeded("train", "other")).toBeUndefined();
  });

  it("lists a sweep's members by index, only the train jobs of that run and pipeline", () => {
    const store = open(makeRoot());
    const run = store.beginRun("local", "kaos up");
    const other = store.beginRun("local", "kaos up");
    store.createJob(job(run.id, { stage: "build", sweepIndex: null, sweepSize: null }));
    const third = store.createJob(job(run.id, { sweepIndex: 3, sweepSize: 3 }));
    const first = store.createJob(job(run.id, { sweepIndex: 1, sweepSize: 3 }));
    const second = store.createJob(job(run.id, { sweepIndex: 2, sweepSize: 3 }));
    store.createJob(job(run.id, { pipeline: "cnn" }));
    store.createJob(job(other.id));
    expect(store.sweepMembers(run.id, "svm").map((j) => j.id)).toEqual([first.id, second.id, third.id]);
  });

  it("stores what a stack last applied, typed and checked, and small metadata", () => {
    const root = makeRoot();
    const store = open(root);
    expect(store.getApplied("local")).toEqual({});
    const svm = { envKey: "e1", sourceKey: "s1", dataKey: "d1", params: [{ b: 1 }, { b: 2 }] };
    store.updateApplied("local", (applied) => {
      applied["svm"] = svm;
    });
    store.updateApplied("local", (applied) => {
      applied["other"] = { ...svm, dataKey: null, params: [] };
    });
    expect(store.getApplied("local")).toEqual({ svm, other: { ...svm, dataKey: null, params: [] } });
    expect(store.getApplied("cluster")).toEqual({});
    // A record kaos did not write is refused by name, not trusted.
    const db = openRaw(dbPath(root));
    db.prepare("UPDATE applied SET plan = ? WHERE stack = 'local'").run(JSON.stringify({ svm: { envKey: 1 } }));
    db.close();
    expect(() => store.getApplied("local")).toThrow(/the applied record of stack 'local' is not what kaos writes/);
    store.setMeta("pin", "1");
    store.setMeta("pin", "2");
    expect(store.getMeta("pin")).toBe("2");
  });

  it("rolls back everything in a failed transaction", () => {
    const store = open(makeRoot());
    const run = store.beginRun("local", "kaos up");
    expect(() =>
      store.transaction(() => {
        store.createJob(job(run.id));
        store.setMeta("x", "1");
        throw new Error("boom");
      }),
    ).toThrow("boom");
    expect(store.listJobs()).toEqual([]);
    expect(store.getMeta("x")).toBeUndefined();
  });
});

describe("recovering from a crash", () => {
  it("marks the unfinished jobs of a run whose process is gone as failed, keeping finished ones", () => {
    const store = open(makeRoot());
    const run = store.beginRun("local", "kaos up");
    const done = store.createJob(job(run.id));
    store.finishJob(done.id, { state: "succeeded", exitCode: 0 });
    const running = store.createJob(job(run.id));
    store.markRunning(running.id, 999_999);
    const queued = store.createJob(job(run.id));

    // Our own run is alive: nothing to recover.
    expect(store.recoverInterrupted()).toEqual({ interrupted: [], cancelled: [] });

    const recovered = store.recoverInterrupted((pid) => pid !== process.pid).interrupted;
    expect(recovered.map((j) => j.id).sort()).toEqual([running.id, queued.id].sort());
    expect(recovered.every((j) => j.state === "failed" && j.reason === INTERRUPTED_REASON)).toBe(true);
    expect(store.getJob(running.id)).toMatchObject({ state: "failed", reason: INTERRUPTED_REASON });
    expect(store.getJob(queued.id)?.finishedAt).not.toBeNull();
    expect(store.getJob(done.id)).toMatchObject({ state: "succeeded", reason: null });
    expect(store.getRun(run.id)?.state).toBe("failed");
    expect(store.recoverInterrupted(() => false)).toEqual({ interrupted: [], cancelled: [] });
  });

  it("detects a dead kaos process by itself", async () => {
    const root = makeRoot();
    const child = startChild(`
      const store = StateStore.open(${JSON.stringify(root)});
      const run = store.beginRun("local", "kaos up");
      const base = { runId: run.id, stack: "local", pipeline: "svm", stage: "train", key: "k", params: {}, envKey: null, sourceKey: null, dataKey: null, paramsKey: null, sweepIndex: null, sweepSize: null, outputDir: null, logFile: null };
      const done = store.createJob(base);
      store.finishJob(done.id, { state: "succeeded", exitCode: 0 });
      const running = store.createJob(base);
      store.markRunning(running.id, process.pid);
      store.createJob(base);
      say("created");
      process.exit(0); // without finishing the run, as a crash would
    `);
    await child.waitFor("created");
    await child.exited;
    const store = open(root);
    const mine = store.beginRun("local", "kaos up");
    const mineRunning = store.createJob(job(mine.id));
    store.markRunning(mineRunning.id, process.pid);

    const { interrupted: recovered } = store.recoverInterrupted();
    expect(recovered).toHaveLength(2);
    expect(recovered.every((j) => j.runId !== mine.id)).toBe(true);
    expect(store.listJobs({ state: "succeeded" })).toHaveLength(1);
    expect(store.getJob(mineRunning.id)?.state).toBe("running");
    expect(store.getRun(recovered[0]!.runId)?.state).toBe("failed");
    expect(store.getRun(mine.id)?.state).toBe("running");
  });
});

describe("writer lock", () => {
  it("refuses a second writer on the same stack while the first process lives, and takes over after it dies", async () => {
    const root = makeRoot();
    open(root).close();
    const holder = startChild(`
      const store = StateStore.open(${JSON.stringify(root)});
      store.acquireWriter("local", "kaos up");
      say("locked");
      setInterval(() => {}, 1000);
    `);
    await holder.waitFor("locked");
    const store = open(root);
    const refused = expectKaosError(() => store.acquireWriter("local", "kaos watch"), "STATE_LOCKED");
    expect(refused.message).toMatch(
      new RegExp(
        `^another kaos \\(pid ${holder.child.pid}, \`kaos up\`, started at \\d{4}-\\d\\d-\\d\\dT[^)]+\\) is applying stack 'local' in `,
      ),
    );
    expect(refused.message).toContain(root);
    expect(refused.message).toContain("wait for it to finish or stop it");

    // Other stacks, ordinary writes and readers are not held up by it.
    store.acquireWriter("cluster", "kaos up").release();
    const run = store.beginRun("local", "kaos plan");
    store.createJob(job(run.id));
    expect(open(root, { readonly: true }).listJobs()).toHaveLength(1);

    holder.child.kill("SIGKILL");
    await holder.exited;
    const lock = store.acquireWriter("local", "kaos up");
    expectKaosError(() => store.acquireWriter("local", "kaos up"), "STATE_LOCKED");
    lock.release();
    lock.release();
    store.acquireWriter("local", "kaos up").release();
  });

  it("gives its locks back when the store is closed", () => {
    const root = makeRoot();
    const first = open(root);
    const lock = first.acquireWriter("local", "kaos watch");
    expectKaosError(() => open(root).acquireWriter("local", "kaos up"), "STATE_LOCKED");
    first.close();
    lock.release();
    open(root).acquireWriter("local", "kaos up").release();
  });

  it("does not trust a lock whose pid now belongs to another process", () => {
    const root = makeRoot();
    const store = open(root);
    const first = store.acquireWriter("local", "kaos up");
    // Same pid, different start time: the holder died and its pid was reused.
    const db = openRaw(dbPath(root));
    db.prepare("UPDATE writer_locks SET pid_start = 'another-boot:1' WHERE stack = 'local'").run();
    db.close();
    const second = store.acquireWriter("local", "kaos up");
    // The stale holder's release must not free the new holder's lock.
    first.release();
    expectKaosError(() => store.acquireWriter("local", "kaos up"), "STATE_LOCKED");
    second.release();
    store.acquireWriter("local", "kaos up").release();
  });
});

describe("concurrency and crashes", () => {
  it("readers see committed state while another process holds a long write transaction", async () => {
    const root = makeRoot();
    const store = open(root);
    const run = store.beginRun("local", "kaos up");
    const committed = store.createJob(job(run.id));
    const writer = startChild(`
      const store = StateStore.open(${JSON.stringify(root)});
      store.transaction(() => {
        store.createJob({ runId: ${JSON.stringify(run.id)}, stack: "local", pipeline: "svm", stage: "train", key: "k", params: {}, envKey: null, sourceKey: null, dataKey: null, paramsKey: null, sweepIndex: null, sweepSize: null, outputDir: null, logFile: null });
        say("in-transaction");
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 3000);
      });
      say("committed");
    `);
    await writer.waitFor("in-transaction");
    const reader = open(root, { readonly: true });
    expect(reader.listJobs().map((j) => j.id)).toEqual([committed.id]);
    expect(store.getJob(committed.id)?.state).toBe("queued");
    // Had the reads waited for the writer, it would have committed by now.
    expect(writer.lines).not.toContain("committed");
    await writer.waitFor("committed");
    expect(reader.listJobs()).toHaveLength(2);
  });

  it("several processes creating the same new project's state at the same moment all open it", async () => {
    // SQLite refuses a switch to WAL at once, without waiting, while another process is creating the file.
    const base = makeRoot();
    const projects = 60;
    const go = join(base, "go");
    const openers = Array.from({ length: 4 }, (_, n) =>
      startChild(`
      const { existsSync, readFileSync } = await import("node:fs");
      say("ready");
      while (!existsSync(${JSON.stringify(go)})) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
      const start = Number(readFileSync(${JSON.stringify(go)}, "utf8"));
      for (let i = 0; i < ${projects}; i++) {
        while (Date.now() < start + i * 40);
        try {
          const store = StateStore.open(${JSON.stringify(base)} + "/" + i);
          store.acquireWriter("stack-${n}", "up").release();
          store.close();
        } catch (error) {
          say("project " + i + ": " + error.message);
        }
      }
      say("done");
    `),
    );
    await Promise.all(openers.map((opener) => opener.waitFor("ready")));
    for (let i = 0; i < projects; i++) mkdirSync(join(base, String(i)));
    writeFileSync(go, String(Date.now() + 200));
    await Promise.all(openers.map((opener) => opener.waitFor("done")));
    expect(openers.flatMap((opener) => opener.lines.filter((line) => line.startsWith("project ")))).toEqual([]);
    const db = openRaw(dbPath(join(base, "0")), { readOnly: true });
    expect(pragmaValue(db, "journal_mode")).toBe("wal");
    db.close();
  }, 60_000);

  it("opens cleanly and consistently after a writer is SIGKILLed mid-write", async () => {
    const root = makeRoot();
    open(root).close();
    const writer = startChild(`
      const store = StateStore.open(${JSON.stringify(root)});
      const run = store.beginRun("local", "kaos up");
      const entries = Array.from({ length: 2000 }, (_, i) => ({ path: "f/" + i, dev: 1n, ino: BigInt(i), size: i, mtimeNs: 1n, ctimeNs: 1n, mode: "file", hash: "0".repeat(64) }));
      for (let n = 1; ; n++) {
        store.transaction(() => {
          const job = store.createJob({ runId: run.id, stack: "local", pipeline: "svm", stage: "train", key: "k" + n, params: { n }, envKey: null, sourceKey: null, dataKey: null, paramsKey: null, sweepIndex: n, sweepSize: null, outputDir: null, logFile: null });
          store.markRunning(job.id, process.pid);
          store.finishJob(job.id, { state: "succeeded", exitCode: 0 });
          store.setMeta("jobs", String(n));
        });
        if (n % 5 === 0) store.statCache().save("/data", entries.map((e) => ({ ...e, size: n })), BigInt(n));
        if (n === 60) say("well under way");
      }
    `);
    // Killed while it keeps writing: sixty transactions in, and never stopping by itself.
    await writer.waitFor("well under way");
    writer.child.kill("SIGKILL");
    await writer.exited;

    const raw = openRaw(dbPath(root));
    expect(pragmaValue(raw, "integrity_check")).toBe("ok");
    raw.close();
    const store = open(root);
    const jobs = store.listJobs();
    expect(jobs.length).toBeGreaterThanOrEqual(60);
    expect(jobs.every((j) => j.state === "succeeded")).toBe(true);
    expect(Number(store.getMeta("jobs"))).toBe(jobs.length);
    expect(jobs.map((j) => j.sweepIndex)).toEqual(jobs.map((_, i) => jobs.length - i));
    const savedAt = store.statCache().savedAt?.("/data");
    const cache = store.statCache().load("/data") as Map<string, StatCacheEntry>;
    expect(cache.size).toBe(2000);
    expect(cache.get("f/1999")?.size).toBe(Number(savedAt));
    // Finished jobs stay finished; only the run is closed.
    expect(store.recoverInterrupted()).toEqual({ interrupted: [], cancelled: [] });
    expect(store.getRun(jobs[0]!.runId)?.state).toBe("failed");
  });
});

function entry(i: number): StatCacheEntry {
  return {
    path: `training/shard-${String(i % 97).padStart(3, "0")}/x${String(i).padStart(6, "0")}.csv`,
    dev: 0xfd01n + (i % 3 === 0 ? 0n : 1n << 60n),
    ino: i % 5 === 0 ? 1_000_000 + i : (1n << 63n) + BigInt(i),
    size: i * 977,
    mtimeNs: 1_732_000_000_123_456_789n + BigInt(i),
    ctimeNs: i % 7 === 0 ? -1_234_567_890_123n : 9_223_372_036_854_775_807n - BigInt(i),
    mode: (["file", "exec", "symlink"] as const)[i % 3]!,
    hash: (i * 2654435761).toString(16).padStart(16, "0").repeat(4).slice(0, 64),
  };
}

describe("stat cache", () => {
  it("round-trips 100k entries exactly, bigint nanoseconds included", () => {
    const root = makeRoot();
    const entries = Array.from({ length: 100_000 }, (_, i) => entry(i)).sort((a, b) => (a.path < b.path ? -1 : 1));
    const writer = open(root);
    writer.statCache().save("/bundle/data", entries, 1_732_000_000_987_654_321n);
    writer.close();

    const store = open(root);
    const cache = store.statCache();
    expect(cache.savedAt?.("/bundle/data")).toBe(1_732_000_000_987_654_321n);
    const loaded = cache.load("/bundle/data") as Map<string, StatCacheEntry>;
    expect(loaded.size).toBe(100_000);
    // In saved order (a warm walk), then in a scrambled order.
    expect(entries.filter((original) => !sameEntry(loaded.get(original.path), original))).toEqual([]);
    for (let i = 0; i < entries.length; i += 7919) {
      const original = entries[(i * 31) % entries.length]!;
      expect(loaded.get(original.path)).toEqual(original);
    }
    expect(loaded.get("training/none.csv")).toBeUndefined();
    expect(loaded.has(entries[5]!.path)).toBe(true);
    expect(typeof loaded.get(entries.find((e) => typeof e.ino === "number")!.path)!.ino).toBe("number");
    // Iteration turns it into an ordinary Map with everything in saved order.
    const keys = [...loaded.keys()];
    expect(keys).toEqual(entries.map((e) => e.path));
    expect(structuredClone(loaded).size).toBe(100_000);
    expect(cache.load("/bundle/other") as Map<string, StatCacheEntry>).toHaveProperty("size", 0);
  });

  it("keeps odd paths and hashes, any order, and rewrites only what changed", () => {
    const root = makeRoot();
    const store = open(root);
    const odd: StatCacheEntry[] = [
      { ...entry(3), path: "zeta/ünïcödé 文件.csv", hash: "sha256:NOT-HEX" },
      { ...entry(1), path: "alpha/a b.csv", hash: "ABCDEF".repeat(10) + "ABCD" },
      { ...entry(2), path: "alpha/a", dev: 12, ino: 34 },
    ];
    store.statCache().save("/r", odd, 5n);
    const loaded = store.statCache().load("/r") as Map<string, StatCacheEntry>;
    for (const original of [...odd].reverse()) expect(loaded.get(original.path)).toEqual(original);
    expect(loaded.get("alpha")).toBeUndefined();

    const hex = Array.from({ length: 50 }, (_, i) => entry(i)).sort((a, b) => (a.path < b.path ? -1 : 1));
    store.statCache().save("/s", hex, 1n);
    store.statCache().load("/s");
    // Unchanged: only the time moves.
    store.statCache().save(
      "/s",
      hex.map((e) => ({ ...e })),
      2n,
    );
    expect(store.statCache().savedAt?.("/s")).toBe(2n);
    const changed = hex.map((e, i) => (i === 10 ? { ...e, mtimeNs: e.mtimeNs + 1n } : e));
    store.statCache().save("/s", changed, 3n);
    const reloaded = open(root).statCache().load("/s") as Map<string, StatCacheEntry>;
    expect(reloaded.get(hex[10]!.path)?.mtimeNs).toBe(hex[10]!.mtimeNs + 1n);
    expect(reloaded.get(hex[11]!.path)).toEqual(hex[11]);
    // The other root is untouched.
    expect((store.statCache().load("/r") as Map<string, StatCacheEntry>).size).toBe(3);
  });

  it("keeps each cache's time paired with its entries when two processes save the same root", () => {
    const root = makeRoot();
    const v1 = Array.from({ length: 20 }, (_, i) => entry(i));
    const v2 = v1.map((e, i) => (i === 3 ? { ...e, size: e.size + 1 } : e));
    const a = open(root);
    const b = open(root);
    a.statCache().save("/r", v1, 1n);
    a.statCache().load("/r");
    b.statCache().load("/r");
    b.statCache().save("/r", v2, 5n);
    // A's entries came with time 1: it must not be handed B's later time.
    expect(a.statCache().savedAt?.("/r")).toBe(1n);
    // A saves what it loaded, unchanged: B rewrote the row since, so A writes it whole.
    a.statCache().save("/r", v1, 9n);
    const fresh = open(root).statCache();
    expect(fresh.savedAt?.("/r")).toBe(9n);
    expect((fresh.load("/r") as Map<string, StatCacheEntry>).get(v1[3]!.path)?.size).toBe(v1[3]!.size);
  });

  it("packs a cache in walk order for the hashing threads, with the tree hash it was saved with", () => {
    const root = makeRoot();
    const store = open(root);
    const treeHash = "ab".repeat(32);
    const sorted = Array.from({ length: 30 }, (_, i) => entry(i)).sort((a, b) => (a.path < b.path ? -1 : 1));
    store.statCache().save("/r", sorted, 7n, treeHash);
    const packed = open(root).statCache().loadPacked?.("/r");
    expect(packed).toMatchObject({ count: 30, savedAt: 7n, treeHash });
    expect(packed!.bytes.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(packed!.entryAt(4)).toEqual(sorted[4]);
    expect(packed!.modeAt(4)).toBe(sorted[4]!.mode);
    const words = new BigUint64Array(packed!.bytes.buffer, packed!.bytes.byteOffset + packed!.ino, packed!.count);
    expect(words[5]).toBe(BigInt.asUintN(64, BigInt(sorted[5]!.ino)));

    // UTF-8 byte order, not UTF-16 order: U+FB01 sorts before an astral character in bytes only.
    const unicode = [
      { ...entry(1), path: "a/\uFB01.txt" },
      { ...entry(2), path: "a/\u{1F600}.txt" },
    ];
    store.statCache().save("/u", unicode, 1n);
    expect(store.statCache().loadPacked?.("/u")).toMatchObject({ count: 2, treeHash: undefined });
    store.statCache().save("/u", [...unicode].reverse(), 2n);
    expect(store.statCache().loadPacked?.("/u")).toBeUndefined();
    expect(store.statCache().loadPacked?.("/none")).toBeUndefined();

    // The same entries saved with the tree hash they lacked: written whole, so the hash is kept.
    store.statCache().save("/u", unicode, 3n);
    store.statCache().load("/u");
    store.statCache().save("/u", unicode, 4n, treeHash);
    expect(open(root).statCache().loadPacked?.("/u")).toMatchObject({ savedAt: 4n, treeHash });
  });

  it("saves the rows a walk leaves by copying cached runs column by column, byte for byte what the entries give", () => {
    const root = makeRoot();
    const store = open(root);
    const count = 50_000;
    const cached = Array.from({ length: count }, (_, i) => entry(i)).sort((a, b) => (a.path < b.path ? -1 : 1));
    store.statCache().save("/big", cached, 1n, "cd".repeat(32));
    const packed = store.statCache().loadPacked!("/big")!;
    expect(packed.rawHashes).toBeDefined();

    // One file changed, one new file (not ASCII) between cached runs, one gone, and a number-typed inode.
    const changed = { ...cached[1000]!, mtimeNs: cached[1000]!.mtimeNs + 1n, hash: "0f".repeat(32) };
    const added = { ...entry(count), path: `${cached[2000]!.path}-\u00e9`, dev: 7, ino: 8 };
    const fresh = new FreshRows();
    const push = (e: StatCacheEntry): number => fresh.push(e.path, e.mode, e.dev, e.ino, e.size, e.mtimeNs, e.ctimeNs, e.hash);
    const runs: RowRun[] = [
      { fromPacked: true, first: 0, count: 1000 },
      { fromPacked: false, first: push(changed), count: 1 },
      { fromPacked: true, first: 1001, count: 1000 },
      { fromPacked: false, first: push(added), count: 1 },
      { fromPacked: true, first: 2002, count: count - 2002 },
    ];
    const expected = [...cached.slice(0, 1000), changed, ...cached.slice(1001, 2001), added, ...cached.slice(2002)];
    const treeHash = "ef".repeat(32);
    store.statCache().saveRows!("/big", new StatCacheRows(runs, packed, fresh), 2n, treeHash);

    const db = openRaw(dbPath(root));
    const saved = db.prepare("SELECT entries FROM stat_cache WHERE root = '/big'").get() as { entries: number };
    const blob = storedStatCacheBlob(db, "/big");
    db.close();
    expect(saved.entries).toBe(count);
    expect(Buffer.compare(blob, encodeStatCache(expected, treeHash))).toBe(0);
    const reloaded = open(root).statCache().loadPacked!("/big")!;
    expect(reloaded).toMatchObject({ count, savedAt: 2n, treeHash });
    expect(reloaded.entryAt(2001)).toEqual(added);

    // The same rows again: the blob is not rewritten, only its time moves.
    const again = open(root);
    const packedAgain = again.statCache().loadPacked!("/big")!;
    again.statCache().saveRows!(
      "/big",
      new StatCacheRows([{ fromPacked: true, first: 0, count }], packedAgain, new FreshRows()),
      3n,
      treeHash,
    );
    const db2 = openRaw(dbPath(root));
    const row = db2.prepare("SELECT generation, saved_at FROM stat_cache WHERE root = '/big'").get() as {
      generation: number;
      saved_at: number;
    };
    db2.close();
    expect(row).toEqual({ generation: 2, saved_at: 3 });
  });

  it("saves the rows of a walk with nothing cached (tens of thousands of fresh paths, one not ASCII) byte for byte as the entries give", () => {
    const root = makeRoot();
    const store = open(root);
    const entries = Array.from({ length: 70_000 }, (_, i) => entry(i)).sort((a, b) => (a.path < b.path ? -1 : 1));
    entries[40_000] = { ...entries[40_000]!, path: `${entries[40_000]!.path}-\u00e9` };
    const fresh = new FreshRows();
    for (const e of entries) fresh.push(e.path, e.mode, e.dev, e.ino, e.size, e.mtimeNs, e.ctimeNs, e.hash);
    store.statCache().saveRows!(
      "/fresh",
      new StatCacheRows([{ fromPacked: false, first: 0, count: entries.length }], undefined, fresh),
      2n,
    );
    const db = openRaw(dbPath(root));
    const blob = storedStatCacheBlob(db, "/fresh");
    db.close();
    expect(Buffer.compare(blob, encodeStatCache(entries))).toBe(0);
  });

  it("stores a big cache in pieces of a few megabytes and reads it back whole, in shared memory", () => {
    const root = makeRoot();
    const entries = Array.from({ length: 100_000 }, (_, i) => entry(i)).sort((a, b) => (a.path < b.path ? -1 : 1));
    open(root).statCache().save("/big", entries, 7n);
    const db = openRaw(dbPath(root));
    const pieces = db.prepare("SELECT seq, length(data) AS bytes FROM stat_cache_chunks WHERE root = '/big' ORDER BY seq").all() as {
      seq: number;
      bytes: number;
    }[];
    const inline = db.prepare("SELECT length(data) AS bytes FROM stat_cache WHERE root = '/big'").get() as { bytes: number };
    const blob = storedStatCacheBlob(db, "/big");
    db.close();
    expect(inline.bytes).toBe(0);
    expect(pieces.length).toBeGreaterThan(1);
    expect(pieces.map((piece) => piece.seq)).toEqual(pieces.map((_, i) => i));
    expect(Math.max(...pieces.map((piece) => piece.bytes))).toBeLessThanOrEqual(4 << 20);
    expect(Buffer.compare(blob, encodeStatCache(entries))).toBe(0);
    const packed = open(root).statCache().loadPacked!("/big")!;
    expect(packed.bytes.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(packed.count).toBe(100_000);
    expect(packed.entryAt(54_321)).toEqual(entries[54_321]);
  });

  it("reads a cache kept whole in its row, as an older kaos stored it", () => {
    const root = makeRoot();
    const entries = Array.from({ length: 50 }, (_, i) => entry(i)).sort((a, b) => (a.path < b.path ? -1 : 1));
    open(root).close();
    const db = openRaw(dbPath(root));
    db.prepare("INSERT INTO stat_cache (root, saved_at, generation, entries, data) VALUES ('/old', 3, 1, ?, ?)").run(
      entries.length,
      encodeStatCache(entries),
    );
    db.close();
    const store = open(root);
    expect(store.statCache().savedAt?.("/old")).toBe(3n);
    const loaded = store.statCache().load("/old") as Map<string, StatCacheEntry>;
    expect([...loaded.values()]).toEqual(entries);
  });

  it("treats a cache with a piece missing as no cache", () => {
    const root = makeRoot();
    const entries = Array.from({ length: 100_000 }, (_, i) => entry(i)).sort((a, b) => (a.path < b.path ? -1 : 1));
    open(root).statCache().save("/big", entries, 7n);
    const db = openRaw(dbPath(root));
    db.prepare("DELETE FROM stat_cache_chunks WHERE root = '/big' AND seq = 1").run();
    db.close();
    expect((open(root).statCache().load("/big") as Map<string, StatCacheEntry>).size).toBe(0);
  });

  it("takes again the cache it holds while no other process rewrote it, and reads one that another process did", () => {
    const root = makeRoot();
    const v1 = Array.from({ length: 20 }, (_, i) => entry(i)).sort((a, b) => (a.path < b.path ? -1 : 1));
    const v2 = v1.map((e, i) => (i === 3 ? { ...e, size: e.size + 1 } : e));
    const a = open(root);
    a.statCache().save("/r", v1, 1n);
    const first = a.loadStatCache("/r").columns();
    expect(first).toBeDefined();
    expect(a.loadStatCache("/r").columns()).toBe(first);
    open(root).statCache().save("/r", v2, 5n);
    const reread = a.loadStatCache("/r");
    expect(reread.columns()).not.toBe(first);
    expect(reread.get(v1[3]!.path)?.size).toBe(v1[3]!.size + 1);
    expect(a.statCache().savedAt?.("/r")).toBe(5n);
  });

  it("sets new change times in a copy of a blob (keeping its tree hash only when asked) or in place, and peeks without keeping entries", () => {
    const entries = Array.from({ length: 300 }, (_, i) => entry(i)).sort((a, b) => (a.path < b.path ? -1 : 1));
    const treeHash = "ab".repeat(32);
    const columns = StatCacheColumns.decode(encodeStatCache(entries, treeHash))!;
    const moved = (i: number): bigint => entries[i]!.ctimeNs - BigInt(i) - 1n;
    const expected = entries.map((e, i) => ({ ...e, ctimeNs: moved(i) }));
    const kept = columns.withChangeTimes(moved, true);
    expect(kept.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(Buffer.compare(kept, encodeStatCache(expected, treeHash))).toBe(0);
    expect(Buffer.compare(columns.withChangeTimes(moved, false), encodeStatCache(expected))).toBe(0);
    // The original is untouched.
    expect(columns.sameBlob(encodeStatCache(entries, treeHash))).toBe(true);
    // In place, and back.
    const patched = columns.setChangeTimes(BigInt64Array.from(entries, (_, i) => moved(i)));
    expect(Buffer.compare(patched.blob, encodeStatCache(expected, treeHash))).toBe(0);
    expect(columns.entryAt(7).ctimeNs).toBe(moved(7));
    patched.undo();
    expect(columns.sameBlob(encodeStatCache(entries, treeHash))).toBe(true);
    expect(columns.entryAt(7).ctimeNs).toBe(entries[7]!.ctimeNs);

    const map = new StatCacheMap(columns);
    const path = entries[42]!.path;
    expect(map.peek(path)).toEqual(entries[42]);
    expect(map.peek(path)).not.toBe(map.peek(path));
    expect(map.peek("none")).toBeUndefined();
    expect(map.get(path)).toBe(map.get(path));
  });

  it("treats a damaged cache blob as no cache", () => {
    const root = makeRoot();
    const store = open(root);
    store.statCache().save("/r", [entry(1)], 5n);
    const db = openRaw(dbPath(root));
    db.prepare("UPDATE stat_cache SET data = ? WHERE root = '/r'").run(Buffer.from("garbage"));
    db.close();
    expect((store.statCache().load("/r") as Map<string, StatCacheEntry>).size).toBe(0);
  });
});

/** A stat cache blob as stored: its pieces, in order. */
function storedStatCacheBlob(db: ReturnType<typeof openRaw>, root: string): Buffer {
  const pieces = db.prepare("SELECT data FROM stat_cache_chunks WHERE root = ? ORDER BY seq").all(root) as { data: Uint8Array }[];
  return Buffer.concat(pieces.map((piece) => piece.data));
}

function sameEntry(actual: StatCacheEntry | undefined, expected: StatCacheEntry): boolean {
  return (
    actual !== undefined &&
    actual.path === expected.path &&
    actual.dev === expected.dev &&
    actual.ino === expected.ino &&
    actual.size === expected.size &&
    actual.mtimeNs === expected.mtimeNs &&
    actual.ctimeNs === expected.ctimeNs &&
    actual.mode === expected.mode &&
    actual.hash === expected.hash
  );
}
