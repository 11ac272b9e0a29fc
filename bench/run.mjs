#!/usr/bin/env node
/**
 * The benchmark suite: kaos through its built CLI (`node dist/cli.js`) in
 * generated projects, against the tools people compare it with, measured in
 * the same run and interleaved with them.
 *
 *   npm run bench [-- --quick] [-- --json [FILE]] [-- --only 1,3] [-- --runs N] [-- --dvc | --no-dvc] [-- --cli PATH]
 *
 * 1. warm no-op `kaos plan` on 10k and 100k files / `git status` on the same
 *    tree (committed) / `dvc status` on a copy of it; the same plan while
 *    `kaos monitor` runs / `git status`;
 * 2. cold hashing of ~2 GB, large and small files / `sha256sum` on every core /
 *    `dvc add --no-commit` (hashing only, as kaos plan);
 * 3. one changed file among 100k: plan time and how many files were re-read;
 * 4. start-up: `kaos --help`, a no-op `kaos up` and `kaos train list --all` over 10k
 *    recorded jobs / `node -e 0`, and the no-op up's own steps alone
 *    (bench/floors/noop-up.mjs); `kaos train list` (its default page) over
 *    100k recorded jobs, target 0.3 s; the API requests of `kaos ui`'s first
 *    page over the 10k jobs;
 * 5. a 100-job sweep of a trivial train script, parallelism 2 / the script run
 *    by `xargs -P 2`;
 * 6. manifest ingest of 1,000 x 1 MB from a loopback server / `curl --parallel`;
 *    the no-op rerun;
 * 7. `kaos plan` of a manifest of 1M lines (sha256 and size given, nothing to
 *    download): time and peak memory / `sha256sum` of the manifest file.
 * 8. the first `kaos up` of a new 20k-file, ~120 MB data bundle / a cold
 *    `kaos plan` of it (its view mounted, the default; and hardlinked,
 *    `--stack link`), alone and plus the floor of a linked view (links
 *    made and lstat'ed twice by bench/floors/link-view.mjs, on one thread and
 *    on two), `cp -a` and `cp -al` of the tree; and what `.kaos/`
 *    (environments aside) holds against the data's size.
 * 9. (only with --only 9: it makes a million files once) a local data bundle
 *    of 100k and 1M files: cold plan, first up, warm no-op plan / the Node
 *    floor (and git status at 100k), one changed file: time, CPU, peak memory.
 *
 * --quick: 10k files, ~200 MB, 20-job sweep, 100 manifest files, 1k jobs, 100k manifest lines,
 * 5 runs, no dvc (unless --dvc): for CI. The full run (7 runs) is for people.
 *
 * Data is generated under bench/.data/run/ (never committed) and reused while
 * its parameters match. Each figure is the median of the timed runs, after one
 * untimed warm-up run of every side; the sides of a comparison take turns
 * going first, so a noisy neighbour hurts both alike. Peak memory is the
 * largest maximum resident set size of kaos over the timed runs, from
 * /usr/bin/time (or a Python wrapper when it is missing).
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { appendFileSync, cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { availableParallelism, loadavg } from "node:os";
import { dirname, join, relative, resolve as resolvePath } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  SIZES as HASH_SIZES,
  dataRoot,
  hasCommand,
  prepareMixed,
  prepareWarmTree,
  prepared,
  writeSmallFiles,
  writeSmallFilesParallel,
} from "./hash.mjs";
import { startServerProcess } from "./ingest.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..");
/** The build measured: dist/, or another one given with --cli (a copy of an older dist/, for before and after figures). */
let cli = join(repo, "dist", "cli.js");
const runRoot = join(dataRoot, "run");
const dvcVenv = join(dataRoot, "dvc-venv");
const cores = availableParallelism();

const SIZES = {
  quick: {
    warmFiles: [10_000],
    changedFiles: 10_000,
    mixed: pick(HASH_SIZES.quick),
    jobs: 1_000,
    manyJobs: 100_000,
    sweep: 20,
    manifestFiles: 100,
    manifestLines: 100_000,
    viewFiles: 5_000,
    hugeFiles: [100_000],
    runs: 5,
  },
  full: {
    warmFiles: [10_000, 100_000],
    changedFiles: 100_000,
    mixed: pick(HASH_SIZES.full),
    jobs: 10_000,
    manyJobs: 100_000,
    sweep: 100,
    manifestFiles: 1_000,
    manifestLines: 1_000_000,
    viewFiles: 20_000,
    hugeFiles: [100_000, 1_000_000],
    runs: 7,
  },
};

/** The mixed set's own parameters: its folder is regenerated only when these change. */
function pick({ largeFiles, largeBytes, smallFiles, smallAverageBytes }) {
  return { largeFiles, largeBytes, smallFiles, smallAverageBytes };
}

const TRAIN_SCRIPT = '#!/bin/sh\necho done > "$1/result.txt"\n';
/**
 * What any Node program must do for a warm check, and nothing else: start,
 * list every directory and lstat every file (nanosecond stats, as a stat cache
 * needs), on one thread. It bounds how close kaos can come to git status.
 */
const NODE_WALK_FLOOR = `
const { readdirSync, lstatSync } = require("node:fs");
let files = 0;
const walk = (dir) => {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name === ".git") continue;
    const path = dir + "/" + entry.name;
    if (entry.isDirectory()) walk(path);
    else { lstatSync(path, { bigint: true }); files++; }
  }
};
walk(process.argv[1]);
if (files === 0) process.exit(1);
`;

/**
 * Downloading with Node's own HTTP client, hashing and writing each file, and
 * nothing else: two threads (one per core here), each with half of the
 * transfers at once. The floor of any Node tool's verified download.
 */
const NODE_INGEST_FLOOR = `
const { Worker } = require("node:worker_threads");
const [urlsFile, outDir, concurrency] = [process.argv[1], process.argv[2], Number(process.argv[3])];
const urls = require("node:fs").readFileSync(urlsFile, "utf8").trim().split("\\n");
const threads = 2;
const body = \`
const { workerData, parentPort } = require("node:worker_threads");
const http = require("node:http");
const { createHash } = require("node:crypto");
const fs = require("node:fs");
const agent = new http.Agent({ keepAlive: true });
const { urls, outDir, slots } = workerData;
let next = 0;
const one = (index) => new Promise((done, fail) => {
  http.get(urls[index], { agent }, (response) => {
    const hash = createHash("sha256");
    const fd = fs.openSync(outDir + "/" + workerData.first + "-" + index, "w");
    response.on("data", (chunk) => { hash.update(chunk); fs.writeSync(fd, chunk); });
    response.on("end", () => { fs.closeSync(fd); hash.digest("hex"); done(); });
    response.on("error", fail);
  }).on("error", fail);
});
const lane = async () => { while (next < urls.length) await one(next++); };
Promise.all(Array.from({ length: slots }, lane)).then(() => parentPort.postMessage("done"), (e) => { throw e; });
\`;
const share = Math.ceil(urls.length / threads);
let running = threads;
for (let t = 0; t < threads; t++) {
  const worker = new Worker(body, { eval: true, workerData: { urls: urls.slice(t * share, (t + 1) * share), outDir, slots: concurrency / threads, first: t } });
  worker.on("message", () => { if (--running === 0) process.exit(0); });
  worker.on("error", (error) => { console.error(error); process.exit(1); });
}
`;

/** Floors written as scripts of their own, each described in its opening comment. */
const floorScripts = join(here, "floors");

/** Starting the same jobs from Node with nothing else: the floor of any Node tool's sweep. */
const NODE_SPAWN_FLOOR = `
const { spawn } = require("node:child_process");
const [out, count] = [process.argv[1], Number(process.argv[2])];
let next = 0;
const lane = async () => {
  while (next < count) {
    const index = next++;
    const code = await new Promise((done) => spawn("./train", [out + "/" + index], { stdio: "ignore" }).on("exit", done));
    if (code !== 0) process.exit(1);
  }
};
Promise.all([lane(), lane()]);
`;

/** The same in Python, the language of the train scripts kaos is made for; it runs on the environment's interpreter. */
const PYTHON_TRAIN_SCRIPT = '#!/usr/bin/env python3\nimport pathlib, sys\npathlib.Path(sys.argv[1], "result.txt").write_text("done\\n")\n';
const MANIFEST_FILE_BYTES = 1_000_000;
/** Clock ticks per second in /proc's CPU times (getconf CLK_TCK; 100 on Linux). */
const CLOCK_TICKS = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
/** kaos ingest's default number of transfers at once; curl gets the same. */
const INGEST_CONCURRENCY = 8;

// ---------------------------------------------------------------------------
// Options.

function parseOptions(argv) {
  const options = { quick: false, json: undefined, only: undefined, runs: undefined, dvc: undefined };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith("--")) throw new Error(`${arg} expects a value`);
      i += 1;
      return next;
    };
    if (arg === "--quick") options.quick = true;
    else if (arg === "--json") options.json = argv[i + 1] !== undefined && !argv[i + 1].startsWith("--") ? value() : "-";
    else if (arg.startsWith("--json=")) options.json = arg.slice("--json=".length);
    else if (arg === "--only")
      options.only = new Set(
        value()
          .split(",")
          .map((s) => s.trim()),
      );
    else if (arg === "--runs") options.runs = Number(value());
    else if (arg === "--cli") cli = resolvePath(value());
    else if (arg === "--dvc") options.dvc = true;
    else if (arg === "--no-dvc") options.dvc = false;
    else if (arg === "--help" || arg === "-h") {
      process.stdout.write(
        readFileSync(fileURLToPath(import.meta.url), "utf8")
          .split("*/")[0]
          .replace(/^#!.*\n\/\*\*\n/, "")
          .replace(/^ \* ?/gm, ""),
      );
      process.exit(0);
    } else throw new Error(`unknown option ${arg} (see --help)`);
  }
  if (options.runs !== undefined && !(Number.isInteger(options.runs) && options.runs >= 1))
    throw new Error("--runs expects a whole number, 1 or more");
  return options;
}

// ---------------------------------------------------------------------------
// Running and measuring commands.

const childEnv = { ...process.env, NO_COLOR: "1", DVC_NO_ANALYTICS: "1" };
delete childEnv.FORCE_COLOR;

