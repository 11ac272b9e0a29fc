import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { gzipSync } from "node:zlib";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { KaosError } from "../src/core/errors.js";
import { type IngestOptions, type IngestResult, ingest } from "../src/backends/local/ingest.js";
import type { IngestProgress } from "../src/core/events.js";
import { formatIngestProgress } from "../src/cli/progress.js";
import { checkFileUrls, lockPathFor, manifestDataKey, readLock, readManifest } from "../src/core/manifest.js";
import { ObjectStore } from "../src/core/objects.js";
import { type RouteOptions, Stall, type TestServer, generatedBytes, sha256OfGenerated, startServer } from "./helpers/http-server.js";
import { makeProject, runKaos, runKaosOk, startKaos, trivialSourceBundle, under } from "./helpers/rig.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "..");

function sha256(data: string | Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

interface Workspace {
  root: string;
  manifest: string;
  objects: ObjectStore;
  dataDir: string;
}

let root: string;
let server: TestServer | undefined;

beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), "kaos-ingest-"));
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  // Objects are read-only files; their folders are not, so removal works.
  fs.rmSync(root, { recursive: true, force: true });
});

async function serve(routes: Record<string, RouteOptions>): Promise<TestServer> {
  server = await startServer(routes);
  return server;
}

type Line = { url: string; path: string; sha256?: string; size?: number };

function workspace(lines: Line[]): Workspace {
  const manifest = path.join(root, "manifest.jsonl");
  writeManifest(manifest, lines);
  return { root, manifest, objects: new ObjectStore(path.join(root, ".kaos", "objects")), dataDir: path.join(root, ".kaos", "data", "p") };
}

function writeManifest(file: string, lines: Line[]): void {
  fs.writeFileSync(file, lines.map((line) => JSON.stringify(line)).join("\n") + "\n");
}

function run(ws: Workspace, extra: Partial<IngestOptions> = {}): Promise<IngestResult> {
  return ingest({
    entries: readManifest(ws.manifest),
    manifestPath: ws.manifest,
    objects: ws.objects,
    dataDir: ws.dataDir,
    fileScope: { project: ws.root, allowed: [] },
    retryBaseMs: 10,
    ...extra,
  });
}

async function runFailing(ws: Workspace, extra: Partial<IngestOptions> = {}): Promise<KaosError> {
  const error = await run(ws, extra).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(KaosError);
  return error as KaosError;
}

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("timed out waiting for a condition");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function rangeStart(header: string | undefined): number | undefined {
  const match = /^bytes=(\d+)-$/.exec(header ?? "");
  return match === null ? undefined : Number(match[1]);
}

function readData(ws: Workspace, relative: string): string {
  return fs.readFileSync(path.join(ws.dataDir, relative), "utf8");
}

function storedObjects(ws: Workspace): string[] {
  const base = path.join(ws.objects.dir, "sha256");
  if (!fs.existsSync(base)) return [];
  return fs.readdirSync(base).flatMap((shard) => fs.readdirSync(path.join(base, shard)).map((rest) => shard + rest));
}

