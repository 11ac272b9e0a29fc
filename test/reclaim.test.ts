/**
 * `kaos du` and `kaos gc` end to end: the built CLI over real projects, real
 * job folders, hardlinked objects and the state store.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { jobRows, killWhen, listTree } from "./helpers/faults.js";
import { readMarks, trainingProject, type ListedJob } from "./helpers/jobs.js";
import { dataViewsStack, type Project, runKaos, runKaosOk, startKaos } from "./helpers/rig.js";
import { taggedProjects } from "./helpers/tagged-projects.js";

const tagged = taggedProjects("kaos-gc-");

function project(options: Parameters<typeof trainingProject>[0]): Project {
  return tagged.make(trainingProject(options));
}

/** A project of two jobs whose data bundle is `dir`, filled with value.txt and a big.bin of `bigBytes` random bytes in base64. */
function projectWithDataIn(dir: string, bigBytes: number): Project {
  writeFileSync(join(dir, "value.txt"), "v1");
  writeFileSync(join(dir, "big.bin"), randomBytes(bigBytes).toString("base64"));
  const made = project({ grid: { score: [1, 2] } });
  writeFileSync(
    made.path("kaos.config.ts"),
    readFileSync(made.path("kaos.config.ts"), "utf8").replace('"data":"data"', `"data":${JSON.stringify(dir)}`),
  );
  return made;
}

const env = (made: Project) => ({ ...tagged.env, KAOS_TEST_LOG: made.path("marks.log") });

/** Gives `made` the stack `link`, whose data views are hardlinks (`dataViews: "link"`): to objects across devices, to the bundle's own files on one. */
function withLinkStack(made: Project): Project {
  made.write(dataViewsStack("link"));
  return made;
}
const UP_LINKED = ["up", "--stack", "link"];

function kaos(made: Project, ...args: string[]) {
  return runKaosOk(args, { cwd: made.dir, env: env(made) });
}

async function kaosJson<T>(made: Project, ...args: string[]): Promise<T> {
  return JSON.parse((await kaos(made, ...args, "--json")).stdout) as T;
}

interface GcJson {
  applied: boolean;
  freed: Record<"jobs" | "environments" | "objects" | "dataViews" | "treeListings", { entries: number; bytes: number }>;
  freedBytes: number;
  jobs: { id: string; pipeline: string }[];
  dataViews: string[];
}

interface ListedWithCollected extends ListedJob {
  collectedAt: string | null;
}

/** The train jobs of one project by their `score` param. */
async function trainJobs(made: Project): Promise<ListedWithCollected[]> {
  const jobs = await kaosJson<ListedWithCollected[]>(made, "train", "list");
  return jobs.filter((job) => job.stage === "train");
}

/** Two runs: `scores` on data v1, then the same on data v2, which is what stays applied. */
async function twoRuns(made: Project): Promise<{ old: ListedWithCollected[]; current: ListedWithCollected[] }> {
  await kaos(made, "up");
  const old = await trainJobs(made);
  writeFileSync(made.path("data/value.txt"), "v2");
  await kaos(made, "up");
  const current = (await trainJobs(made)).filter((job) => !old.some((o) => o.id === job.id));
  return { old, current };
}

interface DuJson {
  totalBytes: number;
  linkedBytes: number;
  kinds: Record<string, { entries: number; bytes: number }>;
  jobsByPipeline: { pipeline: string; jobs: number }[];
  disk: { freeBytes: number };
}

const duOf = (...paths: string[]): number[] =>
  execFileSync("du", ["-sB1", ...paths], { encoding: "utf8" })
    .trim()
    .split("\n")
    .map((line) => Number(line.split("\t")[0]));