const TIME = existsSync("/usr/bin/time") ? "/usr/bin/time" : undefined;
const PYTHON_RSS_WRAPPER =
  "import resource, subprocess, sys\n" +
  "status = subprocess.call(sys.argv[2:])\n" +
  "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n" +
  "open(sys.argv[1], 'w').write('%d %.2f %.2f' % (usage.ru_maxrss, usage.ru_utime, usage.ru_stime))\n" +
  "sys.exit(status)\n";

let log = (line) => process.stderr.write(`${line}\n`);

/**
 * Runs a command to its end and measures its wall time, peak resident memory
 * and CPU time (user + system, children included). Both sides of every
 * comparison go through the same wrapper.
 */
function measure(command, args, { cwd, env = childEnv, allowStatus = [0], stdout = "pipe" } = {}) {
  const rssFile = join(runRoot, `.rss-${process.pid}`);
  rmSync(rssFile, { force: true });
  const [file, argv] = TIME
    ? [TIME, ["-f", "%M %U %S", "-o", rssFile, command, ...args]]
    : ["python3", ["-c", PYTHON_RSS_WRAPPER, rssFile, command, ...args]];
  const start = performance.now();
  const result = spawnSync(file, argv, { cwd, env, stdio: ["ignore", stdout, "pipe"], encoding: "utf8", maxBuffer: 1 << 30 });
  const seconds = (performance.now() - start) / 1000;
  if (result.error) throw result.error;
  if (!allowStatus.includes(result.status)) {
    throw new Error(`\`${[command, ...args].join(" ")}\` in ${cwd} exited with ${result.status}:\n${(result.stderr ?? "").slice(-3000)}`);
  }
  let rssMb;
  let cpuSeconds;
  try {
    // The last line: /usr/bin/time writes a line about a non-zero exit status before it.
    const [rssKb, user, system] = readFileSync(rssFile, "utf8").trim().split("\n").at(-1).split(" ").map(Number);
    rssMb = rssKb / 1024;
    cpuSeconds = user + system;
  } catch {
    rssMb = undefined;
  }
  return { seconds, rssMb, cpuSeconds, stdout: result.stdout ?? "", stderr: result.stderr ?? "", status: result.status };
}

/** A side that starts Node and nothing else: the part of every Node floor that is Node's own start-up. */
function nodeStartSide(cwd) {
  return { name: "node -e 0", run: () => measure(process.execPath, ["-e", "0"], { cwd }) };
}

function kaos(args, cwd, options = {}) {
  return measure(process.execPath, [cli, ...args], { cwd, ...options });
}

function sh(script, cwd, options = {}) {
  return measure("sh", ["-c", script], { cwd, ...options });
}

