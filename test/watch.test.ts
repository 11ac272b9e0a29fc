/**
 * `kaos watch` through the built CLI (run `npm run build` first), in temporary
 * projects with a trivial source bundle: empty requirements, a `sh` train
 * script that records its pid and job id in a marks directory outside the
 * project, fails when the data says "fail", and sleeps as long as the marks
 * directory's `sleep` file says.
 */
import { appendFileSync, existsSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync, type Stats } from "node:fs";
import { tmpdir } from "node:os";
import ignore from "ignore";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { WatchMachine, type WatchState } from "../src/cli/watch/machine.js";
import { isIgnoredPath, watchTargets } from "../src/cli/watch/targets.js";
import type { ResolvedConfig } from "../src/core/types.js";
import {
  makeProject,
  pidAlive,
  runKaos,
  sleep,
  startKaos,
  trivialSourceBundle,
  under,
  type FileMap,
  type LiveKaos,
  type Project,
} from "./helpers/rig.js";
import type { ListedJob } from "./helpers/jobs.js";

function trainScript(marks: string): string {
  return `#!/bin/sh
marks='${marks}'
echo $$ > "$marks/pid-$KAOS_JOB_ID"
echo "$KAOS_JOB_ID" >> "$marks/starts"
cat "$KAOS_PARAMS_FILE" > "$1/params.json"
if grep -q fail "$KAOS_DATA_DIR/a.txt"; then echo "asked to fail" >&2; exit 1; fi
exec sleep "$(cat "$marks/sleep" 2>/dev/null || echo 0.05)"
`;
}

const CONFIG = `export default { pipelines: { p: { source: "src", data: "data", hyperparams: "params.json", parallelism: 2 } } };\n`;

const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface Rig {
  project: Project;
  marks: string;
  setSleep(seconds: number): void;
  jobs(): Promise<ListedJob[]>;
  watch(args?: string[], env?: Record<string, string>): LiveKaos;
}

function rig(options: { params?: string; config?: string; configFile?: string; data?: FileMap } = {}): Rig {
  const marks = mkdtempSync(join(tmpdir(), "kaos-watch-marks-"));
  const project = makeProject({
    [options.configFile ?? "kaos.config.ts"]: options.config ?? CONFIG,
    "params.json": options.params ?? `{"a": 1}\n`,
    ...under("src", trivialSourceBundle(trainScript(marks))),
    ...(options.data ?? { "data/a.txt": "1\n" }),
  });
  const live: LiveKaos[] = [];
  cleanups.push(async () => {
    for (const kaos of live) {
      kaos.child.kill("SIGINT");
      const timer = setTimeout(() => kaos.child.kill("SIGKILL"), 10_000);
      await kaos.exited;
      clearTimeout(timer);
    }
    project.remove();
    rmSync(marks, { recursive: true, force: true });
  });
  return {
    project,
    marks,
    setSleep: (seconds) => writeFileSync(join(marks, "sleep"), `${seconds}\n`),
    async jobs() {
      const result = await runKaos(["train", "list", "--json"], { cwd: project.dir });
      expect(result.code, result.stderr).toBe(0);
      return JSON.parse(result.stdout) as ListedJob[];
    },
    watch(args = [], env = {}) {
      const kaos = startKaos(["watch", "--debounce", "100", ...args], { cwd: project.dir, env });
      live.push(kaos);
      return kaos;
    },
  };
}

function count(text: string, needle: string): number {
  return text.split(needle).length - 1;
}

/** Waits until `needle` was printed `times` times in all. */
function waitCount(kaos: LiveKaos, needle: string, times: number, timeoutMs = 15_000): Promise<string> {
  const escaped = needle.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return kaos.waitFor(new RegExp(`(?:${escaped}[\\s\\S]*){${times}}`), timeoutMs);
}

function output(kaos: LiveKaos): string {
  return kaos.stdout() + kaos.stderr();
}

async function quit(kaos: LiveKaos, how: "q" | "SIGINT" = "q"): Promise<void> {
  if (how === "q") kaos.child.stdin!.write("q\n");
  else kaos.child.kill("SIGINT");
  const result = await kaos.exited;
  expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
  expect(result.stderr).toContain("stopped");
}

/**
 * "Nothing more came of it", bounded by an event rather than a wait: a
 * same-content write of `file` must be the next change kaos sees, alone
 * (a late change would be seen first, or be named beside it).
 */
