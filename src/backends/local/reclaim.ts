/**
 * What `.kaos/` holds, and taking back what nothing needs any more.
 *
 * Sizes are disk blocks counted once per inode: the files of a data view are
 * hardlinks to objects of the store, so a view's files count under objects
 * (measured first) and the view itself only for what is its own. A view may
 * instead link to a data bundle's own files (backends/local/data-view.ts):
 * those bytes are the bundle's, on disk whether kaos is there or not, and are
 * told apart (`linkedBytes`) rather than counted as kaos's.
 *
 * `collectGarbage` keeps what the next `kaos up` of any stack reuses (the
 * jobs whose keys the applied record names, their environments, data views
 * and tree listings, and the objects those reference), the best jobs of each
 * sweep by a metric when asked, everything of the last runs, and every job
 * not finished; it removes the rest. The order makes a kill at any point
 * safe: the jobs are marked collected in the state store before their folders
 * go (a collected job is never reused, and a later gc removes what is left of
 * its folder); environments and data views lose their completion marker
 * before their files (a half-removed one is not trusted, and is made again
 * when needed); objects go last, and only those no kept listing or view holds.
 */
import { rmSync } from "node:fs";
import { join, relative } from "node:path";
import { lstatOrUndefined, mountPointOf, freeBytes } from "../../core/disk.js";
import { KaosError } from "../../core/errors.js";
import { MODULE_EXTENSIONS, jobPaths, stacksDirOf, stateDirOf } from "../../core/layout.js";
import { displayText, quoteText } from "../../core/format.js";
import { readMetrics, type MetricValue } from "../../core/metrics.js";
import { jobKeyOf } from "../../core/plan.js";
import { loadTreeListing, markersOf, namesIn, removeTree } from "../../core/snapshot.js";
import { numericMetricNames } from "../../core/sweep.js";
import type { JobRecord, StateStore, WriterLock } from "../../core/state.js";
import { environmentPath } from "./build.js";
import { removeTemporaries } from "./temporaries.js";

export type StorageKind = "environments" | "jobs" | "objects" | "dataViews" | "treeListings" | "other";

/** Objects first: the data views' files are links to them, and count where they were met first. */
export const STORAGE_KINDS: readonly StorageKind[] = ["objects", "environments", "jobs", "dataViews", "treeListings", "other"];

export interface KindUsage {
  /** Environments, job folders, objects, data views or listings; files for `other`. */
  entries: number;
  bytes: number;
}

export interface StorageUsage {
  stateDir: string;
  totalBytes: number;
  /** Bytes of data bundles' own files that data views are links to: not in `totalBytes`, since removing `.kaos/` frees none of them. */
  linkedBytes: number;
  kinds: Record<StorageKind, KindUsage>;
  jobsByPipeline: { pipeline: string; jobs: number; bytes: number }[];
  disk: { mount: string; freeBytes: number | null };
}

const KEY_NAME = /^[0-9a-f]{64}$/;

function kindOfTop(name: string): StorageKind {
  if (name === "objects") return "objects";
  if (name === "envs") return "environments";
  if (name === "jobs") return "jobs";
  if (name === "snapshots" || name === "data") return "dataViews";
  if (name === "trees") return "treeListings";
  return "other";
}

/** Disk blocks of trees, each inode counted once however many names it has. */
class InodeTally {
  private readonly seen = new Set<string>();

  /** Counts the inodes `ids` as met already: their bytes are someone else's. */
  exclude(ids: Iterable<string>): void {
    for (const id of ids) this.seen.add(id);
  }

  /** The bytes of `path` and, unless `shallow`, everything below it, not counted before. */
  add(path: string, shallow = false): number {
    const stat = lstatOrUndefined(path);
    if (stat === undefined) return 0;
    const id = `${stat.dev}:${stat.ino}`;
    let bytes = 0;
    if (!this.seen.has(id)) {
      this.seen.add(id);
      bytes += stat.blocks * 512;
    }
    if (stat.isDirectory() && !shallow) for (const name of namesIn(path)) bytes += this.add(join(path, name));
    return bytes;
  }
}

/**
 * The files of the data views in `stateDir` that have names outside `.kaos/`
 * (links to a bundle's own files), by `dev:ino`, with their bytes. A file
 * linked only from views and objects is kaos's, even when the bundle file it
 * was linked to is gone.
 */