/** Runs a setup command, not measured; throws with its output when it fails. */
function setup(command, args, cwd, env = childEnv) {
  const result = spawnSync(command, args, { cwd, env, encoding: "utf8", maxBuffer: 1 << 30 });
  if (result.error) throw result.error;
  if (result.status !== 0)
    throw new Error(
      `\`${[command, ...args].join(" ")}\` in ${cwd} exited with ${result.status}:\n${result.stdout}\n${result.stderr}`.slice(-4000),
    );
  return result.stdout;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Runs every side once untimed, then `runs` rounds of all sides, the order
 * rotating each round. `side.run(round)` returns a measurement; `side.before`
 * prepares a round untimed. Returns the measurements per side.
 */
function interleave(runs, sides) {
  for (const side of sides) {
    side.before?.(-1);
    side.check?.(side.run(-1));
  }
  const samples = sides.map(() => []);
  for (let round = 0; round < runs; round++) {
    for (let turn = 0; turn < sides.length; turn++) {
      const index = (round + turn) % sides.length;
      const side = sides[index];
      side.before?.(round);
      const sample = side.run(round);
      side.check?.(sample);
      samples[index].push(sample);
    }
  }
  return samples;
}

function summary(samples) {
  const rss = samples.map((s) => s.rssMb).filter((v) => v !== undefined);
  const cpu = samples.map((s) => s.cpuSeconds).filter((v) => v !== undefined && Number.isFinite(v));
  return {
    median: median(samples.map((s) => s.seconds)),
    cpuMedian: cpu.length === 0 ? undefined : median(cpu),
    min: Math.min(...samples.map((s) => s.seconds)),
    max: Math.max(...samples.map((s) => s.seconds)),
    runs: samples.map((s) => Number(s.seconds.toFixed(4))),
    peakRssMb: rss.length === 0 ? undefined : Math.max(...rss),
  };
}

// ---------------------------------------------------------------------------
// Projects.

function writeProject(dir, { data, manifest, grid = {}, parallelism = 1, script = TRAIN_SCRIPT }) {
  mkdirSync(join(dir, "src", "model"), { recursive: true });
  writeFileSync(join(dir, "src", "Dockerfile"), "FROM python:3.11-slim\nCOPY model /model\n");
  writeFileSync(join(dir, "src", "model", "requirements.txt"), "");
  writeFileSync(join(dir, "src", "model", "train"), script, { mode: 0o755 });
  writeFileSync(join(dir, "grid.json"), JSON.stringify(grid));
  const pipeline = {
    source: "src",
    ...(data !== undefined ? { data: relative(dir, data) } : { manifest: relative(dir, manifest) }),
    hyperparams: "grid.json",
    parallelism,
  };
  writeFileSync(
    join(dir, "kaos.config.ts"),
    `import { defineConfig } from "kaos-ml";\n\nexport default defineConfig({\n  pipelines: {\n    bench: ${JSON.stringify(pipeline)},\n  },\n});\n`,
  );
}

/** A tiny data bundle for projects whose data does not matter. */
function tinyData() {
  const dir = join(runRoot, "tiny-data");
  prepared(dir, { tiny: 1 }, () => writeFileSync(join(dir, "value.txt"), "1\n"));
  return dir;
}

const setupNotes = [];

/**
 * A project under bench/.data/run/projects/NAME, made once per `parameters`
 * and brought up to date with one `kaos up` (which builds the environment and
 * snapshots the data: its time is noted, not benchmarked).
 */
function upProject(name, parameters, spec) {
  const dir = join(runRoot, "projects", name);
  prepared(dir, { ...parameters, version: 1 }, () => {
    writeProject(dir, spec);
    log(`  setting up ${name}: first \`kaos up\` (environment build and data snapshot)`);
    const first = kaos(["up"], dir);
    writeFileSync(join(dir, ".first-up.json"), JSON.stringify({ seconds: first.seconds, rssMb: first.rssMb }));
    setupNotes.push(
      `${name}: first \`kaos up\` (venv build, snapshot of the data) took ${first.seconds.toFixed(1)} s, peak ${first.rssMb?.toFixed(0) ?? "?"} MB`,
    );
  });
  return dir;
}

const PLAN_STATS = /(\d+) files checked \((\d+) unchanged, (\d+) hashed/;

/** `N files checked (H unchanged, X hashed, ...)` from the first line of `kaos plan`. */
function planStats(stdout) {
  const match = PLAN_STATS.exec(stdout);
  if (match === null) throw new Error(`kaos plan printed no file statistics:\n${stdout.slice(0, 500)}`);
  return { files: Number(match[1]), unchanged: Number(match[2]), hashed: Number(match[3]) };
}

/**
 * Plans until nothing is re-read: freshly written files sit inside the stat
 * cache's racy window for a second and are read again until they have aged.
 */
async function settle(project) {
  for (let attempt = 0; ; attempt++) {
    const stats = planStats(kaos(["plan"], project).stdout);
    if (stats.hashed === 0) return stats;
    if (attempt === 8) throw new Error(`${project}: kaos plan keeps re-reading ${stats.hashed} files`);
    await sleep(1_100);
  }
}

/**
 * The timed side of a warm no-op `kaos plan`: each run must read no file and,
 * when the project's pipelines were applied, have nothing to do.
 */
function warmPlanSide(project, { applied }) {
  return {
    name: "kaos plan",
    run: () => kaos(["plan"], project),
    check: (sample) => {
      const stats = planStats(sample.stdout);
      if (stats.hashed !== 0) throw new Error(`warm kaos plan re-read ${stats.hashed} files`);
      if (applied && !/No changes/.test(sample.stdout)) throw new Error(`warm kaos plan is not a no-op:\n${sample.stdout.slice(-800)}`);
    },
  };
}

// ---------------------------------------------------------------------------
// DVC, from PyPI into a venv kept under bench/.data.

function dvcCommand(wanted) {
  if (!wanted) return { dvc: undefined, why: "skipped (--no-dvc, or --quick without --dvc)" };
  const dvc = join(dvcVenv, "bin", "dvc");
  const failedMarker = `${dvcVenv}.failed`;
  if (!existsSync(dvc)) {
    if (existsSync(failedMarker)) {
      return {
        dvc: undefined,
        why: `did not install from PyPI (${readFileSync(failedMarker, "utf8").trim().split("\n").at(-1)}; delete ${relative(repo, failedMarker)} to retry)`,
      };
    }
    log("installing dvc from PyPI into bench/.data/dvc-venv (once)");
    rmSync(dvcVenv, { recursive: true, force: true });
    const venv = spawnSync("python3", ["-m", "venv", dvcVenv], { encoding: "utf8" });
    const pip =
      venv.status === 0
        ? spawnSync(join(dvcVenv, "bin", "pip"), ["install", "--quiet", "dvc"], { encoding: "utf8", timeout: 900_000 })
        : venv;
    if (pip.status !== 0 || !existsSync(dvc)) {
      const reason = `${pip.stderr ?? ""}${pip.error ?? ""}`.trim() || `exit ${pip.status}`;
      writeFileSync(failedMarker, `${new Date().toISOString()}\n${reason}\n`);
      rmSync(dvcVenv, { recursive: true, force: true });
      return { dvc: undefined, why: `did not install from PyPI (${reason.split("\n").at(-1)})` };
    }
  }
  const version = spawnSync(dvc, ["--version"], { encoding: "utf8", env: childEnv });
  if (version.status !== 0) return { dvc: undefined, why: `installed but does not run: ${version.stderr.trim().split("\n").at(-1)}` };
  return { dvc, version: version.stdout.trim() };
}

function dvcInit(dvc, dir) {
  setup(dvc, ["init", "--no-scm", "--quiet"], dir);
  // Its state database inside the repo (not /var/tmp/dvc), so a cold run can remove it.
  setup(dvc, ["config", "core.site_cache_dir", join(dir, ".dvc-site")], dir);
  setup(dvc, ["config", "core.analytics", "false"], dir);
  setup(dvc, ["config", "core.check_update", "false"], dir);
}

// ---------------------------------------------------------------------------
// Scenarios. Each returns rows for the table.

/** A table row; with both sides measured, the ratio is kaos's median over the baseline's. */
function row(fields) {
  const ratio = fields.kaos !== undefined && fields.baseline !== undefined ? fields.kaos.median / fields.baseline.median : undefined;
  return { baseline: undefined, ratio, target: undefined, pass: undefined, notes: [], ...fields };
}

function warmTree(files) {
  const tree = prepareWarmTree({ warmFiles: files }, join(runRoot, `tree-${files}`));
  // A run stopped halfway through scenario 3 leaves its changed file behind.
  if (!restoredTrees.has(tree)) {
    setup("git", ["checkout", "--quiet", "--", "."], tree);
    restoredTrees.add(tree);
  }
  return tree;
}
const restoredTrees = new Set();

function warmProject(files) {
  const tree = warmTree(files);
  return upProject(`plan-${files}`, { tree: readFileSync(join(tree, ".params"), "utf8") }, { data: tree });
}

/** A copy of the tree with every file added to DVC (its cache filled), for `dvc status`. */
function dvcStatusRepo(dvc, files) {
  const tree = warmTree(files);
  const dir = join(runRoot, "dvc", `status-${files}`);
  prepared(dir, { tree: readFileSync(join(tree, ".params"), "utf8"), version: 1 }, () => {
    log(`  setting up dvc status repo for ${files} files (copy, dvc add)`);
    // A real copy: dvc add moves files into its cache, which would change the original tree.
    cpSync(tree, join(dir, "data"), { recursive: true, filter: (source) => !source.endsWith("/.git") });
    dvcInit(dvc, dir);
    setup(dvc, ["add", "--quiet", "data"], dir);
  });
  return dir;
}

async function scenarioWarmPlan(size, runs, dvc) {
  const rows = [];
  for (const files of size.warmFiles) {
    log(`[1] warm no-op kaos plan, ${files} files`);
    const project = warmProject(files);
    const tree = warmTree(files);
    const statusRepo = dvc.dvc ? dvcStatusRepo(dvc.dvc, files) : undefined;
    const settled = await settle(project);
    const sides = [
      warmPlanSide(project, { applied: true }),
      { name: "git status", run: () => measure("git", ["status", "--porcelain"], { cwd: tree }) },
      { name: "node: lstat every file", run: () => measure(process.execPath, ["-e", NODE_WALK_FLOOR, tree], { cwd: tree }) },
      nodeStartSide(tree),
    ];
    if (statusRepo) {
      sides.push({
        name: "dvc status",
        run: () => measure(dvc.dvc, ["status"], { cwd: statusRepo }),
        check: (sample) => {
          if (!/up to date/.test(sample.stdout)) throw new Error(`dvc status is not a no-op:\n${sample.stdout.slice(0, 800)}`);
        },
      });
    }
    const [kaosSamples, gitSamples, walkSamples, nodeSamples, dvcSamples] = interleave(runs, sides);
    const k = summary(kaosSamples);
    const g = summary(gitSamples);
    const walk = summary(walkSamples);
    const bare = summary(nodeSamples);
    const label = `${files / 1000}k`;
    rows.push(
      row({
        id: `1-${label}`,
        scenario: `warm no-op plan, ${label} files`,
        kaos: k,
        baseline: { name: "git status", ...g },
        target: "<= 1.00x",
        pass: k.median <= g.median,
        notes: [`${settled.files} files, 0 re-read`],
      }),
      row({
        id: `1-${label}-floor`,
        scenario: `  floor: node, lstat every file`,
        kaos: walk,
        baseline: { name: "git status", ...g },
        target: "info",
        notes: [`one thread, nothing else; node -e 0 alone: ${seconds(bare.median)} (${(bare.median / g.median).toFixed(2)}x git status)`],
      }),
    );
    const monitored = await withMonitor(project, () =>
      monitoredPlans(project, runs, {
        others: [{ name: "git status", run: () => measure("git", ["status", "--porcelain"], { cwd: tree }) }],
      }),
    );
    const m = summary(monitored[0]);
    const mg = summary(monitored[1]);
    monitorMedians.set(files, m.median);
    const smallest = monitorMedians.get(size.warmFiles[0]);
    rows.push(
      row({
        id: `1-${label}-monitor`,
        scenario: `  same, with a monitor running`,
        kaos: m,
        baseline: { name: "git status", ...mg },
        target: "<= 1.00x",
        pass: m.median <= mg.median,
        notes: [
          "`kaos monitor` serving; no tree walked",
          ...(files !== size.warmFiles[0] && smallest !== undefined
            ? [`${(m.median / smallest).toFixed(2)}x the ${size.warmFiles[0] / 1000}k figure`]
            : []),
        ],
      }),
    );
    if (dvcSamples) {
      const d = summary(dvcSamples);
      rows.push(
        row({ id: `1-${label}-dvc`, scenario: `  same, vs dvc status`, kaos: k, baseline: { name: "dvc status", ...d }, target: "info" }),
      );
    } else {
      rows.push(row({ id: `1-${label}-dvc`, scenario: `  same, vs dvc status`, kaos: k, target: "info", notes: [`dvc ${dvc.why}`] }));
    }
  }
  return rows;
}

/** Monitored plan medians by tree size, to show that they stay flat. */
const monitorMedians = new Map();
/** Scenario 9's monitored plans by tree size; past the smallest, each is held to at most this many times the smallest's. */
const hugeMonitored = new Map();
const HUGE_MONITOR_FLAT = 1.25;

/**
 * Timed `kaos plan` runs while a monitor serves `project` (and the `others`
 * sides, in turn), after plans that ask the new monitor, are told "I don't
 * know", walk and keep its token: one, or more when the monitor took longer
 * than a plan waits to answer the first question (it watches every
 * directory of a tree first, seconds for a million files on a loaded machine).
 */
function monitoredPlans(project, runs, { noOp = true, others = [] } = {}) {
  for (let attempt = 0; attempt < 5; attempt++) {
    if (/file system monitor: (\d+) of \1 trees not walked/.test(kaos(["plan"], project).stdout)) break;
  }
  return interleave(runs, [
    {
      name: "kaos plan, monitor running",
      run: () => kaos(["plan"], project),
      check: (sample) => {
        const stats = planStats(sample.stdout);
        if (stats.hashed !== 0) throw new Error(`monitored kaos plan re-read ${stats.hashed} files`);
        if (!/file system monitor: 2 of 2 trees not walked/.test(sample.stdout))
          throw new Error(`kaos plan walked with a monitor running:\n${sample.stdout.slice(0, 800)}`);
        if (noOp && !/No changes/.test(sample.stdout)) throw new Error(`monitored kaos plan is not a no-op:\n${sample.stdout.slice(-800)}`);
      },
    },
    ...others,
  ]);
}

/** Runs `body` while `kaos monitor` serves the project, then stops it. */
async function withMonitor(project, body) {
  const child = spawn(process.execPath, [cli, "monitor"], { cwd: project, env: childEnv, stdio: ["ignore", "ignore", "pipe"] });
  try {
    await new Promise((resolve, reject) => {
      let text = "";
      child.stderr.setEncoding("utf8").on("data", (chunk) => {
        text += chunk;
        if (text.includes("file system monitor ready")) resolve();
      });
      child.on("exit", (code) => reject(new Error(`kaos monitor exited with ${code}:\n${text}`)));
    });
    return body();
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGINT");
      await exited;
    }
  }
}

async function scenarioColdHash(size, runs, dvc) {
  log("[2] cold hashing of the mixed set");
  const mixed = prepareMixed(size.mixed, join(runRoot, `mixed-${size.mixed.largeFiles}x${size.mixed.largeBytes}-${size.mixed.smallFiles}`));
  const project = join(runRoot, "projects", "cold");
  prepared(project, { mixed: size.mixed, version: 1 }, () => writeProject(project, { data: mixed }));
  const list = (root) => `find '${root}' -type f ! -name .params -print0`;
  // As bench/hash.mjs: large files one per sha256sum, small ones 50 at a time, on every core.
  const sha256sum = `${list(join(mixed, "large"))} | xargs -0 -P ${cores} -n 1 sha256sum && ${list(join(mixed, "small"))} | xargs -0 -P ${cores} -n 50 sha256sum`;
  const sizes = execFileSync("find", [mixed, "-type", "f", "-printf", "%s\\n"], { encoding: "utf8" }).trim().split("\n").map(Number);
  const files = sizes.length;
  const bytes = sizes.reduce((sum, value) => sum + value, 0);
  const sides = [
    {
      name: "kaos plan (no stat cache)",
      before: () => rmSync(join(project, ".kaos"), { recursive: true, force: true }),
      run: () => kaos(["plan"], project),
      check: (sample) => {
        const stats = planStats(sample.stdout);
        if (stats.unchanged !== 0) throw new Error(`cold kaos plan found ${stats.unchanged} cached files`);
        if (stats.hashed !== stats.files) throw new Error(`cold kaos plan hashed ${stats.hashed} of ${stats.files} files`);
      },
    },
    { name: `sha256sum x${cores}`, run: () => sh(sha256sum, mixed, { stdout: "ignore" }) },
  ];
  let dvcRepo;
  if (dvc.dvc) {
    // Hard links: `dvc add --no-commit` only reads (checked below), and the page cache is shared.
    dvcRepo = join(runRoot, "dvc", "mixed");
    prepared(dvcRepo, { mixed: size.mixed, version: 1 }, () => {
      execFileSync("cp", ["-al", mixed, join(dvcRepo, "data")]);
      dvcInit(dvc.dvc, dvcRepo);
    });
    sides.push({
      name: "dvc add --no-commit",
      before: () => {
        rmSync(join(dvcRepo, "data.dvc"), { force: true });
        rmSync(join(dvcRepo, ".dvc-site"), { recursive: true, force: true });
        rmSync(join(dvcRepo, ".dvc", "tmp"), { recursive: true, force: true });
      },
      run: () => measure(dvc.dvc, ["add", "--no-commit", "--quiet", "data"], { cwd: dvcRepo }),
    });
  }
  const probe = join(mixed, "large", "part-0.bin");
  const ctimeBefore = execFileSync("stat", ["-c", "%Z %h", probe], { encoding: "utf8" });
  const [kaosSamples, shaSamples, dvcSamples] = interleave(runs, sides);
  if (dvcRepo && execFileSync("stat", ["-c", "%Z %h", probe], { encoding: "utf8" }) !== ctimeBefore) {
    throw new Error(`dvc add --no-commit changed ${probe}: the mixed set must be regenerated`);
  }
  const k = summary(kaosSamples);
  const s = summary(shaSamples);
  const gb = bytes / 1e9;
  const rows = [
    row({
      id: "2",
      scenario: `cold hash, ${gb.toFixed(2)} GB in ${files} files`,
      kaos: k,
      baseline: { name: `sha256sum x${cores}`, ...s },
      target: "<= 1.25x (>= 0.8x speed)",
      pass: k.median <= s.median / 0.8,
      notes: [`kaos ${(gb / k.median).toFixed(2)} GB/s, sha256sum ${(gb / s.median).toFixed(2)} GB/s`],
    }),
  ];
  if (dvcSamples) {
    const d = summary(dvcSamples);
    rows.push(
      row({
        id: "2-dvc",
        scenario: "  same, vs dvc add --no-commit",
        kaos: k,
        baseline: { name: "dvc add --no-commit", ...d },
        target: "info",
        notes: [`dvc ${(gb / d.median).toFixed(2)} GB/s (md5)`],
      }),
    );
  } else {
    rows.push(row({ id: "2-dvc", scenario: "  same, vs dvc add", kaos: k, target: "info", notes: [`dvc ${dvc.why}`] }));
  }
  return rows;
}

/**
 * Changes one file of `tree` (d0/s0/f0.dat) to new bytes of the same size on
 * every call of `change`; `restore` puts its first content back.
 */
function oneFileChanger(tree) {
  const target = join(tree, "d0", "s0", "f0.dat");
  const original = readFileSync(target);
  let version = 0;
  return {
    change() {
      version += 1;
      const content = Buffer.from(original);
      content.write(`changed ${version} ${Date.now()}`.padEnd(40), 0);
      writeFileSync(target, content);
    },
    restore() {
      writeFileSync(target, original);
    },
  };
}

async function scenarioOneChanged(size, runs) {
  const files = size.changedFiles;
  log(`[3] one changed file among ${files}`);
  const project = warmProject(files);
  const tree = warmTree(files);
  await settle(project);
  const { change, restore } = oneFileChanger(tree);
  const hashedCounts = [];
  let noop;
  try {
    // Every round writes new bytes into the same file; both sides then see one change.
    const sides = [
      {
        name: "kaos plan",
        before: change,
        run: () => kaos(["plan"], project),
        check: (sample) => hashedCounts.push(planStats(sample.stdout).hashed),
      },
      { name: "git status", before: change, run: () => measure("git", ["status", "--porcelain"], { cwd: tree }) },
    ];
    const [kaosSamples, gitSamples] = interleave(runs, sides);
    noop = { kaos: summary(kaosSamples), git: summary(gitSamples) };
  } finally {
    restore();
  }
  const timed = hashedCounts.slice(1);
  const reread = [...new Set(timed)].join("/");
  return [
    row({
      id: "3",
      scenario: `one changed of ${files / 1000}k: plan`,
      kaos: noop.kaos,
      baseline: { name: "git status", ...noop.git },
      target: "info",
      notes: [],
    }),
    row({
      id: "3-reread",
      scenario: "  files re-read by that plan",
      kaos: undefined,
      value: reread,
      target: "exactly 1",
      pass: timed.every((count) => count === 1),
      notes: [`per run: ${timed.join(", ")}`],
    }),
  ];
}

/** A project with `count` finished jobs recorded through the state store's API. */
async function jobsProject(count) {
  const dir = join(runRoot, "projects", `jobs-${count}`);
  const { StateStore } = await import(pathToFileURL(join(repo, "dist", "state.js")).href);
  prepared(dir, { count, version: 1 }, () => {
    writeProject(dir, { data: tinyData() });
    const state = StateStore.open(dir);
    const hex = () => randomBytes(32).toString("hex");
    const perRun = 100;
    try {
      state.transaction(() => {
        for (let first = 0; first < count; first += perRun) {
          const run = state.beginRun("local", "up");
          const keys = { envKey: hex(), sourceKey: hex(), dataKey: hex() };
          const sweepSize = Math.min(perRun, count - first);
          for (let index = 0; index < sweepSize; index++) {
            const params = { lr: [0.1, 0.01, 0.001][index % 3], depth: index, seed: first + index };
            const job = state.createJob({
              runId: run.id,
              stack: "local",
              pipeline: "bench",
              stage: "train",
              key: hex(),
              params,
              ...keys,
              paramsKey: hex(),
              sweepIndex: index,
              sweepSize,
              outputDir: null,
              logFile: null,
            });
            state.markRunning(job.id, null);
            state.finishJob(
              job.id,
              index % 17 === 0 ? { state: "failed", exitCode: 1, reason: "exited with code 1" } : { state: "succeeded", exitCode: 0 },
            );
          }
          state.finishRun(run.id, "succeeded");
        }
      });
    } finally {
      state.close();
    }
  });
  return dir;
}

/**
 * A project whose pipeline sweeps `count` combinations (a grid of count/100 x
 * 100), a succeeded job recorded for each with the keys `kaos plan --json`
 * gives, and a `score` in its outputs: `kaos ui`'s sweep page at that size.
 */
async function sweepProject(count) {
  const dir = join(runRoot, "projects", `sweep-${count}`);
  const { StateStore } = await import(pathToFileURL(join(repo, "dist", "state.js")).href);
  prepared(dir, { count, version: 1 }, () => {
    writeProject(dir, { data: tinyData(), grid: { a: [...Array(count / 100).keys()], b: [...Array(100).keys()] } });
    const plan = JSON.parse(setup(process.execPath, [cli, "plan", "--json"], dir));
    const state = StateStore.open(dir);
    try {
      state.transaction(() => {
        const run = state.beginRun("local", "up");
        plan.pipelines[0].jobs.forEach(({ key, params }, index) => {
          const outputDir = join(dir, "outs", String(index));
          mkdirSync(join(outputDir, "metrics"), { recursive: true });
          writeFileSync(join(outputDir, "metrics", "m.json"), JSON.stringify({ score: ((index * 7919) % count) / 100 }));
          const job = state.createJob({
            runId: run.id,
            stack: "local",
            pipeline: "bench",
            stage: "train",
            key,
            params,
            envKey: null,
            sourceKey: null,
            dataKey: null,
            paramsKey: null,
            sweepIndex: index,
            sweepSize: count,
            outputDir,
            logFile: null,
          });
          state.markRunning(job.id, null);
          state.finishJob(job.id, { state: "succeeded", exitCode: 0 });
        });
        state.finishRun(run.id, "succeeded");
      });
    } finally {
      state.close();
    }
  });
  return dir;
}

async function scenarioStartup(size, runs) {
  log("[4] start-up: kaos --help, kaos train list");
  const neutral = tinyData();
  const node = nodeStartSide(neutral);
  const [helpSamples, nodeSamples] = interleave(runs * 2, [{ name: "kaos --help", run: () => kaos(["--help"], neutral) }, node]);
  const help = summary(helpSamples);
  const nodeTime = summary(nodeSamples);
  const project = await jobsProject(size.jobs);
  const [listSamples, nodeSamples2] = interleave(runs, [
    {
      name: "kaos train list --all",
      run: () => kaos(["train", "list", "--all"], project),
      check: (sample) => {
        const lines = sample.stdout.split("\n").filter(Boolean).length;
        if (lines !== size.jobs + 1) throw new Error(`kaos train list printed ${lines} lines, expected ${size.jobs + 1}`);
      },
    },
    node,
  ]);
  const list = summary(listSamples);
  const node2 = summary(nodeSamples2);
  const firstPage = await uiFirstPage(project, runs);
  const sweepPage = await uiSweepPage(await sweepProject(size.jobs), runs);
  // The default page of a long history: newest 50, the rest counted. SQLite stops at the page.
  const many = await jobsProject(size.manyJobs);
  const [pageSamples] = interleave(runs, [
    {
      name: "kaos train list",
      run: () => kaos(["train", "list"], many),
      check: (sample) => {
        const lines = sample.stdout.split("\n").filter(Boolean);
        if (lines.length !== 52 || !lines[51].startsWith(`${size.manyJobs - 50} more`)) {
          throw new Error(`kaos train list printed ${lines.length} lines, expected 50 jobs, a header and "${size.manyJobs - 50} more"`);
        }
      },
    },
  ]);
  const page = summary(pageSamples);
  // A project already up to date: what every CI step and every watch event pays when nothing changed.
  const noopProject = upProject("noop-up", { data: "tiny" }, { data: neutral });
  // The floor writes its run record into a copy of the project's state, fresh for every run: kaos's own is never touched.
  const floorState = join(runRoot, "noop-up-floor");
  const upToDateRecord = join(noopProject, ".kaos", "up-to-date.json");
  const noopCheck = (sample) => {
    if (!/nothing to do/.test(sample.stderr)) throw new Error(`kaos up was not a no-op:\n${sample.stderr.slice(-800)}`);
  };
  const [upSamples, nodeSamples3, floorSamples, fullUpSamples] = interleave(runs * 2, [
    {
      // The first run of the set writes the up-to-date record when the one there does not vouch for it; the others use it.
      name: "kaos up (no-op)",
      run: () => kaos(["up"], noopProject),
      check: noopCheck,
    },
    node,
    {
      name: "node: a no-op up's own steps",
      before: () => {
        rmSync(floorState, { recursive: true, force: true });
        mkdirSync(floorState);
        for (const suffix of ["", "-wal"]) {
          const file = join(noopProject, ".kaos", `state.db${suffix}`);
          if (existsSync(file)) cpSync(file, join(floorState, `state.db${suffix}`));
        }
      },
      run: () =>
        measure(process.execPath, [join(floorScripts, "noop-up.mjs"), join(floorState, "state.db"), "kaos.config.ts", "src", neutral], {
          cwd: noopProject,
        }),
    },
    {
      name: "kaos up (no-op, planned in full)",
      before: () => rmSync(upToDateRecord, { force: true }),
      run: () => kaos(["up"], noopProject),
      check: noopCheck,
    },
  ]);
  const noop = summary(upSamples);
  const fullNoop = summary(fullUpSamples);
  const node3 = summary(nodeSamples3);
  const noopFloor = summary(floorSamples);
  return [
    row({
      id: "4-help",
      scenario: "kaos --help",
      kaos: help,
      baseline: { name: "node -e 0", ...nodeTime },
      target: "< 2.00x",
      pass: help.median < 2 * nodeTime.median,
    }),
    row({
      id: "4-noop-up",
      scenario: "no-op kaos up, tiny project",
      kaos: noop,
      baseline: { name: "node -e 0", ...node3 },
      target: "<= 2.00x",
      pass: noop.median <= 2 * node3.median,
      notes: [
        "environment built, one job already succeeded: nothing to do; answered from the up-to-date record the previous no-op up left",
      ],
    }),
    row({
      id: "4-noop-up-full",
      scenario: "  the same, planned in full (no up-to-date record)",
      kaos: fullNoop,
      baseline: { name: "node -e 0", ...node3 },
      target: "info",
      notes: ["the record removed before each run: config, hashing and plan, as before the record existed"],
    }),
    row({
      id: "4-noop-up-floor",
      scenario: "  floor: node, a full no-op plan's own steps",
      kaos: noopFloor,
      baseline: { name: "node -e 0", ...node3 },
      target: "info",
      notes: [
        "ES module; node:sqlite on a copy of state.db: a few rows read, the run record written; node:crypto SHA-256 of the config; source and data listed and lstat'ed",
      ],
    }),
    row({
      id: "4-list",
      scenario: `kaos train list --all, ${size.jobs / 1000}k jobs`,
      kaos: list,
      baseline: { name: "node -e 0", ...node2 },
      target: "info",
      notes: ["design: well under dvc's 0.3-1.3 s"],
    }),
    row({
      id: "4-list-page",
      scenario: `kaos train list (newest 50), ${size.manyJobs / 1000}k jobs`,
      kaos: page,
      baseline: { name: "node -e 0", ...node2 },
      target: "< 0.3 s",
      pass: page.median < 0.3,
    }),
    row({
      id: "4-ui",
      scenario: `kaos ui first page, ${size.jobs / 1000}k jobs`,
      kaos: firstPage,
      target: "< 1 s",
      pass: firstPage.median < 1,
      notes: ["API time of the runs page: overview, first page of runs and of jobs"],
    }),
    row({
      id: "4-ui-sweep",
      scenario: `kaos ui sweep first page, ${size.jobs / 1000}k jobs`,
      kaos: sweepPage.api,
      baseline: { name: "whole sweep", ...sweepPage.whole },
      target: "< 0.3 s",
      pass: sweepPage.api.median < 0.3,
      notes: [
        sweepPage.paged
          ? "API time of the sweep page (a page of 50 and the chart's points), server warm; baseline: the whole sweep in one request, as the page asked before"
          : "this build's sweep page asks for the whole sweep: both sides are that request",
      ],
    }),
    ...(sweepPage.browser === undefined
      ? []
      : [
          row({
            id: "4-ui-sweep-browser",
            scenario: "  in chromium: its first draw",
            kaos: sweepPage.browser,
            target: "< 0.3 s",
            pass: sweepPage.browser.median < 0.3,
            notes: [
              `main-thread time (script, style, layout) from the runs page to the table and chart drawn; wall: ${sweepPage.browserWall}`,
            ],
          }),
        ]),
  ];
}

/** Starts `kaos ui` in `project`; resolves with its address and how to stop it. */
async function startUi(project) {
  const server = spawn(process.execPath, [cli, "ui", "--port", "0"], { cwd: project, env: childEnv, stdio: ["ignore", "pipe", "inherit"] });
  const base = await new Promise((resolve, reject) => {
    let out = "";
    server.stdout.setEncoding("utf8").on("data", (chunk) => {
      out += chunk;
      const match = /kaos ui: (http:\/\/\S+)\n/.exec(out);
      if (match) resolve(match[1]);
    });
    server.on("exit", (code) => reject(new Error(`kaos ui exited with ${code} before serving:\n${out}`)));
  });
  return { base, stop: () => server.kill("SIGTERM") };
}

async function getJson(base, path) {
  const response = await fetch(`${base}${path}`);
  if (!response.ok) throw new Error(`GET ${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

/**
 * The sweep page of `kaos ui` over a sweep of many jobs: the requests its
 * first page makes, against the whole sweep the page asked for before, taking
 * turns on the same running server; then, when chromium is installed, the
 * browser's main-thread time to draw that page.
 */
async function uiSweepPage(project, runs) {
  const { base, stop } = await startUi(project);
  try {
    const timed = (load) => async () => {
      const start = performance.now();
      await load();
      return { seconds: (performance.now() - start) / 1000 };
    };
    // A build from before the sweep came in pages (`--cli`) has no points to ask for: its page asks for the whole sweep.
    const paged = (await fetch(`${base}api/pipelines/bench/points?x=a&y=score`)).ok;
    const page = timed(async () => {
      if (!paged) {
        if ((await getJson(base, "api/pipelines/bench/sweep")).items.length === 0) throw new Error("kaos ui's sweep came back empty");
        return;
      }
      const [first, points] = await Promise.all([
        getJson(base, "api/pipelines/bench/sweep?limit=50"),
        getJson(base, "api/pipelines/bench/points?x=a&y=score"),
      ]);
      if (first.items.length === 0 || points.ys.length === 0) throw new Error("kaos ui's sweep page came back empty");
    });
    const whole = timed(async () => {
      if ((await getJson(base, "api/pipelines/bench/sweep")).items.length === 0) throw new Error("kaos ui's sweep came back empty");
    });
    await page();
    await whole();
    const pageSamples = [];
    const wholeSamples = [];
    for (let i = 0; i < runs; i++) {
      const order = i % 2 === 0 ? [page, whole] : [whole, page];
      for (const load of order) (load === page ? pageSamples : wholeSamples).push(await load());
    }
    const browser = await browserFirstDraw(base, runs);
    return { api: summary(pageSamples), whole: summary(wholeSamples), paged, ...browser };
  } finally {
    stop();
  }
}

/** Chromium's main-thread time (Chrome's TaskDuration) from the runs page to the sweep page drawn, when chromium and playwright-core are there. */
async function browserFirstDraw(base, runs) {
  const executablePath = "/usr/bin/chromium";
  if (!existsSync(executablePath)) return {};
  let chromium;
  try {
    ({ chromium } = await import("playwright-core"));
  } catch {
    return {};
  }
  const browser = await chromium.launch({ executablePath });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const cdp = await page.context().newCDPSession(page);
    await cdp.send("Performance.enable");
    const taskSeconds = async () => (await cdp.send("Performance.getMetrics")).metrics.find((m) => m.name === "TaskDuration").value;
    const idle = () => page.waitForFunction(() => !document.getElementById("main").hasAttribute("aria-busy"), null, { timeout: 120_000 });
    const samples = [];
    const walls = [];
    for (let i = 0; i <= runs; i++) {
      await page.goto(`${base}#/runs`);
      await page.locator("#runs tr[data-run]").first().waitFor();
      await idle();
      const before = await taskSeconds();
      const start = performance.now();
      await page.evaluate(() => {
        location.hash = "#/pipelines/bench";
      });
      await page.locator("#sweep tbody tr").first().waitFor({ timeout: 120_000 });
      await idle();
      await page.locator("#scatter canvas").waitFor({ timeout: 120_000 });
      const wall = (performance.now() - start) / 1000;
      // The first round warms the server and the browser's caches.
      if (i > 0) {
        samples.push({ seconds: (await taskSeconds()) - before });
        walls.push(wall);
      }
    }
    return { browser: summary(samples), browserWall: `median ${(median(walls) * 1000).toFixed(0)} ms` };
  } finally {
    await browser.close();
  }
}

