/**
 * Crash safety: `kaos up` killed with SIGKILL at many points (start-up and
 * hashing, the build, a running sweep, recording results, an ingest) and run
 * again. After every kill the state opens (`kaos train list`), and nothing
 * `.kaos/` trusts is incomplete: every object hashes to its name, every
 * environment and snapshot has its completion marker. After each series, a
 * last `kaos up` must succeed and leave: no job queued or running, no job key
 * (train or build) succeeded twice (finished work is never redone), nothing
 * left to run, and no process of any killed run still alive.
 *
 * Kill points are driven by what kaos prints (a job line), by files appearing
 * in `.kaos/`, or by a delay after one of those; which one is given in each
 * point's label. The normal run tries about 25-30; KAOS_FAULTS_LONG=1 adds
 * about 65 points at random delays from fixed seeds (replayable), each with new
 * work to do, for a longer soak. The count tried is printed at the end.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { eventually, jobRows, killTagged, killWhen, listJobs, pidAlive, processesWithEnv, trustProblems } from "./helpers/faults.js";
import { openRaw } from "./helpers/sqlite.js";
import { sha256OfGenerated, startServer, type TestServer } from "./helpers/http-server.js";
import { TRAIN_SCRIPT, trainingProject } from "./helpers/jobs.js";
import {
  CLI,
  dataViewsStack,
  type FileMap,
  type LiveKaos,
  makeProject,
  type Project,
  runKaos,
  runKaosOk,
  sleep,
  trivialSourceBundle,
  under,
} from "./helpers/rig.js";

const LONG = process.env.KAOS_FAULTS_LONG === "1";
const TAG_NAME = "KAOS_FAULTS_TAG";
const tag = randomBytes(6).toString("hex");
const projects: Project[] = [];
let killPointsTried = 0;

afterEach(() => killTagged(TAG_NAME, tag));
afterAll(() => {
  killTagged(TAG_NAME, tag);
  projects.forEach((project) => {
    project.remove();
  });
  // The count the issue asks for, in the test output.
  console.log(`faults-crash: ${killPointsTried} kill points tried${LONG ? " (long variant)" : ""}`);
});

interface KillPoint {
  label: string;
  wait: (live: LiveKaos, dir: string) => Promise<unknown>;
  /** Run before this point's `kaos up`, to give it work (a new grid value, say). */
  prepare?: (made: Project) => void;
}

const afterStart = (ms: number): KillPoint => ({ label: `${ms} ms after start`, wait: () => sleep(ms) });

const afterOutput = (pattern: RegExp, ms = 0): KillPoint => ({
  label: `${ms} ms after ${String(pattern)}`,
  wait: async (live) => {
    await live.waitFor(pattern, 60_000);
    await sleep(ms);
  },
});

const afterFile = (what: string, found: (dir: string) => boolean, ms = 0): KillPoint => ({
  label: `${ms} ms after ${what} appears`,
  wait: async (_live, dir) => {
    if (!(await eventually(() => found(dir), 30_000, 5))) throw new Error(`${what} never appeared`);
    await sleep(ms);
  },
});

const entriesOf = (dir: string): string[] => {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
};
const buildingEnv = (dir: string) => entriesOf(join(dir, ".kaos", "envs")).some((name) => name.startsWith(".building-"));
const downloading = (dir: string) => entriesOf(join(dir, ".kaos", "objects", "tmp")).length > 0;
/** A partial download whose validators were saved, which a later run may resume. */
const resumable = (dir: string) =>
  entriesOf(join(dir, ".kaos", "objects", "tmp")).some((name) => name.startsWith("dl-") && name.endsWith(".json"));

/** A deterministic sequence for the long variant's random points. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state * 1664525 + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

interface SeriesOutcome {
  kills: number;
  interrupted: number;
}

/**
 * Runs `kaos up` once per kill point, SIGKILLs it there, and checks what a
 * crash may leave; then a last `kaos up` that must finish, and the invariants.
 */