async function expectNothingMore(r: Rig, kaos: LiveKaos, file: string): Promise<void> {
  const detected = count(output(kaos), "change detected");
  const waited = count(output(kaos), "waiting for changes");
  r.project.write({ [file]: readFileSync(r.project.path(file), "utf8") });
  await waitCount(kaos, "waiting for changes", waited + 1);
  const lines = output(kaos)
    .split("\n")
    .filter((line) => line.includes("change detected"));
  expect(lines.length).toBe(detected + 1);
  expect(lines.at(-1)).toMatch(new RegExp(`^change detected: [^(]*\\(${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\)$`));
}

const ofStage = (jobs: ListedJob[], stage: ListedJob["stage"], state?: string) =>
  jobs.filter((job) => job.stage === stage && (state === undefined || job.state === state));

function pidOf(marks: string, jobId: string): number {
  return Number(readFileSync(join(marks, `pid-${jobId}`), "utf8").trim());
}

async function waitUntil(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(50);
  }
}

describe("the watch state machine", () => {
  // The machine's only clock is its quiet timer: fake timers drive it exactly.
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  function machine(onChange: "restart" | "queue" = "restart") {
    const log: string[] = [];
    const m = new WatchMachine(
      {
        startRun: () => log.push("run"),
        settledDuringRun: (mode) => log.push(`settled ${mode}`),
        abandonPlan: () => log.push("abandon plan"),
        stopRuns: () => log.push("stop runs"),
        stopAtOnce: () => log.push("stop at once"),
        entered: (state: WatchState) => log.push(state),
      },
      20,
      onChange,
    );
    return { m, log };
  }

  it("debounces edits into one run and goes back to idle when it ends", () => {
    const { m, log } = machine();
    m.dispatch("change");
    vi.advanceTimersByTime(15);
    m.dispatch("change");
    vi.advanceTimersByTime(15);
    m.dispatch("change");
    // Each edit re-arms the quiet timer: 30 ms after the first edit, still debouncing.
    expect(m.state).toBe("debouncing");
    vi.advanceTimersByTime(19);
    expect(m.state).toBe("debouncing");
    vi.advanceTimersByTime(1);
    expect(m.state).toBe("planning");
    m.dispatch("planned");
    expect(m.state).toBe("running");
    expect(log).toEqual(["debouncing", "planning", "run", "running"]);
    m.dispatch("run-ended");
    expect(m.state).toBe("idle");
    expect(vi.getTimerCount()).toBe(0);
  });

  it("queues edits during a run, reports them once settled, and starts the queued run when the run ends", () => {
    for (const mode of ["restart", "queue"] as const) {
      const { m, log } = machine(mode);
      m.dispatch("start");
      m.dispatch("planned");
      m.dispatch("change");
      expect(m.state).toBe("queued");
      vi.advanceTimersByTime(19);
      expect(log).toEqual(["planning", "run", "running", "queued"]);
      vi.advanceTimersByTime(1);
      expect(log).toEqual(["planning", "run", "running", "queued", `settled ${mode}`]);
      m.dispatch("run-ended");
      expect(m.state).toBe("planning");
      expect(log.at(-1)).toBe("run");
    }
  });

  it("lets edits settle before the queued run starts", () => {
    const { m, log } = machine();
    m.dispatch("start");
    m.dispatch("change");
    m.dispatch("run-ended");
    expect(m.state).toBe("debouncing");
    vi.advanceTimersByTime(20);
    expect(m.state).toBe("planning");
    expect(log.filter((entry) => entry === "run")).toHaveLength(2);
    m.stop();
    expect(vi.getTimerCount()).toBe(0);
  });

  it("queues an edit made while planning, then runs once more after the run", () => {
    const { m, log } = machine("queue");
    m.dispatch("start");
    m.dispatch("change");
    expect(m.state).toBe("planning-queued");
    vi.advanceTimersByTime(20);
    expect(log).toEqual(["planning", "run", "planning-queued", "settled queue"]);
    m.dispatch("planned");
    expect(m.state).toBe("queued");
    m.dispatch("run-ended");
    expect(m.state).toBe("planning");
    expect(log.filter((entry) => entry === "run")).toHaveLength(2);
    m.dispatch("planned");
    m.dispatch("run-ended");
    expect(m.state).toBe("idle");
    expect(vi.getTimerCount()).toBe(0);
  });

  it("drops the plan on a quit while planning, stops the runs on a quit after it, and stops at once on a second quit", () => {
    for (const edited of [false, true]) {
      const { m, log } = machine();
      m.dispatch("start");
      if (edited) m.dispatch("change");
      m.dispatch("quit");
      expect(m.state).toBe("stopping");
      expect(log.at(-1)).toBe("abandon plan");
      expect(vi.getTimerCount()).toBe(0);
    }
    const { m, log } = machine();
    m.dispatch("start");
    m.dispatch("planned");
    m.dispatch("change");
    m.dispatch("quit");
    expect(log.at(-1)).toBe("stop runs");
    // The run ends and edits come in while stopping: nothing starts again.
    m.dispatch("run-ended");
    m.dispatch("change");
    expect(m.state).toBe("stopping");
    expect(vi.getTimerCount()).toBe(0);
    m.dispatch("quit");
    expect(log.slice(-3)).toEqual(["stopping", "stop runs", "stop at once"]);
  });

  it("does nothing at all without an event: no timer, no run", () => {
    const { m, log } = machine();
    vi.advanceTimersByTime(10_000);
    expect(m.state).toBe("idle");
    expect(log).toEqual([]);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe("what watch ignores", () => {
  const root = "/p";
  const config: ResolvedConfig = {
    file: "/p/kaos.config.ts",
    root,
    workspace: "p",
    pipelines: [
      {
        name: "a",
        sourceDir: "/p/src",
        data: { kind: "dir", dir: "/p" },
        hyperparams: {},
        hyperparamsFile: "/p/params.json",
        resources: { cpu: 1, memory: undefined, memoryBytes: undefined, gpu: 0 },
        parallelism: 1,
      },
    ],
    watch: { debounceMs: 200, onChange: "restart" },
  };

  it("skips state, editor temp files and always-ignored directories, and keeps the rest", () => {
    const targets = watchTargets(config, undefined, config.file, undefined);
    expect(targets.paths).toEqual(["/p", "/p/kaos.config.ts", "/p/params.json", "/p/src"]);
    for (const path of [
      "/p/.kaos/jobs/x/out/model.pkl",
      "/p/src/model/.train.swp",
      "/p/src/model/train~",
      "/p/src/4913",
      "/p/src/.#train",
      "/p/src/#train#",
      "/p/.DS_Store",
      "/p/src/model/__pycache__/m.pyc",
      "/p/node_modules/x.js",
      "/p/.git/index",
    ]) {
      expect(isIgnoredPath(targets, path), path).toBe(true);
    }
    // Names bundles keep as files of their own.
    for (const path of ["/p/src/model/train", "/p/data.csv", "/p/kaos.config.ts", "/p/params.json", "/p/src/notes.swp", "/p/src/.hidden"]) {
      expect(isIgnoredPath(targets, path), path).toBe(false);
    }
  });

  it("applies each bundle's .kaosignore: a path counts when any bundle holding it takes it in", () => {
    const targets = watchTargets(config, undefined, config.file, undefined);
    targets.bundles.find((bundle) => bundle.root === "/p/src")!.rules = ignore().add("scratch/");
    // The data bundle "/p" also holds src/scratch and does not ignore it.
    expect(isIgnoredPath(targets, "/p/src/scratch/notes.txt")).toBe(false);
    targets.bundles.find((bundle) => bundle.root === "/p")!.rules = ignore().add("scratch/");
    expect(isIgnoredPath(targets, "/p/src/scratch/notes.txt")).toBe(true);
    expect(isIgnoredPath(targets, "/p/src/scratch", { isDirectory: () => true } as Stats)).toBe(true);
  });
});

describe.each([
  ["file system events", [] as string[]],
  ["polling", ["--poll", "--poll-interval", "100"]],
])("kaos watch with %s", (_mode, flags) => {
  it("runs once, then an edit of the data reruns the train job and not the build", async () => {
    const r = rig();
    const kaos = r.watch(flags);
    await waitCount(kaos, "waiting for changes", 1);
    expect(output(kaos)).toMatch(/watching 4 paths in .* \(debounce 100 ms, on change: restart, (events|polling every 100 ms)\)/);
    expect(output(kaos)).toContain("initial run: 1 stage and 1 job to run, 0 skipped");
    let jobs = await r.jobs();
    expect(ofStage(jobs, "build", "succeeded")).toHaveLength(1);
    expect(ofStage(jobs, "train", "succeeded")).toHaveLength(1);

    r.project.write({ "data/a.txt": "2\n" });
    await waitCount(kaos, "waiting for changes", 2);
    expect(output(kaos)).toContain("change detected: 0 stages and 1 job to run, 0 skipped (data/a.txt)");
    jobs = await r.jobs();
    expect(ofStage(jobs, "build")).toHaveLength(1);
    expect(ofStage(jobs, "train", "succeeded")).toHaveLength(2);
    await quit(kaos);
  });
});

describe("kaos watch", () => {
  it.each([
    ["kaos.config.mjs", CONFIG],
    ["kaos.config.cjs", CONFIG.replace("export default", "module.exports =")],
  ])("reruns on every edit of a %s, which Node alone would load once per process", async (file, config) => {
    const r = rig({ configFile: file, config });
    const kaos = r.watch();
    await waitCount(kaos, "waiting for changes", 1);
    for (const [index, grid] of ["{ a: [1, 2] }", "{ a: [1, 2, 3] }"].entries()) {
      r.project.write({ [file]: config.replace('"params.json"', grid) });
      await waitCount(kaos, "waiting for changes", index + 2);
      expect(output(kaos)).toContain(`change detected: 0 stages and 1 job to run, ${index + 1} skipped (${file})`);
    }
    expect(ofStage(await r.jobs(), "train", "succeeded")).toHaveLength(3);
    await quit(kaos);
  });

  /** A module the config takes its grid from, as each kind of module writes `{ a: [...] }`. */
  const gridModules: [kind: string, importLine: string, files: (values: string) => FileMap][] = [
    ["a .ts module's named export", `import { grid } from "./grid.ts";`, (v) => ({ "grid.ts": `export const grid = { a: [${v}] };\n` })],
    ["an .mts module", `import grid from "./grid.mts";`, (v) => ({ "grid.mts": `export default { a: [${v}] } as const;\n` })],
    ["a .js module", `import grid from "./grid.js";`, (v) => ({ "grid.js": `export default { a: [${v}] };\n` })],
    [
      'a .js module of a "type": "module" package',
      `import grid from "./grid.js";`,
      (v) => ({ "package.json": `{ "type": "module" }\n`, "grid.js": `export default { a: [${v}] };\n` }),
    ],
    ["an .mjs module", `import grid from "./grid.mjs";`, (v) => ({ "grid.mjs": `export default { a: [${v}] };\n` })],
    ["a .cjs module", `import grid from "./grid.cjs";`, (v) => ({ "grid.cjs": `module.exports = { a: [${v}] };\n` })],
    ["a JSON file", `import grid from "./grid.json";`, (v) => ({ "grid.json": `{ "a": [${v}] }\n` })],
    [
      "a JSON file an .mjs module imports, two imports down",
      `import { grid } from "./lib/shared.ts";`,
      (v) => ({
        "lib/shared.ts": `export { grid } from "./grid.mjs";\n`,
        "lib/grid.mjs": `import grid from "../values/grid.json" with { type: "json" };\nexport { grid };\n`,
        "values/grid.json": `{ "a": [${v}] }\n`,
      }),
    ],
  ];

  it.each(gridModules)("reruns on every edit of %s the config imports, with its current text", async (_kind, importLine, files) => {
    const config = `${importLine}\nexport default { pipelines: { p: { source: "src", data: "data", hyperparams: grid, parallelism: 2 } } };\n`;
    const r = rig({ config, data: { "data/a.txt": "1\n", ...files("1") } });
    const edited = Object.keys(files("1")).at(-1)!;
    const kaos = r.watch();
    await waitCount(kaos, "waiting for changes", 1);
    expect(output(kaos)).toContain("initial run: 1 stage and 1 job to run, 0 skipped");
    for (const [index, values] of ["1, 2", "1, 2, 3"].entries()) {
      r.project.write({ [edited]: files(values)[edited]! });
      await waitCount(kaos, "waiting for changes", index + 2);
      expect(output(kaos)).toContain(`change detected: 0 stages and 1 job to run, ${index + 1} skipped (${edited})`);
    }
    expect(ofStage(await r.jobs(), "train", "succeeded")).toHaveLength(3);
    await quit(kaos);
  });

  it("rebuilds the environment when requirements.txt changes", async () => {
    const r = rig();
    const kaos = r.watch();
    await waitCount(kaos, "waiting for changes", 1);
    appendFileSync(r.project.path("src/model/requirements.txt"), "# nothing to install yet\n");
    await waitCount(kaos, "waiting for changes", 2);
    expect(output(kaos)).toContain("change detected: 1 stage and 1 job to run, 0 skipped (src/model/requirements.txt)");
    const jobs = await r.jobs();
    expect(ofStage(jobs, "build", "succeeded")).toHaveLength(2);
    expect(ofStage(jobs, "train", "succeeded")).toHaveLength(2);
    await quit(kaos);
  });

  it("turns a burst of 50 edits into one rerun", async () => {
    const r = rig();
    const kaos = r.watch(["--debounce", "500"]);
    await waitCount(kaos, "waiting for changes", 1);
    // One synchronous burst: no pause inside it that a loaded machine could stretch past the debounce.
    for (let i = 0; i < 50; i++) {
      r.project.write({ "data/a.txt": `edit ${i}\n`, [`data/burst-${i % 5}.txt`]: `${i}\n` });
    }
    await waitCount(kaos, "waiting for changes", 2);
    expect(count(output(kaos), "change detected")).toBe(1);
    // Nothing more comes of the burst.
    await expectNothingMore(r, kaos, "data/a.txt");
    expect(ofStage(await r.jobs(), "train")).toHaveLength(2);
    await quit(kaos);
  });

  it("restarts a job whose inputs change while it runs", async () => {
    const r = rig();
    r.setSleep(30);
    const kaos = r.watch();
    await kaos.waitFor(/p train 1\/1 \w+ {2}a=1 {2}running/);
    const [first] = ofStage(await r.jobs(), "train");
    expect(first?.state).toBe("running");
    const firstPid = pidOf(r.marks, first!.id);

    r.project.write({ "data/a.txt": "2\n" });
    await kaos.waitFor("change during the run: cancelling 1 job whose inputs changed, 0 keep running; rerun queued");
    await kaos.waitFor(/run \w+ restarted: 1 job cancelled because their inputs changed/);
    await kaos.waitFor(/change detected: 0 stages and 1 job to run, 0 skipped \(data\/a\.txt\)\n[\s\S]*p train 1\/1 \w+ {2}a=1 {2}running/);
    const jobs = await r.jobs();
    const cancelled = jobs.find((job) => job.id === first!.id);
    expect(cancelled?.state).toBe("cancelled");
    expect(pidAlive(firstPid)).toBe(false);
    const second = ofStage(jobs, "train", "running")[0]!;
    expect(second.id).not.toBe(first!.id);
    await quit(kaos);
    expect(ofStage(await r.jobs(), "train").map((job) => job.state)).toEqual(["cancelled", "cancelled"]);
  });

  it("keeps running the jobs whose inputs did not change, and runs only the new one after", async () => {
    const r = rig();
    r.setSleep(2);
    const kaos = r.watch();
    await kaos.waitFor(/p train 1\/1 \w+ {2}a=1 {2}running/);
    r.project.write({ "params.json": `{"a": [1, 2]}\n` });
    await kaos.waitFor("config reloaded");
    await kaos.waitFor("change during the run: rerun queued");
    await waitCount(kaos, "waiting for changes", 1, 20_000);
    const text = output(kaos);
    expect(text).toContain("change detected: 0 stages and 1 job to run, 1 skipped (params.json)");
    expect(text).not.toContain("cancelling");
    const jobs = ofStage(await r.jobs(), "train");
    expect(jobs.map((job) => [job.params, job.state])).toEqual([
      [{ a: 2 }, "succeeded"],
      [{ a: 1 }, "succeeded"],
    ]);
    await quit(kaos);
  });

  it("with --on-change queue lets the running job finish and reruns once", async () => {
    const r = rig();
    r.setSleep(1.5);
    const kaos = r.watch(["--on-change", "queue"]);
    await kaos.waitFor(/p train 1\/1 \w+ {2}a=1 {2}running/);
    r.project.write({ "data/a.txt": "2\n" });
    await kaos.waitFor("change during the run: rerun queued");
    r.project.write({ "data/a.txt": "3\n" });
    await waitCount(kaos, "waiting for changes", 1, 20_000);
    const text = output(kaos);
    expect(text).toContain("on change: queue");
    expect(text).not.toContain("cancelling");
    expect(count(text, "change detected")).toBe(1);
    const jobs = ofStage(await r.jobs(), "train");
    expect(jobs.map((job) => job.state)).toEqual(["succeeded", "succeeded"]);
    await quit(kaos);
  });

  it("prints an invalid config's error as `kaos up` does, keeps watching, and resumes once it is fixed", async () => {
    const r = rig();
    const kaos = r.watch();
    await waitCount(kaos, "waiting for changes", 1);
    const broken = CONFIG.replace("parallelism: 2", "parallelism: 2, colour: 1");
    r.project.write({ "kaos.config.ts": broken });
    await kaos.waitFor("config invalid; waiting for a fix");
    const up = await runKaos(["up"], { cwd: r.project.dir });
    expect(up.code).toBe(1);
    const upError = up.stderr.trim();
    expect(upError).toContain("pipelines.p.colour: unknown key");
    expect(output(kaos)).toContain(upError);
    // Edits elsewhere run nothing while the config is broken (`train list` cannot load it either: counted below).
    r.project.write({ "data/a.txt": "2\n" });
    await waitCount(kaos, "config invalid; waiting for a fix", 2);
    expect(count(output(kaos), "change detected")).toBe(0);

    r.project.write({ "kaos.config.ts": CONFIG.replace('"params.json"', "{ a: [1, 2] }") });
    await kaos.waitFor("config reloaded; resuming");
    await waitCount(kaos, "waiting for changes", 2);
    expect(output(kaos)).toContain("change detected: 0 stages and 2 jobs to run, 0 skipped");
    expect(ofStage(await r.jobs(), "train").map((job) => job.state)).toEqual(["succeeded", "succeeded", "succeeded"]);
    await quit(kaos);
  });

  it("tells a reloaded config that ends its process what to do, and keeps watching", async () => {
    const r = rig();
    const kaos = r.watch();
    await waitCount(kaos, "waiting for changes", 1);
    r.project.write({ "kaos.config.ts": `process.exit(3);\n${CONFIG}` });
    await kaos.waitFor("config invalid; waiting for a fix");
    expect(output(kaos)).toMatch(/kaos\.config\.ts: could not be loaded: it ended the process \(exit code 3\)/);
    expect(output(kaos)).toContain("a config only computes its value: remove what exits (process.exit) or ends the process");
    r.project.write({ "kaos.config.ts": CONFIG });
    await kaos.waitFor("config reloaded; resuming");
    await waitCount(kaos, "waiting for changes", 2);
    await quit(kaos);
  });

  it("never reruns for its own outputs, editor temp files or ignored paths", async () => {
    // The data bundle is the whole project, so .kaos/ (outputs, environments, state) is inside it.
    const config = `export default { pipelines: { p: { source: "src", data: ".", hyperparams: "params.json" } } };\n`;
    const r = rig({ config, data: { "a.txt": "1\n", ".kaosignore": "scratch/\n*.log\n", "src/.kaosignore": "scratch/\n*.log\n" } });
    const kaos = r.watch();
    await waitCount(kaos, "waiting for changes", 1);
    const jobs = await r.jobs();
    expect(ofStage(jobs, "train", "succeeded")).toHaveLength(1);
    expect(existsSync(r.project.path(".kaos", "jobs", ofStage(jobs, "train")[0]!.id, "out", "params.json"))).toBe(true);

    r.project.write({
      "src/model/.train.swp": "swap",
      "src/model/train~": "backup",
      "src/model/4913": "",
      "src/model/.#train": "lock",
      "src/scratch/notes.txt": "ignored by .kaosignore",
      "src/model/run.log": "ignored by .kaosignore",
      "src/model/__pycache__/x.pyc": "bytes",
      "node_modules/x/index.js": "",
      ".git/HEAD": "ref: refs/heads/main\n",
      ".kaos/scratch": "ours",
    });
    // None of those starts a run: the next change kaos sees is a write of a.txt, alone.
    // (They are in the data bundle, so that run trains again.)
    await expectNothingMore(r, kaos, "a.txt");

    // An editor's atomic save (write a temp file, rename over the original) does count.
    writeFileSync(r.project.path("src/model/train.tmp"), readFileSync(r.project.path("src/model/train"), "utf8") + "# edited\n", {
      mode: 0o755,
    });
    renameSync(r.project.path("src/model/train.tmp"), r.project.path("src/model/train"));
    await waitCount(kaos, "waiting for changes", 3);
    expect(count(output(kaos), "change detected")).toBe(2);
    expect(output(kaos)).toContain("(src/model/train)");
    // Nothing more comes of the save (a rename is two events), nor of the run's own outputs.
    await expectNothingMore(r, kaos, "a.txt");
    expect(ofStage(await r.jobs(), "train", "succeeded")).toHaveLength(3);
    await quit(kaos);
  });

  it("does not retry a failed run until an input changes", async () => {
    const r = rig({ data: { "data/a.txt": "fail\n" } });
    const kaos = r.watch();
    await waitCount(kaos, "waiting for changes", 1);
    expect(output(kaos)).toMatch(/run \w+ failed: p train \w+: exited with code 1/);
    // Same content, new mtime: the same keys.
    r.project.write({ "data/a.txt": "fail\n" });
    await kaos.waitFor("unchanged since the failure; waiting for an edit");
    expect(ofStage(await r.jobs(), "train")).toHaveLength(1);

    r.project.write({ "data/a.txt": "fixed\n" });
    await waitCount(kaos, "waiting for changes", 2);
    expect(output(kaos)).toMatch(/run \w+ succeeded: 1 ran, 0 reused/);
    expect(ofStage(await r.jobs(), "train").map((job) => job.state)).toEqual(["succeeded", "failed"]);
    await quit(kaos);
  });

  it("holds the stack's writer lock: a concurrent `kaos up` is told so", async () => {
    const r = rig();
    const kaos = r.watch();
    await waitCount(kaos, "waiting for changes", 1);
    const up = await runKaos(["up"], { cwd: r.project.dir });
    expect(up.code).toBe(1);
    expect(up.stderr).toMatch(/another kaos \(pid \d+, `watch`.*is applying stack 'local'/);
    await quit(kaos);
    const after = await runKaos(["up"], { cwd: r.project.dir });
    expect(after.code, after.stderr).toBe(0);
  });

  for (const how of ["q", "SIGINT"] as const) {
    it(`quits on ${how === "q" ? "q" : "Ctrl-C"}, cancelling and recording the running jobs and leaving no process behind`, async () => {
      const r = rig({ params: `{"a": [1, 2]}\n` });
      r.setSleep(30);
      const kaos = r.watch();
      await kaos.waitFor(/(?:p train [12]\/2 \w+ {2}a=[12] {2}running[\s\S]*){2}/);
      const running = ofStage(await r.jobs(), "train", "running");
      await waitUntil(() => running.every((job) => existsSync(join(r.marks, `pid-${job.id}`))), "both jobs wrote their pid");
      const pids = running.map((job) => pidOf(r.marks, job.id));
      expect(pids.every(pidAlive)).toBe(true);
      await quit(kaos, how);
      expect(output(kaos)).toContain("stopping: cancelling running jobs");
      expect(output(kaos)).toMatch(/run \w+ cancelled/);
      expect(pids.filter(pidAlive)).toEqual([]);
      const jobs = ofStage(await r.jobs(), "train");
      expect(jobs.map((job) => job.state)).toEqual(["cancelled", "cancelled"]);
    });
  }

  /**
   * An interpreter that answers kaos's version probe only once released: the
   * run is planning until then. Released at cleanup at the latest, and waited
   * for, so that no probe outlives the test.
   */
  function heldInterpreter(r: Rig) {
    const python = join(r.marks, "python");
    const go = join(r.marks, "go");
    const probed = join(r.marks, "probed");
    writeFileSync(
      python,
      `#!/bin/sh\necho $$ > '${probed}.tmp'\nmv '${probed}.tmp' '${probed}'\nwhile [ ! -f '${go}' ]; do sleep 0.05; done\nexec python3 "$@"\n`,
      {
        mode: 0o755,
      },
    );
    const release = () => writeFileSync(go, "");
    cleanups.push(async () => {
      if (!existsSync(probed)) return;
      release();
      const pid = Number(readFileSync(probed, "utf8").trim());
      await waitUntil(() => !pidAlive(pid), "the held probe is gone");
    });
    return {
      env: { KAOS_PYTHON: python },
      asked: () => waitUntil(() => existsSync(probed), "kaos asked the interpreter for its version"),
      released: () => existsSync(go),
      release,
    };
  }

  it("Ctrl-C while a run plans stops the plan at once: exit 130, nothing recorded, the lock given back", async () => {
    const r = rig();
    const held = heldInterpreter(r);
    const kaos = r.watch([], held.env);
    await held.asked();
    kaos.child.kill("SIGINT");
    await kaos.waitFor(/stopped before anything ran|stopping/);
    // A kaos that waits for its plan before stopping is let finish, to fail below rather than hang.
    if (!output(kaos).includes("stopped before anything ran")) held.release();
    const result = await kaos.exited;
    // It exited while the plan still waited for the interpreter.
    expect(held.released()).toBe(false);
    held.release();
    expect(result.code, result.stderr).toBe(130);
    expect(result.stderr).toContain("interrupted: stopped before anything ran");
    expect(result.stderr).not.toContain("initial run");
    expect(await r.jobs()).toEqual([]);
    // The lock went with it: the next up neither waits nor takes anything over.
    const up = await runKaos(["up"], { cwd: r.project.dir, env: held.env });
    expect(up.code, up.stderr).toBe(0);
    expect(ofStage(await r.jobs(), "train").map((job) => job.state)).toEqual(["succeeded"]);
  });

  it("an edit made while a run plans is queued, and runs once after that run", async () => {
    const r = rig();
    const held = heldInterpreter(r);
    const kaos = r.watch(["--on-change", "queue"], held.env);
    await held.asked();
    r.project.write({ "data/a.txt": "2\n" });
    await kaos.waitFor("change during the run: rerun queued");
    held.release();
    await kaos.waitFor("waiting for changes");
    expect(count(output(kaos), "initial run")).toBe(1);
    expect(count(output(kaos), "change detected")).toBe(1);
    expect(output(kaos)).toMatch(/run \w+ succeeded/);
    await quit(kaos);
  });

  it("a second Ctrl-C exits at once with 130 and takes with it a job that ignores SIGTERM", async () => {
    const r = rig();
    r.project.write(
      under(
        "src",
        trivialSourceBundle(
          `#!/bin/sh\ntrap "" TERM\necho $$ > '${r.marks}/pid.tmp'\nmv '${r.marks}/pid.tmp' '${r.marks}/pid'\nwhile :; do sleep 0.1; done\n`,
        ),
      ),
    );
    const kaos = r.watch();
    await kaos.waitFor(/p train 1\/1 \w+ {2}a=1 {2}running/);
    await waitUntil(() => existsSync(join(r.marks, "pid")), "the job wrote its pid");
    const pid = Number(readFileSync(join(r.marks, "pid"), "utf8").trim());
    cleanups.push(() => {
      if (pidAlive(pid)) process.kill(-pid, "SIGKILL");
    });
    kaos.child.kill("SIGINT");
    await kaos.waitFor("stopping: cancelling running jobs");
    expect(pidAlive(pid)).toBe(true);
    kaos.child.kill("SIGINT");
    const result = await kaos.exited;
    expect(result.code).toBe(130);
    expect(result.stderr).toContain("stopping at once");
    await waitUntil(() => !pidAlive(pid), "the job is gone");
  });

  it("follows a data folder that is a symlink when it is pointed at another folder", async () => {
    const r = rig({ data: { "v1/a.txt": "1\n", "v2/a.txt": "2\n", data: { symlink: "v1" } } });
    const kaos = r.watch();
    await waitCount(kaos, "waiting for changes", 1);
    // As `ln -sfn v2 data` does it when it replaces the link in one step.
    symlinkSync("v2", r.project.path("data.new"));
    renameSync(r.project.path("data.new"), r.project.path("data"));
    await waitCount(kaos, "waiting for changes", 2);
    expect(output(kaos)).toContain("change detected: 0 stages and 1 job to run, 0 skipped (data)");
    // The new target is the one watched now.
    r.project.write({ "v2/a.txt": "3\n" });
    await waitCount(kaos, "waiting for changes", 3);
    expect(output(kaos)).toContain("change detected: 0 stages and 1 job to run, 0 skipped (data/a.txt)");
    expect(ofStage(await r.jobs(), "train", "succeeded")).toHaveLength(3);
    await quit(kaos);
  });

  it("says the config was removed, not that a flag names a missing file, and resumes once it is back", async () => {
    const r = rig();
    const kaos = r.watch();
    await waitCount(kaos, "waiting for changes", 1);
    rmSync(r.project.path("kaos.config.ts"));
    await kaos.waitFor("config invalid; waiting for a fix");
    expect(output(kaos)).toContain(`error: ${r.project.path("kaos.config.ts")}: removed while watching`);
    expect(output(kaos)).not.toContain("--config");
    r.project.write({ "kaos.config.ts": CONFIG });
    await kaos.waitFor("config reloaded; resuming");
    await waitCount(kaos, "waiting for changes", 2);
    await quit(kaos);
  });

  it("waits for a config that does not load at start, then runs", async () => {
    const r = rig({ config: CONFIG.replace("parallelism: 2", "parallelism: 0") });
    const kaos = r.watch();
    await kaos.waitFor("config invalid; waiting for a fix");
    expect(output(kaos)).toContain("pipelines.p.parallelism");
    r.project.write({ "kaos.config.ts": CONFIG });
    await waitCount(kaos, "waiting for changes", 1);
    expect(output(kaos)).toContain("initial run: 1 stage and 1 job to run, 0 skipped");
    await quit(kaos);
  });
});