/**
 * The requests the dashboard's first page makes, timed against a running
 * `kaos ui` over the project's recorded jobs: what a user waits for once the
 * server is up.
 */
async function uiFirstPage(project, runs) {
  const { base, stop } = await startUi(project);
  try {
    const load = async () => {
      const start = performance.now();
      const [overview, runsPage, jobsPage] = await Promise.all(
        ["api/overview", "api/runs?limit=50", "api/jobs?limit=100"].map((path) => getJson(base, path)),
      );
      if (overview.pipelines.length === 0 || runsPage.items.length === 0 || jobsPage.items.length !== 100) {
        throw new Error("kaos ui's first page came back empty");
      }
      return { seconds: (performance.now() - start) / 1000 };
    };
    await load();
    const samples = [];
    for (let i = 0; i < runs; i++) samples.push(await load());
    return summary(samples);
  } finally {
    stop();
  }
}

async function scenarioSweep(size, runs) {
  const jobs = size.sweep;
  log(`[5] ${jobs}-job sweep, parallelism 2`);
  const rows = [];
  for (const variant of [
    { id: "5", name: "sweep", label: "sh script", script: TRAIN_SCRIPT },
    { id: "5-py", name: "sweep-python", label: "Python script", script: PYTHON_TRAIN_SCRIPT },
  ]) {
    const project = upProject(variant.name, { version: 2 }, { data: tinyData(), grid: { i: [0] }, parallelism: 2, script: variant.script });
    // Job records and outputs of earlier bench runs are not part of this one.
    rmSync(join(project, ".kaos", "jobs"), { recursive: true, force: true });
    for (const suffix of ["", "-wal", "-shm"]) rmSync(join(project, ".kaos", `state.db${suffix}`), { force: true });
    const modelDir = join(project, "src", "model");
    // By hand means with the environment activated, as kaos runs the script: its interpreter, not a shim's.
    const envs = join(project, ".kaos", "envs");
    const envDir = readdirSync(envs)
      .map((name) => join(envs, name))
      .find((dir) => existsSync(join(dir, "bin", "python")));
    if (envDir === undefined) throw new Error(`${envs} holds no environment`);
    const handEnv = { ...childEnv, PATH: `${join(envDir, "bin")}:${childEnv.PATH ?? ""}`, VIRTUAL_ENV: envDir };
    const byHand = join(runRoot, `${variant.name}-by-hand`);
    // The output directories are made before the clock starts, so a by-hand side runs nothing but the script.
    const freshOutputs = () => {
      rmSync(byHand, { recursive: true, force: true });
      for (let i = 0; i < jobs; i++) mkdirSync(join(byHand, String(i)), { recursive: true });
    };
    let round = 0;
    const sides = [
      {
        name: "kaos up",
        // New combinations every round, so all of them run; the environment is already built.
        before: () =>
          writeFileSync(
            join(project, "grid.json"),
            JSON.stringify({ i: Array.from({ length: jobs }, (_, i) => i), round: [`r${process.pid}-${round++}`] }),
          ),
        run: () => kaos(["up"], project),
        check: (sample) => {
          const match = /(\d+) succeeded, (\d+) failed/.exec(sample.stderr);
          if (match === null || Number(match[1]) !== jobs)
            throw new Error(`kaos up did not run ${jobs} jobs:\n${sample.stderr.slice(-800)}`);
          if (/ build .* succeeded/.test(sample.stderr)) throw new Error("kaos up built the environment again");
        },
      },
      {
        // The same project right after: nothing to run, so what is left is kaos's fixed cost.
        name: "kaos up (no-op)",
        run: () => kaos(["up"], project),
        check: (sample) => {
          if (!/nothing to do/.test(sample.stderr)) throw new Error(`the rerun was not a no-op:\n${sample.stderr.slice(-800)}`);
        },
      },
      {
        name: "node: spawn loop",
        before: freshOutputs,
        run: () => measure(process.execPath, ["-e", NODE_SPAWN_FLOOR, byHand, String(jobs)], { cwd: modelDir, env: handEnv }),
      },
      {
        name: "xargs -P 2",
        before: freshOutputs,
        run: () => sh(`seq 0 ${jobs - 1} | xargs -P 2 -I{} ./train '${byHand}/{}'`, modelDir, { env: handEnv }),
      },
    ];
    const [kaosSamples, noopSamples, spawnSamples, handSamples] = interleave(runs, sides);
    const k = summary(kaosSamples);
    const n = summary(noopSamples);
    const floor = summary(spawnSamples);
    const h = summary(handSamples);
    const perJob = (seconds) => `${((seconds / jobs) * 1000).toFixed(1)} ms`;
    rows.push(
      row({
        id: variant.id,
        scenario: `${jobs}-job sweep, -p 2, ${variant.label}`,
        kaos: k,
        baseline: { name: "xargs -P 2", ...h },
        target: "< 1.20x",
        pass: k.median < 1.2 * h.median,
        notes: [
          `per job: kaos ${perJob(k.median)}, by hand ${perJob(h.median)}`,
          `without kaos's fixed cost (a no-op up, ${seconds(n.median)}): ${((k.median - n.median) / h.median).toFixed(2)}x, ${perJob(k.median - n.median)} per job`,
        ],
      }),
      row({
        id: `${variant.id}-floor`,
        scenario: `  floor: node, a bare spawn loop`,
        kaos: floor,
        baseline: { name: "xargs -P 2", ...h },
        target: "info",
        notes: ["the same jobs started from Node with nothing else, 2 at a time"],
      }),
    );
  }
  return rows;
}