describe("kaos du", () => {
  it("counts each file once however many links it has, as du(1) does, and tells jobs by pipeline", async () => {
    // The data on another device than .kaos/: the view's files are links to objects.
    const shm = mkdtempSync("/dev/shm/kaos-du-");
    try {
      const made = withLinkStack(projectWithDataIn(shm, 256 * 1024));
      await kaos(made, ...UP_LINKED);
      const usage = await kaosJson<DuJson>(made, "du");
      // The data view's files are links to objects: their bytes count once, under objects.
      const bigFile = 256 * 1024 * (4 / 3);
      expect(usage.kinds.objects!.bytes).toBeGreaterThan(bigFile);
      expect(usage.kinds.dataViews!.bytes).toBeLessThan(bigFile / 4);
      expect(usage.kinds.dataViews!.entries).toBe(1);
      expect(usage.linkedBytes).toBe(0);
      const [duBytes] = duOf(made.path(".kaos"));
      const withLinksTwice = Number(execFileSync("du", ["-sB1", "-l", made.path(".kaos")], { encoding: "utf8" }).split("\t")[0]);
      expect(usage.totalBytes).toBe(duBytes);
      expect(withLinksTwice).toBeGreaterThan(duBytes! + bigFile / 2);
      expect(Object.values(usage.kinds).reduce((sum, kind) => sum + kind.bytes, 0)).toBe(usage.totalBytes);
      // The build job and the two train jobs.
      expect(usage.jobsByPipeline).toEqual([expect.objectContaining({ pipeline: "p", jobs: 3 })]);
      expect(usage.disk.freeBytes).toBeGreaterThan(0);
      const text = (await kaos(made, "du")).stdout;
      expect(text).toContain("count under objects");
      expect(text).toMatch(/disk: .* free on \//);
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  it("a data view linked to the bundle's own files: their bytes are the bundle's, told apart and not counted as kaos's", async () => {
    const made = withLinkStack(project({ grid: { score: [1, 2] }, extra: { "data/big.bin": randomBytes(256 * 1024).toString("base64") } }));
    await kaos(made, ...UP_LINKED);
    const usage = await kaosJson<DuJson>(made, "du");
    const bigFile = 256 * 1024 * (4 / 3);
    expect(usage.kinds.objects!.bytes).toBeLessThan(bigFile / 4);
    expect(usage.kinds.dataViews!.bytes).toBeLessThan(bigFile / 4);
    expect(usage.linkedBytes).toBeGreaterThan(bigFile);
    // du(1) given the data first counts the shared inodes there: what is left under .kaos/ is kaos's own.
    const [, kaosOwn] = duOf(made.path("data"), made.path(".kaos"));
    expect(usage.totalBytes).toBe(kaosOwn);
    expect(Object.values(usage.kinds).reduce((sum, kind) => sum + kind.bytes, 0)).toBe(usage.totalBytes);
    expect((await kaos(made, "du")).stdout).toMatch(/data views also link to .* of the data bundles' own files: theirs, not counted here/);
  });

  it("gc of a linked data view frees none of the bundle's bytes and leaves its files whole", async () => {
    const made = withLinkStack(project({ grid: { score: [1] }, extra: { "data/big.bin": randomBytes(64 * 1024).toString("base64") } }));
    const big = readFileSync(made.path("data/big.bin"));
    await kaos(made, ...UP_LINKED);
    writeFileSync(made.path("data/value.txt"), "v2");
    await kaos(made, ...UP_LINKED);
    // The first view links data/big.bin too: both views and the bundle share its inode.
    expect(statSync(made.path("data/big.bin")).nlink).toBe(3);
    const done = await kaosJson<GcJson>(made, "gc", "--yes", "--keep-runs", "0");
    expect(done.freed.dataViews.entries).toBe(1);
    expect(done.freed.dataViews.bytes).toBeLessThan(64 * 1024);
    expect(readFileSync(made.path("data/big.bin"))).toEqual(big);
    expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("v2");
    expect(statSync(made.path("data/big.bin")).nlink).toBe(2);
    const again = await kaosJson<{ pipelines: { jobs: { reused: boolean }[] }[] }>(made, ...UP_LINKED);
    expect(again.pipelines[0]!.jobs.every((job) => job.reused)).toBe(true);
  });

  it("a data view mounted for its jobs holds nothing: du counts none of the data, and gc removes it leaving the bundle whole", async () => {
    const made = project({ grid: { score: [1] }, extra: { "data/big.bin": randomBytes(64 * 1024).toString("base64") } });
    const big = readFileSync(made.path("data/big.bin"));
    await kaos(made, "up");
    writeFileSync(made.path("data/value.txt"), "v2");
    await kaos(made, "up");
    expect(statSync(made.path("data/big.bin")).nlink).toBe(1);
    const usage = await kaosJson<DuJson>(made, "du");
    expect(usage.kinds.dataViews!.entries).toBe(2);
    expect(usage.kinds.dataViews!.bytes).toBeLessThan(64 * 1024);
    expect(usage.kinds.objects!.bytes).toBeLessThan(64 * 1024);
    expect(usage.linkedBytes).toBe(0);
    const done = await kaosJson<GcJson>(made, "gc", "--yes", "--keep-runs", "0");
    expect(done.freed.dataViews.entries).toBe(1);
    expect(readFileSync(made.path("data/big.bin"))).toEqual(big);
    expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("v2");
    const again = await kaosJson<{ pipelines: { jobs: { reused: boolean }[] }[] }>(made, "up");
    expect(again.pipelines[0]!.jobs.every((job) => job.reused)).toBe(true);
  });
});

describe("kaos gc", () => {
  it("a dry run removes nothing and lists what it would free; --yes frees it, and the next up reuses every kept job", async () => {
    const made = project({ grid: { score: [1, 2, 3] } });
    const { old, current } = await twoRuns(made);
    const notDb = (path: string) => path.startsWith("state.db");
    const before = listTree(made.path(".kaos"), notDb);

    const dry = await kaosJson<GcJson>(made, "gc");
    expect(dry.applied).toBe(false);
    expect(dry.jobs.map((job) => job.id).sort()).toEqual(old.map((job) => job.id).sort());
    expect(dry.freed.jobs.entries).toBe(3);
    expect(dry.freed.dataViews.entries).toBe(1);
    expect(dry.freedBytes).toBeGreaterThan(0);
    expect(listTree(made.path(".kaos"), notDb)).toEqual(before);
    expect((await kaos(made, "gc")).stdout).toMatch(/^would free .* \(a dry run: nothing was removed/);

    const done = await kaosJson<GcJson>(made, "gc", "--yes");
    expect(done.applied).toBe(true);
    expect(done.freedBytes).toBe(dry.freedBytes);
    for (const job of old) expect(existsSync(made.path(".kaos", "jobs", job.id))).toBe(false);
    for (const job of current) expect(existsSync(made.path(".kaos", "jobs", job.id, "out"))).toBe(true);
    const listed = await trainJobs(made);
    expect(
      listed
        .filter((job) => job.collectedAt !== null)
        .map((job) => job.id)
        .sort(),
    ).toEqual(old.map((job) => job.id).sort());
    expect((await kaos(made, "train", "list")).stdout).toContain("succeeded (collected)");
    const get = await runKaos(["train", "get", old[0]!.id, "-o", made.path("got")], { cwd: made.dir, env: env(made) });
    expect(get.code).toBe(1);
    expect(get.stderr).toContain(`job ${old[0]!.id}'s outputs were collected by kaos gc at `);
    expect((await kaos(made, "train", "info", old[0]!.id)).stdout).toContain("results   collected by kaos gc at");

    const starts = readMarks(made.path("marks.log")).length;
    const again = await kaosJson<{ pipelines: { jobs: { id: string; reused: boolean }[] }[] }>(made, "up");
    expect(again.pipelines[0]!.jobs.every((job) => job.reused)).toBe(true);
    expect(again.pipelines[0]!.jobs.map((job) => job.id).sort()).toEqual(current.map((job) => job.id).sort());
    expect(readMarks(made.path("marks.log")).length).toBe(starts);
    // Nothing left to take.
    expect((await kaosJson<GcJson>(made, "gc")).freedBytes).toBe(0);
  });

  it("frees what it says: the bytes it reports are those du(1) no longer finds", async () => {
    // The data on another device than .kaos/: its views are links to objects, which go with them.
    const shm = mkdtempSync("/dev/shm/kaos-gc-");
    try {
      const made = withLinkStack(projectWithDataIn(shm, 64 * 1024));
      await kaos(made, ...UP_LINKED);
      rmSync(join(shm, "big.bin"));
      writeFileSync(join(shm, "big.bin"), randomBytes(64 * 1024).toString("base64"));
      await kaos(made, ...UP_LINKED);
      // Everything gc may remove, each inode counted once; the state store changes size on its own.
      const held = () =>
        duOf(
          ...["objects", "envs", "jobs", "snapshots", "data", "trees"].map((name) => made.path(".kaos", name)).filter(existsSync),
        ).reduce((sum, bytes) => sum + bytes, 0);
      const before = held();
      const dry = await kaosJson<GcJson>(made, "gc");
      expect(dry.freed.dataViews.entries).toBe(1);
      expect(dry.freed.objects.entries).toBeGreaterThan(0);
      const done = await kaosJson<GcJson>(made, "gc", "--yes");
      expect(done.freedBytes).toBe(dry.freedBytes);
      expect(done.freedBytes).toBe(before - held());
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  it("--keep-best K --metric keeps the K best jobs of each sweep, highest first or with --asc lowest", async () => {
    const made = project({ grid: { score: [3, 1, 4, 2] } });
    const { old } = await twoRuns(made);
    const idOf = (score: number) => old.find((job) => job.params.score === score)!.id;
    const removed = async (...args: string[]) =>
      (await kaosJson<GcJson>(made, "gc", "--keep-runs", "0", ...args)).jobs.map((job) => job.id).sort();
    expect(await removed()).toEqual(old.map((job) => job.id).sort());
    expect(await removed("--keep-best", "1", "--metric", "score")).toEqual([idOf(1), idOf(2), idOf(3)].sort());
    expect(await removed("--keep-best", "2", "--metric", "score", "--asc")).toEqual([idOf(3), idOf(4)].sort());
    await kaos(made, "gc", "--yes", "--keep-runs", "0", "--keep-best", "1", "--metric", "score");
    expect(existsSync(made.path(".kaos", "jobs", idOf(4), "out", "metrics", "m.json"))).toBe(true);
    expect(existsSync(made.path(".kaos", "jobs", idOf(3)))).toBe(false);
    const usage = await runKaos(["gc", "--keep-best", "1"], { cwd: made.dir, env: env(made) });
    expect(usage.code).toBe(1);
    expect(usage.stderr).toContain("--keep-best K and --metric NAME go together");
  });

  it("--keep-best ranks a grid grown over two runs as one sweep, and a new data version as another", async () => {
    const made = project({ grid: { score: [3, 1] } });
    await kaos(made, "up");
    writeFileSync(made.path("grid.json"), JSON.stringify({ score: [3, 1, 4, 2] }));
    const second = await kaosJson<{ pipelines: { jobs: { reused: boolean }[] }[] }>(made, "up");
    expect(second.pipelines[0]!.jobs.map((job) => job.reused)).toEqual([true, true, false, false]);
    const grown = await trainJobs(made);
    writeFileSync(made.path("data/value.txt"), "v2");
    await kaos(made, "up");
    const idOf = (score: number) => grown.find((job) => job.params.score === score)!.id;
    const removed = (await kaosJson<GcJson>(made, "gc", "--keep-runs", "0", "--keep-best", "1", "--metric", "score")).jobs
      .map((job) => job.id)
      .sort();
    // The best of the four on data v1 is kept, wherever it was trained; the applied sweep on v2 is kept whole.
    expect(removed).toEqual([idOf(1), idOf(2), idOf(3)].sort());
  });

  it("--keep-runs counts the runs that ran a job: no-op ups push no experiment out", async () => {
    const made = project({ grid: { score: [1, 2] } });
    const { old } = await twoRuns(made);
    for (let i = 0; i < 3; i++) expect((await kaos(made, "up")).stderr).toContain("nothing to do");
    expect((await kaosJson<GcJson>(made, "gc", "--keep-runs", "2")).jobs).toEqual([]);
    const removed = (await kaosJson<GcJson>(made, "gc", "--keep-runs", "1")).jobs.map((job) => job.id).sort();
    expect(removed).toEqual(old.map((job) => job.id).sort());
  });

  it("in a project that never ran has nothing to take, and makes no .kaos/ to say so", async () => {
    const made = project({ grid: { score: [1] } });
    for (const args of [[], ["--yes"]]) {
      const result = await kaosJson<GcJson>(made, "gc", ...args);
      expect(result.applied).toBe(args.length > 0);
      expect(result.freedBytes).toBe(0);
      expect(result.jobs).toEqual([]);
    }
    expect((await kaos(made, "gc")).stdout).toMatch(/^would free 0 B \(a dry run/);
    expect(existsSync(made.path(".kaos"))).toBe(false);
  });

  it("refuses a flag value it cannot honour (a count that is not one, a metric no job has as a number), naming the flag, and removes nothing", async () => {
    const made = project({ grid: { score: [1, 2] } });
    await twoRuns(made);
    const before = listTree(made.path(".kaos"), (path) => path.startsWith("state.db"));
    const gc = (...args: string[]) => runKaos(["gc", "--yes", "--keep-runs", "0", ...args], { cwd: made.dir, env: env(made) });
    // An unset shell variable (`--keep-runs "$KEEP"`) is not 0 runs to keep.
    for (const [flag, value] of [
      ["--keep-runs", ""],
      ["--keep-runs", " "],
      ["--keep-runs", "0x1"],
      ["--keep-best", "1e0"],
    ] as const) {
      const count = await gc(flag, value, ...(flag === "--keep-best" ? ["--metric", "score"] : []));
      expect(count.code).toBe(1);
      expect(count.stderr).toContain(`${flag}: expected a whole number, ${flag === "--keep-best" ? 1 : 0} or more, found "${value}"`);
    }
    const unknown = await gc("--keep-best", "1", "--metric", "accuracy");
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain(`error: --metric accuracy: no succeeded job has a numeric metric "accuracy"; expected one of: score`);
    const text = await gc("--keep-best", "1", "--metric", "data");
    expect(text.code).toBe(1);
    expect(text.stderr).toContain(
      `error: --metric data: "data" is a string, not a number, in every succeeded job that has it; expected one of: score`,
    );
    expect(listTree(made.path(".kaos"), (path) => path.startsWith("state.db"))).toEqual(before);
    expect((await trainJobs(made)).filter((job) => job.collectedAt !== null)).toEqual([]);
  });

  it("refuses while a kaos up runs, and removes nothing", async () => {
    const made = project({
      grid: { score: [1] },
      extra: {
        "src/model/train": {
          content: `#!/bin/sh\nwhile [ ! -f "$KAOS_RELEASE" ]; do sleep 0.05; done\nmkdir -p "$1"\n`,
          mode: 0o755,
        },
      },
    });
    writeFileSync(made.path("release"), "");
    expect((await runKaos(["up"], { cwd: made.dir, env: { ...env(made), KAOS_RELEASE: made.path("release") } })).code).toBe(0);
    writeFileSync(made.path("data/value.txt"), "v2");
    const release = made.path("release-2");
    const up = startKaos(["up"], { cwd: made.dir, env: { ...env(made), KAOS_RELEASE: release } });
    await up.waitFor(/p train 1\/1 \w+ .*running/);
    // What gc would remove, and not the files the running job is writing (its log appears when it first writes).
    const outsideRun = (path: string) => path.startsWith("state.db") || path.split("/").length > 2;
    const before = listTree(made.path(".kaos"), outsideRun);
    const refused = await runKaos(["gc", "--yes"], { cwd: made.dir, env: env(made) });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      /error: another kaos \(pid \d+, `up`, started at \S+\) is applying stack 'local' in \S+; wait for it to finish or stop it/,
    );
    // Nothing gone (the running up may have written more meanwhile, such as its data's listing).
    const after = new Set(listTree(made.path(".kaos"), outsideRun));
    expect(before.filter((path) => !after.has(path))).toEqual([]);
    expect((await trainJobs(made)).filter((job) => job.collectedAt !== null)).toEqual([]);
    writeFileSync(release, "");
    expect((await up.exited).code).toBe(0);
    expect((await kaosJson<GcJson>(made, "gc", "--yes")).freed.jobs.entries).toBe(1);
  });

  it("a gc killed after it marked the jobs collected leaves state that the next up and gc work from", async () => {
    const made = project({ grid: { score: [1, 2, 3, 4, 5, 6, 7, 8] }, parallelism: 4 });
    const { old, current } = await twoRuns(made);
    const { killed } = await killWhen(["gc", "--yes"], { cwd: made.dir, env: env(made) }, (live) =>
      live.waitFor("marked 8 jobs collected"),
    );
    expect(killed || old.every((job) => !existsSync(made.path(".kaos", "jobs", job.id)))).toBe(true);
    // Every old job is recorded as collected, whatever is left of its folder.
    expect((await trainJobs(made)).filter((job) => job.collectedAt !== null)).toHaveLength(8);
    const starts = readMarks(made.path("marks.log")).length;
    const again = await kaosJson<{ pipelines: { jobs: { id: string; reused: boolean }[] }[] }>(made, "up");
    expect(again.pipelines[0]!.jobs.map((job) => job.id).sort()).toEqual(current.map((job) => job.id).sort());
    expect(readMarks(made.path("marks.log")).length).toBe(starts);
    // A collected job is never reused, even with its folder still whole and its key wanted again: it trains again.
    writeFileSync(made.path("data/value.txt"), "v1");
    const back = await kaosJson<{ pipelines: { jobs: { id: string; reused: boolean }[] }[] }>(made, "up");
    expect(back.pipelines[0]!.jobs.filter((job) => job.reused)).toEqual([]);
    expect(readMarks(made.path("marks.log")).length).toBe(starts + 16);
    await kaos(made, "gc", "--yes");
    for (const job of old) expect(existsSync(made.path(".kaos", "jobs", job.id))).toBe(false);
    expect(jobRows(made.dir).filter((row) => row.state === "running" || row.state === "queued")).toEqual([]);
  });
});
