#!/usr/bin/env node
/**
 * Manifest ingest throughput against curl, and the no-op rerun.
 *
 *   npx tsc -p . && node bench/ingest.mjs [--quick] [--files N] [--size BYTES] [--concurrency N] [--rounds N]
 *
 * A loopback HTTP server in a child process (so it does not share kaos's
 * event loop) serves N distinct files of SIZE bytes (default 1,000 x 1 MB;
 * --quick: 100). kaos ingests them into an empty object store with the given
 * concurrency (default 8); curl then fetches the same URLs with the same
 * parallelism, once as one `curl --parallel --parallel-max 8` and once as
 * `xargs -P 8 -n 50 curl`. The best of --rounds (default 3) runs of each is
 * reported, with the ratio to the faster curl. Last, the no-op rerun: reading
 * the manifest and ingesting again with everything stored and pinned.
 *
 * Scratch data lives in bench/.data/ingest/ (ignored by git) and is removed at the end.
 */
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as http from "node:http";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);

function option(name, fallback) {
  const index = args.indexOf(name);
  return index === -1 ? fallback : Number(args[index + 1]);
}

const invokedDirectly = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (invokedDirectly && args[0] === "--serve") {
  serve(Number(args[1]));
} else if (invokedDirectly) {
  await main();
}

/** The server process: file i is a shared random block with i stamped in its first bytes, so every file is distinct. */
function serve(size) {
  const block = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) block.writeUInt32LE((Math.imul(i, 2654435761) ^ (i >>> 7)) >>> 0, i);
  const server = http.createServer((request, response) => {
    const match = /^\/f\/(\d+)$/.exec(request.url ?? "");
    if (match === null) {
      response.writeHead(404).end();
      return;
    }
    const stamp = Buffer.alloc(16);
    stamp.write(match[1].padStart(16, "0"));
    response.writeHead(200, { "content-length": String(size), "content-type": "application/octet-stream", etag: `"${match[1]}"` });
    response.write(stamp);
    response.end(block.subarray(16));
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, "127.0.0.1", () => process.stdout.write(`${server.address().port}\n`));
}

export async function startServerProcess(size) {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), "--serve", String(size)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const port = await new Promise((resolve, reject) => {
    child.stdout.once("data", (chunk) => resolve(Number(String(chunk).trim())));
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`server exited with ${code}`)));
  });
  return { port, pid: child.pid, stop: () => child.kill() };
}

function rmrf(target) {
  fs.rmSync(target, { recursive: true, force: true });
}

function mbps(bytes, seconds) {
  return bytes / 1e6 / seconds;
}