async function scenarioIngest(size, runs) {
  const files = size.manifestFiles;
  log(`[6] manifest ingest, ${files} x 1 MB from 127.0.0.1`);
  const server = await startServerProcess(MANIFEST_FILE_BYTES);
  try {
    const base = `http://127.0.0.1:${server.port}`;
    const urls = Array.from({ length: files }, (_, i) => `${base}/f/${i}`);
    // The server's port changes every run, and with it the manifest; the environment built before stays.
    const project = join(runRoot, "projects", "ingest");
    mkdirSync(project, { recursive: true });
    const manifest = join(project, "data.jsonl");
    writeFileSync(
      manifest,
      urls.map((url, i) => JSON.stringify({ url, path: `part-${String(i).padStart(4, "0")}.bin` })).join("\n") + "\n",
    );
    rmSync(`${manifest}.lock`, { force: true });
    writeProject(project, { manifest });
    kaos(["up"], project);
    const curlDir = join(runRoot, "ingest-curl");
    const emptyCurlDir = () => {
      rmSync(curlDir, { recursive: true, force: true });
      mkdirSync(curlDir);
    };
    const curlConfig = join(runRoot, "ingest-curl.config");
    writeFileSync(curlConfig, urls.map((url, i) => `url = "${url}"\noutput = "${join(curlDir, `part-${i}.bin`)}"\n`).join(""));
    const urlsFile = join(runRoot, "ingest-urls.txt");
    writeFileSync(urlsFile, `${urls.join("\n")}\n`);
    const sides = [
      {
        name: "kaos up (cold)",
        before: () => {
          rmSync(join(project, ".kaos", "objects"), { recursive: true, force: true });
          rmSync(join(project, ".kaos", "data"), { recursive: true, force: true });
          rmSync(`${manifest}.lock`, { force: true });
        },
        run: () => kaos(["up"], project),
        check: (sample) => {
          if (!new RegExp(`${files} downloaded`).test(sample.stderr))
            throw new Error(`kaos up did not download ${files} files:\n${sample.stderr.slice(-800)}`);
        },
      },
      {
        name: `curl --parallel-max ${INGEST_CONCURRENCY}`,
        before: emptyCurlDir,
        run: () =>
          measure(
            "curl",
            ["--parallel", "--parallel-max", String(INGEST_CONCURRENCY), "-s", "--no-progress-meter", "-f", "-K", curlConfig],
            { cwd: runRoot },
          ),
      },
      {
        name: "node: download, hash, write",
        before: emptyCurlDir,
        run: () => measure(process.execPath, ["-e", NODE_INGEST_FLOOR, urlsFile, curlDir, String(INGEST_CONCURRENCY)], { cwd: runRoot }),
      },
      {
        // What kaos must do beyond curl: the SHA-256 of every byte (OpenSSL, on every core).
        name: "curl, then SHA-256",
        before: emptyCurlDir,
        run: () =>
          sh(
            `curl --parallel --parallel-max ${INGEST_CONCURRENCY} -s --no-progress-meter -f -K '${curlConfig}' && find '${curlDir}' -type f -print0 | xargs -0 -P ${cores} -n 50 openssl dgst -sha256 > /dev/null`,
            runRoot,
          ),
      },
    ];
    // The loopback server shares the cores: its CPU time per run, for each side.
    const serverCpu = sides.map(() => []);
    sides.forEach((side, index) => {
      const run = side.run;
      side.run = (round) => {
        const before = processCpuSeconds(server.pid);
        const sample = run(round);
        if (round >= 0) serverCpu[index].push(processCpuSeconds(server.pid) - before);
        return sample;
      };
    });
    const [kaosSamples, curlSamples, floorSamples, hashedSamples] = interleave(runs, sides);
    // The no-op rerun right after: everything stored and pinned.
    const [noopSamples] = interleave(runs, [
      {
        name: "kaos up (no-op)",
        run: () => kaos(["up"], project),
        check: (sample) => {
          if (/\d+ downloaded/.test(sample.stderr) || !/nothing to do/.test(sample.stderr))
            throw new Error(`the rerun was not a no-op:\n${sample.stderr.slice(-800)}`);
        },
      },
    ]);
    const k = summary(kaosSamples);
    const c = summary(curlSamples);
    const hashed = summary(hashedSamples);
    const floor = summary(floorSamples);
    const n = summary(noopSamples);
    const megabytes = (files * MANIFEST_FILE_BYTES) / 1e6;
    const serverCpuOf = (index) => `${median(serverCpu[index]).toFixed(2)} s`;
    return [
      row({
        id: "6",
        scenario: `ingest ${files} x 1 MB`,
        kaos: k,
        baseline: { name: `curl --parallel ${INGEST_CONCURRENCY}`, ...c },
        target: "<= 1.25x (>= 0.8x speed)",
        pass: k.median <= c.median / 0.8,
        notes: [
          `kaos ${(megabytes / k.median).toFixed(0)} MB/s, curl ${(megabytes / c.median).toFixed(0)} MB/s`,
          `without the no-op up's fixed cost: ${((k.median - n.median) / c.median).toFixed(2)}x`,
          `the server's CPU on the same cores: ${serverCpuOf(0)} during kaos, ${serverCpuOf(1)} during curl`,
        ],
      }),
      row({
        id: "6-reference",
        scenario: "  reference: curl, then SHA-256",
        kaos: hashed,
        baseline: { name: `curl --parallel ${INGEST_CONCURRENCY}`, ...c },
        target: "info",
        notes: [`curl, then openssl dgst -sha256 on ${cores} cores: native tools doing what kaos must; server ${serverCpuOf(3)} CPU`],
      }),
      row({
        id: "6-floor",
        scenario: "  floor: node, download + hash + write",
        kaos: floor,
        baseline: { name: `curl --parallel ${INGEST_CONCURRENCY}`, ...c },
        target: "info",
        notes: [
          `node:http, SHA-256 and a write per chunk in 2 threads, ${INGEST_CONCURRENCY} transfers at once, nothing else; server ${serverCpuOf(2)} CPU`,
        ],
      }),
      row({ id: "6-noop", scenario: "  no-op rerun (kaos up)", kaos: n, target: "< 1 s", pass: n.median < 1 }),
    ];
  } finally {
    server.stop();
  }
}