describe("ingest over HTTP", () => {
  it("downloads many files with a bounded pool, links them into the data directory and pins them", async () => {
    const routes: Record<string, RouteOptions> = {};
    const lines: Line[] = [];
    for (let i = 0; i < 120; i++) {
      routes[`/f${i}.csv`] = { body: `file ${i}\n`.repeat(i + 1), etag: `"e${i}"`, headerDelayMs: 3 };
      lines.push({ url: "", path: `${["training", "validation", "test"][i % 3]}/x${String(i).padStart(3, "0")}.csv` });
    }
    const srv = await serve(routes);
    lines.forEach((line, i) => {
      line.url = `${srv.url}/f${i}.csv`;
    });
    const ws = workspace(lines);

    // Six at once: more than one transfer thread.
    const result = await run(ws, { concurrency: 6 });

    expect(result).toMatchObject({ downloaded: 120, reused: 0, failures: [] });
    expect(srv.inFlight.peak).toBeLessThanOrEqual(6);
    expect(srv.inFlight.peak).toBeGreaterThan(1);
    expect(readData(ws, "training/x000.csv")).toBe("file 0\n");
    expect(readData(ws, "test/x119.csv")).toBe("file 119\n".repeat(120));
    expect(fs.readdirSync(ws.dataDir).sort()).toEqual(["test", "training", "validation"]);
    const lock = readLock(ws.manifest);
    expect(Object.keys(lock?.entries ?? {})).toHaveLength(120);
    expect(lock?.entries["validation/x001.csv"]).toEqual({
      url: `${srv.url}/f1.csv`,
      sha256: sha256("file 1\n".repeat(2)),
      size: 14,
      etag: '"e1"',
    });
    expect(result.dataKey).toBe(manifestDataKey(readManifest(ws.manifest), lock));
    // Data files are links to read-only objects.
    const stat = fs.statSync(path.join(ws.dataDir, "training/x000.csv"));
    expect(stat.mode & 0o777).toBe(0o444);
    expect(stat.nlink).toBe(2);
    // Nothing is left behind in the store's scratch space.
    expect(fs.readdirSync(ws.objects.tmpDir())).toEqual([]);
  });

  it("reruns with an unchanged manifest without a single request, and without rewriting the lock", async () => {
    const srv = await serve({ "/a": { body: "alpha" }, "/b": { body: "beta" } });
    const ws = workspace([
      { url: `${srv.url}/a`, path: "a.txt" },
      { url: `${srv.url}/b`, path: "sub/b.txt" },
    ]);
    const first = await run(ws);
    const lockFile = lockPathFor(ws.manifest);
    const lockBefore = fs.statSync(lockFile).mtimeMs;
    const requestsBefore = srv.requests.length;
    expect(requestsBefore).toBe(2);

    const second = await run(ws);

    expect(srv.requests.length).toBe(requestsBefore);
    expect(second).toMatchObject({ downloaded: 0, reused: 2, bytesDownloaded: 0, dataKey: first.dataKey });
    expect(fs.statSync(lockFile).mtimeMs).toBe(lockBefore);

    // A deleted data directory is rebuilt from the store, still without requests.
    fs.rmSync(ws.dataDir, { recursive: true });
    await run(ws);
    expect(srv.requests.length).toBe(requestsBefore);
    expect(readData(ws, "sub/b.txt")).toBe("beta");
  });

  it("fetches only the entry whose manifest line changed, and drops files no longer listed", async () => {
    const srv = await serve({ "/a": { body: "alpha" }, "/b": { body: "beta" }, "/c": { body: "gamma" }, "/b2": { body: "beta two" } });
    const lines = [
      { url: `${srv.url}/a`, path: "a.txt" },
      { url: `${srv.url}/b`, path: "b.txt" },
      { url: `${srv.url}/c`, path: "c/c.txt" },
    ];
    const ws = workspace(lines);
    const first = await run(ws);
    expect(srv.requests.length).toBe(3);

    writeManifest(ws.manifest, [lines[0]!, { url: `${srv.url}/b2`, path: "b.txt" }]);
    const second = await run(ws);

    expect(srv.requests.length).toBe(4);
    expect(srv.count("/b2")).toBe(1);
    expect(second).toMatchObject({ downloaded: 1, reused: 1 });
    expect(second.dataKey).not.toBe(first.dataKey);
    expect(readData(ws, "b.txt")).toBe("beta two");
    expect(fs.existsSync(path.join(ws.dataDir, "c"))).toBe(false);
    expect(Object.keys(readLock(ws.manifest)?.entries ?? {})).toEqual(["a.txt", "b.txt"]);
  });

  it("moves a file to another path of the manifest without fetching it again, keeping its pin", async () => {
    const srv = await serve({ "/a": { body: "alpha", etag: '"a1"' }, "/b": { body: "beta" } });
    const ws = workspace([
      { url: `${srv.url}/a`, path: "train/a.txt" },
      { url: `${srv.url}/b`, path: "b.txt" },
    ]);
    await run(ws);
    expect(srv.requests.length).toBe(2);
    // The server's content changed meanwhile: the move keeps what was pinned, as an unchanged line would.
    srv.route("/a", { body: "alpha two" });
    writeManifest(ws.manifest, [
      { url: `${srv.url}/a`, path: "data/train/a.txt" },
      { url: `${srv.url}/b`, path: "b.txt" },
    ]);
    const moved = await run(ws);
    expect(srv.requests.length).toBe(2);
    expect(moved).toMatchObject({ downloaded: 0, reused: 2 });
    expect(readData(ws, "data/train/a.txt")).toBe("alpha");
    expect(fs.existsSync(path.join(ws.dataDir, "train"))).toBe(false);
    expect(readLock(ws.manifest)?.entries).toEqual({
      "b.txt": { url: `${srv.url}/b`, sha256: sha256("beta"), size: 4 },
      "data/train/a.txt": { url: `${srv.url}/a`, sha256: sha256("alpha"), size: 5, etag: '"a1"' },
    });
  });

  it("retries 500s with backoff and then succeeds", async () => {
    const srv = await serve({ "/flaky": { body: "finally", statuses: [500, 502] } });
    const ws = workspace([{ url: `${srv.url}/flaky`, path: "f.txt" }]);
    const result = await run(ws);
    expect(srv.requests.map((r) => r.status)).toEqual([500, 502, 200]);
    expect(result.downloaded).toBe(1);
    expect(readData(ws, "f.txt")).toBe("finally");
  });

  it("honours Retry-After on 429", async () => {
    const srv = await serve({ "/busy": { body: "later", statuses: [429], retryAfter: "1" } });
    const ws = workspace([{ url: `${srv.url}/busy`, path: "busy.txt" }]);
    const started = performance.now();
    await run(ws);
    expect(performance.now() - started).toBeGreaterThanOrEqual(950);
    expect(srv.count("/busy")).toBe(2);
    expect(readData(ws, "busy.txt")).toBe("later");
  });

  it("gives up after the configured retries and says why", async () => {
    const srv = await serve({ "/down": { status: 503 }, "/ok": { body: "fine" } });
    const ws = workspace([
      { url: `${srv.url}/down`, path: "down.txt" },
      { url: `${srv.url}/ok`, path: "ok.txt" },
    ]);
    const error = await runFailing(ws, { retries: 2 });
    expect(error.code).toBe("INGEST_FAILED");
    expect(error.message).toContain(`down.txt (${srv.url}/down): HTTP 503 Service Unavailable (gave up after 2 retries)`);
    expect(srv.count("/down")).toBe(3);
    // The other entry completed, is linked, and is pinned.
    expect(readData(ws, "ok.txt")).toBe("fine");
    expect(Object.keys(readLock(ws.manifest)?.entries ?? {})).toEqual(["ok.txt"]);
    expect(fs.existsSync(path.join(ws.dataDir, "down.txt"))).toBe(false);
  });

  it("resumes a transfer cut mid-body with a Range request validated by If-Range", async () => {
    const size = 3 * 1024 * 1024 + 17;
    const srv = await serve({ "/cut": { generated: { size, seed: 7 }, etag: '"cut-v1"', dropAfterBytes: 1_000_000 } });
    const ws = workspace([{ url: `${srv.url}/cut`, path: "cut.bin" }]);
    const result = await run(ws);

    const gets = srv.requests.filter((r) => r.path === "/cut");
    expect(gets).toHaveLength(2);
    expect(gets[0]?.headers.range).toBeUndefined();
    // Node's client discards what it buffered but had not handed over when the
    // connection broke, so the resume point is at most where the server cut.
    const resumedAt = rangeStart(gets[1]?.headers.range);
    expect(resumedAt).toBeGreaterThan(500_000);
    expect(resumedAt).toBeLessThanOrEqual(1_000_000);
    expect(gets[1]?.headers["if-range"]).toBe('"cut-v1"');
    expect(gets[1]?.status).toBe(206);
    expect(result.bytesDownloaded).toBe(size);
    expect(readLock(ws.manifest)?.entries["cut.bin"]?.sha256).toBe(sha256OfGenerated(size, 7));
    expect(sha256(fs.readFileSync(path.join(ws.dataDir, "cut.bin")))).toBe(sha256OfGenerated(size, 7));
  });

  it("resumes in a later run from the partial file an earlier run left", async () => {
    const size = 2 * 1024 * 1024;
    const srv = await serve({ "/big": { generated: { size, seed: 3 }, etag: '"big"', dropAfterBytes: 700_000, dropTimes: 2 } });
    const ws = workspace([{ url: `${srv.url}/big`, path: "big.bin" }]);
    const error = await runFailing(ws, { retries: 0 });
    expect(error.message).toContain("the connection closed");
    // Second run: the server drops once more at 700000 bytes into its answer, then serves the rest.
    const result = await run(ws, { retries: 2 });
    const starts = srv.requests.map((r) => rangeStart(r.headers.range));
    expect(starts).toHaveLength(3);
    expect(starts[0]).toBeUndefined();
    expect(starts[1]).toBeGreaterThan(400_000);
    expect(starts[1]).toBeLessThanOrEqual(700_000);
    expect(starts[2]).toBeGreaterThan((starts[1] ?? 0) + 400_000);
    expect(starts[2]).toBeLessThanOrEqual((starts[1] ?? 0) + 700_000);
    expect(srv.requests[1]?.headers["if-range"]).toBe('"big"');
    expect(result.bytesDownloaded).toBe(size - (starts[1] ?? 0));
    expect(sha256(fs.readFileSync(path.join(ws.dataDir, "big.bin")))).toBe(sha256OfGenerated(size, 3));
  });

  it("does not resume in a later run bytes vouched for by a weak ETag alone, which If-Range cannot check", async () => {
    const size = 2 * 1024 * 1024;
    const srv = await serve({ "/big": { generated: { size, seed: 3 }, etag: 'W/"v1"', dropAfterBytes: 700_000 } });
    const ws = workspace([{ url: `${srv.url}/big`, path: "big.bin" }]);
    const error = await runFailing(ws, { retries: 0 });
    expect(error.message).toContain("the connection closed");
    // The content changes before the next run: a resumed transfer would stitch two versions together.
    srv.route("/big", { generated: { size, seed: 4 }, etag: 'W/"v2"' });
    await run(ws);
    expect(srv.requests.map((r) => r.headers.range)).toEqual([undefined, undefined]);
    expect(sha256(fs.readFileSync(path.join(ws.dataDir, "big.bin")))).toBe(sha256OfGenerated(size, 4));
    expect(readLock(ws.manifest)?.entries["big.bin"]?.sha256).toBe(sha256OfGenerated(size, 4));
  });

  it("starts over when the server ignores Range", async () => {
    const size = 1024 * 1024;
    const srv = await serve({ "/plain": { generated: { size, seed: 5 }, range: false, dropAfterBytes: 400_000 } });
    const ws = workspace([{ url: `${srv.url}/plain`, path: "plain.bin", sha256: sha256OfGenerated(size, 5), size }]);
    const result = await run(ws);
    const gets = srv.requests.filter((r) => r.path === "/plain");
    expect(gets.map((r) => r.status)).toEqual([200, 200]);
    const askedFrom = rangeStart(gets[1]?.headers.range) ?? 0;
    expect(askedFrom).toBeGreaterThan(200_000);
    expect(result.bytesDownloaded).toBe(askedFrom + size);
    expect(sha256(fs.readFileSync(path.join(ws.dataDir, "plain.bin")))).toBe(sha256OfGenerated(size, 5));
  });

  it("rejects content whose sha256 differs from the manifest, keeping the other entries", async () => {
    const srv = await serve({ "/a": { body: "actual content" }, "/b": { body: "good" } });
    const wrong = sha256("expected content");
    const ws = workspace([
      { url: `${srv.url}/a`, path: "a.txt", sha256: wrong },
      { url: `${srv.url}/b`, path: "b.txt", sha256: sha256("good") },
    ]);
    const error = await runFailing(ws);
    expect(error.code).toBe("INGEST_FAILED");
    expect(error.message).toContain(
      `a.txt (${srv.url}/a): sha256 mismatch: the content hashes to ${sha256("actual content")}, ${ws.manifest}:1 says ${wrong} — fix "sha256" there or the URL`,
    );
    expect(srv.count("/a")).toBe(1);
    expect(fs.existsSync(path.join(ws.dataDir, "a.txt"))).toBe(false);
    expect(readData(ws, "b.txt")).toBe("good");
    expect(storedObjects(ws)).toEqual([sha256("good")]);
    expect(fs.readdirSync(ws.objects.tmpDir())).toEqual([]);
  });

  it("rejects a size that differs from the manifest before reading the body", async () => {
    const srv = await serve({ "/s": { body: "12345" } });
    const ws = workspace([{ url: `${srv.url}/s`, path: "s.txt", size: 4 }]);
    const error = await runFailing(ws);
    expect(error.message).toContain("s.txt (" + srv.url + "/s): size mismatch: the server announces 5 bytes, the manifest says 4");
  });

  it("stops reading a body that runs past the manifest's size", async () => {
    const srv = await serve({ "/long": { body: Buffer.alloc(200_000, 1), chunked: true, chunkSize: 10_000 } });
    const ws = workspace([{ url: `${srv.url}/long`, path: "long.bin", size: 50_000 }]);
    const error = await runFailing(ws);
    expect(error.message).toContain("long.bin (" + srv.url + "/long): the server sent more than 50000 bytes, the size the manifest states");
    expect(fs.readdirSync(ws.objects.tmpDir())).toEqual([]);
  });

  it("retries a refused connection, then reports it", async () => {
    const srv = await serve({});
    const port = srv.port;
    await srv.close();
    server = undefined;
    const ws = workspace([{ url: `http://127.0.0.1:${port}/x`, path: "x" }]);
    const error = await runFailing(ws, { retries: 2 });
    expect(error.message).toMatch(/x \(http:\/\/127\.0\.0\.1:\d+\/x\): connect ECONNREFUSED 127\.0\.0\.1:\d+ \(gave up after 2 retries\)/);
  });

  it("reports a 404 without retrying it", async () => {
    const srv = await serve({ "/here": { body: "x" } });
    const ws = workspace([
      { url: `${srv.url}/missing.csv`, path: "m.csv" },
      { url: `${srv.url}/here`, path: "h.csv" },
    ]);
    const error = await runFailing(ws);
    expect(error.message).toBe(`1 of 2 manifest entries of ${ws.manifest} failed:\n  m.csv (${srv.url}/missing.csv): HTTP 404 Not Found`);
    expect(srv.count("/missing.csv")).toBe(1);
  });

  it("times out a server that sends nothing, and retries it", async () => {
    const srv = await serve({ "/slow": { body: "zzz", headerDelayMs: 10_000 } });
    const ws = workspace([{ url: `${srv.url}/slow`, path: "slow.txt" }]);
    const started = performance.now();
    const error = await runFailing(ws, { timeoutMs: 200, retries: 1 });
    const elapsed = performance.now() - started;
    expect(error.message).toContain("slow.txt (" + srv.url + "/slow): no data for 200 ms (timed out) (gave up after 1 retries)");
    expect(srv.count("/slow")).toBe(2);
    // Waiting out the server's delay even once would take 10 s.
    expect(elapsed).toBeLessThan(5000);
  });

  it("times out a body that stalls, and accepts one that is slow but steady", async () => {
    const srv = await serve({
      "/stall": { body: Buffer.alloc(4096, 1), chunkSize: 1024, chunkDelayMs: 1500, range: false },
      "/drip": { body: Buffer.alloc(4096, 2), chunkSize: 512, chunkDelayMs: 40 },
    });
    const ws = workspace([
      { url: `${srv.url}/stall`, path: "stall.bin" },
      { url: `${srv.url}/drip`, path: "drip.bin" },
    ]);
    const error = await runFailing(ws, { timeoutMs: 300, retries: 0 });
    expect(error.message).toContain("stall.bin");
    expect(error.message).toContain("no data for 300 ms (timed out)");
    expect(error.message).not.toContain("drip.bin");
    expect(fs.readFileSync(path.join(ws.dataDir, "drip.bin"))).toEqual(Buffer.alloc(4096, 2));
  });

  it("follows redirects, and stops a redirect loop at the limit", async () => {
    const srv = await serve({
      "/old": { redirect: "/new", redirectStatus: 301 },
      "/new": { body: "moved here" },
      "/loop": { redirect: "/loop" },
    });
    const ws = workspace([
      { url: `${srv.url}/old`, path: "moved.txt" },
      { url: `${srv.url}/loop`, path: "loop.txt" },
    ]);
    const error = await runFailing(ws, { maxRedirects: 3 });
    expect(error.message).toContain(`loop.txt (${srv.url}/loop): too many redirects (more than 3) starting at ${srv.url}/loop`);
    expect(srv.count("/loop")).toBe(4);
    expect(readData(ws, "moved.txt")).toBe("moved here");
  });

  it("refuses a redirect to a file URL", async () => {
    const srv = await serve({ "/sneaky": { redirect: "file:///etc/passwd" } });
    const ws = workspace([{ url: `${srv.url}/sneaky`, path: "p.txt" }]);
    const error = await runFailing(ws);
    expect(error.message).toContain('redirected to unsupported scheme "file"');
  });

  it("names a redirect to something that is not a URL", async () => {
    const srv = await serve({ "/broken": { redirect: "http://[bad" } });
    const ws = workspace([{ url: `${srv.url}/broken`, path: "p.txt" }]);
    const error = await runFailing(ws);
    expect(error.message).toContain(
      `p.txt (${srv.url}/broken): redirected (HTTP 302) to "http://[bad", which is not a URL — the server's Location header is wrong`,
    );
    expect(srv.count("/broken")).toBe(1);
  });

  it("stores identical content once, however many paths and URLs name it", async () => {
    const srv = await serve({ "/one": { body: "same bytes" }, "/two": { body: "same bytes" } });
    const ws = workspace([
      { url: `${srv.url}/one`, path: "a/one.txt" },
      { url: `${srv.url}/two`, path: "b/two.txt" },
      { url: `${srv.url}/one`, path: "c/again.txt" },
    ]);
    const result = await run(ws);
    expect(result.downloaded).toBe(3);
    // The same URL twice is fetched once.
    expect(srv.count("/one")).toBe(1);
    expect(storedObjects(ws)).toEqual([sha256("same bytes")]);
    const object = fs.statSync(ws.objects.pathOf(sha256("same bytes")));
    expect(object.nlink).toBe(4);
    for (const relative of ["a/one.txt", "b/two.txt", "c/again.txt"]) {
      expect(fs.statSync(path.join(ws.dataDir, relative)).ino).toBe(object.ino);
    }
  });

  it("copies file:// URLs through the object store and reports a missing file", async () => {
    const source = path.join(root, "local.csv");
    fs.writeFileSync(source, "1,2,3\n");
    const ws = workspace([
      { url: pathToFileURL(source).href, path: "local.csv", sha256: sha256("1,2,3\n") },
      { url: pathToFileURL(path.join(root, "nope.csv")).href, path: "nope.csv" },
    ]);
    const error = await runFailing(ws);
    expect(error.message).toContain(
      `nope.csv (${pathToFileURL(path.join(root, "nope.csv")).href}): file not found: ${path.join(root, "nope.csv")}`,
    );
    expect(readData(ws, "local.csv")).toBe("1,2,3\n");
    // A copy, not a link to the user's file.
    expect(fs.statSync(path.join(ws.dataDir, "local.csv")).ino).not.toBe(fs.statSync(source).ino);
    expect(readLock(ws.manifest)?.entries["local.csv"]).toEqual({ url: pathToFileURL(source).href, sha256: sha256("1,2,3\n"), size: 6 });
  });

  it("reports a file URL naming a pipe instead of waiting forever for a writer", async () => {
    const pipe = path.join(root, "pipe");
    expect(spawnSync("mkfifo", [pipe]).status).toBe(0);
    const ws = workspace([{ url: pathToFileURL(pipe).href, path: "pipe.csv" }]);
    try {
      const error = await runFailing(ws);
      expect(error.message).toContain(`pipe.csv (${pathToFileURL(pipe).href}): ${pipe} is not a regular file`);
    } finally {
      // A reader still waiting on the pipe is let go, so that a failing run ends.
      try {
        fs.closeSync(fs.openSync(pipe, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK));
      } catch {
        // No reader: nothing waits.
      }
    }
  });

  it("refuses file URLs that read outside the project, through a symlink too, naming the manifest line", async () => {
    const outside = fs.mkdtempSync(path.join(os.tmpdir(), "kaos-outside-"));
    try {
      const secret = path.join(outside, "secret.txt");
      fs.writeFileSync(secret, "the host's secret\n", { mode: 0o600 });
      fs.mkdirSync(path.join(root, "sub"));
      fs.symlinkSync(secret, path.join(root, "sub", "link.txt"));
      fs.symlinkSync(outside, path.join(root, "door"));
      fs.writeFileSync(path.join(root, "mine.txt"), "mine\n");
      const ws = workspace([
        { url: pathToFileURL(secret).href, path: "a.txt" },
        { url: pathToFileURL(path.join(root, "sub", "link.txt")).href, path: "b.txt" },
        { url: pathToFileURL(path.join(root, "door", "secret.txt")).href, path: "c.txt" },
        { url: `file://${root}/sub/../../${path.basename(outside)}/secret.txt`, path: "d.txt" },
        { url: pathToFileURL(path.join(root, "mine.txt")).href, path: "mine.txt" },
      ]);
      const error = await runFailing(ws);
      const hint = `expected a file inside the project ${root}; to read from another directory, list it in allowFileUrls in kaos.config.ts`;
      expect(error.message).toContain(
        `a.txt (${pathToFileURL(secret).href}): ${ws.manifest}:1: may not be read: ${secret} is outside the project ${root}; ${hint}`,
      );
      expect(error.message).toContain(
        `${ws.manifest}:2: may not be read: ${root}/sub/link.txt leads through a symlink to ${secret}, outside the project ${root}`,
      );
      expect(error.message).toContain(
        `${ws.manifest}:3: may not be read: ${root}/door/secret.txt leads through a symlink to ${secret}, outside the project ${root}`,
      );
      expect(error.message).toContain(`${ws.manifest}:4: may not be read: ${secret} is outside the project ${root}`);
      expect(readData(ws, "mine.txt")).toBe("mine\n");
      expect(storedObjects(ws)).toEqual([sha256("mine\n")]);
      expect(Object.keys(readLock(ws.manifest)?.entries ?? {})).toEqual(["mine.txt"]);

      // The check before anything runs says the same for the first such line.
      expect(() => checkFileUrls(readManifest(ws.manifest), { project: root, allowed: [] })).toThrow(
        `${ws.manifest}:1: "url" ${pathToFileURL(secret).href} may not be read: ${secret} is outside the project ${root}`,
      );
      // Listing the directory lets them in, and the object is no more readable than the file.
      expect(() => checkFileUrls(readManifest(ws.manifest), { project: root, allowed: [outside] })).not.toThrow();
      await run(ws, { fileScope: { project: root, allowed: [outside] } });
      expect(readData(ws, "a.txt")).toBe("the host's secret\n");
      expect(fs.statSync(ws.objects.pathOf(sha256("the host's secret\n"))).mode & 0o777).toBe(0o400);
      for (const name of ["a.txt", "b.txt", "c.txt", "d.txt"]) expect(fs.statSync(path.join(ws.dataDir, name)).mode & 0o777).toBe(0o400);
      expect(fs.statSync(path.join(ws.dataDir, "mine.txt")).mode & 0o777).toBe(0o444);
    } finally {
      fs.rmSync(outside, { recursive: true, force: true });
    }
  });

  it("narrows an object already stored when the same bytes come from a file fewer may read", async () => {
    const srv = await serve({ "/same": { body: "same bytes\n" } });
    const ws = workspace([{ url: `${srv.url}/same`, path: "public.txt" }]);
    await run(ws);
    expect(fs.statSync(ws.objects.pathOf(sha256("same bytes\n"))).mode & 0o777).toBe(0o444);
    const private_ = path.join(root, "private.txt");
    fs.writeFileSync(private_, "same bytes\n", { mode: 0o640 });
    fs.chmodSync(private_, 0o640);
    writeManifest(ws.manifest, [
      { url: `${srv.url}/same`, path: "public.txt" },
      { url: pathToFileURL(private_).href, path: "private.txt" },
    ]);
    await run(ws);
    expect(fs.statSync(ws.objects.pathOf(sha256("same bytes\n"))).mode & 0o777).toBe(0o440);
  });

  it("re-checks remote content with --refresh: 304 keeps the pin, a new ETag re-fetches and re-pins", async () => {
    const lastModified = new Date(Date.UTC(2024, 0, 1)).toUTCString();
    const srv = await serve({ "/v": { body: "version 1", etag: '"v1"', lastModified } });
    const ws = workspace([{ url: `${srv.url}/v`, path: "v.txt" }]);
    const first = await run(ws);

    const unchanged = await run(ws, { refresh: true });
    expect(srv.requests[1]?.headers["if-none-match"]).toBe('"v1"');
    expect(srv.requests[1]?.status).toBe(304);
    expect(unchanged).toMatchObject({ downloaded: 0, reused: 1, dataKey: first.dataKey });

    srv.route("/v", { body: "version 2", etag: '"v2"', lastModified: new Date(Date.UTC(2024, 0, 2)).toUTCString() });
    // Without --refresh the pin holds: nothing is asked.
    const pinned = await run(ws);
    expect(srv.requests).toHaveLength(2);
    expect(pinned.dataKey).toBe(first.dataKey);
    expect(readData(ws, "v.txt")).toBe("version 1");

    const refreshed = await run(ws, { refresh: true });
    expect(srv.requests).toHaveLength(3);
    expect(srv.requests[2]?.status).toBe(200);
    expect(refreshed).toMatchObject({ downloaded: 1, reused: 0 });
    expect(refreshed.dataKey).not.toBe(first.dataKey);
    expect(readData(ws, "v.txt")).toBe("version 2");
    expect(readLock(ws.manifest)?.entries["v.txt"]).toMatchObject({ sha256: sha256("version 2"), etag: '"v2"' });
  });

  it("refuses content that no longer matches the pin when the object must be fetched again", async () => {
    const srv = await serve({ "/p": { body: "pinned" } });
    const ws = workspace([{ url: `${srv.url}/p`, path: "p.txt" }]);
    await run(ws);
    srv.route("/p", { body: "drifted" });
    // A fresh clone: the lock is committed, the store is empty.
    fs.rmSync(path.join(root, ".kaos"), { recursive: true });
    const error = await runFailing(ws);
    expect(error.message).toContain(`the content changed since it was pinned in ${lockPathFor(ws.manifest)}`);
    expect(error.message).toContain("run kaos up --refresh to accept the new content");
    expect(readLock(ws.manifest)?.entries["p.txt"]?.sha256).toBe(sha256("pinned"));
  });

  it("reports progress up to every file and byte", async () => {
    const srv = await serve({ "/x": { generated: { size: 300_000, seed: 1 } }, "/y": { body: "tiny" } });
    const ws = workspace([
      { url: `${srv.url}/x`, path: "x.bin", size: 300_000 },
      { url: `${srv.url}/y`, path: "y.bin" },
    ]);
    const seen: IngestProgress[] = [];
    await run(ws, { onProgress: (p) => seen.push({ ...p }) });
    const last = seen.at(-1);
    expect(last).toMatchObject({ filesDone: 2, filesTotal: 2, bytesDone: 300_004, bytesTotal: 300_004 });
    expect(seen.every((p, i) => i === 0 || p.filesDone >= (seen[i - 1]?.filesDone ?? 0))).toBe(true);
    expect(
      formatIngestProgress({ filesDone: 412, filesTotal: 1000, bytesDone: 412e6, bytesTotal: 1e9, rateBytesPerSec: 350.2e6, etaSec: 1.7 }),
    ).toBe("412/1000 files  392.9 MiB / 953.7 MiB  334.0 MiB/s  ETA 2.0s");
    expect(
      formatIngestProgress({ filesDone: 0, filesTotal: 3, bytesDone: 999, bytesTotal: undefined, rateBytesPerSec: 0, etaSec: undefined }),
    ).toBe("0/3 files  999 B  0 B/s");
    expect(formatIngestProgress({ filesDone: 1, filesTotal: 3, bytesDone: 0, bytesTotal: 5e9, rateBytesPerSec: 4e7, etaSec: 119.2 })).toBe(
      "1/3 files  0 B / 4.7 GiB  38.1 MiB/s  ETA 2m00s",
    );
  });

  it("stops on abort, leaving no data directory", async () => {
    const srv = await serve({ "/slow": { generated: { size: 1 << 20 }, chunkSize: 16384, chunkDelayMs: 50, etag: '"s"' } });
    const ws = workspace([{ url: `${srv.url}/slow`, path: "slow.bin" }]);
    const controller = new AbortController();
    const ingesting = run(ws, { signal: controller.signal });
    // Stopped mid-transfer: once the server is sending it.
    await waitFor(() => srv.count("/slow") === 1);
    controller.abort(new Error("stopped by test"));
    await expect(ingesting).rejects.toThrow("stopped by test");
    expect(fs.existsSync(ws.dataDir)).toBe(false);
    expect(fs.readdirSync(path.dirname(ws.dataDir))).toEqual([]);
  });

  it("on abort, transfers still queued in a transfer thread are never requested", async () => {
    const routes: Record<string, RouteOptions> = {};
    for (let i = 0; i < 6; i++)
      routes[`/slow${i}`] = { generated: { size: 1 << 20, seed: i }, chunkSize: 16384, chunkDelayMs: 50, etag: `"s${i}"` };
    const srv = await serve(routes);
    const ws = workspace(Array.from({ length: 6 }, (_, i) => ({ url: `${srv.url}/slow${i}`, path: `slow${i}.bin` })));
    const controller = new AbortController();
    // Two run at once (each takes seconds); the thread holds more queued behind them.
    const ingesting = run(ws, { signal: controller.signal, concurrency: 2 });
    await waitFor(() => srv.requests.length === 2);
    controller.abort(new Error("stopped by test"));
    await expect(ingesting).rejects.toThrow("stopped by test");
    // Stopped at once: neither transfer was sent to its end.
    expect(srv.requests.map((request) => request.finished)).toEqual([false, false]);
    // Once the client has closed both connections, nothing queued behind them was asked for.
    await waitFor(() => srv.inFlight.now === 0);
    expect(srv.requests).toHaveLength(2);
    expect(fs.existsSync(ws.dataDir)).toBe(false);
  });

  it("fetches nothing when a manifest line tries to escape the data directory", async () => {
    const srv = await serve({ "/a": { body: "a" } });
    const ws = workspace([
      { url: `${srv.url}/a`, path: "a.txt" },
      { url: `${srv.url}/a`, path: "a/../../escape.txt" },
    ]);
    expect(() => readManifest(ws.manifest)).toThrow(`${ws.manifest}:2: unsafe path "a/../../escape.txt" (has a '..' segment)`);
    expect(srv.requests).toHaveLength(0);
    expect(fs.existsSync(path.join(root, "escape.txt"))).toBe(false);
  });

  it("pins a manifest directory in kaos.lock inside it, which is not read as a manifest", async () => {
    const srv = await serve({ "/a": { body: "from a" }, "/b": { body: "from b" } });
    const dir = path.join(root, "manifests");
    fs.mkdirSync(dir);
    writeManifest(path.join(dir, "part1"), [{ url: `${srv.url}/a`, path: "a.txt" }]);
    writeManifest(path.join(dir, "part2"), [{ url: `${srv.url}/b`, path: "b.txt" }]);
    const ws: Workspace = {
      root,
      manifest: dir,
      objects: new ObjectStore(path.join(root, ".kaos", "objects")),
      dataDir: path.join(root, ".kaos", "data", "d"),
    };
    const first = await run(ws);
    expect(fs.existsSync(path.join(dir, "kaos.lock"))).toBe(true);
    expect(readManifest(dir)).toHaveLength(2);
    const second = await run(ws);
    expect(second).toMatchObject({ downloaded: 0, reused: 2, dataKey: first.dataKey });
    expect(srv.requests).toHaveLength(2);
  });

  it("shows a new data directory only once every entry is settled", async () => {
    const srv = await serve({
      "/quick": { body: "quick" },
      "/slow": { generated: { size: 256 * 1024 }, chunkSize: 16 * 1024, chunkDelayMs: 30 },
    });
    const ws = workspace([
      { url: `${srv.url}/quick`, path: "quick.txt" },
      { url: `${srv.url}/slow`, path: "slow.bin" },
    ]);
    let sawDirectoryEarly = false;
    const watcher = setInterval(() => {
      if (fs.existsSync(ws.dataDir)) sawDirectoryEarly = true;
    }, 5);
    const running = run(ws);
    // Until the quick file has been fetched and the slow one is under way.
    await waitFor(() => srv.count("/quick") === 1 && srv.count("/slow") === 1);
    await new Promise((resolve) => setTimeout(resolve, 100));
    clearInterval(watcher);
    expect(sawDirectoryEarly).toBe(false);
    await running;
    expect(readData(ws, "quick.txt")).toBe("quick");
    expect(fs.statSync(path.join(ws.dataDir, "slow.bin")).size).toBe(256 * 1024);
  });

  it("keeps the old content of an existing data directory visible until the new content is complete", async () => {
    const srv = await serve({
      "/v1": { body: "old content" },
      "/v2": { generated: { size: 256 * 1024, seed: 2 }, chunkSize: 16 * 1024, chunkDelayMs: 30 },
    });
    const ws = workspace([{ url: `${srv.url}/v1`, path: "data.bin" }]);
    await run(ws);
    writeManifest(ws.manifest, [{ url: `${srv.url}/v2`, path: "data.bin" }]);
    const running = run(ws);
    await waitFor(() => srv.count("/v2") === 1);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(readData(ws, "data.bin")).toBe("old content");
    await running;
    expect(fs.readFileSync(path.join(ws.dataDir, "data.bin"))).toEqual(generatedBytes(2, 0, 256 * 1024));
  });

  it("says that a server asked to wait, and fails at once, naming the URL and line, when the wait asked is longer than kaos waits", async () => {
    const srv = await serve({
      "/busy": { body: "later", statuses: [503], retryAfter: "1" },
      "/away": { status: 503, retryAfter: "99999" },
    });
    const ws = workspace([{ url: `${srv.url}/busy`, path: "busy.txt" }]);
    const notices: string[] = [];
    await run(ws, { onNotice: (message) => notices.push(message) });
    expect(notices).toEqual([
      `${srv.url}/busy (${ws.manifest}:1): HTTP 503 Service Unavailable; the server asks kaos to wait 1 s (Retry-After), retrying in 1 s`,
    ]);
    expect(readData(ws, "busy.txt")).toBe("later");

    // With the default cap (60 s) this would otherwise wait four times in silence.
    writeManifest(ws.manifest, [
      { url: `${srv.url}/busy`, path: "busy.txt" },
      { url: `http://user:pw@127.0.0.1:${srv.port}/away`, path: "away.txt" },
    ]);
    const error = await runFailing(ws, { onNotice: (message) => notices.push(message) });
    expect(error.message).toContain(
      `away.txt (http://***@127.0.0.1:${srv.port}/away): HTTP 503 Service Unavailable: the server asks kaos to wait 99999 s before retrying (Retry-After), longer than the 60 s kaos waits at most (${ws.manifest}:2) — run kaos up again later`,
    );
    expect(srv.count("/away")).toBe(1);
    expect(notices).toHaveLength(1);
  });

  it("refuses a body sent with a Content-Encoding although kaos asked for identity, whatever the manifest expects", async () => {
    const text = "a,b\n1,2\n".repeat(100);
    const gzipped = gzipSync(text);
    const srv = await serve({
      "/gz.csv": { body: gzipped, headers: { "content-encoding": "gzip" } },
      "/br.csv": { body: gzipped, headers: { "content-encoding": "br" } },
      "/plain.csv": { body: text, headers: { "content-encoding": "identity" } },
    });
    const ws = workspace([
      { url: `${srv.url}/gz.csv`, path: "gz.csv" },
      { url: `${srv.url}/br.csv`, path: "br.csv", sha256: sha256(text) },
      { url: `${srv.url}/plain.csv`, path: "plain.csv" },
    ]);
    const error = await runFailing(ws);
    const refusal = (encoding: string, line: number) =>
      `the server sent the body with Content-Encoding: ${encoding} although kaos asked for it unencoded (Accept-Encoding: identity) (${ws.manifest}:${line}) — serve the file without a Content-Encoding (a .gz file as application/gzip)`;
    expect(error.message).toContain(`gz.csv (${srv.url}/gz.csv): ${refusal("gzip", 1)}`);
    expect(error.message).toContain(`br.csv (${srv.url}/br.csv): ${refusal("br", 2)}`);
    expect(srv.requests.find((request) => request.path === "/gz.csv")?.headers["accept-encoding"]).toBe("identity");
    expect(readData(ws, "plain.csv")).toBe(text);
    // Nothing encoded was stored or pinned.
    expect(storedObjects(ws)).toEqual([sha256(text)]);
    expect(Object.keys(readLock(ws.manifest)?.entries ?? {})).toEqual(["plain.csv"]);
    expect(fs.readdirSync(ws.objects.tmpDir())).toEqual([]);
  });

  it("keeps credentials out of the lock and the data key: a rotated token or a URL signed again fetches nothing", async () => {
    const srv = await serve({ "/a.csv": { body: "alpha" }, "/b.csv": { body: "beta" }, "/c.csv": { body: "gamma" } });
    const host = `127.0.0.1:${srv.port}`;
    const signed = (signature: string, date: string) =>
      `${srv.url}/b.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA${signature}%2F20261206&X-Amz-Date=${date}&X-Amz-Expires=3600&version=3&X-Amz-Signature=${signature}`;
    const lines = (token: string, signature: string, date: string, version = "v1"): Line[] => [
      { url: `http://user:${token}@${host}/a.csv`, path: "a.csv" },
      { url: signed(signature, date), path: "b.csv" },
      { url: `${srv.url}/c.csv?access_token=${token}&name=c&${version}&sig=${signature}&api_key=${token}`, path: "c.csv" },
    ];
    const ws = workspace(lines("tok3n-one", "5ig1", "20261206T000000Z"));
    const first = await run(ws);
    const lockText = fs.readFileSync(lockPathFor(ws.manifest), "utf8");
    for (const secret of ["tok3n-one", "5ig1", "AKIA", "user"]) expect(lockText).not.toContain(secret);
    expect(readLock(ws.manifest)?.entries).toEqual({
      "a.csv": { url: `http://${host}/a.csv`, sha256: sha256("alpha"), size: 5 },
      "b.csv": { url: `${srv.url}/b.csv?version=3`, sha256: sha256("beta"), size: 4 },
      "c.csv": { url: `${srv.url}/c.csv?name=c&v1`, sha256: sha256("gamma"), size: 5 },
    });
    expect(srv.requests.find((request) => request.path === "/a.csv")?.headers.authorization).toBe(
      `Basic ${Buffer.from("user:tok3n-one").toString("base64")}`,
    );

    // New credentials, new signature, same content: no request, same key, the lock untouched.
    const requests = srv.requests.length;
    writeManifest(ws.manifest, lines("tok3n-two", "5ig2", "20261207T000000Z"));
    const rotated = await run(ws);
    expect(srv.requests.length).toBe(requests);
    expect(rotated.dataKey).toBe(first.dataKey);
    expect(fs.readFileSync(lockPathFor(ws.manifest), "utf8")).toBe(lockText);

    // A parameter that names content is part of the source: changing it fetches again.
    writeManifest(ws.manifest, lines("tok3n-two", "5ig2", "20261207T000000Z", "v2"));
    const changed = await run(ws);
    expect(srv.requests.filter((request) => request.path.startsWith("/c.csv?")).length).toBe(2);
    expect(changed.dataKey).not.toBe(first.dataKey);
  });

  it("cleans credentials out of a lock written before they were kept out, without fetching again", async () => {
    const srv = await serve({ "/a.csv": { body: "alpha" } });
    const ws = workspace([{ url: `http://user:old-secret@127.0.0.1:${srv.port}/a.csv?token=old-token`, path: "a.csv" }]);
    const object = path.join(root, "alpha");
    fs.writeFileSync(object, "alpha");
    await ws.objects.putFile(object);
    fs.writeFileSync(
      lockPathFor(ws.manifest),
      JSON.stringify({
        version: 1,
        entries: {
          "a.csv": { url: `http://user:old-secret@127.0.0.1:${srv.port}/a.csv?token=old-token`, sha256: sha256("alpha"), size: 5 },
        },
      }),
    );
    writeManifest(ws.manifest, [{ url: `http://user:new-secret@127.0.0.1:${srv.port}/a.csv?token=new-token`, path: "a.csv" }]);
    const result = await run(ws);
    expect(result).toMatchObject({ downloaded: 0, reused: 1 });
    expect(srv.requests).toEqual([]);
    expect(readLock(ws.manifest)?.entries["a.csv"]?.url).toBe(`http://127.0.0.1:${srv.port}/a.csv`);
  });

  it("keeps credentials in URLs out of messages", async () => {
    const srv = await serve({});
    const ws = workspace([
      { url: `http://user:secret@127.0.0.1:${srv.port}/private.csv`, path: "p.csv" },
      { url: `${srv.url}/signed.csv?part=2&X-Amz-Signature=s3cret-sig&access_token=s3cret-token`, path: "q.csv" },
    ]);
    const error = await runFailing(ws);
    expect(error.message).toContain(`p.csv (http://***@127.0.0.1:${srv.port}/private.csv): HTTP 404 Not Found`);
    expect(error.message).toContain(`q.csv (${srv.url}/signed.csv?part=2&X-Amz-Signature=***&access_token=***): HTTP 404 Not Found`);
    expect(error.message).not.toContain("secret");
    expect(srv.requests[0]?.headers.authorization).toBe(`Basic ${Buffer.from("user:secret").toString("base64")}`);
  });

  it("keeps apart two processes downloading the same URL into one store at once (two stacks' ups)", async () => {
    const size = 3 * 1024 * 1024;
    const first = generatedBytes(13, 0, size);
    const second = generatedBytes(14, 0, size);
    // The first request gets half the body, then waits while the other process
    // downloads the whole of the next version (the file changed on the server meanwhile).
    let finishFirst: (() => void) | undefined;
    const held = http.createServer((_request, response) => {
      if (finishFirst !== undefined) {
        response.writeHead(200, { "content-length": String(size), etag: '"v2"' });
        response.end(second);
      } else {
        response.writeHead(200, { "content-length": String(size), etag: '"v1"' });
        response.write(first.subarray(0, size / 2));
        finishFirst = () => response.end(first.subarray(size / 2));
      }
    });
    await new Promise<void>((resolve) => held.listen(0, "127.0.0.1", resolve));
    try {
      const url = `http://127.0.0.1:${(held.address() as AddressInfo).port}/shared.bin`;
      const ws = workspace([{ url, path: "shared.bin" }]);
      const script = path.join(root, "child.ts");
      fs.writeFileSync(
        script,
        `import { ingest } from ${JSON.stringify(path.join(repoRoot, "src/backends/local/ingest.js"))};
import { readManifest } from ${JSON.stringify(path.join(repoRoot, "src/core/manifest.js"))};
import { ObjectStore } from ${JSON.stringify(path.join(repoRoot, "src/core/objects.js"))};
const [manifest, objects, dataDir] = process.argv.slice(2);
await ingest({ entries: readManifest(manifest), manifestPath: manifest, objects: new ObjectStore(objects), dataDir, fileScope: { project: ${JSON.stringify(root)}, allowed: [] } });
`,
      );
      const otherDataDir = path.join(root, ".kaos", "data", "other");
      const child = spawn(process.execPath, ["--import", "jiti/register", script, ws.manifest, ws.objects.dir, otherDataDir], {
        cwd: repoRoot,
        stdio: ["ignore", "inherit", "pipe"],
      });
      let stderr = "";
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
      const exited = new Promise<number | null>((resolve) => child.on("close", resolve));
      const partial = (): number => {
        const tmp = path.join(ws.objects.dir, "tmp");
        const name = fs.existsSync(tmp) ? fs.readdirSync(tmp).find((entry) => entry.endsWith(".part")) : undefined;
        return name === undefined ? 0 : fs.statSync(path.join(tmp, name)).size;
      };
      await waitFor(() => partial() === size / 2);

      await run(ws);
      finishFirst?.();
      expect(await exited, stderr).toBe(0);
      expect(sha256(fs.readFileSync(path.join(ws.dataDir, "shared.bin")))).toBe(sha256(second));
      expect(sha256(fs.readFileSync(path.join(otherDataDir, "shared.bin")))).toBe(sha256(first));
      // Every object holds the content its name says.
      for (const hash of storedObjects(ws)) expect(sha256(fs.readFileSync(ws.objects.pathOf(hash)))).toBe(hash);
      expect(storedObjects(ws).sort()).toEqual([sha256(first), sha256(second)].sort());
      expect(fs.readdirSync(ws.objects.tmpDir())).toEqual([]);
    } finally {
      held.closeAllConnections();
      await new Promise((resolve) => held.close(resolve));
    }
  });

  it("keeps memory flat while a 200 MB file streams in (measured in a child process)", async () => {
    const size = 200 * 1024 * 1024;
    const warmSize = 16 * 1024 * 1024;
    const srv = await serve({
      "/huge": { generated: { size, seed: 11 }, chunkSize: 256 * 1024 },
      "/warm": { generated: { size: warmSize, seed: 12 }, chunkSize: 256 * 1024 },
    });
    const ws = workspace([{ url: `${srv.url}/huge`, path: "huge.bin", size, sha256: sha256OfGenerated(size, 11) }]);
    const warmManifest = path.join(root, "warm.jsonl");
    writeManifest(warmManifest, [{ url: `${srv.url}/warm`, path: "warm.bin", size: warmSize, sha256: sha256OfGenerated(warmSize, 12) }]);
    const script = path.join(root, "child.ts");
    // A first, small download starts the transfer threads and the HTTP client, so
    // that what is measured is what the 200 MB file adds, not the runtime's own start-up.
    fs.writeFileSync(
      script,
      `import { ingest } from ${JSON.stringify(path.join(repoRoot, "src/backends/local/ingest.js"))};
import { readManifest } from ${JSON.stringify(path.join(repoRoot, "src/core/manifest.js"))};
import { ObjectStore } from ${JSON.stringify(path.join(repoRoot, "src/core/objects.js"))};
const [manifest, warmManifest, objects, dataDir, warmDataDir] = process.argv.slice(2);
const fileScope = { project: ${JSON.stringify(root)}, allowed: [] };
await ingest({ entries: readManifest(warmManifest), manifestPath: warmManifest, objects: new ObjectStore(objects), dataDir: warmDataDir, fileScope });
globalThis.gc?.();
const before = Math.max(process.memoryUsage().rss, process.resourceUsage().maxRSS * 1024);
const result = await ingest({ entries: readManifest(manifest), manifestPath: manifest, objects: new ObjectStore(objects), dataDir, fileScope });
const peak = process.resourceUsage().maxRSS * 1024;
console.log(JSON.stringify({ before, peak, bytes: result.bytesDownloaded }));
`,
    );
    const warmDataDir = path.join(root, ".kaos", "data", "warm");
    const output = await new Promise<string>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        ["--expose-gc", "--import", "jiti/register", script, ws.manifest, warmManifest, ws.objects.dir, ws.dataDir, warmDataDir],
        {
          cwd: repoRoot,
          stdio: ["ignore", "pipe", "inherit"],
        },
      );
      let stdout = "";
      child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
      child.on("error", reject);
      child.on("close", (code) => (code === 0 ? resolve(stdout) : reject(new Error(`child exited with ${code}`))));
    });
    const { before, peak, bytes } = JSON.parse(output.trim().split("\n").at(-1) ?? "{}") as { before: number; peak: number; bytes: number };
    expect(bytes).toBe(size);
    expect(peak - before).toBeLessThan(100 * 1024 * 1024);
    expect(fs.statSync(path.join(ws.dataDir, "huge.bin")).size).toBe(size);
    // The helper's generated content is what the test expects it to be.
    expect(fs.readFileSync(path.join(ws.dataDir, "huge.bin")).subarray(5 << 20, (5 << 20) + 64)).toEqual(
      generatedBytes(11, 5 << 20, (5 << 20) + 64),
    );
  });
});

