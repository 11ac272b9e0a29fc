#!/usr/bin/env node
/**
 * Tree hashing benchmark, against the tools the performance targets name.
 *
 *   node bench/hash.mjs [--quick] [--json]
 *
 * Needs the build output (`npx tsc -p .`). Data is generated once under
 * bench/.data/ (never committed) and reused while its parameters match.
 *
 * 1. Cold hashing (no stat cache, page cache warm for both sides) of a mixed
 *    set, a few large files and many small ones, against `sha256sum` run on
 *    every core through xargs; and of the large files alone against
 *    `openssl dgst -sha256` on every core.
 * 2. A warm no-op check (in-memory stat cache, nothing changed) over a tree of
 *    small files, against `git status` on the same tree committed in a git
 *    repository. Measured both in this process (workers and JIT warm, as in
 *    `kaos watch`) and in a fresh process per run (worker start-up included,
 *    as in one `kaos plan`; Node's own start-up is not counted on either side
 *    of the comparison except git's, which is tiny).
 *
 * Every figure is the best of several runs after one warm-up run: the best
 * run is the least disturbed by other load on the machine.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { deserialize, serialize } from "node:v8";
import { Worker, isMainThread, workerData } from "node:worker_threads";

const here = dirname(fileURLToPath(import.meta.url));
export const dataRoot = join(here, ".data");
const distHash = pathToFileURL(join(here, "..", "dist", "hash.js")).href;

export const SIZES = {
  full: { largeFiles: 4, largeBytes: 384 << 20, smallFiles: 16_000, smallAverageBytes: 32 << 10, warmFiles: 100_000, runs: 5 },
  quick: { largeFiles: 2, largeBytes: 64 << 20, smallFiles: 2_000, smallAverageBytes: 32 << 10, warmFiles: 10_000, runs: 3 },
};

async function loadHash() {
  if (!existsSync(fileURLToPath(distHash))) {
    throw new Error("dist/hash.js is missing: run `npx tsc -p .` first.");
  }
  return import(distHash);
}

// ---------------------------------------------------------------------------
// Data.

/** Fills a buffer with cheap deterministic bytes that do not compress to nothing. */
export function fill(buffer, seed) {
  let state = (seed * 2654435761) >>> 0 || 1;
  for (let offset = 0; offset + 4 <= buffer.length; offset += 4) {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    buffer.writeUInt32LE(state, offset);
  }
  return buffer;
}

export function prepared(directory, parameters, generate) {
  const marker = join(directory, ".params");
  const wanted = JSON.stringify(parameters);
  if (existsSync(marker) && readFileSync(marker, "utf8") === wanted) return;
  rmSync(directory, { recursive: true, force: true });
  mkdirSync(directory, { recursive: true });
  generate();
  writeFileSync(marker, wanted);
}

/**
 * Small files spread 100 to a directory, 100 directories to a parent, sizes from 1/16 to 31/16 of the average.
 * `first` and `end` write a slice of the indices, so that several threads can share a large tree.
 */
export function writeSmallFiles(root, count, averageBytes, seed, first = 0, end = count) {
  const block = fill(Buffer.alloc(averageBytes * 2), seed + first);
  for (let index = first; index < end; index++) {
    const directory = join(root, `d${Math.floor(index / 10_000)}`, `s${Math.floor(index / 100) % 100}`);
    if (index % 100 === 0) mkdirSync(directory, { recursive: true });
    const size = Math.floor((averageBytes * (1 + ((index * 7) % 30))) / 16);
    const start = (index * 4099) % averageBytes;
    block.writeUInt32LE(index, start);
    writeFileSync(join(directory, `f${index}.dat`), block.subarray(start, start + size));
  }
}

/**
 * The same tree written by `threads` worker threads, each a run of whole directories: creating a
 * million files is system calls, which run in parallel.
 */
export async function writeSmallFilesParallel(root, count, averageBytes, seed, threads = 4) {
  const perThread = Math.ceil(count / threads / 100) * 100;
  const workers = [];
  for (let first = 0; first < count; first += perThread) {
    const workerData = { root, count, averageBytes, seed, first, end: Math.min(count, first + perThread) };
    const worker = new Worker(fileURLToPath(import.meta.url), { workerData });
    workers.push(
      new Promise((resolve, reject) => {
        worker.on("error", reject);
        worker.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`writing ${root}: a thread exited with ${code}`))));
      }),
    );
  }
  await Promise.all(workers);
}