function linkedFromOutside(stateDir: string): Map<string, number> {
  const names = new Map<string, { nlink: number; blocks: number; seen: number }>();
  const walk = (path: string): void => {
    const stat = lstatOrUndefined(path);
    if (stat === undefined) return;
    if (stat.isDirectory()) {
      for (const name of namesIn(path)) walk(join(path, name));
      return;
    }
    if (!stat.isFile() || stat.nlink < 2) return;
    const id = `${stat.dev}:${stat.ino}`;
    const known = names.get(id);
    if (known === undefined) names.set(id, { nlink: stat.nlink, blocks: stat.blocks * 512, seen: 1 });
    else known.seen += 1;
  };
  for (const parent of ["snapshots", "data"]) walk(join(stateDir, parent));
  const outside = new Map<string, number>();
  if (names.size === 0) return outside;
  const objects = objectInodes(stateDir);
  for (const [id, { nlink, blocks, seen }] of names) {
    // The object holding these bytes is one more name inside `.kaos/`.
    if (nlink > seen + (objects.has(id) ? 1 : 0)) outside.set(id, blocks);
  }
  return outside;
}

/** The inodes of the object store, by `dev:ino`. */
function objectInodes(stateDir: string): Set<string> {
  const inodes = new Set<string>();
  const root = join(stateDir, "objects", "sha256");
  for (const name of objectNames(stateDir)) {
    const stat = lstatOrUndefined(join(root, name));
    if (stat !== undefined) inodes.add(`${stat.dev}:${stat.ino}`);
  }
  return inodes;
}

/** What each kind of thing in `.kaos/` of the project at `root` takes on disk. */
export function measureStorage(root: string, state: StateStore): StorageUsage {
  const stateDir = stateDirOf(root);
  const tally = new InodeTally();
  const linked = linkedFromOutside(stateDir);
  tally.exclude(linked.keys());
  const kinds = Object.fromEntries(STORAGE_KINDS.map((kind) => [kind, { entries: 0, bytes: 0 }])) as Record<StorageKind, KindUsage>;
  const byPipeline = new Map<string, { pipeline: string; jobs: number; bytes: number }>();
  const top = namesIn(stateDir).sort((a, b) => STORAGE_KINDS.indexOf(kindOfTop(a)) - STORAGE_KINDS.indexOf(kindOfTop(b)));
  kinds.other.bytes += tally.add(stateDir, true);
  for (const name of top) {
    const kind = kindOfTop(name);
    const path = join(stateDir, name);
    const usage = kinds[kind];
    if (kind === "other") {
      usage.entries += 1;
      usage.bytes += tally.add(path);
    } else if (kind === "objects") {
      usage.bytes += tally.add(path);
      usage.entries += objectNames(stateDir).length;
    } else if (kind === "jobs") {
      usage.bytes += tally.add(path, true);
      for (const id of namesIn(path)) {
        const bytes = tally.add(join(path, id));
        usage.bytes += bytes;
        usage.entries += 1;
        const pipeline = state.getJob(id)?.pipeline ?? "(no job record)";
        const entry = byPipeline.get(pipeline) ?? { pipeline, jobs: 0, bytes: 0 };
        entry.jobs += 1;
        entry.bytes += bytes;
        byPipeline.set(pipeline, entry);
      }
    } else {
      usage.bytes += tally.add(path);
      usage.entries += namesIn(path).filter((entry) => KEY_NAME.test(entry.replace(/\.jsonl$/, ""))).length;
    }
  }
  const totalBytes = STORAGE_KINDS.reduce((sum, kind) => sum + kinds[kind].bytes, 0);
  const free = freeBytes(stateDir);
  return {
    stateDir,
    totalBytes,
    linkedBytes: [...linked.values()].reduce((sum, bytes) => sum + bytes, 0),
    kinds,
    jobsByPipeline: [...byPipeline.values()].sort((a, b) => b.bytes - a.bytes || a.pipeline.localeCompare(b.pipeline)),
    disk: { mount: mountPointOf(stateDir), freeBytes: free ?? null },
  };
}

/** Every object of the store as `prefix/rest` of its path under `objects/sha256/`. */
function objectNames(stateDir: string): string[] {
  const root = join(stateDir, "objects", "sha256");
  return namesIn(root).flatMap((prefix) => namesIn(join(root, prefix)).map((rest) => `${prefix}/${rest}`));
}

export interface GcOptions {
  /** Keep every job of this many most recent runs that recorded jobs (a run that found everything up to date is not counted). */
  keepRuns: number;
  /** Keep the best `count` succeeded jobs of each sweep by `metric` (highest first unless `ascending`). */
  keepBest?: { count: number; metric: string; ascending: boolean };
  /** Remove; otherwise only tell what would be removed. */
  apply: boolean;
  /** Told once the removed jobs are marked collected, before any file is removed. */
  onMarked?: (jobs: number) => void;
}