async function series(made: Project, points: KillPoint[], env: Record<string, string> = {}): Promise<SeriesOutcome> {
  const runEnv = { [TAG_NAME]: tag, KAOS_TEST_LOG: made.path("marks.log"), ...env };
  let kills = 0;
  for (const point of points) {
    point.prepare?.(made);
    const { killed, result } = await killWhen(["up"], { cwd: made.dir, env: runEnv }, (live) => point.wait(live, made.dir));
    if (!killed) {
      // It finished first: that is a run, not a kill point, and it must have gone well.
      expect(result.code, `${point.label}: finished before the kill point\n${result.stderr}`).toBe(0);
      continue;
    }
    kills += 1;
    killPointsTried += 1;
    // The state opens cleanly for a reader, and nothing trusted is half-made.
    await listJobs(made.dir);
    expect(trustProblems(made.dir), point.label).toEqual([]);
  }
  const last = await runKaos(["up"], { cwd: made.dir, env: runEnv, timeoutMs: 120_000 });
  expect(last.code, last.stderr).toBe(0);

  const rows = jobRows(made.dir);
  expect(rows.filter((row) => row.state === "queued" || row.state === "running")).toEqual([]);
  // Finished work is never redone: no job key and no environment succeeds twice.
  const successes = new Map<string, number>();
  for (const row of rows.filter((r) => r.state === "succeeded")) {
    const key = `${row.stage} ${row.key}`;
    successes.set(key, (successes.get(key) ?? 0) + 1);
  }
  expect([...successes].filter(([, count]) => count > 1)).toEqual([]);
  // Unfinished work was done: nothing is left to run.
  const plan = await runKaos(["plan", "--json"], { cwd: made.dir, env: runEnv });
  expect(plan.code, plan.stderr).toBe(0);
  expect((JSON.parse(plan.stdout) as { changes: boolean }).changes).toBe(false);
  // What the killed runs left running was stopped.
  expect(await eventually(() => processesWithEnv(TAG_NAME, tag).length === 0, 5_000)).toBe(true);
  expect(trustProblems(made.dir)).toEqual([]);
  // What the killed runs were writing is gone too, not only never trusted.
  const leftovers = ["snapshots", "data", "trees"].flatMap((sub) =>
    entriesOf(join(made.dir, ".kaos", sub))
      .filter((name) => /\.building-\d+(?:@[0-9a-f]{24})?-|\.\d+(?:@[0-9a-f]{24})?\.[0-9a-f]{8}\.tmp$/.test(name))
      .map((name) => `${sub}/${name}`),
  );
  expect(leftovers).toEqual([]);
  return { kills, interrupted: rows.filter((row) => row.reason?.startsWith("interrupted")).length };
}

function project(options: Parameters<typeof trainingProject>[0]): Project {
  const made = makeProject(trainingProject(options), "kaos-crash-");
  projects.push(made);
  return made;
}

/**
 * The long variant's points: random delays from a fixed seed (so a failure can
 * be replayed), each after adding one more grid value so that every run has work.
 */
function extraPoints(seed: number, count: number, maxMs: number, grid?: (index: number) => Record<string, unknown>): KillPoint[] {
  if (!LONG) return [];
  const next = random(seed);
  return Array.from({ length: count }, (_, index) => ({
    ...afterStart(Math.floor(next() * maxMs)),
    ...(grid ? { prepare: (made: Project) => writeFileSync(made.path("grid.json"), JSON.stringify(grid(index))) } : {}),
  }));
}

const growingGrid = (base: number[], sleep: number) => (index: number) => ({
  score: [...base, ...Array.from({ length: index + 1 }, (_, i) => 100 + i)],
  sleep,
});

/**
 * A one-job project whose train script runs on while the file `slow` exists
 * (KAOS_SLOW) and writes pid files into `pids/` (KAOS_PIDS): `kaos up` is
 * SIGKILLed once the job runs and `pidFiles` of them are there.
 */
/** A stack whose data views are hardlinks to the bundle's own files (`dataViews: "link"`). */
const LINK_STACK = dataViewsStack("link");

async function killWhileJobRuns(
  train: string,
  pidFiles: number,
  stack: FileMap = {},
  up: string[] = ["up"],
): Promise<{ made: Project; env: Record<string, string> }> {
  const made = makeProject({ ...trainingProject(), "src/model/train": { content: train, mode: 0o755 }, slow: "", ...stack }, "kaos-crash-");
  projects.push(made);
  mkdirSync(made.path("pids"));
  const env = { [TAG_NAME]: tag, KAOS_PIDS: made.path("pids"), KAOS_SLOW: made.path("slow") };
  const { killed } = await killWhen(up, { cwd: made.dir, env }, async (live) => {
    await live.waitFor(/p train 1\/1 \w+ .*running/);
    await eventually(() => readdirSync(made.path("pids")).length === pidFiles, 10_000);
  });
  expect(killed).toBe(true);
  killPointsTried += 1;
  return { made, env };
}