export function prepareMixed(size, directory = join(dataRoot, `mixed-${size.largeFiles}x${size.largeBytes}-${size.smallFiles}`)) {
  prepared(directory, size, () => {
    const large = join(directory, "large");
    mkdirSync(large);
    const chunk = Buffer.alloc(8 << 20);
    for (let file = 0; file < size.largeFiles; file++) {
      const parts = [];
      for (let written = 0; written < size.largeBytes; written += chunk.length) parts.push(written);
      const path = join(large, `part-${file}.bin`);
      writeFileSync(path, "");
      for (const written of parts) writeFileSync(path, fill(chunk, file * 100_000 + written / chunk.length), { flag: "a" });
    }
    writeSmallFiles(join(directory, "small"), size.smallFiles, size.smallAverageBytes, 7);
  });
  return directory;
}

export function prepareWarmTree(size, directory = join(dataRoot, `tree-${size.warmFiles}`)) {
  prepared(directory, { files: size.warmFiles, git: true }, () => {
    writeSmallFiles(directory, size.warmFiles, 4 << 10, 11);
    const git = (...args) => execFileSync("git", args, { cwd: directory, stdio: "ignore" });
    git("init", "-q");
    writeFileSync(join(directory, ".gitignore"), ".params\n");
    git("add", "-A");
    git("-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "bench tree");
  });
  return directory;
}

// ---------------------------------------------------------------------------
// Timing.

async function best(runs, action) {
  await action(); // warm-up: page cache, JIT, worker threads
  const times = [];
  for (let run = 0; run < runs; run++) {
    const start = performance.now();
    await action();
    times.push((performance.now() - start) / 1000);
  }
  return { best: Math.min(...times), median: times.sort((a, b) => a - b)[times.length >> 1] };
}

export function shell(script, cwd) {
  const result = spawnSync("bash", ["-c", script], { cwd, stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" });
  if (result.status !== 0) throw new Error(`${script} failed: ${result.stderr}`);
}

export function hasCommand(name) {
  return spawnSync("bash", ["-c", `command -v ${name}`], { stdio: "ignore" }).status === 0;
}

/** Runs one warm hashTree in a fresh process, as one `kaos plan` would; returns its seconds. */
function freshProcessWarmRun(root, cacheFile) {
  const result = spawnSync(process.execPath, [fileURLToPath(import.meta.url), "--warm-child", root, cacheFile], { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`warm child failed: ${result.stderr}`);
  return JSON.parse(result.stdout).seconds;
}

async function warmChild(root, cacheFile) {
  const { hashTree } = await loadHash();
  const { entries, savedAt } = deserialize(readFileSync(cacheFile));
  const store = { load: () => entries, save: () => {}, savedAt: () => savedAt };
  const start = performance.now();
  const result = await hashTree(root, { statCache: store });
  const seconds = (performance.now() - start) / 1000;
  if (result.stats.hashedFiles !== 0) throw new Error(`expected a no-op, read ${result.stats.hashedFiles} files`);
  process.stdout.write(JSON.stringify({ seconds }));
}

// ---------------------------------------------------------------------------

export async function runHashBench({ quick = false, log = console.log } = {}) {
  const size = quick ? SIZES.quick : SIZES.full;
  const cores = availableParallelism();
  const { hashTree, memoryStatCache } = await loadHash();
  log(`hash bench (${quick ? "quick" : "full"}), ${cores} cores, data in ${dataRoot}`);

  const mixed = prepareMixed(size);
  const large = join(mixed, "large");
  const mixedBytes = size.largeFiles * size.largeBytes + size.smallFiles * size.smallAverageBytes;
  let tree;
  const cold = await best(size.runs, async () => {
    tree = await hashTree(mixed);
  });
  const gigabytes = tree.stats.bytes / 1e9;
  const list = (root) => `find ${JSON.stringify(root)} -type f ! -name .params -print0`;
  const sha256sum = await best(size.runs, () =>
    shell(`${list(large)} | xargs -0 -P ${cores} -n 1 sha256sum && ${list(join(mixed, "small"))} | xargs -0 -P ${cores} -n 50 sha256sum`),
  );
  const largeTree = await best(size.runs, () => hashTree(large));
  const openssl = hasCommand("openssl")
    ? await best(size.runs, () => shell(`${list(large)} | xargs -0 -P ${cores} -n 1 openssl dgst -sha256`))
    : undefined;

  const warmRoot = prepareWarmTree(size);
  const cache = memoryStatCache();
  // Freshly generated files sit inside the stat cache's racy window and are
  // re-read until they have aged: wait for a run that reads nothing.
  for (let attempt = 0; (await hashTree(warmRoot, { statCache: cache })).stats.hashedFiles > 0; attempt++) {
    if (attempt === 10) throw new Error("the warm tree keeps changing");
    await new Promise((resolve) => setTimeout(resolve, 1_100));
  }
  const warmInProcess = await best(size.runs * 2, async () => {
    const result = await hashTree(warmRoot, { statCache: cache });
    if (result.stats.hashedFiles !== 0) throw new Error(`expected a no-op, read ${result.stats.hashedFiles} files`);
  });
  const cacheFile = join(dataRoot, "warm-cache.v8");
  writeFileSync(cacheFile, serialize({ entries: await cache.load(warmRoot), savedAt: cache.savedAt(warmRoot) }));
  const warmFresh = await best(size.runs * 2, () => freshProcessWarmRun(warmRoot, cacheFile));
  const gitStatus = await best(size.runs * 2, () => shell("git status --porcelain", warmRoot));

  const results = {
    quick,
    cores,
    cold: {
      files: tree.stats.files,
      bytes: tree.stats.bytes,
      hashTreeSeconds: cold.best,
      sha256sumSeconds: sha256sum.best,
      speedupOverSha256sum: sha256sum.best / cold.best,
      gigabytesPerSecond: gigabytes / cold.best,
    },
    large: {
      files: size.largeFiles,
      bytes: size.largeFiles * size.largeBytes,
      hashTreeSeconds: largeTree.best,
      opensslSeconds: openssl?.best,
      fractionOfOpenssl: openssl === undefined ? undefined : openssl.best / largeTree.best,
      gigabytesPerSecond: (size.largeFiles * size.largeBytes) / 1e9 / largeTree.best,
    },
    warm: {
      files: size.warmFiles,
      inProcessSeconds: warmInProcess.best,
      freshProcessSeconds: warmFresh.best,
      gitStatusSeconds: gitStatus.best,
      inProcessOverGit: warmInProcess.best / gitStatus.best,
      freshProcessOverGit: warmFresh.best / gitStatus.best,
    },
  };
  const f = (seconds) => `${seconds.toFixed(3)} s`;
  log(`cold, ${tree.stats.files} files, ${(tree.stats.bytes / 1e9).toFixed(2)} GB (~${(mixedBytes / 1e9).toFixed(2)} GB planned):`);
  log(
    `  hashTree ${f(cold.best)} (${results.cold.gigabytesPerSecond.toFixed(2)} GB/s), sha256sum x${cores} ${f(sha256sum.best)}: ${results.cold.speedupOverSha256sum.toFixed(2)}x sha256sum's speed (target > 1)`,
  );
  log(`large files only, ${size.largeFiles} x ${size.largeBytes >> 20} MiB:`);
  log(
    `  hashTree ${f(largeTree.best)} (${results.large.gigabytesPerSecond.toFixed(2)} GB/s)` +
      (openssl === undefined
        ? ", openssl missing"
        : `, openssl x${cores} ${f(openssl.best)}: ${results.large.fractionOfOpenssl.toFixed(2)} of OpenSSL's speed (target >= 0.8)`),
  );
  log(`warm no-op, ${size.warmFiles} files:`);
  log(`  hashTree in process ${f(warmInProcess.best)}, in a fresh process ${f(warmFresh.best)}, git status ${f(gitStatus.best)}`);
  log(
    `  ratio to git status: ${results.warm.inProcessOverGit.toFixed(2)} in process, ${results.warm.freshProcessOverGit.toFixed(2)} fresh (target <= 1)`,
  );
  return results;
}

if (!isMainThread && workerData?.root !== undefined) {
  const { root, count, averageBytes, seed, first, end } = workerData;
  writeSmallFiles(root, count, averageBytes, seed, first, end);
}

const invokedDirectly = isMainThread && process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (invokedDirectly) {
  const args = process.argv.slice(2);
  if (args[0] === "--warm-child") {
    await warmChild(args[1], args[2]);
  } else {
    const json = args.includes("--json");
    const results = await runHashBench({ quick: args.includes("--quick"), log: json ? () => {} : console.log });
    if (json) process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
  }
}