describe("kaos up --refresh (built CLI)", () => {
  it("trains again on the content a refresh fetched anew, as the next plan would ask", async () => {
    const srv = await serve({ "/a.txt": { body: "v1", etag: '"1"' } });
    const project = makeProject({
      "kaos.config.ts": `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ pipelines: { p: { source: "src", manifest: "m.jsonl" } } });\n`,
      "m.jsonl": `${JSON.stringify({ url: `${srv.url}/a.txt`, path: "a.txt" })}\n`,
      ...under("src", trivialSourceBundle(`#!/bin/sh\nmkdir -p "$1"\ncat "$KAOS_DATA_DIR/a.txt" > "$1/seen"\n`)),
    });
    try {
      await runKaosOk(["up"], { cwd: project.dir });
      srv.route("/a.txt", { body: "v2", etag: '"2"' });
      const refreshed = await runKaosOk(["up", "--refresh"], { cwd: project.dir });
      expect(refreshed.stderr).toContain("1 downloaded, 0 reused");
      const listed = JSON.parse((await runKaosOk(["train", "list", "--json"], { cwd: project.dir })).stdout) as {
        id: string;
        stage: string;
        state: string;
      }[];
      const trained = listed.filter((job) => job.stage === "train" && job.state === "succeeded");
      const seen = trained.map((job) => fs.readFileSync(path.join(project.dir, ".kaos", "jobs", job.id, "out", "seen"), "utf8"));
      expect(seen.sort()).toEqual(["v1", "v2"]);
      expect((await runKaos(["plan", "--detailed-exitcode"], { cwd: project.dir })).code).toBe(0);
    } finally {
      project.remove();
    }
  });
});