/** Disk bytes of `paths` as du(1) counts them: an inode met under an earlier path counts there only. */
function duBytes(paths, exclude = []) {
  const out = setup("du", ["-sB1", ...exclude.map((name) => `--exclude=${name}`), ...paths], runRoot);
  return out
    .trim()
    .split("\n")
    .map((line) => Number(line.split("\t")[0]));
}

async function scenarioFirstUp(size, runs) {
  const files = size.viewFiles;
  log(`[8] first kaos up of a new ${files / 1000}k-file data bundle`);
  const tree = join(runRoot, `views-${files}`);
  prepared(tree, { files, averageBytes: 6144 }, () => writeSmallFiles(tree, files, 6144, 17));
  // The environment is built once and kept: the first up of new data builds nothing.
  const project = upProject(`views-${files}`, { tree: readFileSync(join(tree, ".params"), "utf8") }, { data: tree });
  // The same first up with hardlinked views, the way where no mount namespace can be had.
  mkdirSync(join(project, "stacks"), { recursive: true });
  writeFileSync(
    join(project, "stacks", "link.ts"),
    'import { defineStack } from "kaos-ml";\nexport default defineStack({ backend: "local", dataViews: "link" });\n',
  );
  const kaosDir = join(project, ".kaos");
  /**
   * Everything kaos knows but its environments: the next command meets this
   * data for the first time. Removing the last run's view unlinks the data's
   * files, which moves their inode change time: the wait puts that past the
   * racy window (1 s), as it is for a bundle written before its first up,
   * which would otherwise be read once more to check the view.
   */
  const forgetAllButEnvironments = () => {
    for (const name of readdirSync(kaosDir)) if (name !== "envs") rmSync(join(kaosDir, name), { recursive: true, force: true });
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1_100);
  };
  const copies = join(runRoot, "views-copies");
  const freshCopyTarget = () => {
    rmSync(copies, { recursive: true, force: true });
    mkdirSync(copies);
  };
  const [dataBytes] = duBytes([tree]);
  // The files a plan knows, for the floors: they are given their list, as the up has it from its plan.
  const paths = join(runRoot, `views-${files}.paths`);
  writeFileSync(paths, setup("find", [".", "-type", "f", "!", "-name", ".params", "-printf", "%P\\n"], tree));
  const linkFloor = (threads) => ({
    name: `node: link and lstat twice, ${threads} thread${threads === 1 ? "" : "s"}`,
    before: freshCopyTarget,
    run: () =>
      measure(process.execPath, [join(floorScripts, "link-view.mjs"), tree, paths, join(copies, "tree"), String(threads)], {
        cwd: runRoot,
      }),
  });
  const sides = [
    { name: "kaos plan (cold)", before: forgetAllButEnvironments, run: () => kaos(["plan"], project, { allowStatus: [0, 2] }) },
    { name: "kaos up (first)", before: forgetAllButEnvironments, run: () => kaos(["up"], project) },
    { name: "kaos up --stack link (first)", before: forgetAllButEnvironments, run: () => kaos(["up", "--stack", "link"], project) },
    { name: "cp -a", before: freshCopyTarget, run: () => measure("cp", ["-a", tree, join(copies, "tree")], { cwd: runRoot }) },
    { name: "cp -al", before: freshCopyTarget, run: () => measure("cp", ["-al", tree, join(copies, "tree")], { cwd: runRoot }) },
    linkFloor(1),
    linkFloor(2),
    nodeStartSide(runRoot),
  ];
  const [plan, up, upLinked, copy, link, linkOne, linkTwo, bare] = interleave(runs, sides).map(summary);
  const fileSystem = setup("stat", ["-f", "-c", "%T", tree], runRoot).trim();
  rmSync(copies, { recursive: true, force: true });
  // The last up ran last or after its plan; lay the state out once more so what is measured is one first up's.
  forgetAllButEnvironments();
  kaos(["up"], project);
  // The data first: du(1) then counts under .kaos/ only the bytes that are not the data's own.
  const [, kaosBytes] = duBytes([tree, kaosDir], ["envs"]);
  const [kaosAlone] = duBytes([kaosDir], ["envs"]);
  const mb = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;
  /** The least a first up can cost: the cold plan it makes, then the view linked, sealed and checked by a bare Node script. */
  const linkFloorRow = (id, threads, floor, how) =>
    row({
      id,
      scenario: `  floor: cold plan + node, link + lstat x2, ${threads}`,
      kaos: { median: plan.median + floor.median, cpuMedian: plan.cpuMedian + floor.cpuMedian },
      baseline: { name: "kaos plan (cold)", ...plan },
      target: "info",
      notes: [
        `the floor alone: ${seconds(floor.median)}, ${seconds(floor.cpuMedian)} CPU (mkdir, link, lstat every link and directory twice${how ? `; ${how}` : ""}; a ${fileSystem} file system)`,
        `without its second Node start-up (node -e 0: ${seconds(bare.median)}): ${((plan.median + floor.median - bare.median) / plan.median).toFixed(2)}x`,
      ],
    });
  return [
    row({
      id: "8-up",
      scenario: `first up, ${files / 1000}k files, ${mb(dataBytes)}`,
      kaos: up,
      baseline: { name: "kaos plan (cold)", ...plan },
      target: "<= 1.30x",
      pass: up.median / plan.median <= 1.3,
      notes: [
        "train script: one `echo`; the environment is kept between runs",
        "the default data view: the bundle's own folder mounted read-only in the job's mount namespace",
      ],
    }),
    row({
      id: "8-up-link",
      scenario: "  the same, hardlinked view (dataViews: link)",
      kaos: upLinked,
      baseline: { name: "kaos plan (cold)", ...plan },
      target: "info",
      notes: ["where no mount namespace can be had, or the bundle's folder holds files its tree skips"],
    }),
    row({ id: "8-cp", scenario: "  vs cp -a of the tree", kaos: up, baseline: { name: "cp -a", ...copy }, target: "info" }),
    row({ id: "8-cpl", scenario: "  vs cp -al of the tree", kaos: up, baseline: { name: "cp -al", ...link }, target: "info" }),
    linkFloorRow("8-floor", "1 thread", linkOne),
    linkFloorRow(
      "8-floor-2",
      "2 threads",
      linkTwo,
      `directories split between them: ${(linkTwo.median / linkOne.median).toFixed(2)}x the time on 1 thread, ${(linkTwo.cpuMedian / linkOne.cpuMedian).toFixed(2)}x the CPU`,
    ),
    {
      ...row({ id: "8-du", scenario: "  .kaos/ without envs / data size", target: "<= 0.20x" }),
      value: `${mb(kaosBytes)} of ${mb(dataBytes)}`,
      ratio: kaosBytes / dataBytes,
      pass: kaosBytes / dataBytes <= 0.2,
      notes: [`du -sB1 of the data, then of .kaos/ (du counts a shared inode once, under the data); .kaos/ alone: ${mb(kaosAlone)}`],
    },
  ];
}

