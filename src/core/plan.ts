/**
 * The plan: hash every bundle, derive the keys of the design, and decide per
 * stage and per job whether it runs or is skipped, and why. `kaos plan` prints
 * it, `kaos up` and `kaos watch` execute it; all three build it here.
 *
 *   env key    = H(Dockerfile, requirements.txt, requirements.lock if any, the files requirements.txt includes, runtime that builds it)
 *   source key = tree hash of the source bundle
 *   data key   = tree hash of the data bundle, or H(url, content) of a manifest
 *   job key    = H(env key, source key, data key, canonical JSON of the params)
 */
import { existsSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { validateSourceBundle, type SourceBundle } from "./bundle.js";
import { diffTrees, filesOf, firstFiles, hashString, hashTree, treeLinks, type TreeFile, type TreeHash } from "./hash.js";
import { projectMonitor } from "./monitor.js";
import { canonicalJson, expandSpace } from "./hyperparams.js";
import { checkFileUrls, readLock, scanManifest, type ManifestEntries, type ManifestLock, type MissingEntries } from "./manifest.js";
import { fileUrlScopeOf } from "./urls.js";
import { ObjectStore } from "./objects.js";
import { checkTreeLinks, loadTreeListing, streamTreeListing } from "./snapshot.js";
import type { JobRecord, StateStore } from "./state.js";
import type { HyperparamSet, ResolvedConfig, ResolvedPipeline, ResolvedStack } from "./types.js";
import { stateDirOf } from "./layout.js";
import { displayLine, displayText, formatBytes, paramsText, plural } from "./format.js";

export type Action = "run" | "skip";

export interface StageDecision {
  action: Action;
  /** The stage's key: env key for build, data key for ingest, hyperparams key for train. */
  key: string | null;
  reason: string;
}

export interface JobPlan {
  /** Position in the sweep, from 0. */
  index: number;
  key: string | null;
  params: HyperparamSet;
  paramsKey: string;
  action: Action;
  reason: string;
  /** The identical job that already succeeded, when skipped. */
  reuse: JobRecord | undefined;
}

export interface TreeChange {
  added: number;
  changed: number;
  removed: number;
  bytesAdded: number;
  bytesRemoved: number;
  /** A few changed paths, to show. */
  examples: string[];
  /** True when no earlier listing was known to diff against. */
  firstTime: boolean;
}

export interface PipelinePlan {
  pipeline: ResolvedPipeline;
  bundle: SourceBundle;
  sourceTree: TreeHash;
  /** The data tree, for a data bundle. */
  dataTree: TreeHash | undefined;
  /** The entries and lock, for a manifest. */
  manifest: { entries: ManifestEntries; lock: ManifestLock | undefined; missing: MissingEntries } | undefined;
  keys: { env: string; source: string; data: string | undefined; hyperparams: string };
  stages: { ingest?: StageDecision; build: StageDecision; train: StageDecision };
  jobs: JobPlan[];
  changes: {
    source: TreeChange | undefined;
    data: TreeChange | undefined;
    env: boolean;
    paramsAdded: HyperparamSet[];
    paramsRemoved: HyperparamSet[];
  };
}

export interface Plan {
  stack: string;
  pipelines: PipelinePlan[];
  /** True when any stage or job would run. */
  changes: boolean;
  /** How the plan says a job need not run when nothing changes; default "already succeeded". */
  upToDate?: string;
  stats: PlanStats;
}

/** What hashing the bundles took: files checked, read, and how many trees the file system monitor answered for. */
export interface PlanStats {
  files: number;
  hashedFiles: number;
  hashedBytes: number;
  cacheHits: number;
  trees: number;
  monitoredTrees: number;
  /** Trees walked because the file system monitor was still setting up its watches of them (not in `plan --json`). */
  settingUpTrees: number;
}

/** What a backend answers for the planner: how environments are built and what already exists. */
export interface PlanOracle {
  /** Identifies what turns a source bundle into an environment (part of the env key). */
  runtime(bundle: SourceBundle): Promise<string>;
  /** True when the environment of `envKey` is built and usable. */
  environmentReady(envKey: string): boolean;
  /**
   * The succeeded job with this key whose outputs are still present and
   * intact, if any; else, when there is one whose results cannot be reused,
   * why (`distrusted`).
   */
  succeededJob(jobKey: string): Promise<Reusable> | Reusable;
}

export type Reusable = { job: JobRecord; distrusted?: undefined } | { job: undefined; distrusted?: string };

/** What `kaos up` records per pipeline after applying it; plans diff against it. */
import type { AppliedPipeline, AppliedState } from "./state.js";
export type { AppliedPipeline, AppliedState };

export function envKeyOf(bundle: SourceBundle, runtime: string): string {
  const parts = ["kaos env v1", readFileSync(bundle.dockerfile, "utf8"), readFileSync(bundle.requirements, "utf8"), runtime];
  // Appended only when there is a lock, so that the environments of bundles without one keep their keys.
  if (bundle.lock !== undefined) parts.push("requirements.lock", readFileSync(bundle.lock, "utf8"));
  // Likewise the files requirements.txt includes, named as they are inside the bundle so that the key is the same on any machine.
  for (const include of bundle.includes) parts.push("included", relative(bundle.dir, include), readFileSync(include, "utf8"));
  return hashString(...parts);
}

export function jobKeyOf(keys: { env: string; source: string; data: string }, params: HyperparamSet): string {
  return hashString("kaos job v1", keys.env, keys.source, keys.data, canonicalJson(params));
}

/** Byte order of the UTF-8 paths, the order trees list their files in. */
function pathOrder(a: string, b: string): number {
  if (a === b) return 0;
  // UTF-16 order is UTF-8 byte order unless a code unit at or above U+D800 is involved.
  if (!/[\ud800-\uffff]/.test(a) && !/[\ud800-\uffff]/.test(b)) return a < b ? -1 : 1;
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** Counts what changed between two listings, and keeps the first few paths of each kind to show. */
class ChangeCount {
  private readonly change: TreeChange = {
    added: 0,
    changed: 0,
    removed: 0,
    bytesAdded: 0,
    bytesRemoved: 0,
    examples: [],
    firstTime: false,
  };
  private readonly shown: Record<"added" | "changed" | "modeChanged" | "removed", string[]> = {
    added: [],
    changed: [],
    modeChanged: [],
    removed: [],
  };

  add(kind: "added" | "changed" | "modeChanged" | "removed", file: TreeFile): void {
    if (kind === "added") {
      this.change.added++;
      this.change.bytesAdded += file.size;
    } else if (kind === "removed") {
      this.change.removed++;
      this.change.bytesRemoved += file.size;
    } else {
      this.change.changed++;
    }
    const shown = this.shown[kind];
    if (shown.length < EXAMPLES) shown.push(file.path);
  }

  result(): TreeChange {
    const { added, changed, modeChanged, removed } = this.shown;
    const examples = [...added.map((p) => `+${p}`), ...[...changed, ...modeChanged].map((p) => `~${p}`), ...removed.map((p) => `-${p}`)];
    return { ...this.change, examples: examples.slice(0, EXAMPLES) };
  }
}

const EXAMPLES = 5;

/**
 * The change between two listings sorted by path, in one pass over both that
 * keeps neither: a million-file tree is compared without a million objects
 * held. Undefined when a listing turns out not to be sorted.
 */
function diffInOrder(before: Iterator<TreeFile>, after: Iterator<TreeFile>): TreeChange | undefined {
  const count = new ChangeCount();
  let old = before.next().value as TreeFile | undefined;
  let now = after.next().value as TreeFile | undefined;
  const advance = (iterator: Iterator<TreeFile>, current: TreeFile): TreeFile | undefined | null => {
    const next = iterator.next().value as TreeFile | undefined;
    return next !== undefined && !(current.path < next.path) && pathOrder(current.path, next.path) >= 0 ? null : next;
  };
  while (old !== undefined || now !== undefined) {
    let nextOld: TreeFile | undefined | null = old;
    let nextNow: TreeFile | undefined | null = now;
    if (old !== undefined && now !== undefined && old.path === now.path) {
      if (old.hash !== now.hash) count.add("changed", now);
      else if (old.mode !== now.mode) count.add("modeChanged", now);
      nextOld = advance(before, old);
      nextNow = advance(after, now);
    } else if (now === undefined || (old !== undefined && pathOrder(old.path, now.path) < 0)) {
      count.add("removed", old!);
      nextOld = advance(before, old!);
    } else {
      count.add("added", now);
      nextNow = advance(after, now);
    }
    if (nextOld === null || nextNow === null) return undefined;
    old = nextOld;
    now = nextNow;
  }
  return count.result();
}

function firstTimeChange(tree: TreeHash): TreeChange {
  // Everything is new: the counts are the tree's own, and a million-file tree need not list its files for them.
  return {
    added: tree.stats.files,
    changed: 0,
    removed: 0,
    bytesAdded: tree.stats.bytes,
    bytesRemoved: 0,
    examples: firstFiles(tree, EXAMPLES).map((f) => `+${f.path}`),
    firstTime: true,
  };
}

/** What changed in `tree` since the tree of `beforeKey` (its listing read as it is compared), or that it is new. */
function treeChange(stateDir: string, beforeKey: string | undefined, tree: TreeHash): TreeChange {
  const before = beforeKey === undefined ? undefined : streamTreeListing(stateDir, beforeKey);
  if (before === undefined) return firstTimeChange(tree);
  const listed = before[Symbol.iterator]();
  const files = filesOf(tree)[Symbol.iterator]();
  let change: TreeChange | undefined;
  try {
    change = diffInOrder(listed, files);
  } catch (error) {
    // A listing that does not parse is as good as none.
    if (error instanceof SyntaxError) return firstTimeChange(tree);
    throw error;
  } finally {
    listed.return?.(undefined);
    files.return?.(undefined);
  }
  if (change !== undefined) return change;
  const previous = loadTreeListing(stateDir, beforeKey!);
  if (previous === undefined) return firstTimeChange(tree);
  const diff = diffTrees(previous, tree.files);
  const count = new ChangeCount();
  for (const kind of ["added", "changed", "modeChanged", "removed"] as const) for (const file of diff[kind]) count.add(kind, file);
  return count.result();
}

function describeChange(what: string, change: TreeChange | undefined): string | undefined {
  if (change === undefined) return undefined;
  if (change.firstTime) return `${what} is new`;
  const parts = [
    change.added > 0 ? `${change.added} added` : "",
    change.changed > 0 ? `${change.changed} changed` : "",
    change.removed > 0 ? `${change.removed} removed` : "",
  ].filter(Boolean);
  return parts.length === 0 ? undefined : `${what}: ${parts.join(", ")}`;
}

/** What the entries to download come to, as far as their manifest lines or the lock state it: " (2.9 MiB)", " (4 B, and 2 of unknown size)". */
function downloadSizeNote(missing: MissingEntries): string {
  if (missing.unsized === missing.entries) return "";
  const unsized = missing.unsized === 0 ? "" : `, and ${missing.unsized} of unknown size`;
  return ` (${formatBytes(missing.bytes)}${unsized})`;
}

/** `objects.has` for a million hashes, or undefined when the store holds nothing yet. */
function storedObjects(objects: ObjectStore): ((hash: string) => boolean) | undefined {
  return existsSync(objects.dir) ? objects.hasEach() : undefined;
}

export interface PlanOptions {
  config: ResolvedConfig;
  stack: ResolvedStack;
  state: StateStore;
  oracle: PlanOracle;
  force?: boolean;
  refresh?: boolean;
  /** Manifests already read and checked for this plan, by path (the command checks its inputs first). */
  manifests?: ReadonlyMap<string, { entries: ManifestEntries; lock: ManifestLock | undefined }>;
}

async function planPipeline(
  options: PlanOptions,
  pipeline: ResolvedPipeline,
  applied: AppliedPipeline | undefined,
  objects: ObjectStore,
): Promise<{ plan: PipelinePlan; stats: Plan["stats"] }> {
  const { state, oracle, config } = options;
  const stateDir = stateDirOf(config.root);
  const where = `pipelines.${pipeline.name}.source`;
  const bundle = validateSourceBundle(pipeline.sourceDir, where);
  // Finding the interpreter runs a process (a pyenv shim takes a quarter of a
  // second): let it run while the trees are hashed.
  const runtimePending = oracle.runtime(bundle);
  runtimePending.catch(() => {});
  // A reader (a sweep's keys) trusts the cache as a writer would, and leaves it as it found it;
  // only a writer keeps the monitor's token with the cache.
  const statCache = state.readonly ? { ...state.statCache(), save: () => {}, saveRows: () => {} } : state.statCache();
  const monitor = state.readonly ? undefined : projectMonitor(stateDir);
  const sourceTree = await hashTree(pipeline.sourceDir, { statCache, monitor });
  // Only the links are checked: an unchanged tree need not list every file.
  checkTreeLinks(treeLinks(sourceTree), where);
  let dataTree: TreeHash | undefined;
  let manifest: PipelinePlan["manifest"];
  let dataKey: string | undefined;
  if (pipeline.data.kind === "dir") {
    dataTree = await hashTree(pipeline.data.dir, { statCache, monitor });
    checkTreeLinks(treeLinks(dataTree), `pipelines.${pipeline.name}.data`);
    dataKey = dataTree.hash;
  } else {
    const read = options.manifests?.get(pipeline.data.path);
    const entries = read?.entries ?? scanManifest(pipeline.data.path);
    if (read === undefined) checkFileUrls(entries.fileUrls(), fileUrlScopeOf(config));
    const lock = read !== undefined ? read.lock : readLock(pipeline.data.path);
    const missing = entries.countMissing(lock, storedObjects(objects));
    manifest = { entries, lock, missing };
    dataKey = entries.dataKey(lock);
  }
  const runtime = await runtimePending;
  const envKey = envKeyOf(bundle, runtime);
  const hyperparamsKey = hashString("kaos grid v1", canonicalJson(pipeline.hyperparams));
  const keys = { env: envKey, source: sourceTree.hash, data: dataKey, hyperparams: hyperparamsKey };

  const sourceChange = applied?.sourceKey === sourceTree.hash ? undefined : treeChange(stateDir, applied?.sourceKey, sourceTree);
  const dataChange =
    dataTree === undefined || applied?.dataKey === dataTree.hash
      ? undefined
      : treeChange(stateDir, applied?.dataKey ?? undefined, dataTree);
  const envChanged = applied !== undefined && applied.envKey !== envKey;

  const stages: PipelinePlan["stages"] = {
    build: { action: "skip", key: envKey, reason: "environment already built" },
    train: { action: "skip", key: hyperparamsKey, reason: "every job already succeeded" },
  };
  if (manifest !== undefined) {
    const refresh = options.refresh === true;
    stages.ingest =
      dataKey === undefined || manifest.missing.entries > 0 || refresh || options.force
        ? {
            action: "run",
            key: dataKey ?? null,
            reason: options.force
              ? "forced"
              : refresh
                ? "--refresh re-checks remote content"
                : `${manifest.missing.entries} of ${manifest.entries.count} entries not downloaded yet${downloadSizeNote(manifest.missing)}`,
          }
        : { action: "skip", key: dataKey, reason: "every entry is downloaded and verified" };
  }
  if (options.force) stages.build = { action: "run", key: envKey, reason: "forced" };
  else if (!oracle.environmentReady(envKey)) {
    stages.build = {
      action: "run",
      key: envKey,
      reason: envChanged
        ? "Dockerfile, requirements.txt or a file it includes, requirements.lock or runtime changed"
        : "environment not built yet",
    };
  }

  const previous = new Set((applied?.params ?? []).map((params) => canonicalJson(params)));
  const combinations = expandSpace(pipeline.hyperparams);
  const current = new Set(combinations.map((params) => canonicalJson(params)));
  const inputReason =
    [envChanged ? "environment changed" : undefined, describeChange("source", sourceChange), describeChange("data", dataChange)]
      .filter(Boolean)
      .join("; ") || undefined;
  // A plan made while a kaos applies this (or another) stack: what it runs now is not done, and is not new either.
  const unfinishedByKey = options.force ? undefined : state.unfinishedJobsByKey("train");
  const jobs: JobPlan[] = await Promise.all(
    combinations.map(async (params, index): Promise<JobPlan> => {
      const canonical = canonicalJson(params);
      const paramsKey = hashString("kaos params v1", canonical);
      const key = dataKey === undefined ? null : jobKeyOf({ env: envKey, source: sourceTree.hash, data: dataKey }, params);
      const { job: reuse, distrusted } = key === null || options.force ? { job: undefined } : await oracle.succeededJob(key);
      if (reuse) return { index, key, params, paramsKey, action: "skip", reason: `identical job ${reuse.id} succeeded`, reuse };
      let reason: string;
      const unfinished = key === null ? undefined : unfinishedByKey?.get(key);
      if (options.force) reason = "forced";
      else if (distrusted !== undefined) reason = distrusted;
      else if (key === null) reason = "data key known after ingest";
      else if (unfinished !== undefined) reason = `${unfinished.state === "queued" ? "queued" : "running now"} in run ${unfinished.runId}`;
      else if (applied !== undefined && !previous.has(canonical)) reason = "new combination";
      else if (key !== null && state.lastFailed("train", key)) reason = "previous attempt failed";
      // Ctrl-C, `kaos train kill` or a stopped watch: the combination ran, so "never ran" would mislead.
      else if (key !== null && state.lastCancelled("train", key)) reason = "previous attempt cancelled";
      else reason = applied === undefined ? "never ran" : (inputReason ?? "never ran");
      return { index, key, params, paramsKey, action: "run", reason, reuse: undefined };
    }),
  );
  const running = jobs.filter((job) => job.action === "run").length;
  if (running > 0) {
    stages.train = { action: "run", key: hyperparamsKey, reason: `${running} of ${jobs.length} jobs to run` };
  }
  const paramsAdded = applied === undefined ? [] : combinations.filter((params) => !previous.has(canonicalJson(params)));
  const paramsRemoved = (applied?.params ?? []).filter((params) => !current.has(canonicalJson(params)));
  const stats = [sourceTree, dataTree].reduce<Plan["stats"]>(
    (sum, tree) =>
      tree === undefined
        ? sum
        : {
            files: sum.files + tree.stats.files,
            hashedFiles: sum.hashedFiles + tree.stats.hashedFiles,
            hashedBytes: sum.hashedBytes + tree.stats.hashedBytes,
            cacheHits: sum.cacheHits + tree.stats.cacheHits,
            trees: sum.trees + 1,
            monitoredTrees: sum.monitoredTrees + (tree.stats.monitored === true ? 1 : 0),
            settingUpTrees: sum.settingUpTrees + (tree.stats.monitorSettingUp === true ? 1 : 0),
          },
    { files: 0, hashedFiles: 0, hashedBytes: 0, cacheHits: 0, trees: 0, monitoredTrees: 0, settingUpTrees: 0 },
  );
  return {
    plan: {
      pipeline,
      bundle,
      sourceTree,
      dataTree,
      manifest,
      keys,
      stages,
      jobs,
      changes: { source: sourceChange, data: dataChange, env: envChanged, paramsAdded, paramsRemoved },
    },
    stats,
  };
}

export async function buildPlan(options: PlanOptions): Promise<Plan> {
  const applied = options.state.getApplied(options.stack.name);
  const objects = new ObjectStore(join(stateDirOf(options.config.root), "objects"));
  const pipelines: PipelinePlan[] = [];
  const stats: Plan["stats"] = { files: 0, hashedFiles: 0, hashedBytes: 0, cacheHits: 0, trees: 0, monitoredTrees: 0, settingUpTrees: 0 };
  for (const pipeline of options.config.pipelines) {
    const result = await planPipeline(options, pipeline, applied[pipeline.name], objects);
    pipelines.push(result.plan);
    stats.files += result.stats.files;
    stats.hashedFiles += result.stats.hashedFiles;
    stats.hashedBytes += result.stats.hashedBytes;
    stats.cacheHits += result.stats.cacheHits;
    stats.trees += result.stats.trees;
    stats.monitoredTrees += result.stats.monitoredTrees;
    stats.settingUpTrees += result.stats.settingUpTrees;
  }
  markSharedJobs(pipelines);
  const changes = pipelines.some(
    (p) => p.stages.build.action === "run" || p.stages.train.action === "run" || p.stages.ingest?.action === "run",
  );
  return { stack: options.stack.name, pipelines, changes, stats };
}

/** Jobs of different pipelines with one key run once (the backend shares the result): say so. */
function markSharedJobs(pipelines: PipelinePlan[]): void {
  const firstWithKey = new Map<string, string>();
  for (const p of pipelines) {
    for (const job of p.jobs) {
      if (job.action !== "run" || job.key === null) continue;
      const owner = firstWithKey.get(job.key);
      if (owner === undefined) firstWithKey.set(job.key, p.pipeline.name);
      else if (owner !== p.pipeline.name) job.reason = `identical to a job of pipeline ${owner} in this plan: it runs once for both`;
    }
  }
}

/** What `kaos up` records as applied for a pipeline once it has run. */
export function appliedOf(plan: PipelinePlan, dataKey: string | null): AppliedPipeline {
  return { envKey: plan.keys.env, sourceKey: plan.keys.source, dataKey, params: plan.jobs.map((job) => job.params) };
}

/** How many trees the file system monitor spared a walk, and how many it could not yet because it was setting up. */
function monitored(stats: PlanStats): string {
  const parts: string[] = [];
  if (stats.monitoredTrees > 0) parts.push(`${stats.monitoredTrees} of ${stats.trees} tree${stats.trees === 1 ? "" : "s"} not walked`);
  if (stats.settingUpTrees > 0) {
    parts.push(`${stats.settingUpTrees} tree${stats.settingUpTrees === 1 ? "" : "s"} walked while it set up its watches`);
  }
  return parts.length === 0 ? "" : `; file system monitor: ${parts.join(", ")}`;
}

/** The stable JSON of `kaos plan --json`. */
export function planJson(plan: Plan): unknown {
  return {
    stack: plan.stack,
    pipelines: plan.pipelines.map((p) => ({
      name: p.pipeline.name,
      stages: Object.fromEntries(
        (["ingest", "build", "train"] as const)
          .filter((stage) => p.stages[stage] !== undefined)
          .map((stage) => {
            const decision = p.stages[stage]!;
            return [stage, { action: decision.action, key: decision.key, reason: decision.reason }];
          }),
      ),
      keys: p.keys,
      jobs: p.jobs.map((job) => ({
        key: job.key,
        params: job.params,
        action: job.action,
        reason: job.reason,
        ...(job.reuse ? { reuses: job.reuse.id } : {}),
      })),
      changes: {
        source: p.changes.source ?? null,
        data: p.changes.data ?? null,
        env: p.changes.env,
        paramsAdded: p.changes.paramsAdded,
        paramsRemoved: p.changes.paramsRemoved,
      },
    })),
    changes: plan.changes,
    stats: {
      files: plan.stats.files,
      hashedFiles: plan.stats.hashedFiles,
      hashedBytes: plan.stats.hashedBytes,
      cacheHits: plan.stats.cacheHits,
      trees: plan.stats.trees,
      monitoredTrees: plan.stats.monitoredTrees,
    },
  };
}

function changeLine(what: string, change: TreeChange): string {
  if (change.firstTime) return `${what}: first run`;
  const parts = [
    `${change.added} added${change.bytesAdded ? ` (${formatBytes(change.bytesAdded)})` : ""}`,
    `${change.changed} changed`,
    `${change.removed} removed${change.bytesRemoved ? ` (${formatBytes(change.bytesRemoved)})` : ""}`,
  ];
  const examples = change.examples.map((example) => example.slice(0, 1) + displayText(example.slice(1)));
  return `${what}: ${parts.join(", ")}${examples.length ? `  [${examples.join(" ")}]` : ""}`;
}

export interface PlanPainter {
  bold(text: string): string;
  dim(text: string): string;
  green(text: string): string;
  yellow(text: string): string;
}

/** The plan for people: per pipeline, each stage and job with what it would do and why. */
export function formatPlan(plan: Plan, c: PlanPainter): string {
  const lines: string[] = [];
  const hashed = plan.stats.hashedFiles;
  lines.push(
    c.dim(
      `stack ${plan.stack}: ${plural(plan.pipelines.length, "pipeline")}, ${plural(plan.stats.files, "file")} checked (${plan.stats.cacheHits} unchanged, ${hashed} hashed, ${formatBytes(plan.stats.hashedBytes)}${monitored(plan.stats)})`,
    ),
  );
  let stagesToRun = 0;
  let jobsToRun = 0;
  let jobsSkipped = 0;
  for (const p of plan.pipelines) {
    lines.push("", c.bold(p.pipeline.name));
    for (const stage of ["ingest", "build", "train"] as const) {
      const decision = p.stages[stage];
      if (!decision) continue;
      if (decision.action === "run" && stage !== "train") stagesToRun += 1;
      const action = decision.action === "run" ? c.yellow("run ") : c.dim("skip");
      lines.push(
        `  ${stage.padEnd(6)}  ${action}  ${displayLine(decision.reason)}${decision.key ? c.dim(`  ${decision.key.slice(0, 12)}`) : ""}`,
      );
    }
    const details: string[] = [];
    if (p.changes.env)
      details.push("environment: Dockerfile, requirements.txt or a file it includes, requirements.lock or runtime changed");
    if (p.changes.source) details.push(changeLine("source", p.changes.source));
    if (p.changes.data) details.push(changeLine("data", p.changes.data));
    if (p.manifest) {
      const { missing } = p.manifest;
      details.push(`manifest: ${p.manifest.entries.count} entries, ${missing.entries} to download${downloadSizeNote(missing)}`);
    }
    if (p.changes.paramsAdded.length || p.changes.paramsRemoved.length) {
      details.push(`params: ${plural(p.changes.paramsAdded.length, "combination")} added, ${p.changes.paramsRemoved.length} removed`);
    }
    for (const detail of details) lines.push(c.dim(`          ${detail}`));
    for (const job of p.jobs) {
      if (job.action === "run") jobsToRun += 1;
      else jobsSkipped += 1;
      const action = job.action === "run" ? c.yellow("run ") : c.dim("skip");
      lines.push(
        `    ${action}  ${`${job.index + 1}/${p.jobs.length}`.padEnd(7)} ${paramsText(job.params) || "{}"}  ${c.dim(displayLine(job.reason))}`,
      );
    }
  }
  lines.push("");
  lines.push(
    plan.changes
      ? c.bold(
          `Plan: ${stagesToRun} stage${stagesToRun === 1 ? "" : "s"} and ${jobsToRun} job${jobsToRun === 1 ? "" : "s"} to run, ${jobsSkipped} skipped.`,
        )
      : c.green(`No changes: ${jobsSkipped} job${jobsSkipped === 1 ? "" : "s"} ${plan.upToDate ?? "already succeeded"}.`),
  );
  return lines.join("\n");
}