export interface GcResult {
  applied: boolean;
  kept: { jobs: number; environments: number; dataViews: number; treeListings: number; objects: number };
  /** What is (or would be) freed, by kind: entries removed and the bytes that leave the disk with them. */
  freed: Record<Exclude<StorageKind, "other">, KindUsage>;
  freedBytes: number;
  jobs: { id: string; pipeline: string; stage: string; state: string }[];
  environments: string[];
  dataViews: string[];
  treeListings: string[];
  /**
   * Work in progress left by kaos processes that stopped mid-write (paths under
   * `.kaos/`); `elsewhere` when it was made on another machine or in another
   * container sharing the project, whose kaos gc holding every lock shows stopped.
   */
  temporaries: { path: string; elsewhere: boolean }[];
}

/** The stacks whose writer locks a gc takes: every one the store knows, the stack files' and `local`. */
function stacksOf(root: string, state: StateStore): string[] {
  const names = new Set(["local", ...state.knownStacks()]);
  for (const file of namesIn(stacksDirOf(root))) {
    const match = new RegExp(`^(.+)\\.(?:${MODULE_EXTENSIONS.join("|")})$`).exec(file);
    if (match?.[1] !== undefined) names.add(match[1]);
  }
  return [...names].sort();
}

/** Takes the writer lock of every stack, or none: a run on any stack may be using what gc would remove. */
function lockEveryStack(root: string, state: StateStore): WriterLock[] {
  const locks: WriterLock[] = [];
  try {
    for (const stack of stacksOf(root, state)) locks.push(state.acquireWriter(stack, "gc"));
    return locks;
  } catch (error) {
    for (const lock of locks) lock.release();
    throw error;
  }
}

/** The removed bytes of trees that go together: an inode is freed only when every name it has goes. */
class FreedTally {
  private readonly links = new Map<string, { kind: StorageKind; blocks: number; nlink: number; removed: number }>();

  add(kind: StorageKind, path: string): void {
    const stat = lstatOrUndefined(path);
    if (stat === undefined) return;
    const id = `${stat.dev}:${stat.ino}`;
    const known = this.links.get(id);
    if (known === undefined) {
      this.links.set(id, { kind, blocks: stat.blocks * 512, nlink: stat.isFile() ? stat.nlink : 1, removed: 1 });
    } else {
      known.removed += 1;
    }
    if (stat.isDirectory()) for (const name of namesIn(path)) this.add(kind, join(path, name));
  }

  bytesOf(kind: StorageKind): number {
    let bytes = 0;
    for (const link of this.links.values()) if (link.kind === kind && link.removed >= link.nlink) bytes += link.blocks;
    return bytes;
  }
}

/** The jobs worth keeping, and why they are: applied, recent, best, or not finished. */
function keptJobs(state: StateStore, all: readonly JobRecord[], options: GcOptions, stateDir: string): Set<string> {
  const kept = new Set<string>();
  for (const stack of state.knownStacks()) {
    for (const pipeline of Object.values(state.getApplied(stack))) {
      if (pipeline.dataKey === null) continue;
      const keys = { env: pipeline.envKey, source: pipeline.sourceKey, data: pipeline.dataKey };
      for (const params of pipeline.params) {
        const job = state.latestSucceeded("train", jobKeyOf(keys, params));
        if (job !== undefined) kept.add(job.id);
      }
    }
  }
  const recent = new Set(state.recentRunsWithJobs(options.keepRuns));
  for (const job of all) {
    if (recent.has(job.runId) || job.state === "queued" || job.state === "running") kept.add(job.id);
  }
  if (options.keepBest !== undefined) {
    const { count, metric, ascending } = options.keepBest;
    const sweeps = new Map<string, { job: JobRecord; value: number }[]>();
    const rows: { metrics: Record<string, MetricValue> }[] = [];
    for (const job of all) {
      if (job.stage !== "train" || job.state !== "succeeded" || job.collectedAt !== null) continue;
      const metrics = readMetrics(job.outputDir ?? jobPaths(stateDir, job.id).out).values;
      rows.push({ metrics });
      const value = metrics[metric];
      if (typeof value !== "number" || Number.isNaN(value)) continue;
      // One grid of a stack over the same environment, code and data, however many runs trained it (a grid grown by a value).
      const sweep = [job.stack, job.pipeline, job.envKey, job.sourceKey, job.dataKey].join("\0");
      const members = sweeps.get(sweep);
      if (members === undefined) sweeps.set(sweep, [{ job, value }]);
      else members.push({ job, value });
    }
    refuseUnrankable(rows, metric);
    for (const members of sweeps.values()) {
      members.sort((a, b) => (ascending ? a.value - b.value : b.value - a.value));
      for (const { job } of members.slice(0, count)) kept.add(job.id);
    }
  }
  // The build that made each kept environment: its log tells how.
  const keptEnvs = new Set(all.filter((job) => kept.has(job.id) && job.envKey !== null).map((job) => job.envKey));
  const builds = new Set<string>();
  for (const job of all) {
    if (job.stage !== "build" || job.state !== "succeeded" || !keptEnvs.has(job.envKey) || builds.has(job.key)) continue;
    builds.add(job.key);
    kept.add(job.id);
  }
  return kept;
}