/** User plus system CPU seconds a process has used so far (Linux /proc). */
/**
 * A manifest of `lines` entries, each with its sha256 and size, in no
 * particular path order (as a manifest made by a script often is), and a
 * project whose data it is. Nothing is downloaded: the URLs lead nowhere.
 */
function bigManifestProject(lines) {
  const dir = join(runRoot, "projects", `manifest-${lines}`);
  prepared(dir, { lines, version: 1 }, () => {
    log(`  generating a manifest of ${lines} lines`);
    const manifest = join(dir, "data.jsonl");
    const chunk = [];
    writeFileSync(manifest, "");
    for (let i = 0; i < lines; i++) {
      const sha256 = createHash("sha256").update(String(i)).digest("hex");
      const path = `part-${String(i % 1000).padStart(3, "0")}/f-${String(i).padStart(7, "0")}.bin`;
      chunk.push(JSON.stringify({ url: `https://data.example.com/shard-${i % 1000}/f-${i}.bin`, path, sha256, size: 1000 + (i % 5000) }));
      if (chunk.length === 10_000 || i === lines - 1) {
        appendFileSync(manifest, `${chunk.join("\n")}\n`);
        chunk.length = 0;
      }
    }
    writeProject(dir, { manifest });
  });
  return dir;
}

async function scenarioBigManifest(size, runs) {
  const lines = size.manifestLines;
  const label = lines >= 1_000_000 ? `${lines / 1_000_000}M` : `${lines / 1000}k`;
  log(`[7] kaos plan of a ${label}-line manifest`);
  const project = bigManifestProject(lines);
  const [planSamples, sumSamples] = interleave(runs, [
    {
      name: "kaos plan",
      before: () => rmSync(join(project, ".kaos"), { recursive: true, force: true }),
      run: () => kaos(["plan"], project),
      check: (sample) => {
        if (!new RegExp(`${lines} of ${lines} entries not downloaded yet`).test(sample.stdout))
          throw new Error(`kaos plan did not list the manifest's ${lines} entries:\n${sample.stdout.slice(0, 800)}`);
      },
    },
    { name: "sha256sum", run: () => measure("sha256sum", ["data.jsonl"], { cwd: project }) },
  ]);
  const k = summary(planSamples);
  const sum = summary(sumSamples);
  const megabytes = statSync(join(project, "data.jsonl")).size / 1e6;
  return [
    row({
      id: "7",
      scenario: `plan of a ${label}-line manifest`,
      kaos: k,
      baseline: { name: "sha256sum of the manifest", ...sum },
      target: lines >= 1_000_000 ? "<= 3 s, <= 500 MB" : "info",
      pass: lines >= 1_000_000 ? k.median <= 3 && k.peakRssMb <= 500 : undefined,
      notes: [`${megabytes.toFixed(0)} MB of JSON lines, sha256 and size on every line, .kaos/ removed before each run`],
    }),
  ];
}

/**
 * Scenario 9 runs `kaos up` on bundles up to this size only. Data views are
 * hardlinks, so a first up of a million files takes a minute or two.
 */
const HUGE_UP_MAX_FILES = 1_000_000;

/**
 * A tree of `files` small files of 1 KiB on average, 100 to a directory, written by
 * a few threads once and reused. Not a git repository: `git add` of a million
 * files writes a million loose objects, longer than the rest of the scenario.
 */