describe("kaos train kill of a running ingest (built CLI)", () => {
  it("stops its transfer at once, records it cancelled, and the next up resumes the download", async () => {
    const size = 2 * 1024 * 1024;
    const stall = new Stall(700_000);
    const srv = await serve({ "/big.bin": { generated: { size, seed: 5 }, etag: '"big"', stall } });
    const project = makeProject({
      "kaos.config.ts": `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ pipelines: { p: { source: "src", manifest: "m.jsonl" } } });\n`,
      "m.jsonl": `${JSON.stringify({ url: `${srv.url}/big.bin`, path: "big.bin" })}\n`,
      ...under("src", trivialSourceBundle(`#!/bin/sh\nmkdir -p "$1"\nsha256sum "$KAOS_DATA_DIR/big.bin" > "$1/seen"\n`)),
    });
    try {
      const up = startKaos(["up"], { cwd: project.dir });
      await stall.reached;
      const listed = JSON.parse((await runKaosOk(["train", "list", "--json"], { cwd: project.dir })).stdout) as {
        id: string;
        stage: string;
        state: string;
      }[];
      const ingestJob = listed.find((job) => job.stage === "ingest");
      expect(ingestJob?.state).toBe("running");
      await runKaosOk(["train", "kill", ingestJob!.id], { cwd: project.dir });
      // The transfer's request is aborted: the server sees its connection closed while the response still stalls.
      await stall.closedByClient;
      const ended = await up.exited;
      expect(ended.code, ended.stderr).toBe(1);
      expect(srv.count("/big.bin")).toBe(1);
      const after = JSON.parse((await runKaosOk(["train", "list", "--json"], { cwd: project.dir })).stdout) as typeof listed;
      expect(after.map((job) => `${job.stage} ${job.state}`)).toEqual(["ingest cancelled"]);
      const info = await runKaosOk(["train", "info", ingestJob!.id, "--json"], { cwd: project.dir });
      expect(info.stdout).toContain("cancelled by kaos train kill");
      // The bytes received stay as after Ctrl-C, for the next up to resume.
      const partials = fs.readdirSync(path.join(project.dir, ".kaos", "objects", "tmp")).filter((name) => name.endsWith(".part"));
      expect(partials).toHaveLength(1);

      const again = await runKaosOk(["up"], { cwd: project.dir });
      expect(again.stderr).toContain("1 downloaded");
      const gets = srv.requests.filter((request) => request.path === "/big.bin");
      expect(gets).toHaveLength(2);
      expect(rangeStart(gets[1]?.headers.range)).toBeGreaterThan(0);
      expect(rangeStart(gets[1]?.headers.range)).toBeLessThanOrEqual(700_000);
      expect(gets[1]?.headers["if-range"]).toBe('"big"');
      expect(gets[1]?.status).toBe(206);
      const trained = (JSON.parse((await runKaosOk(["train", "list", "--json"], { cwd: project.dir })).stdout) as typeof listed).find(
        (job) => job.stage === "train",
      );
      expect(trained?.state).toBe("succeeded");
      const seen = fs.readFileSync(path.join(project.dir, ".kaos", "jobs", trained!.id, "out", "seen"), "utf8");
      expect(seen.split(" ")[0]).toBe(sha256OfGenerated(size, 5));
    } finally {
      stall.release();
      project.remove();
    }
  });
});