describe("crash safety: kaos up killed with SIGKILL and run again", () => {
  it("a cold project: start-up, hashing, build, first jobs, results being recorded", async () => {
    const made = project({ grid: { score: [1, 2, 3, 4, 5, 6], sleep: 0.3 }, parallelism: 2 });
    const points = [
      afterStart(0),
      afterStart(250),
      afterFile("a half-built environment", buildingEnv),
      afterOutput(/p build \w+ +running/, 0),
      afterOutput(/p build \w+ +running/, 80),
      // Under load the build can finish before a kill 80 ms into it lands, so later points accept a build already done.
      afterOutput(/p build .*(succeeded|skipped)/, 0),
      afterOutput(/p train \d\/6 \w+ .*running/, 0),
      afterOutput(/p train \d\/6 \w+ .*succeeded/, 0),
      afterOutput(/p train [3-6]\/6 \w+ .*running/, 100),
      ...extraPoints(1, 20, 2500, growingGrid([1, 2, 3, 4, 5, 6], 0.3)),
    ];
    const outcome = await series(made, points);
    expect(outcome.kills).toBeGreaterThanOrEqual(6);
  }, 240_000);

  it("rebuilds killed at swept points inside the build (requirements edited each time)", async () => {
    const made = project({ grid: { score: [1, 2], sleep: 0.1 }, parallelism: 2 });
    // Kill points spread over a build as long as this machine takes for one, so that they land inside it.
    writeFileSync(made.path("src/model/requirements.txt"), "# measure\n");
    const measured = await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag }, timeoutMs: 120_000 });
    expect(measured.code, measured.stderr).toBe(0);
    const build = jobRows(made.dir).find((row) => row.stage === "build" && row.state === "succeeded")!;
    const buildMs = Date.parse(build.finished_at!) - Date.parse(build.started_at!);
    const delays = [0, 0.15, 0.35, 0.55, 0.75].map((fraction) => Math.round(fraction * buildMs));
    let kills = 0;
    // Each edit makes a new environment key, so every run builds; the last run of each finishes the build.
    for (const [index, delay] of delays.entries()) {
      writeFileSync(made.path("src/model/requirements.txt"), `# edit ${index}\n`);
      const outcome = await series(made, [afterFile("a half-built environment", buildingEnv, delay)]);
      kills += outcome.kills;
    }
    for (const extra of extraPoints(2, 10, 2000)) {
      writeFileSync(made.path("src/model/requirements.txt"), `# extra ${extra.label}\n`);
      kills += (await series(made, [extra])).kills;
    }
    expect(kills).toBeGreaterThanOrEqual(4);
    // Exactly one complete environment per key that finished; half-built ones were swept away by later builds.
    const envs = readdirSync(made.path(".kaos", "envs"));
    expect(envs.filter((name) => !name.startsWith(".")).length).toBeGreaterThanOrEqual(delays.length);
  }, 240_000);

  it("a running sweep killed at swept delays: finished jobs are kept, interrupted ones rerun", async () => {
    const made = project({ grid: { score: [1, 2, 3, 4, 5, 6, 7, 8], sleep: 0.25 }, parallelism: 2 });
    // Build once so that every point below lands in the sweep.
    writeFileSync(made.path("grid.json"), JSON.stringify({ score: [0], sleep: 0 }));
    expect((await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag } })).code).toBe(0);
    // Each point adds a round of 8 jobs (at least 1.6 s of work at parallelism 2), so that
    // its kill lands in a running sweep however much earlier runs got done.
    const scores = [1, 2, 3, 4, 5, 6, 7, 8];
    const delays = [0, 150, 300, 450, 600, 800];
    const points = delays.map((ms, index) => ({
      ...afterOutput(/p train \d+\/\d+ \w+ .*running/, ms),
      prepare: () =>
        writeFileSync(
          made.path("grid.json"),
          JSON.stringify({ score: scores, round: Array.from({ length: index + 1 }, (_, round) => round), sleep: 0.4 }),
        ),
    }));
    // The long variant's points grow the last round's grid, so that the last run still owes every round.
    const rounds = Array.from({ length: delays.length }, (_, round) => round);
    const growing = (index: number) => ({
      score: [...scores, ...Array.from({ length: index + 1 }, (_, i) => 100 + i)],
      round: rounds,
      sleep: 0.4,
    });
    const outcome = await series(made, [...points, ...extraPoints(3, 20, 2500, growing)]);
    expect(outcome.kills).toBeGreaterThanOrEqual(5);
    // Jobs caught running were recorded as interrupted by the next run, then rerun.
    expect(outcome.interrupted).toBeGreaterThan(0);
    const train = jobRows(made.dir).filter((row) => row.stage === "train" && row.state === "succeeded");
    // The warm-up job and every round's jobs (in the long variant, with the grown scores).
    expect(new Set(train.map((row) => row.params)).size).toBe(1 + delays.length * (scores.length + (LONG ? 20 : 0)));
  }, 240_000);

  it("an ingest killed mid-download resumes, and no partial download is ever trusted", async () => {
    // Two small files, and one big enough (over 16 MiB) that kaos keeps its partial download across a kill.
    const sizes: Record<number, number> = { 1: 1 << 20, 2: 1 << 20, 3: 24 << 20 };
    const server: TestServer = await startServer(
      Object.fromEntries([
        ["/value.txt", { body: "remote" }],
        ...[1, 2, 3].map((seed) => [
          `/big${seed}.bin`,
          { generated: { size: sizes[seed]!, seed }, chunkSize: seed === 3 ? 256 << 10 : 64 << 10, chunkDelayMs: 20, etag: `"big${seed}"` },
        ]),
      ]),
    );
    try {
      const made = makeProject(
        {
          "kaos.config.ts": `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ pipelines: { p: { source: "src", manifest: "m.jsonl", hyperparams: "grid.json" } } });\n`,
          "grid.json": JSON.stringify({ score: [1, 2] }),
          "m.jsonl": [
            { url: `${server.url}/value.txt`, path: "value.txt" },
            ...[1, 2, 3].map((seed) => ({ url: `${server.url}/big${seed}.bin`, path: `big/${seed}.bin` })),
          ]
            .map((line) => JSON.stringify(line))
            .join("\n"),
          ...under("src", trivialSourceBundle(TRAIN_SCRIPT)),
        },
        "kaos-crash-",
      );
      projects.push(made);
      const points = [
        afterFile("a download in objects/tmp", downloading, 0),
        afterFile("a download in objects/tmp", downloading, 150),
        afterFile("a resumable partial download", resumable, 0),
        afterFile("a resumable partial download", resumable, 150),
        afterOutput(/p ingest \w+ +running/, 300),
        afterOutput(/p ingest \w+ +running/, 600),
        afterOutput(/p (ingest \w+ +succeeded|build \w+ +running)/, 0),
        ...extraPoints(4, 15, 3000),
      ];
      const outcome = await series(made, points);
      expect(outcome.kills).toBeGreaterThanOrEqual(4);
      // The data each job saw is the served content, whole.
      const lock = JSON.parse(readFileSync(made.path("m.jsonl.lock"), "utf8")) as {
        entries: Record<string, { sha256: string; size: number }>;
      };
      for (const seed of [1, 2, 3]) {
        expect(lock.entries[`big/${seed}.bin`]).toMatchObject({ sha256: sha256OfGenerated(sizes[seed]!, seed), size: sizes[seed] });
      }
      for (const row of jobRows(made.dir).filter((r) => r.stage === "train" && r.state === "succeeded")) {
        expect(readFileSync(made.path(".kaos", "jobs", row.id, "out", "data.txt"), "utf8")).toBe("remote");
      }
      // Downloads killed midway resumed where they stopped.
      expect(server.requests.filter((request) => request.headers.range !== undefined).length).toBeGreaterThan(0);
    } finally {
      await server.close();
    }
  }, 240_000);

  it.each([
    ["", "", false],
    [" even with the file's modification time set back", `touch -m -d "2020-01-01 00:00:00" "$KAOS_DATA_DIR/value.txt"`, false],
    // Its kaos is gone: the kill stops the job by its tag and records it cancelled, not interrupted.
    [" when kaos train kill cancelled it meanwhile", "", true],
  ])(
    'what a job wrote into its data view after its kaos was killed is found by the next kaos up%s, and nothing it changed is trusted (dataViews: "copy")',
    async (_, coverUp, killFirst) => {
      // Root ignores the view's read-only bits; with nobody watching, the write reaches the stored object behind the link.
      // (Views linked to the bundle's own files pass such a write on to them: the next plan hashes the new content.)
      const train = `#!/bin/sh
if [ -f "$KAOS_SLOW" ]; then
  echo $$ > "$KAOS_PIDS/$KAOS_JOB_ID"
  while [ ! -f "$KAOS_PIDS/killed" ]; do sleep 0.05; done
  echo tampered >> "$KAOS_DATA_DIR/value.txt"
  ${coverUp}
  echo written > "$KAOS_PIDS/written"
  sleep 120
fi
mkdir -p "$1" && cp "$KAOS_DATA_DIR/value.txt" "$1/data.txt"
`;
      const copyStack = {
        ...dataViewsStack("copy"),
      };
      const { made, env } = await killWhileJobRuns(train, 1, copyStack, ["up", "--stack", "copy"]);
      writeFileSync(made.path("pids", "killed"), "");
      expect(await eventually(() => existsSync(made.path("pids", "written")), 10_000)).toBe(true);
      // The write went through the view's link into the stored object: it is untrustworthy now.
      expect(trustProblems(made.dir).some((problem) => problem.includes("holds bytes hashing to"))).toBe(true);
      if (killFirst) {
        const [job] = jobRows(made.dir).filter((row) => row.stage === "train");
        await runKaosOk(["train", "kill", job!.id], { cwd: made.dir });
        expect(jobRows(made.dir).find((row) => row.id === job!.id)?.state).toBe("cancelled");
      }

      const again = await runKaos(["up", "--stack", "copy"], { cwd: made.dir, env: { ...env, KAOS_SLOW: made.path("no-such-file") } });
      expect(again.code, again.stderr).toBe(0);
      const rerun = jobRows(made.dir).find((row) => row.stage === "train" && row.state === "succeeded")!;
      expect(readFileSync(made.path(".kaos", "jobs", rerun.id, "out", "data.txt"), "utf8")).toBe("v1");
      expect(trustProblems(made.dir)).toEqual([]);
      expect(readFileSync(made.path("data", "value.txt"), "utf8")).toBe("v1");
      expect(await eventually(() => processesWithEnv(TAG_NAME, tag).length === 0, 5_000)).toBe(true);
    },
    120_000,
  );

  it('what a job wrote into a linked data view after its kaos was killed is in the user\'s file: the next kaos up hashes it anew and nothing succeeds under the old key (dataViews: "link")', async () => {
    const train = `#!/bin/sh
if [ -f "$KAOS_SLOW" ]; then
  echo $$ > "$KAOS_PIDS/$KAOS_JOB_ID"
  while [ ! -f "$KAOS_PIDS/killed" ]; do sleep 0.05; done
  echo tampered >> "$KAOS_DATA_DIR/value.txt"
  echo written > "$KAOS_PIDS/written"
  sleep 120
fi
mkdir -p "$1" && cp "$KAOS_DATA_DIR/value.txt" "$1/data.txt"
`;
    const { made, env } = await killWhileJobRuns(train, 1, LINK_STACK, ["up", "--stack", "link"]);
    const [killed] = jobRows(made.dir).filter((row) => row.stage === "train");
    writeFileSync(made.path("pids", "killed"), "");
    expect(await eventually(() => existsSync(made.path("pids", "written")), 10_000)).toBe(true);
    // The view's file is the user's: the write is there, and nothing of kaos's store holds it.
    expect(readFileSync(made.path("data", "value.txt"), "utf8")).toBe("v1tampered\n");
    expect(trustProblems(made.dir)).toEqual([]);

    const again = await runKaos(["up", "--stack", "link"], { cwd: made.dir, env: { ...env, KAOS_SLOW: made.path("no-such-file") } });
    expect(again.code, again.stderr).toBe(0);
    const rows = jobRows(made.dir).filter((row) => row.stage === "train");
    expect(rows.filter((row) => row.key === killed!.key && row.state === "succeeded")).toEqual([]);
    const rerun = rows.find((row) => row.state === "succeeded")!;
    expect(rerun.key).not.toBe(killed!.key);
    expect(readFileSync(made.path(".kaos", "jobs", rerun.id, "out", "data.txt"), "utf8")).toBe("v1tampered\n");
    expect(trustProblems(made.dir)).toEqual([]);
    expect(await eventually(() => processesWithEnv(TAG_NAME, tag).length === 0, 5_000)).toBe(true);
  }, 120_000);

  it("what a job tries to write into its mounted data view after its kaos was killed is refused: the user's file stays whole and the rerun trains on it", async () => {
    const train = `#!/bin/sh
if [ -f "$KAOS_SLOW" ]; then
  echo $$ > "$KAOS_PIDS/$KAOS_JOB_ID"
  while [ ! -f "$KAOS_PIDS/killed" ]; do sleep 0.05; done
  if sh -c 'echo tampered >> "$KAOS_DATA_DIR/value.txt"' 2>/dev/null; then echo written > "$KAOS_PIDS/tried"; else echo refused > "$KAOS_PIDS/tried"; fi
  sleep 120
fi
mkdir -p "$1" && cp "$KAOS_DATA_DIR/value.txt" "$1/data.txt"
`;
    const { made, env } = await killWhileJobRuns(train, 1);
    const [killed] = jobRows(made.dir).filter((row) => row.stage === "train");
    writeFileSync(made.path("pids", "killed"), "");
    expect(await eventually(() => existsSync(made.path("pids", "tried")), 10_000)).toBe(true);
    expect(readFileSync(made.path("pids", "tried"), "utf8")).toBe("refused\n");
    expect(readFileSync(made.path("data", "value.txt"), "utf8")).toBe("v1");
    expect(trustProblems(made.dir)).toEqual([]);

    const again = await runKaos(["up"], { cwd: made.dir, env: { ...env, KAOS_SLOW: made.path("no-such-file") } });
    expect(again.code, again.stderr).toBe(0);
    const rerun = jobRows(made.dir).find((row) => row.stage === "train" && row.state === "succeeded")!;
    expect(rerun.key).toBe(killed!.key);
    expect(readFileSync(made.path(".kaos", "jobs", rerun.id, "out", "data.txt"), "utf8")).toBe("v1");
    expect(trustProblems(made.dir)).toEqual([]);
    expect(await eventually(() => processesWithEnv(TAG_NAME, tag).length === 0, 5_000)).toBe(true);
  }, 120_000);

  it("a train script left running by a killed kaos is stopped by the next kaos up before its job reruns", async () => {
    const train = `#!/bin/sh
echo $$ > "$KAOS_PIDS/$KAOS_JOB_ID"
# A daemon that leaves the process group and holds on to the log pipe.
setsid sh -c 'echo $$ > "$KAOS_PIDS/$KAOS_JOB_ID.daemon"; exec sleep 120' &
if [ -f "$KAOS_SLOW" ]; then sleep 120; fi
mkdir -p "$1" && echo done > "$1/done"
`;
    const { made, env } = await killWhileJobRuns(train, 2);
    const [first] = jobRows(made.dir).filter((row) => row.stage === "train");
    const script = Number(readFileSync(made.path("pids", first!.id), "utf8"));
    const daemon = Number(readFileSync(made.path("pids", `${first!.id}.daemon`), "utf8"));
    // kaos is gone; its job's processes are not (nothing can stop them at SIGKILL).
    expect(pidAlive(script)).toBe(true);
    expect(pidAlive(daemon)).toBe(true);
    expect(first!.state).toBe("running");
    // Following it ends at once: nobody will record anything more for it.
    const follow = await runKaos(["train", "logs", first!.id, "-f"], { cwd: made.dir, timeoutMs: 20_000 });
    expect(follow.code).toBe(1);
    expect(follow.stderr).toBe(
      `job ${first!.id} was interrupted while running: the kaos that ran it is gone; the next kaos up reruns it; \`kaos train info ${first!.id}\` says more\n`,
    );

    // What a kaos killed while laying out a tree or writing a listing or a record leaves behind (its pid is gone).
    const exited = spawn("true");
    await new Promise((done) => exited.on("exit", done));
    const leftovers = [
      join(".kaos", "jobs", first!.id, `source.building-${exited.pid}-0123abcd`),
      join(".kaos", "snapshots", `${"0".repeat(64)}.building-${exited.pid}-0123abcd`),
      join(".kaos", "trees", `${"0".repeat(64)}.jsonl.${exited.pid}.0123abcd.tmp`),
      join(".kaos", `up-to-date.json.${exited.pid}.0123abcd.tmp`),
    ];
    for (const leftover of leftovers.slice(0, 2)) mkdirSync(made.path(leftover, "model"), { recursive: true });
    mkdirSync(made.path(".kaos", "trees"), { recursive: true });
    for (const leftover of leftovers.slice(2)) writeFileSync(made.path(leftover), "[");

    const again = await runKaos(["up"], { cwd: made.dir, env: { ...env, KAOS_SLOW: made.path("no-such-file") } });
    expect(again.code, again.stderr).toBe(0);
    expect(leftovers.filter((leftover) => existsSync(made.path(leftover)))).toEqual([]);
    expect(pidAlive(script)).toBe(false);
    expect(pidAlive(daemon)).toBe(false);
    const rows = jobRows(made.dir).filter((row) => row.stage === "train");
    expect(rows.map((row) => [row.id === first!.id, row.state, row.reason])).toEqual([
      [true, "failed", "interrupted: kaos exited while the job ran"],
      [false, "succeeded", null],
    ]);
    // The rerun's own daemon went with its script: the job did not wait 120 s for it.
    const second = rows[1]!;
    expect(Date.parse(second.finished_at!) - Date.parse(second.started_at!)).toBeLessThan(10_000);
    expect(existsSync(made.path(".kaos", "jobs", second.id, "out", "done"))).toBe(true);
    expect(await eventually(() => processesWithEnv(TAG_NAME, tag).length === 0, 5_000)).toBe(true);
  }, 120_000);

  /** A job that runs on (with a daemon that left its process group) until the file KAOS_SLOW goes. */
  const lingeringTrain = `#!/bin/sh
echo $$ > "$KAOS_PIDS/$KAOS_JOB_ID"
setsid sh -c 'echo $$ > "$KAOS_PIDS/$KAOS_JOB_ID.daemon"; exec sleep 120' &
if [ -f "$KAOS_SLOW" ]; then sleep 120; fi
mkdir -p "$1" && echo done > "$1/done"
`;

  it("train list and train info tell a job left running by a killed kaos from one that runs: its kaos is gone, and the next up reruns it", async () => {
    const { made } = await killWhileJobRuns(lingeringTrain, 2);
    const [first] = jobRows(made.dir).filter((row) => row.stage === "train");
    const list = await runKaos(["train", "list"], { cwd: made.dir });
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout.split("\n").find((line) => line.startsWith(first!.id))).toMatch(/ running \(kaos gone\) /);
    // Scripts read the recorded state, unchanged.
    expect((await listJobs(made.dir)).find((job) => job.id === first!.id)?.state).toBe("running");
    const info = await runKaos(["train", "info", first!.id], { cwd: made.dir });
    expect(info.code, info.stderr).toBe(0);
    expect(info.stdout.split("\n")[0]).toBe(
      `job ${first!.id}  p train  running (the kaos that ran it is gone; the next kaos up reruns it)`,
    );
  }, 120_000);

  it("kaos unlock after a killed kaos stops the job processes it left, so the next up does not run them twice", async () => {
    const { made, env } = await killWhileJobRuns(lingeringTrain, 2);
    const [first] = jobRows(made.dir).filter((row) => row.stage === "train");
    const script = Number(readFileSync(made.path("pids", first!.id), "utf8"));
    const daemon = Number(readFileSync(made.path("pids", `${first!.id}.daemon`), "utf8"));

    const unlocked = await runKaos(["unlock"], { cwd: made.dir, env });
    expect(unlocked.code, unlocked.stderr).toBe(0);
    expect(unlocked.stdout).toMatch(
      /^unlocked stack local: it was held by pid \d+ on host \S+ \(`up`, since \S+\)\n1 unfinished job of that run marked interrupted; the next `kaos up` runs them again\n$/,
    );
    expect(pidAlive(script)).toBe(false);
    expect(pidAlive(daemon)).toBe(false);

    const again = await runKaos(["up"], { cwd: made.dir, env: { ...env, KAOS_SLOW: made.path("no-such-file") } });
    expect(again.code, again.stderr).toBe(0);
    expect(
      jobRows(made.dir)
        .filter((row) => row.stage === "train")
        .map((row) => [row.id === first!.id, row.state]),
    ).toEqual([
      [true, "failed"],
      [false, "succeeded"],
    ]);
    expect(await eventually(() => processesWithEnv(TAG_NAME, tag).length === 0, 5_000)).toBe(true);
  }, 120_000);

  it("kaos train kill of a job whose kaos was killed stops its processes by their tag, never the group of a pid reused since", async () => {
    const { made } = await killWhileJobRuns(lingeringTrain, 2);
    const [first] = jobRows(made.dir).filter((row) => row.stage === "train");
    const script = Number(readFileSync(made.path("pids", first!.id), "utf8"));
    const daemon = Number(readFileSync(made.path("pids", `${first!.id}.daemon`), "utf8"));
    // Another program now leads a process group under the pid the record holds (a reboot or a wrapped pid counter).
    const stranger = spawn("sleep", ["120"], { detached: true, stdio: "ignore" });
    const db = openRaw(made.path(".kaos", "state.db"));
    try {
      db.prepare("UPDATE jobs SET pid = ? WHERE id = ?").run(stranger.pid!, first!.id);
    } finally {
      db.close();
    }
    try {
      const killed = await runKaos(["train", "kill", first!.id], { cwd: made.dir });
      expect(killed.code, killed.stderr).toBe(0);
      expect(pidAlive(stranger.pid!)).toBe(true);
      expect(pidAlive(script)).toBe(false);
      expect(pidAlive(daemon)).toBe(false);
      expect(jobRows(made.dir).find((row) => row.id === first!.id)?.state).toBe("cancelled");
    } finally {
      stranger.kill("SIGKILL");
    }
  }, 120_000);

  it("a terminal that hangs up (a closed window, a dropped ssh session) stops kaos up like SIGTERM: jobs stopped and recorded cancelled, the next up reruns them", async () => {
    const made = makeProject(
      {
        ...trainingProject({ grid: { score: [1, 2] }, parallelism: 2 }),
        "src/model/train": { content: lingeringTrain, mode: 0o755 },
        slow: "",
      },
      "kaos-crash-",
    );
    projects.push(made);
    mkdirSync(made.path("pids"));
    const env = { [TAG_NAME]: tag, KAOS_PIDS: made.path("pids"), KAOS_SLOW: made.path("slow") };
    // kaos on a terminal of its own, whose other end closes once both jobs run: the kernel hangs the session up.
    const driver = `
import os, pty, select, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
pids = os.environ["KAOS_PIDS"]
while len([name for name in os.listdir(pids) if not name.endswith(".daemon")]) < 2:
    if select.select([fd], [], [], 0.05)[0]:
        os.read(fd, 65536)
os.close(fd)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
`;
    const exit = await new Promise<string>((resolve, reject) => {
      const child = spawn("python3", ["-c", driver, process.execPath, CLI, "up"], {
        cwd: made.dir,
        env: { ...process.env, ...env, NO_COLOR: "1" },
        stdio: ["ignore", "pipe", "inherit"],
      });
      let out = "";
      child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
      child.on("error", reject);
      child.on("close", () => resolve(out.trim()));
    });
    // It ended by itself, not by the signal (-1 on SIGHUP).
    expect(Number(exit)).toBeGreaterThan(0);
    const train = jobRows(made.dir).filter((row) => row.stage === "train");
    expect(train.map((row) => row.state)).toEqual(["cancelled", "cancelled"]);
    for (const name of readdirSync(made.path("pids"))) expect(pidAlive(Number(readFileSync(made.path("pids", name), "utf8")))).toBe(false);

    const again = await runKaos(["up"], { cwd: made.dir, env: { ...env, KAOS_SLOW: made.path("no-such-file") } });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain("2 succeeded");
  }, 120_000);
});
