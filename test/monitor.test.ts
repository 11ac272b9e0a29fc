/**
 * The file system monitor through the built CLI (run `npm run build` first):
 * `kaos watch` or `kaos monitor` serves it, and `kaos plan` in another process
 * asks it what changed instead of walking the bundles, or walks when the
 * monitor cannot say.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { firstFiles, hashTree, stopHashWorkers, treeLinks, type StatCacheStore } from "../src/core/hash.js";
import { projectMonitor, startMonitor, type TreeMonitor } from "../src/core/monitor.js";
import { StateStore } from "../src/core/state.js";
import { dataViewsStack, type LiveKaos, makeProject, type Project, runKaos, startKaos, trivialSourceBundle, under } from "./helpers/rig.js";

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

afterAll(() => stopHashWorkers());

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

/** The stack `link`, whose data views are hardlinks to the bundle's own files (`dataViews: "link"`). */
const LINK_STACK = dataViewsStack("link");
const LINKED = ["--stack", "link"];

async function plan(dir: string, stack: string[] = []): Promise<PlanOutput> {
  const result = await runKaos(["plan", "--json", ...stack], { cwd: dir });
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

  it("walks no tree after kaos up mounted the data for its job: nothing of the bundle moved", async () => {
    const p = project();
    const monitor = start(p.dir, ["monitor"]);
    await monitor.waitFor("file system monitor ready");
    await plan(p.dir);
    const up = await runKaos(["up"], { cwd: p.dir });
    expect(up.code, up.stderr).toBe(0);
    const next = await plan(p.dir);
    expect(next.stats).toMatchObject({ trees: 2, monitoredTrees: 2, hashedFiles: 0 });
  });

  it('walks no tree after kaos up linked the data: the stat cache refreshed after the sweep keeps the monitor\'s token (dataViews: "link")', async () => {
    const p = project();
    p.write(LINK_STACK);
    const monitor = start(p.dir, ["monitor"]);
    await monitor.waitFor("file system monitor ready");
    await plan(p.dir, LINKED);
    const up = await runKaos(["up", ...LINKED], { cwd: p.dir });
    expect(up.code, up.stderr).toBe(0);
    const next = await plan(p.dir, LINKED);
    expect(next.stats).toMatchObject({ trees: 2, monitoredTrees: 2, hashedFiles: 0 });
  });

  it('walks a bundle a job changed through its linked data view, which no event of the bundle\'s folders tells (dataViews: "link")', async () => {
    const p = project();
    p.write(LINK_STACK);
    // The data view holds hard links to the bundle's own files: the append lands in data/a.txt.
    p.write(under("src", trivialSourceBundle('#!/bin/sh\necho appended >> "$KAOS_DATA_DIR/a.txt"\necho trained > "$1/out.txt"\n')));
    const monitor = start(p.dir, ["monitor"]);
    await monitor.waitFor("file system monitor ready");
    await plan(p.dir, LINKED);
    const before = await plan(p.dir, LINKED);
    expect(before.stats.monitoredTrees).toBe(2);
    const up = await runKaos(["up", ...LINKED], { cwd: p.dir });
    expect(up.code).toBe(1);
    expect(up.stderr).toContain("the data changed while this job ran");
    expect(readFileSync(join(p.dir, "data/a.txt"), "utf8")).toBe("a\nappended\n");
    const after = await plan(p.dir, LINKED);
    expect(after.stats.monitoredTrees).toBe(1);
    expect(after.pipelines[0]!.keys.data).not.toBe(before.pipelines[0]!.keys.data);
    // Walked once, the bundle is trusted to the monitor again.
    const next = await plan(p.dir, LINKED);
    expect(next.stats).toMatchObject({ monitoredTrees: 2, hashedFiles: 0 });
    expect(next.pipelines[0]!.keys).toEqual(after.pipelines[0]!.keys);
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

/** More directories than the monitor watches in one slice: their set-up spans several turns of its event loop. */
const MANY_DIRECTORIES = 1500;

function manyDirectories(edited: Record<string, string> = {}): Record<string, string> {
  const files: Record<string, string> = {};
  for (let index = 0; index < MANY_DIRECTORIES; index++) files[`d${String(index).padStart(4, "0")}/f.txt`] = `${index}\n`;
  return { ...files, ...edited };
}

describe("kaos plan while the monitor sets up its watches", () => {
  function bigProject(): Project {
    const made = makeProject({
      "kaos.config.ts": CONFIG,
      ...under("src", trivialSourceBundle('#!/bin/sh\necho trained > "$1/out.txt"\n')),
      ...under("data", manyDirectories()),
    });
    cleanups.push(() => made.remove());
    return made;
  }

  it("answers at once with its progress, and a question that waits once every directory is watched", async () => {
    const p = bigProject();
    const monitor = start(p.dir, ["monitor"]);
    await monitor.waitFor("file system monitor ready");
    const client = projectMonitor(join(p.dir, ".kaos"));
    const bundle = join(p.dir, "data");
    const early = await client.changesSince(bundle, undefined);
    expect(early?.changed).toBeNull();
    expect(early?.settingUp).toBeDefined();
    expect(early!.settingUp!.watched).toBeLessThan(early!.settingUp!.found);
    const ready = await client.changesSince(bundle, undefined, { untilReady: true });
    expect(ready).toMatchObject({ changed: null });
    expect(ready?.settingUp).toBeUndefined();
    expect(monitor.stderr()).toContain(`file system monitor: watching all ${MANY_DIRECTORIES + 1} directories under data`);
    // Its token vouches for what follows: nothing changed since.
    expect(await client.changesSince(bundle, ready!.token)).toMatchObject({ changed: [] });
  });

  it("walks a bundle still being set up, says so, and the next plan walks nothing and sees an edit made meanwhile", async () => {
    const p = bigProject();
    const monitor = start(p.dir, ["monitor"]);
    await monitor.waitFor("file system monitor ready");
    const first = runKaos(["plan"], { cwd: p.dir });
    await monitor.waitFor("setting up watches under data");
    // While that plan walks: before or after it read the file, the next plan must see the edit.
    writeFileSync(join(p.dir, "data/d0007/f.txt"), "edited while a plan walked\n");
    const walked = await first;
    expect(walked.code, walked.stderr).toBe(0);
    expect(walked.stdout.split("\n")[0]).toMatch(/; file system monitor: 1 tree walked while it set up its watches\)$/);
    const next = await plan(p.dir);
    expect(next.stats).toMatchObject({ trees: 2, monitoredTrees: 2 });
    expect(next.stats.hashedFiles).toBeLessThanOrEqual(1);
    const again = await plan(p.dir);
    expect(again.stats).toMatchObject({ trees: 2, monitoredTrees: 2, hashedFiles: 0 });
    // The same tree walked from scratch has the same key.
    const fresh = makeProject({
      "kaos.config.ts": CONFIG,
      ...under("src", trivialSourceBundle('#!/bin/sh\necho trained > "$1/out.txt"\n')),
      ...under("data", manyDirectories({ "d0007/f.txt": "edited while a plan walked\n" })),
    });
    cleanups.push(() => fresh.remove());
    const scratch = await plan(fresh.dir);
    expect(next.pipelines[0]!.keys).toEqual(scratch.pipelines[0]!.keys);
    expect(again.pipelines[0]!.keys).toEqual(scratch.pipelines[0]!.keys);
  });
});

describe("hashTree with a file system monitor, in process", () => {
  /** A bundle beside a project's .kaos/, a monitor serving it, and a store opened afresh per plan, as by separate processes. */
  async function served(files: Record<string, string>): Promise<{ bundle: string; stateDir: string; open(): CountingStore }> {
    const made = makeProject({ "kaos.config.ts": CONFIG, ...under("data", files) });
    cleanups.push(() => made.remove());
    const stateDir = join(made.dir, ".kaos");
    mkdirSync(stateDir, { recursive: true });
    const started = await startMonitor(stateDir);
    if (started.server === undefined) throw new Error(started.reason);
    const server = started.server;
    cleanups.push(() => server.close());
    const stores: StateStore[] = [];
    cleanups.push(() => {
      for (const store of stores) store.close();
    });
    return {
      bundle: join(made.dir, "data"),
      stateDir,
      open: () => {
        const state = StateStore.open(made.dir);
        stores.push(state);
        return countingStore(state.statCache());
      },
    };
  }

  interface CountingStore extends StatCacheStore {
    /** How many times the cache's rows were loaded. */
    rowLoads: number;
  }

  function countingStore(inner: StatCacheStore): CountingStore {
    const store: CountingStore = {
      ...inner,
      rowLoads: 0,
      load: (root) => {
        store.rowLoads++;
        return inner.load(root);
      },
      loadPacked: (root) => {
        store.rowLoads++;
        return inner.loadPacked?.(root);
      },
    };
    return store;
  }

  it("takes a tree the monitor finds unchanged from what its cache keeps, loading no row unless its files are asked for", async () => {
    // More files than the few kept beside the rows.
    const files = Object.fromEntries(Array.from({ length: 30 }, (_, i) => [`d${i % 3}/f${i}.txt`, `${i}\n`]));
    const { bundle, stateDir, open } = await served(files);
    const monitor = projectMonitor(stateDir);
    // The first plan is told "I don't know" and walks; its token is kept with the rows it saves.
    const walked = await hashTree(bundle, { statCache: open(), monitor });
    const store = open();
    const kept = await hashTree(bundle, { statCache: store, monitor });
    expect(kept.stats.monitored).toBe(true);
    expect(kept.hash).toBe(walked.hash);
    expect(kept.stats).toMatchObject({ files: 30, bytes: walked.stats.bytes, hashedFiles: 0, cacheHits: 30 });
    expect(treeLinks(kept).files).toEqual([]);
    expect(firstFiles(kept, 2)).toEqual(walked.files.slice(0, 2));
    expect(store.rowLoads).toBe(0);
    // Asked for every file, it loads the rows once.
    expect(kept.files).toEqual(walked.files);
    expect(store.rowLoads).toBe(1);
  });

  it("loads the rows when the monitor names a change, and finds the tree a walk finds", async () => {
    const { bundle, stateDir, open } = await served({
      "a.txt": "a\n",
      "b/c.txt": "c\n",
      "b/e.txt": "e\n",
      "d/f.txt": "f\n",
      "g.txt": "g\n",
    });
    const monitor = projectMonitor(stateDir);
    await hashTree(bundle, { statCache: open(), monitor });
    await hashTree(bundle, { statCache: open(), monitor });
    // An edit, additions first, between two files and last, and removals of a file and of a directory.
    writeFileSync(join(bundle, "b/c.txt"), "changed\n");
    writeFileSync(join(bundle, "0.txt"), "first\n");
    writeFileSync(join(bundle, "b/d.txt"), "between\n");
    writeFileSync(join(bundle, "z.txt"), "last\n");
    rmSync(join(bundle, "a.txt"));
    rmSync(join(bundle, "d"), { recursive: true });
    const store = open();
    const changed = await hashTree(bundle, { statCache: store, monitor });
    expect(changed.stats).toMatchObject({ monitored: true, hashedFiles: 4, files: 6 });
    expect(changed.files.map((file) => file.path)).toEqual(["0.txt", "b/c.txt", "b/d.txt", "b/e.txt", "g.txt", "z.txt"]);
    expect(store.rowLoads).toBe(1);
    expect(changed.hash).toBe((await hashTree(bundle)).hash);
    // And the next plan takes the new tree from what is kept.
    const next = open();
    const again = await hashTree(bundle, { statCache: next, monitor });
    expect(again.hash).toBe(changed.hash);
    expect(next.rowLoads).toBe(0);
  });

  it("walks a tree the monitor is still setting up, and pairs its cache with a token from after the set-up", async () => {
    const { bundle, stateDir, open } = await served(manyDirectories());
    const client = projectMonitor(stateDir);
    const answers: (boolean | undefined)[] = [];
    // The worst moment for an edit: after the walk read the file, before the monitor's token.
    const monitor: TreeMonitor = {
      changesSince: async (root, token, options) => {
        if (options?.untilReady === true) writeFileSync(join(bundle, "d0042/f.txt"), "edited after the walk read it\n");
        const answer = await client.changesSince(root, token, options);
        answers.push(answer?.settingUp !== undefined);
        return answer;
      },
    };
    const walked = await hashTree(bundle, { statCache: open(), monitor });
    expect(answers).toEqual([true, false]);
    expect(walked.stats).toMatchObject({ monitorSettingUp: true, files: MANY_DIRECTORIES });
    expect(walked.hash).toBe((await hashTree(bundle)).hash);
    const store = open();
    const next = await hashTree(bundle, { statCache: store, monitor: client });
    expect(next.stats).toMatchObject({ monitored: true, hashedFiles: 0 });
    expect(store.rowLoads).toBe(0);
    expect(next.hash).toBe(walked.hash);
  });

  it("checks the links of a kept tree that has some", async () => {
    const { bundle, stateDir, open } = await served({ "a.txt": "a\n" });
    symlinkSync("a.txt", join(bundle, "link"));
    const monitor = projectMonitor(stateDir);
    await hashTree(bundle, { statCache: open(), monitor });
    const kept = await hashTree(bundle, { statCache: open(), monitor });
    expect(kept.stats.monitored).toBe(true);
    expect(treeLinks(kept).files.map((file) => file.path)).toEqual(["link"]);
  });
});

describe("a monitor that does not answer", () => {
  it("is asked once per plan: a stopped monitor costs one wait, not one per tree", async () => {
    const made = makeProject({ "kaos.config.ts": CONFIG });
    cleanups.push(() => made.remove());
    const stateDir = join(made.dir, ".kaos");
    mkdirSync(stateDir, { recursive: true });
    // What a monitor stopped with Ctrl-Z is to its clients: the kernel accepts, nobody answers.
    const sockets: Socket[] = [];
    const silent = createServer((socket) => sockets.push(socket));
    await new Promise<void>((listening) => silent.listen(join(stateDir, "monitor.sock"), listening));
    cleanups.push(async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((closed) => silent.close(() => closed()));
    });
    const monitor = projectMonitor(stateDir);
    expect(await monitor.changesSince(join(made.dir, "src"), undefined)).toBeUndefined();
    expect(sockets).toHaveLength(1);
    expect(await monitor.changesSince(join(made.dir, "data"), undefined)).toBeUndefined();
    expect(sockets).toHaveLength(1);
  });
});