async function main() {
  const { ingest } = await import("../dist/ingest.js");
  const { readManifest, lockPathFor } = await import("../dist/manifest.js");
  const { ObjectStore } = await import("../dist/objects.js");

  const quick = args.includes("--quick");
  const files = option("--files", quick ? 100 : 1000);
  const size = option("--size", 1_000_000);
  const concurrency = option("--concurrency", 8);
  const rounds = option("--rounds", 3);
  const totalBytes = files * size;

  // Its own folder: the rest of bench/.data holds generated trees that other benchmarks reuse.
  const dataRoot = path.join(here, ".data", "ingest");
  rmrf(dataRoot);
  fs.mkdirSync(dataRoot, { recursive: true });
  const server = await startServerProcess(size);
  const base = `http://127.0.0.1:${server.port}`;
  const urls = Array.from({ length: files }, (_, i) => `${base}/f/${i}`);

  const manifest = path.join(dataRoot, "manifest.jsonl");
  fs.writeFileSync(
    manifest,
    urls.map((url, i) => JSON.stringify({ url, path: `part-${String(i).padStart(4, "0")}.bin` })).join("\n") + "\n",
  );
  const objectsDir = path.join(dataRoot, "kaos", "objects");
  const dataDir = path.join(dataRoot, "kaos", "data");

  console.log(`ingest bench: ${files} files x ${size} bytes from ${base}, concurrency ${concurrency}, best of ${rounds}`);

  /** kaos's ingest of the manifest into the bench's object store and data folder. */
  const ingestManifest = () =>
    ingest({
      entries: readManifest(manifest),
      manifestPath: manifest,
      objects: new ObjectStore(objectsDir),
      dataDir,
      fileScope: { project: dataRoot, allowed: [] },
      concurrency,
    });

  async function kaosCold() {
    rmrf(path.join(dataRoot, "kaos"));
    rmrf(lockPathFor(manifest));
    const started = performance.now();
    const result = await ingestManifest();
    const seconds = (performance.now() - started) / 1000;
    if (result.downloaded !== files || result.bytesDownloaded !== totalBytes)
      throw new Error(`unexpected result ${JSON.stringify(result)}`);
    return seconds;
  }

  const curlDir = path.join(dataRoot, "curl");
  function curlParallel() {
    rmrf(curlDir);
    fs.mkdirSync(curlDir);
    const config = path.join(dataRoot, "curl.config");
    fs.writeFileSync(config, urls.map((url, i) => `url = "${url}"\noutput = "${path.join(curlDir, `part-${i}.bin`)}"\n`).join(""));
    const started = performance.now();
    const run = spawnSync("curl", ["--parallel", "--parallel-max", String(concurrency), "-s", "--no-progress-meter", "-f", "-K", config], {
      stdio: ["ignore", "ignore", "inherit"],
    });
    const seconds = (performance.now() - started) / 1000;
    if (run.status !== 0) throw new Error(`curl --parallel exited with ${run.status}`);
    return seconds;
  }
  function curlXargs() {
    rmrf(curlDir);
    fs.mkdirSync(curlDir);
    // -O names each file after its URL's last segment; --output-dir keeps them together.
    const list = path.join(dataRoot, "urls.txt");
    fs.writeFileSync(list, urls.join("\n") + "\n");
    const started = performance.now();
    const run = spawnSync(
      "sh",
      ["-c", `xargs -P ${concurrency} -n 50 curl -s --no-progress-meter -f --output-dir "${curlDir}" --remote-name-all < "${list}"`],
      { stdio: "inherit" },
    );
    const seconds = (performance.now() - started) / 1000;
    if (run.status !== 0) throw new Error(`xargs curl exited with ${run.status}`);
    return seconds;
  }
  function check(dir, expected) {
    const count = fs.readdirSync(dir).length;
    if (count !== expected) throw new Error(`${dir} holds ${count} files, expected ${expected}`);
  }

  const best = { kaos: Infinity, curlParallel: Infinity, curlXargs: Infinity };
  try {
    // One warm-up each, then alternate so that neither side always runs on a colder machine.
    await kaosCold();
    curlParallel();
    for (let round = 0; round < rounds; round++) {
      best.kaos = Math.min(best.kaos, await kaosCold());
      best.curlParallel = Math.min(best.curlParallel, curlParallel());
      check(curlDir, files);
      best.curlXargs = Math.min(best.curlXargs, curlXargs());
      check(curlDir, files);
    }
    await kaosCold();
    check(dataDir, files);

    const noop = [];
    for (let round = 0; round < Math.max(3, rounds); round++) {
      const started = performance.now();
      const result = await ingestManifest();
      noop.push((performance.now() - started) / 1000);
      if (result.downloaded !== 0 || result.reused !== files) throw new Error(`the rerun was not a no-op: ${JSON.stringify(result)}`);
    }
    // The same in a new process, as a command would run it: start-up and imports included.
    const rerunScript = [
      `const { ingest } = await import(${JSON.stringify(new URL("../dist/ingest.js", import.meta.url).href)});`,
      `const { readManifest } = await import(${JSON.stringify(new URL("../dist/manifest.js", import.meta.url).href)});`,
      `const { ObjectStore } = await import(${JSON.stringify(new URL("../dist/objects.js", import.meta.url).href)});`,
      `const r = await ingest({ entries: readManifest(${JSON.stringify(manifest)}), manifestPath: ${JSON.stringify(manifest)}, objects: new ObjectStore(${JSON.stringify(objectsDir)}), dataDir: ${JSON.stringify(dataDir)}, fileScope: { project: ${JSON.stringify(dataRoot)}, allowed: [] } });`,
      `if (r.downloaded !== 0) process.exit(3);`,
    ].join("\n");
    const noopProcess = [];
    for (let round = 0; round < Math.max(3, rounds); round++) {
      const started = performance.now();
      const run = spawnSync(process.execPath, ["--input-type=module", "-e", rerunScript], { stdio: "inherit" });
      noopProcess.push((performance.now() - started) / 1000);
      if (run.status !== 0) throw new Error(`the no-op rerun in a new process exited with ${run.status}`);
    }

    const rates = {
      kaos: mbps(totalBytes, best.kaos),
      curlParallel: mbps(totalBytes, best.curlParallel),
      curlXargs: mbps(totalBytes, best.curlXargs),
    };
    const curlBest = Math.max(rates.curlParallel, rates.curlXargs);
    const row = (name, seconds, rate) =>
      console.log(`  ${name.padEnd(34)} ${seconds.toFixed(3).padStart(7)} s  ${rate.toFixed(0).padStart(6)} MB/s`);
    row("kaos ingest", best.kaos, rates.kaos);
    row(`curl --parallel --parallel-max ${concurrency}`, best.curlParallel, rates.curlParallel);
    row(`xargs -P ${concurrency} -n 50 curl`, best.curlXargs, rates.curlXargs);
    console.log(`  ratio kaos / faster curl: ${(rates.kaos / curlBest).toFixed(2)}x (target >= 0.8x)`);
    console.log(
      `  no-op rerun (${files} entries): ${(Math.min(...noop) * 1000).toFixed(1)} ms best, ${(Math.max(...noop) * 1000).toFixed(1)} ms worst (target < 1000 ms)`,
    );
    console.log(
      `  no-op rerun in a new node process: ${(Math.min(...noopProcess) * 1000).toFixed(0)} ms best, ${(Math.max(...noopProcess) * 1000).toFixed(0)} ms worst`,
    );
  } finally {
    server.stop();
    rmrf(dataRoot);
  }
}