/**
 * A metric that no succeeded job has as a number would keep none of them: a
 * misspelt name must not turn `--keep-best` into "remove them all".
 */
function refuseUnrankable(rows: readonly { metrics: Record<string, MetricValue> }[], metric: string): void {
  const numeric = numericMetricNames(rows);
  if (rows.length === 0 || numeric.includes(metric)) return;
  const found = rows.map((row) => row.metrics[metric]).find((value) => value !== undefined);
  const why =
    found === undefined
      ? `no succeeded job has a numeric metric ${quoteText(metric)}`
      : `${quoteText(metric)} is a ${typeof found}, not a number, in every succeeded job that has it`;
  throw new KaosError(
    "USAGE",
    `--metric ${displayText(metric)}: ${why}; expected one of: ${numeric.map(displayText).join(", ") || "(none recorded)"}`,
  );
}

/**
 * Keeps what any stack's next `kaos up` reuses and what `options` asks to
 * keep, and removes (or, without `apply`, lists) the rest. Holds the writer
 * lock of every stack throughout: refuses with STATE_LOCKED while a run holds one.
 */
export function collectGarbage(root: string, state: StateStore, options: GcOptions): GcResult {
  if (!Number.isInteger(options.keepRuns) || options.keepRuns < 0) {
    throw new KaosError("USAGE", `--keep-runs ${options.keepRuns}: expected a whole number, 0 or more`);
  }
  const locks = lockEveryStack(root, state);
  try {
    return collectLocked(root, state, options);
  } finally {
    for (const lock of locks) lock.release();
  }
}