async function hugeTree(files) {
  const dir = join(runRoot, `huge-${files}`);
  const wanted = JSON.stringify({ files, averageBytes: 1024, version: 1 });
  const marker = join(dir, ".params");
  if (existsSync(marker) && readFileSync(marker, "utf8") === wanted) return dir;
  log(`  generating ${files} files in ${relative(repo, dir)} (once)`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  await writeSmallFilesParallel(dir, files, 1024, 13);
  writeFileSync(marker, wanted);
  return dir;
}

/**
 * A local data bundle at scale: 100k files (scenario 1's tree, a git
 * repository) and 1M (its own tree). The first up once, when the project is
 * made (minutes at 1M; delete the project to measure it again); a cold plan
 * once, in a second project; then the warm no-op plan against the Node
 * floor, then one changed file.
 */
async function scenarioHugeBundle(size, runs) {
  const rows = [];
  const timed = Math.min(runs, 3);
  for (const files of size.hugeFiles) {
    const label = files >= 1_000_000 ? `${files / 1_000_000}M` : `${files / 1000}k`;
    log(`[9] local data bundle of ${label} files`);
    const isGit = files <= 100_000;
    const tree = isGit ? warmTree(files) : await hugeTree(files);
    const treeParams = readFileSync(join(tree, ".params"), "utf8");
    // The first up of a million files takes many minutes: it is measured when the project is made, and reused after.
    const project = join(runRoot, "projects", `huge-${files}`);
    const firstUpFile = join(project, ".first-up.json");
    // Past HUGE_UP_MAX_FILES the first up is not run: those plans run against a stat cache only, with nothing applied yet.
    const withUp = files <= HUGE_UP_MAX_FILES;
    prepared(project, { tree: treeParams, withUp, version: 1 }, () => {
      writeProject(project, { data: tree });
      if (!withUp) return;
      log(`  first \`kaos up\` of ${label} files (measured once, when the project is made)`);
      const up = kaos(["up"], project);
      writeFileSync(firstUpFile, JSON.stringify({ seconds: up.seconds, rssMb: up.rssMb, cpuSeconds: up.cpuSeconds, cli }));
    });
    const first = withUp && existsSync(firstUpFile) ? JSON.parse(readFileSync(firstUpFile, "utf8")) : undefined;
    // Cold plans run in a project of their own, so that removing its .kaos/ leaves the other one's state.
    const coldProject = join(runRoot, "projects", `huge-${files}-cold`);
    prepared(coldProject, { tree: treeParams, version: 1 }, () => writeProject(coldProject, { data: tree }));
    const memoryTarget = files >= 1_000_000 ? 600 : undefined;
    const memoryPass = (s) => (memoryTarget === undefined ? undefined : s.peakRssMb !== undefined && s.peakRssMb < memoryTarget);
    const memoryNote = memoryTarget === undefined ? "info" : `< ${memoryTarget} MB`;

    rmSync(join(coldProject, ".kaos"), { recursive: true, force: true });
    const cold = kaos(["plan"], coldProject);
    const coldStats = planStats(cold.stdout);
    if (coldStats.hashed !== coldStats.files) throw new Error(`cold kaos plan hashed ${coldStats.hashed} of ${coldStats.files} files`);
    const settled = await settle(project);

    const sides = [
      warmPlanSide(project, { applied: withUp }),
      { name: "node: lstat every file", run: () => measure(process.execPath, ["-e", NODE_WALK_FLOOR, tree], { cwd: tree }) },
    ];
    if (isGit) sides.push({ name: "git status", run: () => measure("git", ["status", "--porcelain"], { cwd: tree }) });
    const [warmSamples, floorSamples, gitSamples] = interleave(timed, sides);
    const warm = summary(warmSamples);
    const floor = summary(floorSamples);
    const git = gitSamples ? summary(gitSamples) : undefined;
    const [monitoredSamples] = await withMonitor(project, () => monitoredPlans(project, timed, { noOp: withUp }));
    const monitored = summary(monitoredSamples);
    hugeMonitored.set(files, monitored);
    // Flat: past the smallest tree, the monitored plan is measured against the smallest's.
    const smallest = files === size.hugeFiles[0] ? undefined : hugeMonitored.get(size.hugeFiles[0]);

    const { change, restore } = oneFileChanger(tree);
    const hashedCounts = [];
    let changed;
    try {
      [changed] = interleave(timed, [
        {
          name: "kaos plan",
          before: change,
          run: () => kaos(["plan"], project),
          check: (s) => hashedCounts.push(planStats(s.stdout).hashed),
        },
      ]);
    } finally {
      restore();
    }
    const one = summary(changed);
    const floorBaseline = { name: "node floor", ...floor };
    rows.push(
      row({
        id: `9-${label}-cold`,
        scenario: `${label}-file bundle: cold plan`,
        kaos: summary([cold]),
        target: memoryNote,
        pass: memoryPass(summary([cold])),
        notes: [`${coldStats.files} files hashed, .kaos/ removed; one run`],
      }),
      first?.seconds
        ? row({
            id: `9-${label}-first-up`,
            scenario: "  first kaos up",
            kaos: summary([first]),
            target: memoryNote,
            pass: memoryPass(summary([first])),
            notes: [
              `from an empty .kaos/: environment build, data snapshot, one job; one run, when the project was made${first.cli === cli ? "" : ` by ${relative(repo, first.cli ?? "?")}`}`,
            ],
          })
        : row({
            id: `9-${label}-first-up`,
            scenario: "  first kaos up",
            kaos: undefined,
            value: "-",
            target: "info",
            notes: [
              withUp
                ? "not measured: the project was made by an earlier run (delete it to measure)"
                : `not run past ${HUGE_UP_MAX_FILES / 1000}k files; plans below have nothing applied yet`,
            ],
          }),
      row({
        id: `9-${label}-warm`,
        scenario: "  warm no-op plan",
        kaos: warm,
        baseline: floorBaseline,
        target: memoryTarget === undefined ? "<= 1.30x" : `<= 1.30x, ${memoryNote}`,
        pass: warm.median <= 1.3 * floor.median && memoryPass(warm) !== false,
        notes: [`${settled.files} files, 0 re-read`],
      }),
      row({
        id: `9-${label}-monitor`,
        scenario: "  same, with a monitor running",
        kaos: monitored,
        ...(smallest !== undefined
          ? { baseline: { name: `${size.hugeFiles[0] / 1000}k, monitor`, ...smallest }, target: `<= ${HUGE_MONITOR_FLAT}x` }
          : git
            ? { baseline: { name: "git status", ...git }, target: "<= 1.00x" }
            : { target: "info" }),
        pass:
          smallest !== undefined
            ? monitored.median <= HUGE_MONITOR_FLAT * smallest.median
            : git
              ? monitored.median <= git.median
              : undefined,
        notes: ["`kaos monitor` serving; no tree walked"],
      }),
      row({
        id: `9-${label}-floor`,
        scenario: "    floor: node, lstat every file",
        kaos: floor,
        ...(git ? { baseline: { name: "git status", ...git } } : {}),
        target: "info",
        notes: [git ? "one thread, nothing else" : "one thread, nothing else; no git status: a git index of 1M files is not made"],
      }),
      row({
        id: `9-${label}-changed`,
        scenario: "  one changed file: plan",
        kaos: one,
        baseline: floorBaseline,
        target: memoryNote,
        pass: memoryPass(one),
        notes: [`files re-read per run: ${hashedCounts.slice(1).join(", ")}`],
      }),
    );
  }
  return rows;
}

function processCpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

// ---------------------------------------------------------------------------
// Report.

function seconds(value) {
  if (value === undefined) return "-";
  return value < 1 ? `${(value * 1000).toFixed(0)} ms` : `${value.toFixed(2)} s`;
}

function tableText(rows) {
  const header = ["scenario", "kaos", "baseline", "ratio", "target", "result", "kaos peak RSS", "CPU kaos / baseline", "notes"];
  const lines = rows.map((r) => [
    r.scenario,
    r.value ?? seconds(r.kaos?.median),
    r.baseline?.median !== undefined ? `${seconds(r.baseline.median)} ${r.baseline.name}` : "-",
    r.ratio !== undefined ? `${r.ratio.toFixed(2)}x` : "-",
    r.target ?? "",
    r.pass === undefined ? "" : r.pass ? "pass" : "MISS",
    r.kaos?.peakRssMb !== undefined && r.id.indexOf("-dvc") === -1 ? `${r.kaos.peakRssMb.toFixed(0)} MB` : "",
    r.kaos?.cpuMedian !== undefined && r.id.indexOf("-dvc") === -1
      ? `${seconds(r.kaos.cpuMedian)} / ${seconds(r.baseline?.cpuMedian)}`
      : "",
    r.notes.join("; "),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const format = (cells) => `| ${cells.map((cell, i) => cell.padEnd(widths[i])).join(" | ")} |`;
  return [format(header), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...lines.map(format)].join("\n");
}

async function main() {
  const options = parseOptions(process.argv.slice(2));
  const size = options.quick ? SIZES.quick : SIZES.full;
  const runs = options.runs ?? size.runs;
  const wanted = (id) => options.only === undefined || options.only.has(String(id));
  if (!existsSync(cli)) throw new Error("dist/cli.js is missing: run `npm run build` first (npm run bench does)");
  for (const tool of ["git", "sha256sum", "openssl", "curl", "xargs", "find", "python3"]) {
    if (!hasCommand(tool)) throw new Error(`${tool} is not on PATH; the benchmark compares against it`);
  }
  mkdirSync(runRoot, { recursive: true });
  if (options.json === "-") {
    const toStderr = (line) => process.stderr.write(`${line}\n`);
    log = toStderr;
  }
  const started = performance.now();
  const loadBefore = loadavg()[0];
  const dvc = dvcCommand(options.dvc ?? !options.quick);
  log(
    `kaos bench (${options.quick ? "quick" : "full"}), ${cores} cores, ${runs} runs per figure, dvc: ${dvc.dvc ? dvc.version : dvc.why}; data in ${relative(repo, runRoot)}`,
  );

  const rows = [];
  if (wanted(1)) rows.push(...(await scenarioWarmPlan(size, runs, dvc)));
  if (wanted(2)) rows.push(...(await scenarioColdHash(size, runs, dvc)));
  if (wanted(3)) rows.push(...(await scenarioOneChanged(size, runs)));
  if (wanted(4)) rows.push(...(await scenarioStartup(size, runs)));
  if (wanted(5)) rows.push(...(await scenarioSweep(size, runs)));
  if (wanted(6)) rows.push(...(await scenarioIngest(size, runs)));
  if (wanted(7)) rows.push(...(await scenarioBigManifest(size, runs)));
  if (wanted(8)) rows.push(...(await scenarioFirstUp(size, runs)));
  // A million files take minutes to make and gigabytes of disk: asked for by name only.
  if (options.only?.has("9")) rows.push(...(await scenarioHugeBundle(size, runs)));
  const duration = (performance.now() - started) / 1000;
  // Other load on the machine inflates every wall time; this says how much there was.
  const load = `load average ${loadBefore.toFixed(1)} at the start, ${loadavg()[0].toFixed(1)} at the end`;

  const text = [
    "",
    tableText(rows),
    "",
    `medians of ${runs} interleaved runs; ratio = kaos time / baseline time; ${cores} cores; dvc: ${dvc.dvc ? dvc.version : dvc.why}`,
    ...setupNotes.map((note) => `setup: ${note}`),
    `bench took ${duration.toFixed(0)} s (${options.quick ? "quick" : "full"}); ${load}`,
  ].join("\n");
  const results = {
    mode: options.quick ? "quick" : "full",
    date: new Date().toISOString(),
    node: process.version,
    cores,
    runs,
    dvc: dvc.dvc ? dvc.version : null,
    durationSeconds: Number(duration.toFixed(1)),
    load,
    rows,
    setup: setupNotes,
  };
  if (options.json === "-") {
    process.stderr.write(`${text}\n`);
    process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
  } else {
    process.stdout.write(`${text}\n`);
    if (options.json !== undefined) writeFileSync(options.json, `${JSON.stringify(results, null, 2)}\n`);
  }
  const missed = rows.filter((r) => r.pass === false);
  if (missed.length > 0) log(`targets missed: ${missed.map((r) => r.id).join(", ")}`);
}

await main();
