/**
 * The file system monitor through the built CLI (run `npm run build` first):
 * `kaos watch` or `kaos monitor` serves it, and `kaos plan` in another process
 * asks it what changed instead of walking the bundles, or walks when the
 * monitor cannot say.
 */
import { existsSync, mkdirSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { makeProject, runKaos, startKaos, trivialSourceBundle, under, type LiveKaos, type Project } from "./helpers/rig.js";

const CONFIG = `export default { pipelines: { p: { source: "src", data: "data" } } };\n`;

interface PlanStats {
  files: number;
  hashedFiles: number;
  cacheHits: number;
  trees: number;
  monitoredTrees: number;
}

interface PlanOutput {
  pipelines: { keys: { source: string; data: string } }[];
  stats: PlanStats;
}

const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function project(): Project {
  const made = makeProject({
    "kaos.config.ts": CONFIG,
    ...under("src", trivialSourceBundle('#!/bin/sh\necho trained > "$1/out.txt"\n')),
    "data/a.txt": "a\n",
    "data/b.txt": "b\n",
    "data/c.txt": "c\n",
  });
  cleanups.push(() => made.remove());
  return made;
}

function start(dir: string, args: string[]): LiveKaos {
  const kaos = startKaos(args, { cwd: dir });
  cleanups.push(async () => {
    if (kaos.child.exitCode === null && kaos.child.signalCode === null) kaos.child.kill("SIGKILL");
    await kaos.exited;
  });
  return kaos;
}

/** `kaos watch` that reruns only long after an edit, so that the plans of a test are the only ones to hash what it edits. */
async function watching(dir: string): Promise<LiveKaos> {
  const kaos = start(dir, ["watch", "--debounce", "600000"]);
  await kaos.waitFor("waiting for changes");
  return kaos;
}

async function plan(dir: string): Promise<PlanOutput> {
  const result = await runKaos(["plan", "--json"], { cwd: dir });
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as PlanOutput;
}

describe("kaos plan with a file system monitor", () => {
  it("walks no tree and reads no file while kaos watch runs, and says so", async () => {
    const p = project();
    await watching(p.dir);
    const json = await plan(p.dir);
    expect(json.stats).toMatchObject({ trees: 2, monitoredTrees: 2, hashedFiles: 0 });
    expect(json.stats.cacheHits).toBe(json.stats.files);
    const text = await runKaos(["plan"], { cwd: p.dir });
    expect(text.stdout.split("\n")[0]).toMatch(
      /files checked \((\d+) unchanged, 0 hashed, 0 B; file system monitor: 2 of 2 trees not walked\)/,
    );
  });

  it("sees exactly an edit, a new file and a removal, with the keys a walk gives", async () => {
    const p = project();
    await watching(p.dir);
    const before = await plan(p.dir);
    writeFileSync(join(p.dir, "data/a.txt"), "a, edited\n");
    writeFileSync(join(p.dir, "data/d.txt"), "d\n");
    unlinkSync(join(p.dir, "data/c.txt"));
    const after = await plan(p.dir);
    expect(after.stats).toMatchObject({ trees: 2, monitoredTrees: 2, hashedFiles: 2, files: before.stats.files });
    expect(after.pipelines[0]!.keys.data).not.toBe(before.pipelines[0]!.keys.data);
    // The same tree walked from scratch has the same key.
    const fresh = makeProject({
      "kaos.config.ts": CONFIG,
      ...under("src", trivialSourceBundle('#!/bin/sh\necho trained > "$1/out.txt"\n')),
      "data/a.txt": "a, edited\n",
      "data/b.txt": "b\n",
      "data/d.txt": "d\n",
    });
    cleanups.push(() => fresh.remove());
    const walked = await plan(fresh.dir);
    expect(walked.stats.monitoredTrees).toBe(0);
    expect(after.pipelines[0]!.keys).toEqual(walked.pipelines[0]!.keys);
  });

  it("walks, sees what changed and removes the stale socket after the watcher is killed", async () => {
    const p = project();
    const kaos = await watching(p.dir);
    const monitored = await plan(p.dir);
    expect(monitored.stats.monitoredTrees).toBe(2);
    kaos.child.kill("SIGKILL");
    await kaos.exited;
    const socket = join(p.dir, ".kaos", "monitor.sock");
    expect(existsSync(socket)).toBe(true);
    writeFileSync(join(p.dir, "data/b.txt"), "b, edited after the watcher died\n");
    const walked = await plan(p.dir);
    expect(walked.stats.monitoredTrees).toBe(0);
    expect(walked.stats.hashedFiles).toBeGreaterThanOrEqual(1);
    expect(walked.pipelines[0]!.keys.data).not.toBe(monitored.pipelines[0]!.keys.data);
    expect(existsSync(socket)).toBe(false);
  });

  it("walks a bundle with more changes than the monitor answers with, then trusts it again", async () => {
    const p = project();
    await watching(p.dir);
    await plan(p.dir);
    for (let index = 0; index < 1100; index++) writeFileSync(join(p.dir, `data/many-${index}.txt`), `${index}\n`);
    const walked = await plan(p.dir);
    // The source bundle is still answered for; the data bundle is walked.
    expect(walked.stats).toMatchObject({ trees: 2, monitoredTrees: 1 });
    expect(walked.stats.files).toBeGreaterThanOrEqual(1103);
    const again = await plan(p.dir);
    expect(again.stats).toMatchObject({ trees: 2, monitoredTrees: 2, hashedFiles: 0, files: walked.stats.files });
  });

  it("walks when the token is another monitor's: changes made between two monitors are seen", async () => {
    const p = project();
    const first = start(p.dir, ["monitor"]);
    await first.waitFor("file system monitor ready");
    await plan(p.dir);
    const monitored = await plan(p.dir);
    expect(monitored.stats).toMatchObject({ monitoredTrees: 2, hashedFiles: 0 });
    await first.stop("SIGINT");
    expect((await first.exited).code).toBe(0);
    writeFileSync(join(p.dir, "data/a.txt"), "a, edited between monitors\n");
    const second = start(p.dir, ["monitor"]);
    await second.waitFor("file system monitor ready");
    const walked = await plan(p.dir);
    expect(walked.stats.monitoredTrees).toBe(0);
    expect(walked.pipelines[0]!.keys.data).not.toBe(monitored.pipelines[0]!.keys.data);
    const next = await plan(p.dir);
    expect(next.stats).toMatchObject({ monitoredTrees: 2, hashedFiles: 0 });
    expect(next.pipelines[0]!.keys).toEqual(walked.pipelines[0]!.keys);
  });

  it("walks a directory that appeared, with every file in it", async () => {
    const p = project();
    const monitor = start(p.dir, ["monitor"]);
    await monitor.waitFor("file system monitor ready");
    await plan(p.dir);
    const before = await plan(p.dir);
    rmSync(join(p.dir, "data/c.txt"));
    writeFileSync(join(p.dir, "data/c.txt"), "c\n");
    mkdirSync(join(p.dir, "data/new/deeper"), { recursive: true });
    writeFileSync(join(p.dir, "data/new/deeper/e.txt"), "e\n");
    const after = await plan(p.dir);
    expect(after.stats.files).toBe(before.stats.files + 1);
    expect(after.stats.monitoredTrees).toBe(1);
    const next = await plan(p.dir);
    expect(next.stats).toMatchObject({ monitoredTrees: 2, hashedFiles: 0, files: after.stats.files });
    writeFileSync(join(p.dir, "data/new/deeper/e.txt"), "e, edited\n");
    const edited = await plan(p.dir);
    expect(edited.stats).toMatchObject({ monitoredTrees: 2, hashedFiles: 1 });
    expect(edited.pipelines[0]!.keys.data).not.toBe(next.pipelines[0]!.keys.data);
  });
});