function collectLocked(root: string, state: StateStore, options: GcOptions): GcResult {
  const stateDir = stateDirOf(root);
  const all = state.listJobs();
  const kept = keptJobs(state, all, options, stateDir);

  const envs = new Set<string>();
  const views = new Set<string>();
  const listings = new Set<string>();
  for (const stack of state.knownStacks()) {
    for (const pipeline of Object.values(state.getApplied(stack))) {
      envs.add(pipeline.envKey);
      listings.add(pipeline.sourceKey);
      if (pipeline.dataKey !== null) {
        views.add(pipeline.dataKey);
        listings.add(pipeline.dataKey);
      }
    }
  }
  for (const job of all) {
    if (!kept.has(job.id)) continue;
    if (job.envKey !== null) envs.add(job.envKey);
    if (job.sourceKey !== null) listings.add(job.sourceKey);
    if (job.dataKey !== null) {
      views.add(job.dataKey);
      listings.add(job.dataKey);
    }
  }

  // Job folders: those of jobs not kept, and what a gc cut short left of collected ones.
  const jobsDir = join(stateDir, "jobs");
  const folders = new Set(namesIn(jobsDir));
  const removedJobs = all.filter((job) => !kept.has(job.id) && folders.has(job.id));
  const envsDir = join(stateDir, "envs");
  const removedEnvs = namesIn(envsDir).filter((name) => KEY_NAME.test(name) && !envs.has(name));
  const viewDirs = ["snapshots", "data"].flatMap((parent) =>
    namesIn(join(stateDir, parent))
      .filter((name) => KEY_NAME.test(name) && !views.has(name))
      .map((name) => join(stateDir, parent, name)),
  );
  const treesDir = join(stateDir, "trees");
  const removedListings = namesIn(treesDir)
    .map((name) => /^([0-9a-f]{64})\.jsonl$/.exec(name)?.[1])
    .filter((hash): hash is string => hash !== undefined && !listings.has(hash));

  // Objects that a kept listing names, or that a kept view links to.
  const keptHashes = new Set<string>();
  for (const hash of listings)
    for (const file of loadTreeListing(stateDir, hash) ?? []) if (file.mode !== "symlink") keptHashes.add(file.hash);
  const keptInodes = new Set<string>();
  const linkInodes = (path: string): void => {
    const stat = lstatOrUndefined(path);
    if (stat === undefined) return;
    if (stat.isFile()) keptInodes.add(`${stat.dev}:${stat.ino}`);
    else if (stat.isDirectory()) for (const name of namesIn(path)) linkInodes(join(path, name));
  };
  for (const parent of ["snapshots", "data"]) {
    for (const name of namesIn(join(stateDir, parent))) if (views.has(name)) linkInodes(join(stateDir, parent, name));
  }
  const objectsRoot = join(stateDir, "objects", "sha256");
  const removedObjects = objectNames(stateDir).filter((name) => {
    if (keptHashes.has(name.replace("/", ""))) return false;
    const stat = lstatOrUndefined(join(objectsRoot, name));
    return stat !== undefined && !keptInodes.has(`${stat.dev}:${stat.ino}`);
  });

  const freed = new FreedTally();
  // What removeTree removes: the tree and the markers beside it.
  const addTree = (kind: StorageKind, dir: string): void => {
    for (const path of [dir, ...markersOf(dir)]) freed.add(kind, path);
  };
  for (const job of removedJobs) addTree("jobs", jobPaths(stateDir, job.id).dir);
  for (const key of removedEnvs) addTree("environments", environmentPath(envsDir, key));
  for (const name of removedObjects) freed.add("objects", join(objectsRoot, name));
  for (const dir of viewDirs) addTree("dataViews", dir);
  for (const hash of removedListings) freed.add("treeListings", join(treesDir, `${hash}.jsonl`));

  // gc holds every stack's lock, so no kaos anywhere is applying: what another machine's kaos left is abandoned.
  const abandoned = removeTemporaries(
    stateDir,
    [...folders].map((id) => join(jobsDir, id)),
    { isStale: () => true, dryRun: !options.apply },
  );
  const elsewhere = new Set(abandoned.removedElsewhere);

  if (options.apply) {
    state.markCollected(removedJobs.map((job) => job.id));
    options.onMarked?.(removedJobs.length);
    for (const job of removedJobs) removeTree(jobPaths(stateDir, job.id).dir);
    for (const key of removedEnvs) removeEnvironment(environmentPath(envsDir, key));
    for (const dir of viewDirs) removeTree(dir);
    for (const hash of removedListings) rmSync(join(treesDir, `${hash}.jsonl`), { force: true });
    for (const name of removedObjects) rmSync(join(objectsRoot, name), { force: true });
  }

  const usage = (kind: StorageKind, entries: number): KindUsage => ({ entries, bytes: freed.bytesOf(kind) });
  const result: GcResult = {
    applied: options.apply,
    kept: {
      jobs: all.filter((job) => kept.has(job.id) && folders.has(job.id)).length,
      environments: namesIn(envsDir).filter((name) => envs.has(name)).length,
      dataViews: ["snapshots", "data"].reduce(
        (sum, parent) => sum + namesIn(join(stateDir, parent)).filter((name) => views.has(name)).length,
        0,
      ),
      treeListings: [...listings].filter((hash) => loadTreeListing(stateDir, hash) !== undefined).length,
      objects: objectNames(stateDir).length - (options.apply ? 0 : removedObjects.length),
    },
    freed: {
      jobs: usage("jobs", removedJobs.length),
      environments: usage("environments", removedEnvs.length),
      objects: usage("objects", removedObjects.length),
      dataViews: usage("dataViews", viewDirs.length),
      treeListings: usage("treeListings", removedListings.length),
    },
    freedBytes: 0,
    jobs: removedJobs.map((job) => ({ id: job.id, pipeline: job.pipeline, stage: job.stage, state: job.state })),
    environments: removedEnvs,
    dataViews: viewDirs,
    treeListings: removedListings,
    temporaries: abandoned.removed.map((path) => ({ path: relative(stateDir, path), elsewhere: elsewhere.has(path) })),
  };
  result.freedBytes = Object.values(result.freed).reduce((sum, kind) => sum + kind.bytes, 0);
  return result;
}

/** What a gc takes where nothing was ever recorded. */
export function nothingCollected(applied: boolean): GcResult {
  const none = (): KindUsage => ({ entries: 0, bytes: 0 });
  return {
    applied,
    kept: { jobs: 0, environments: 0, dataViews: 0, treeListings: 0, objects: 0 },
    freed: { jobs: none(), environments: none(), objects: none(), dataViews: none(), treeListings: none() },
    freedBytes: 0,
    jobs: [],
    environments: [],
    dataViews: [],
    treeListings: [],
    temporaries: [],
  };
}

/** An environment stops being ready (its marker goes) before its files do, so a removal cut short is built again. */
function removeEnvironment(dir: string): void {
  rmSync(join(dir, ".kaos-complete"), { force: true });
  removeTree(dir);
}
