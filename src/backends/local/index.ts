/**
 * The local backend: runs a plan on this machine. Per pipeline, Ingest (for a
 * manifest), then Build (a virtual environment per env key), then Train (one
 * job per hyperparameter combination, admitted by parallelism, cores, memory
 * and GPUs). Every job is recorded in the state store as it changes, and
 * trains on a snapshot of exactly the trees the plan hashed.
 */
import { execFileSync } from "node:child_process";
import { setMaxListeners } from "node:events";
import { existsSync, lstatSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { availableParallelism, totalmem } from "node:os";
import { delimiter, join } from "node:path";
import { parseMemory } from "../../core/config.js";
import { lstatOrUndefined } from "../../core/disk.js";
import { KaosError, describeError } from "../../core/errors.js";
import { canonicalJson } from "../../core/hyperparams.js";
import { THREADED_CHECK_MAX_ROWS, THREADED_CHECK_ROWS, fileCountOf, hashFile, stopHashWorkers, treeHashLookup } from "../../core/hash.js";
import { readLock } from "../../core/manifest.js";
import { jobPaths, stateDirOf } from "../../core/layout.js";
import { ObjectStore } from "../../core/objects.js";
import { appliedOf, jobKeyOf, type JobPlan, type Plan, type PipelinePlan, type PlanOracle, type Reusable } from "../../core/plan.js";
import {
  listRecords,
  type Backend,
  type BackendContext,
  type ExecuteOptions,
  type ExecuteResult,
  type FetchedOutputs,
  type FetchOutputsRequest,
  type JobInfo,
  type JobListRequest,
  type JobListing,
  type CrashRecovery,
  type JobRunner,
  type LogOutput,
  type PipelineOutcome,
  type PlanRequest,
  type RenderedFolder,
  type SettledInputs,
  type UpOutcome,
  type UpRequest,
} from "../../core/backend.js";
import { apply, buildSessionPlan, type RunnerSession } from "../../core/engine.js";
import type { Reporter } from "../../core/events.js";
import {
  checkSeal,
  checkSealEveryStat,
  markSealed,
  makeMountPoint,
  materializeTree,
  namesIn,
  releaseSeal,
  removeTree,
  saveTreeListing,
  sealTree,
  viewKind,
  storeTree,
  isMaterialized,
  writtenSinceSeal,
  type Seal,
} from "../../core/snapshot.js";
import type { StatCacheEntry, TreeHash } from "../../core/hash.js";
import type { StatCacheMap } from "../../core/stat-cache.js";
import {
  type PendingStatCache,
  clonesBundle,
  dataViewMode,
  holdsHash,
  pendingCacheTime,
  pendingStatCacheRows,
  refreshedStatCache,
  sealBundleFolder,
  SweepComparison,
  sealLinkedView,
} from "./data-view.js";
import { removeTemporaries } from "./temporaries.js";
import { mountNamespace, type MountNamespace } from "./mount-view.js";
import type { JobRecord, StateStore } from "../../core/state.js";
import type { ResolvedConfig, ResolvedStack } from "../../core/types.js";
import type { SourceBundle } from "../../core/bundle.js";
import { buildEnvironment, environmentMarkerPath, environmentPath, environmentReady } from "./build.js";
import { knownRuntime, rememberPythonProbe, resolvePython, runtimeName, which } from "./python.js";
import { spawnLogged, stopOrphanedJobs, type RunningProcess } from "./process.js";
import { localJobLogs } from "./logs.js";
import { localJobInfo } from "./job-info.js";
import { killLocalJob } from "./kill.js";
import { fetchLocalOutputs } from "./outputs.js";
import { localSweep } from "./sweep.js";
import type { Sweep } from "../../core/sweep.js";
import { StateEntries, checkJobResults, describeChanges, resultsProblem, sealJobResults } from "./results.js";
import { fileUrlScopeOf } from "../../core/urls.js";
import { ResourcePool, type Capacity } from "./scheduler.js";

/** The train jobs a pipeline runs itself in one run (the others are identical to another pipeline's). */
interface OwnJobs {
  p: PipelinePlan;
  toRun: JobPlan[];
  /** The whole sweep's size, for each job's n of N. */
  sweepSize: number;
  /** The data view when an ingest laid it out already; else the data bundle's snapshot is used. */
  knownDataDir: string | undefined;
  dataKey: string | undefined;
  pool: ResourcePool;
  /** Resolves each job's claim, for the pipelines waiting on the same key. */
  settle: Map<string, (result: ClaimResult) => void>;
  options: ExecuteOptions;
  outcome: PipelineOutcome;
}

/** How a job ended, for the pipelines of the same run that wait on its key. */
interface ClaimResult {
  id: string | null;
  state: "succeeded" | "failed" | "cancelled";
  exitCode: number | null;
  pipeline: string;
}

/** The train jobs of one run by key, each claimed by the first pipeline to reach it. */
type JobClaims = Map<string, { pipeline: string; result: Promise<ClaimResult> }>;

/** A sweep's data directory and what it held when the sweep began. */
interface DataView {
  dir: string;
  seal: Seal;
  /** Content hash by path, to find the objects behind changed files. */
  hashes: { get(path: string): string | undefined };
  /** The bundle whose own files the view's files are (hardlinks to them, or its folder mounted; see data-view.ts), when they are. */
  linkedTo: string | undefined;
  /**
   * When the view is a mount point: how each job mounts `linkedTo` read-only at `dir` (mount-view.ts), and
   * the mount point's `dev:ino` as made; the seal is then the bundle's own.
   */
  mount?: { namespace: MountNamespace; point: string };
  /** A mounted view's first comparison of every stat with the plan's, started by the sweep's first job to end. */
  comparison?: SweepComparison;
  /** A linked view's bundle: its tree and the stat cache its plan used, brought up to date once the sweep's data checks out. */
  bundle?: { tree: TreeHash; cache: StatCacheMap; savedAt: bigint; pending: PendingStatCache | undefined };
}

/**
 * Removes `spoiled` (when given) and every other data view under `parents`
 * holding one of `inodes` (hardlinks to the same changed object), so none is reused.
 */
function discardViews(parents: string[], spoiled: string | undefined, inodes: Set<string>): void {
  const holds = (dir: string): boolean => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory() ? holds(path) : entry.isFile() && inodes.has(String(lstatSync(path, { bigint: true }).ino))) return true;
    }
    return false;
  };
  if (spoiled !== undefined) removeTree(spoiled);
  if (inodes.size === 0) return;
  for (const parent of parents) {
    for (const name of namesIn(parent)) {
      const dir = join(parent, name);
      try {
        if (holds(dir)) removeTree(dir);
      } catch {
        // removed meanwhile
      }
    }
  }
}

/** Why a job failed when its data view changed: `when` it was written, and the first paths changed. */
function dataWrittenReason(data: DataView, when: { written: string; changed: string }, paths: readonly string[]): string {
  if (data.linkedTo === undefined) {
    return `KAOS_DATA_DIR was written to ${when.written} (${paths.join(", ")}); it is read-only: the data is laid out again on the next kaos up`;
  }
  const named = paths.map((path) => (path === "." ? data.linkedTo! : join(data.linkedTo!, path)));
  if (data.mount !== undefined)
    return `the data changed ${when.changed} (${named.join(", ")}): KAOS_DATA_DIR is the data bundle's own folder, mounted read-only for the job, so an edit of the bundle shows in it; the job did not train on the data its key names: check those files, the next kaos up hashes them again`;
  return `the data changed ${when.changed} (${named.join(", ")}): KAOS_DATA_DIR holds links to the data bundle's own files, so a write into it changes the bundle and an edit of the bundle shows in it; the job did not train on the data its key names: check those files, the next kaos up hashes them again`;
}

/**
 * How a check confirms a file of a linked or mounted view whose inode change time alone moved (it also
 * moves when the file is linked into another view): by its content. None for a view kaos laid out.
 */
function sameContent(data: DataView): ((path: string) => boolean) | undefined {
  if (data.linkedTo === undefined) return undefined;
  return (path) => {
    const hash = data.hashes.get(path);
    return hash !== undefined && holdsHash(join(data.seal.root, path), hash);
  };
}

/**
 * Why a mounted view can no longer be trusted: its mount point is not the
 * folder it was made as. Removing it (another kaos laying the same data out
 * another way, or a hand in `.kaos/`) takes the mount away from the jobs
 * running on it, which the bundle's own seal cannot see.
 */
function mountPointGone(data: DataView): string | undefined {
  if (data.mount === undefined) return undefined;
  const stat = lstatOrUndefined(data.dir, { bigint: true });
  if (stat !== undefined && `${stat.dev}:${stat.ino}` === data.mount.point) return undefined;
  return `KAOS_DATA_DIR's mount point ${data.dir} was removed or replaced (by another kaos laying out the same data another way, or by hand), which takes the data away from a running job; the next kaos up mounts it again`;
}

/** Why a job ended, from its record; undefined while it is queued or running. */
function endedReason(job: JobRecord): string | undefined {
  return job.state === "queued" || job.state === "running" ? undefined : (job.reason ?? job.state);
}

/**
 * Whether a sweep of `plan` ends with a check of a data view big enough to
 * share with the hashing threads (`checkSealEveryStat`), and sharing it saves
 * more than keeping the threads costs the sweep's forks: about 1.3 µs per
 * file against 0.2 ms per job.
 */
function sharesLastCheckWithThreads(plan: Plan): boolean {
  return plan.pipelines.some((p) => {
    const files = p.dataTree === undefined ? 0 : fileCountOf(p.dataTree);
    const jobs = p.jobs.filter((job) => job.action === "run").length;
    return jobs > 0 && files >= THREADED_CHECK_ROWS && files <= THREADED_CHECK_MAX_ROWS && files >= 150 * jobs;
  });
}

function jobsToRun(plan: Plan): boolean {
  return plan.pipelines.some((p) => p.jobs.some((job) => job.action === "run"));
}

/** GPUs this machine has, from nvidia-smi; none when it is missing. */
export function detectGpus(): number[] {
  if (process.env.KAOS_GPUS !== undefined) {
    return process.env.KAOS_GPUS.split(",").filter(Boolean).map(Number).filter(Number.isInteger);
  }
  // Looked up first: a failed spawn forks this whole process before it finds out, on every machine without one.
  const nvidiaSmi = which("nvidia-smi");
  if (nvidiaSmi === undefined) return [];
  try {
    const output = execFileSync(nvidiaSmi, ["--query-gpu=index", "--format=csv,noheader"], {
      encoding: "utf8",
      timeout: 10_000,
      stdio: ["ignore", "pipe", "ignore"],
    });
    return output
      .split("\n")
      .filter((line) => line.trim() !== "")
      .map((line) => Number(line.trim()))
      .filter((n) => Number.isInteger(n) && n >= 0);
  } catch {
    return [];
  }
}

export type { ExecuteOptions, ExecuteResult, PipelineOutcome } from "../../core/backend.js";

const INTERRUPTED = "cancelled: kaos was interrupted";

/**
 * How a running job is stopped: the first reason given wins, the process it
 * runs (once there is one) is stopped with it, a wait for resources is
 * abandoned, and kaos's own interrupt cancels it. `kaos train kill` and a
 * watch restart reach it through LocalBackend.cancel; the interrupt, through
 * the one listener `execute` puts on the run's signal (a listener per job
 * would cost each new one a walk over all the others: Node's EventTarget
 * checks every listener it holds for a duplicate).
 */
class JobControl {
  reason: string | undefined;
  private process: RunningProcess | undefined;
  private readonly queue = new AbortController();

  constructor(
    readonly signal: AbortSignal,
    private readonly running: Map<string, { control: JobControl; job: JobRecord }>,
    job: JobRecord,
  ) {
    running.set(job.id, { control: this, job });
    if (signal.aborted) this.cancel(INTERRUPTED);
  }

  /** Aborted when the job is cancelled while it waits for resources. */
  get queueSignal(): AbortSignal {
    return this.queue.signal;
  }

  get cancelled(): boolean {
    return this.reason !== undefined;
  }

  readonly cancel = (reason: string): void => {
    this.reason ??= reason;
    this.queue.abort(new KaosError("JOBS_FAILED", reason));
    this.process?.stop(reason);
  };

  /** The process the job now runs; stopped at once if the job was cancelled before it started. */
  attach(process: RunningProcess | undefined): void {
    this.process = process;
    if (process !== undefined && this.reason !== undefined) process.stop(this.reason);
  }

  release(jobId: string): void {
    this.running.delete(jobId);
  }
}

/** How often work that runs in this process looks at its job's record for a `kaos train kill`. */
const RECORD_CHECK_MS = 200;

/** The local backend of a stack, as the backend registry makes it. */
export async function createLocalBackend(context: BackendContext): Promise<Backend> {
  return new LocalBackend(context.config, context.stack, context.state);
}

export class LocalBackend implements Backend, JobRunner, PlanOracle {
  readonly kind = "local";
  readonly stateDir: string;
  readonly envsDir: string;
  readonly objects: ObjectStore;
  private readonly running = new Map<string, { control: JobControl; job: JobRecord }>();
  private capacityCache: Capacity | undefined;
  /** Builds under way in this process by env key: pipelines sharing a source bundle share its build. */
  private readonly builds = new Map<string, Promise<NonNullable<PipelineOutcome["stages"]["build"]>>>();
  /** The runtime each Dockerfile's Python version (null for none) resolved to when planning, in this process. */
  private readonly plannedRuntimes = new Map<string | null, string>();

  constructor(
    readonly config: ResolvedConfig,
    readonly stack: ResolvedStack,
    readonly state: StateStore,
  ) {
    this.stateDir = stateDirOf(config.root);
    this.envsDir = join(this.stateDir, "envs");
    this.objects = new ObjectStore(join(this.stateDir, "objects"));
  }

  get runner(): JobRunner {
    return this;
  }

  private session(): RunnerSession {
    return { config: this.config, stack: this.stack, state: this.state, backend: this, close() {} };
  }

  plan(request: PlanRequest): Promise<Plan> {
    return buildSessionPlan(this.session(), this, request);
  }

  async up(request: UpRequest): Promise<UpOutcome> {
    const outcome = await apply(this.session(), {
      command: request.command,
      reporter: request.reporter,
      signal: request.signal,
      ...(request.force !== undefined ? { force: request.force } : {}),
      ...(request.refresh !== undefined ? { refresh: request.refresh } : {}),
      ...(request.manifests !== undefined ? { manifests: request.manifests } : {}),
      ...(request.onPlanning !== undefined ? { onPlanning: request.onPlanning } : {}),
      ...(request.onPlan !== undefined ? { onPlan: request.onPlan } : {}),
    });
    return { kind: "run", runId: outcome.runId, plan: outcome.plan, result: outcome.result };
  }

  async listJobs(request: JobListRequest): Promise<JobListing> {
    return listRecords(this.state, request, this.stack.name);
  }

  jobLogs(request: { job: string; follow: boolean }): AsyncIterable<LogOutput> {
    return localJobLogs(this.config.root, this.state, request.job, request.follow);
  }

  sweep(request: { pipeline: string }): Promise<Sweep> {
    return localSweep(this, this, request.pipeline);
  }

  /** Finds the job in the project's store, whichever local stack ran it. */
  jobInfo(request: { job: string }): Promise<JobInfo> {
    return localJobInfo(this, request.job, (pipeline) => this.sweep({ pipeline }));
  }

  fetchOutputs(request: FetchOutputsRequest): Promise<FetchedOutputs> {
    return fetchLocalOutputs(this, request);
  }

  killJob(request: { job: string }): Promise<{ id: string }> {
    return killLocalJob(this, request.job);
  }

  async render(): Promise<RenderedFolder> {
    throw new KaosError(
      "NOT_SUPPORTED",
      `--stack ${this.stack.name}: stack uses the ${this.stack.config.backend} backend; \`kaos render\` needs a kubernetes stack`,
    );
  }

  async runtime(bundle: SourceBundle): Promise<string> {
    const python = await resolvePython(bundle.pythonVersion, this.stateDir);
    rememberPythonProbe(this.stateDir, python);
    const runtime = runtimeName(python.version);
    this.plannedRuntimes.set(bundle.pythonVersion ?? null, runtime);
    return runtime;
  }

  /** How the stack wants local data bundles to reach their jobs (see data-view.ts). */
  private dataViews(): "mount" | "link" | "copy" {
    return this.stack.config.backend === "local" ? (this.stack.config.dataViews ?? "mount") : "mount";
  }

  /**
   * After a kaos died with `interrupted` jobs: stops their processes, clears what
   * writers killed mid-way left in `.kaos/` (half-laid-out data views and
   * listings, ingest work directories, the half-copied sources of those jobs,
   * half-built environments, objects half stored) and distrusts what those jobs
   * may have written into their data views while nobody watched. The partial
   * downloads in the object store stay: the next ingest resumes them. What a
   * kaos on another machine sharing the project is writing stays too, unless
   * `staleOrigin` says that kaos has stopped.
   */
  async recoverAfterCrash(interrupted: readonly JobRecord[], options: { staleOrigin?: string } = {}): Promise<CrashRecovery> {
    await stopOrphanedJobs(interrupted.map((job) => job.id));
    const { staleOrigin } = options;
    const { removedElsewhere, keptElsewhere } = removeTemporaries(
      this.stateDir,
      interrupted.map((job) => jobPaths(this.stateDir, job.id).dir),
      staleOrigin === undefined ? {} : { isStale: (tag) => tag === staleOrigin },
    );
    await this.discardViewsWrittenUnwatched(interrupted);
    return { removedElsewhere, keptElsewhere };
  }

  /**
   * A job whose kaos died ran on unwatched: what it wrote into its data view
   * (as root, through the read-only links) changed the objects behind it for
   * every later job. Each file of such a view changed since the view was last
   * sealed is hashed again; one whose bytes no longer match the object it is
   * a link to takes that object, and every view holding it, away. A view with
   * entries added or removed is laid out again.
   */
  private async discardViewsWrittenUnwatched(interrupted: readonly JobRecord[]): Promise<void> {
    const views = new Set<string>();
    for (const job of interrupted) {
      if (job.stage !== "train" || job.dataKey === null) continue;
      for (const parent of ["snapshots", "data"]) {
        const dir = join(this.stateDir, parent, job.dataKey);
        if (existsSync(dir)) views.add(dir);
      }
    }
    for (const view of views) {
      // A linked view is checked against the plan's hashes before every sweep that uses it; a mounted one was never writable.
      const kind = viewKind(view);
      if (kind === "linked" || kind === "mounted") continue;
      const written = writtenSinceSeal(view);
      if (written === undefined) continue;
      const spoiled = new Set<string>();
      for (const file of written.files) {
        let intact = false;
        try {
          const stored = lstatSync(this.objects.pathOf(await hashFile(file.path)), { bigint: true });
          intact = `${stored.dev}:${stored.ino}` === file.inode;
        } catch {
          // no object holds these bytes
        }
        if (!intact) spoiled.add(file.inode);
      }
      if (spoiled.size === 0 && !written.directories) continue;
      this.removeObjectsByInode(spoiled);
      discardViews(
        [join(this.stateDir, "snapshots"), join(this.stateDir, "data")],
        view,
        new Set([...spoiled].map((inode) => inode.split(":")[1]!)),
      );
    }
  }

  /** Removes the stored objects that are the inodes `dev:ino` (their bytes changed under their name). */
  private removeObjectsByInode(inodes: ReadonlySet<string>): void {
    if (inodes.size === 0) return;
    const root = join(this.objects.dir, "sha256");
    for (const prefix of namesIn(root)) {
      for (const name of namesIn(join(root, prefix))) {
        const path = join(root, prefix, name);
        const stat = lstatSync(path, { bigint: true });
        if (inodes.has(`${stat.dev}:${stat.ino}`)) rmSync(path, { force: true });
      }
    }
  }

  environmentReady(envKey: string): boolean {
    return environmentReady(this.envsDir, envKey);
  }

  settledInputs(plan: Plan): SettledInputs | string {
    const files: string[] = [];
    const trees: string[] = [];
    const runtimes = new Map<string | null, string>();
    for (const p of plan.pipelines) {
      // What a manifest's entries are depends on the object store, which is not read file by file.
      if (p.manifest !== undefined) return `pipelines.${p.pipeline.name} takes its data from a manifest`;
      files.push(environmentMarkerPath(this.envsDir, p.keys.env));
      for (const job of p.jobs) {
        if (job.reuse === undefined) return `a job of pipelines.${p.pipeline.name} reuses no earlier job`;
        const paths = jobPaths(this.stateDir, job.reuse.id);
        files.push(paths.seal);
        trees.push(paths.out, paths.source);
      }
      const wanted = p.bundle.pythonVersion ?? null;
      if (!runtimes.has(wanted)) {
        const runtime = knownRuntime(wanted ?? undefined, this.stateDir);
        const interpreter = `the Python interpreter for ${wanted ?? "python3"}`;
        if (runtime === undefined) return `${interpreter} is not one whose version .kaos/ keeps`;
        // An interpreter switched since the plan asked (another pyenv version, say) is not what the plan's keys hold.
        if (runtime !== this.plannedRuntimes.get(wanted)) return `${interpreter} changed since the plan asked it`;
        runtimes.set(wanted, runtime);
      }
    }
    return { files, trees, runtimes: [...runtimes].map(([wanted, runtime]) => ({ wanted, runtime })) };
  }

  async succeededJob(jobKey: string): Promise<Reusable> {
    const job = this.state.latestSucceeded("train", jobKey);
    if (job === undefined || !existsSync(jobPaths(this.stateDir, job.id).out)) return { job: undefined };
    // Results written to after they were sealed are not what the key promises.
    const problem = resultsProblem(job.id, await checkJobResults(this.stateDir, job.id));
    return problem === undefined ? { job } : { job: undefined, distrusted: `${problem}: not reused` };
  }

  capacity(): Capacity {
    this.capacityCache ??= { ...this.capacityWithout(), gpus: detectGpus() };
    return this.capacityCache;
  }

  /** The cores and memory jobs may use, as the stack bounds them. */
  private capacityWithout(): Omit<Capacity, "gpus"> {
    const stack = this.stack.config.backend === "local" ? this.stack.config : { maxCpu: undefined, maxMemory: undefined };
    return {
      cpu: stack.maxCpu ?? availableParallelism(),
      memoryBytes: stack.maxMemory ? (parseMemory(stack.maxMemory) ?? totalmem()) : totalmem(),
    };
  }

  /** Refuses, before anything runs, a job that asks for more than this machine has. */
  checkResources(plan: Plan): void {
    // With nothing to run there is nothing to check: the machine is not even asked for its GPUs.
    if (!jobsToRun(plan)) return;
    const capacity = this.capacity();
    const pool = new ResourcePool(capacity);
    const problems: string[] = [];
    let gpusLacking = false;
    for (const p of plan.pipelines) {
      if (!p.jobs.some((job) => job.action === "run")) continue;
      const { resources, name } = p.pipeline;
      const why = pool.unsatisfiable({ cpu: resources.cpu, memoryBytes: resources.memoryBytes ?? 0, gpu: resources.gpu });
      if (why) problems.push(`pipelines.${name}.resources: each job ${why}`);
      if (resources.gpu > capacity.gpus.length) gpusLacking = true;
    }
    if (problems.length > 0) {
      // A stack's caps bound cores and memory only: GPUs this machine lacks no setting of it gives.
      const hint = gpusLacking
        ? "lower the pipeline's resources.gpu to what this machine has, or use a cluster stack with GPU nodes"
        : "lower the pipeline's resources, raise maxCpu/maxMemory in the stack, or use a cluster stack";
      throw new KaosError("RESOURCES_UNSATISFIABLE", problems.join("\n"), { hint });
    }
  }

  /** Cancels every job still queued or running and waits (15 s at most) until their processes are gone. */
  async stopAll(reason: string): Promise<void> {
    this.cancel(reason);
    const deadline = Date.now() + 15_000;
    while (this.running.size > 0 && Date.now() < deadline) await new Promise((done) => setTimeout(done, 50));
  }

  /** Cancels running and queued jobs that `select` picks (all by default). */
  cancel(reason: string, select: (job: JobRecord, control: JobControl) => boolean = () => true): void {
    for (const entry of this.running.values()) if (select(entry.job, entry.control)) entry.control.cancel(reason);
  }

  async execute(options: ExecuteOptions): Promise<ExecuteResult> {
    this.checkResources(options.plan);
    // Hashing is over for this run: a smaller process forks every job faster.
    if (!sharesLastCheckWithThreads(options.plan)) void stopHashWorkers();
    // Probed while the environments are checked and the jobs recorded, when a local data bundle may be mounted for its jobs.
    if (this.dataViews() === "mount")
      for (const p of options.plan.pipelines)
        if (p.dataTree !== undefined && p.jobs.some((job) => job.action === "run"))
          void mountNamespace(this.objects.tmpPath("mount-probe"), p.dataTree.root);
    // Every pipeline's ingest listens for the interrupt too.
    setMaxListeners(0, options.signal);
    const interrupt = () => this.cancel(INTERRUPTED, (_job, control) => control.signal === options.signal);
    options.signal.addEventListener("abort", interrupt, { once: true });
    // A plan with no job to run hands out no GPU: nvidia-smi, which lists them, is not run for it.
    const pool = new ResourcePool(jobsToRun(options.plan) ? this.capacity() : { ...this.capacityWithout(), gpus: [] });
    const claims: JobClaims = new Map();
    let outcomes: PipelineOutcome[];
    try {
      outcomes = await Promise.all(options.plan.pipelines.map((p) => this.executePipeline(p, pool, claims, options)));
    } finally {
      options.signal.removeEventListener("abort", interrupt);
    }
    const cancelled = options.signal.aborted;
    const succeeded =
      !cancelled &&
      outcomes.every(
        (o) =>
          Object.values(o.stages).every((s) => s.state !== "failed" && s.state !== "cancelled") &&
          o.jobs.every((j) => j.state === "succeeded"),
      );
    return { succeeded, cancelled, pipelines: outcomes };
  }

  private record(reporter: Reporter, jobId: string, message?: string): JobRecord {
    return this.report(reporter, this.state.getJob(jobId)!, message);
  }

  /** Tells the run's reporter of a job as just recorded. */
  private report(reporter: Reporter, job: JobRecord, message?: string): JobRecord {
    reporter.event(message === undefined ? { kind: "job", job } : { kind: "job", job, message });
    return job;
  }

  private async executePipeline(p: PipelinePlan, pool: ResourcePool, claims: JobClaims, options: ExecuteOptions): Promise<PipelineOutcome> {
    const { reporter, signal, runId } = options;
    const name = p.pipeline.name;
    const outcome: PipelineOutcome = { name, stages: {}, jobs: [] };
    const base = { runId, stack: this.stack.name, pipeline: name };
    const anyTrain = p.jobs.some((job) => job.action === "run");
    let dataKey = p.keys.data;
    let dataDir: string | undefined;

    // Ingest: always materialize the data when training will need it; a stage
    // the plan skips downloads nothing and is not recorded.
    if (p.manifest !== undefined && p.pipeline.data.kind === "manifest" && (p.stages.ingest?.action === "run" || anyTrain)) {
      const recorded = p.stages.ingest?.action === "run";
      const job = recorded
        ? this.state.createJob({
            ...base,
            stage: "ingest",
            key: dataKey ?? "pending",
            params: {},
            envKey: null,
            sourceKey: null,
            dataKey: dataKey ?? null,
            paramsKey: null,
            sweepIndex: null,
            sweepSize: null,
            outputDir: null,
            logFile: null,
          })
        : undefined;
      if (job) {
        this.state.markRunning(job.id, process.pid);
        this.record(reporter, job.id);
      }
      // An ingest has no process of its own for `kaos train kill` to stop: it stops as at Ctrl-C once its record ends.
      const watched = job === undefined ? undefined : this.watchRecord(job.id);
      try {
        // Each data key has a directory of its own, so running jobs never see it change;
        // when the key is only known after the download, the data lands beside it first.
        const known = options.refresh ? undefined : dataKey;
        const target = join(this.stateDir, "data", known ?? `incoming-${name}`);
        // Loaded here, not at the top: node:http, which it needs, costs a no-op run a tenth of a second.
        const { ingest } = await import("./ingest.js");
        const result = await ingest({
          entries: p.manifest.entries.list(),
          manifestPath: p.pipeline.data.path,
          objects: this.objects,
          dataDir: target,
          fileScope: fileUrlScopeOf(this.config),
          refresh: options.refresh === true,
          signal: watched === undefined ? signal : AbortSignal.any([signal, watched.signal]),
          onProgress: (progress) => reporter.event({ kind: "ingest", pipeline: name, ...progress }),
          onNotice: (message) => reporter.event({ kind: "note", message: `${name} ingest: ${message}` }),
        });
        dataKey = result.dataKey;
        dataDir = join(this.stateDir, "data", result.dataKey);
        if (target !== dataDir) {
          if (existsSync(dataDir)) rmSync(target, { recursive: true, force: true });
          else renameSync(target, dataDir);
        }
        if (job) {
          this.state.recordDataKey(job.id, result.dataKey);
          if (!this.state.finishJob(job.id, { state: "succeeded", exitCode: 0 })) {
            // `kaos train kill` cancelled the ingest while it ran: nothing trains on it in this run.
            throw new KaosError("JOBS_FAILED", this.endedElsewhere(job.id) ?? "cancelled");
          }
          this.record(reporter, job.id, `${result.downloaded} downloaded, ${result.reused} reused`);
          outcome.stages.ingest = { action: "run", state: "succeeded", jobId: job.id };
        }
      } catch (error) {
        const state = signal.aborted || (job !== undefined && this.endedElsewhere(job.id) !== undefined) ? "cancelled" : "failed";
        if (job) {
          this.state.finishJob(job.id, { state, exitCode: null, reason: describeError(error) });
          this.record(reporter, job.id);
        } else {
          reporter.event({ kind: "note", message: `${name} ingest failed: ${describeError(error)}` });
        }
        outcome.stages.ingest = { action: "run", state, reason: describeError(error), ...(job ? { jobId: job.id } : {}) };
        outcome.stages.build = { action: p.stages.build.action, state: "cancelled", reason: "ingest failed" };
        outcome.stages.train = { action: p.stages.train.action, state: "cancelled", reason: "ingest failed" };
        return outcome;
      } finally {
        watched?.stop();
      }
    } else if (p.stages.ingest) {
      reporter.event({ kind: "stage", pipeline: name, stage: "ingest", status: "skipped", reason: p.stages.ingest.reason });
      outcome.stages.ingest = { action: "skip", state: "skipped" };
    }

    // Jobs whose key waited for the ingest: now known, and maybe already done. So are the
    // jobs keyed with data the ingest replaced (--refresh fetched new content).
    const replaced = dataKey !== undefined && p.keys.data !== undefined && dataKey !== p.keys.data;
    const jobs: JobPlan[] = await Promise.all(
      p.jobs.map(async (job) => {
        if (dataKey === undefined || (job.key !== null && !replaced)) return job;
        const key = jobKeyOf({ env: p.keys.env, source: p.keys.source, data: dataKey }, job.params);
        // One the plan runs anyway (forced, or never done) runs on the new data.
        if (job.key !== null && job.action === "run") return { ...job, key };
        const { job: reuse } = await this.succeededJob(key);
        if (reuse) return { ...job, key, action: "skip" as const, reuse, reason: `identical job ${reuse.id} succeeded` };
        if (job.key === null) return { ...job, key };
        return { ...job, key, action: "run" as const, reuse: undefined, reason: "the ingest fetched new content" };
      }),
    );
    const toRun = jobs.filter((job) => job.action === "run");

    // Build.
    const envKey = p.keys.env;
    if (toRun.length > 0 || p.stages.build.action === "run") {
      if (p.stages.build.action === "run" || !this.environmentReady(envKey)) {
        let building = this.builds.get(envKey);
        if (building === undefined) {
          building = this.runBuild(p, options);
          this.builds.set(envKey, building);
          const forget = () => this.builds.delete(envKey);
          building.then(forget, forget);
        }
        const built = await building;
        outcome.stages.build = built;
        if (built.state !== "succeeded") {
          for (const job of jobs)
            outcome.jobs.push({
              id: null,
              key: job.key,
              params: job.params,
              state: "cancelled",
              exitCode: null,
              reused: false,
              reason: "build failed",
            });
          outcome.stages.train = { action: "run", state: "cancelled", reason: "build failed" };
          return outcome;
        }
      } else {
        reporter.event({ kind: "stage", pipeline: name, stage: "build", status: "skipped", reason: p.stages.build.reason });
        outcome.stages.build = { action: "skip", state: "skipped" };
      }
    } else {
      reporter.event({ kind: "stage", pipeline: name, stage: "build", status: "skipped", reason: p.stages.build.reason });
      outcome.stages.build = { action: "skip", state: "skipped" };
    }

    // Train.
    for (const job of jobs) {
      if (job.action === "skip" && job.reuse) {
        outcome.jobs.push({
          id: job.reuse.id,
          key: job.key,
          params: job.params,
          state: "succeeded",
          exitCode: job.reuse.exitCode,
          reused: true,
          reason: job.reason,
        });
      }
    }
    if (toRun.length === 0) {
      reporter.event({
        kind: "stage",
        pipeline: name,
        stage: "train",
        status: "skipped",
        reason: jobs.length === 1 ? "its job already succeeded" : `all ${jobs.length} jobs already succeeded`,
      });
      outcome.stages.train = { action: "skip", state: "skipped" };
      this.recordApplied(p, dataKey ?? null);
      return outcome;
    }
    // A job of the same key (same environment, source, data and params) that another
    // pipeline of this run already claimed runs once: this pipeline takes its result.
    const shared = toRun.filter((job) => claims.has(job.key!));
    const own = toRun.filter((job) => !claims.has(job.key!));
    const settle = new Map<string, (result: ClaimResult) => void>();
    for (const job of own) claims.set(job.key!, { pipeline: name, result: new Promise((resolve) => settle.set(job.key!, resolve)) });
    try {
      const sharedResults = Promise.all(shared.map((job) => claims.get(job.key!)!.result));
      if (shared.length > 0) {
        const owners = [...new Set(shared.map((job) => claims.get(job.key!)!.pipeline))].join(", ");
        reporter.event({
          kind: "note",
          message: `${name} train: ${shared.length} of ${toRun.length} jobs are identical to jobs of ${owners} in this run; each runs once`,
        });
      }
      const failed =
        own.length > 0
          ? await this.runOwnJobs({ p, toRun: own, sweepSize: jobs.length, knownDataDir: dataDir, dataKey, pool, settle, options, outcome })
          : false;
      let sharedFailed = false;
      (await sharedResults).forEach((result, index) => {
        const job = shared[index]!;
        const base = { key: job.key, params: job.params };
        if (result.state === "succeeded") {
          outcome.jobs.push({
            ...base,
            id: result.id,
            state: "succeeded",
            exitCode: result.exitCode,
            reused: true,
            reason: `identical job ${result.id} of pipeline ${result.pipeline} ran in this run`,
          });
          return;
        }
        sharedFailed = true;
        const identical =
          result.id === null
            ? `the identical job of pipeline ${result.pipeline}`
            : `identical job ${result.id} of pipeline ${result.pipeline}`;
        outcome.jobs.push({
          ...base,
          id: null,
          state: result.state,
          exitCode: null,
          reused: false,
          reason: `not run: ${identical} ${result.state}`,
        });
      });
      const anyFailed = failed || sharedFailed;
      outcome.stages.train = { action: "run", state: anyFailed ? (signal.aborted ? "cancelled" : "failed") : "succeeded" };
      if (!anyFailed) this.recordApplied(p, dataKey ?? null);
      return outcome;
    } finally {
      // A pipeline that stopped before its jobs ran must not leave the others waiting.
      for (const resolve of settle.values())
        resolve({ id: null, state: signal.aborted ? "cancelled" : "failed", exitCode: null, pipeline: name });
    }
  }

  /** Lays out the data, records and runs this pipeline's own train jobs; pushes their outcomes and settles their claims. Returns whether any failed. */
  private async runOwnJobs(sweep: OwnJobs): Promise<boolean> {
    const { p, toRun, sweepSize, knownDataDir, dataKey, pool, settle, options, outcome } = sweep;
    const { reporter, runId } = options;
    const name = p.pipeline.name;
    const envKey = p.keys.env;
    // The data view is read-only only by its permission bits, which root ignores: a
    // write into it would change the shared objects (or, linked, the bundle's own files)
    // for every later job. Each job checks on its way out that the view is as it was
    // when the sweep began; a job that finds it changed fails, and no job starts once
    // a check has found that.
    const data: DataView =
      knownDataDir === undefined && p.dataTree !== undefined
        ? await this.layOutDataBundle(p, p.dataTree)
        : { dir: knownDataDir!, seal: sealTree(knownDataDir!), hashes: this.dataHashes(p), linkedTo: undefined };
    // A mounted view's seal is the bundle's own folder, beside which kaos writes nothing; no job could write through the mount.
    if (data.mount === undefined) markSealed(data.seal);
    await storeTree(this.objects, p.sourceTree, `pipelines.${name}.source`);
    const environment = environmentPath(this.envsDir, envKey);
    // One transaction for the whole sweep: a commit per record cost a 100,000-job sweep about 20 s before its first job.
    const records = this.state.transaction(() =>
      toRun.map((job) =>
        this.state.createJob({
          runId,
          stack: this.stack.name,
          pipeline: name,
          stage: "train",
          key: job.key!,
          params: job.params,
          envKey,
          sourceKey: p.keys.source,
          dataKey: dataKey ?? null,
          paramsKey: job.paramsKey,
          sweepIndex: job.index,
          sweepSize,
          outputDir: null,
          logFile: null,
        }),
      ),
    );
    // As created: read back, each would cost a query before the first job starts.
    for (const record of records) this.report(reporter, record);
    const { resources, parallelism } = p.pipeline;
    const narrower = pool.narrowerThanLimit({
      cpu: resources.cpu,
      memoryBytes: resources.memoryBytes ?? 0,
      gpu: resources.gpu,
      group: name,
      groupLimit: Math.min(parallelism, records.length),
    });
    if (narrower !== undefined) {
      reporter.event({
        kind: "note",
        message: `${name} train: at most ${narrower.jobs} of its ${records.length} jobs at once (parallelism ${parallelism}): ${narrower.why}; ${narrower.fix}`,
      });
    }
    let results: Awaited<ReturnType<typeof this.runTrainJob>>[];
    const ids = new Set(records.map((record) => record.id));
    const entries = new StateEntries(this.stateDir, (id) => ids.has(id) || this.state.getJob(id) !== undefined);
    data.comparison?.expect(ids);
    try {
      const sweepDone = Promise.all(
        records.map(async (record) => {
          let result: Awaited<ReturnType<typeof this.runTrainJob>>;
          try {
            result = await this.runTrainJob(record, p, { environment, data, entries, pool, options });
          } finally {
            data.comparison?.ended(record.id);
          }
          // Pipelines waiting on this key go on as soon as it is done, not when the whole sweep is.
          settle.get(record.key)?.({ id: record.id, state: result.state, exitCode: result.exitCode, pipeline: name });
          settle.delete(record.key);
          return result;
        }),
      );
      // Seen now, so that a job failing at once cannot leave its rejection unhandled while the listings are written.
      sweepDone.catch(() => undefined);
      // Once the first jobs started, while they run: a listing is named by its tree and never changes, so the next
      // plan's diff can use it whatever the sweep's outcome. One that cannot be written now is written by recordApplied.
      await new Promise((resolve) => setImmediate(resolve));
      try {
        this.saveListings(p);
      } catch {
        // told by recordApplied
      }
      results = await sweepDone;
      // A job of the sweep may have written into another's sealed results: those are not trusted.
      const tampered: { id: string; problem: string }[] = [];
      for (const [index, record] of records.entries()) {
        if (results[index]!.state !== "succeeded") continue;
        const problem = resultsProblem(record.id, await checkJobResults(this.stateDir, record.id));
        if (problem !== undefined) tampered.push({ id: record.id, problem });
      }
      for (const { id, problem } of tampered) {
        const reason = `${problem.replace(`job ${id}'s results`, "its results")}; a job of this sweep wrote outside its output directory`;
        this.state.revokeSucceeded([id], reason);
        results = results.map((result, index) => (records[index]!.id === id ? { ...result, state: "failed" as const, reason } : result));
        reporter.event({ kind: "note", message: `${name} train: ${problem}; recorded as failed` });
      }
      // What the watches cannot see (writes through a memory mapping, a lost event): every stat, once per sweep,
      // unless the view's first comparison with the plan started once no job could read the data any more.
      const lastCheckAt = data.comparison?.lastCheckAt;
      const checkedAt = lastCheckAt ?? BigInt(Date.now()) * 1_000_000n;
      const late = data.seal.broken === undefined && lastCheckAt === undefined ? await this.dataSpoiledEveryStat(data) : undefined;
      if (late === undefined && data.seal.broken === undefined) this.refreshBundleStatCache(data, checkedAt);
      if (late !== undefined) {
        const reason = `${dataWrittenReason(data, { written: "during this sweep", changed: "during this sweep" }, late)}; no job of the sweep is trusted`;
        const revoked = this.state.revokeSucceeded(
          records.map((record) => record.id),
          reason,
        );
        results = results.map((result) => (result.state === "succeeded" ? { ...result, state: "failed" as const, reason } : result));
        reporter.event({ kind: "note", message: `${name} train: ${reason} (${revoked} succeeded jobs recorded as failed)` });
      }
      // What the watches of .kaos/ did not hear of (a lost event): one listing, once per sweep.
      const unheard = entries.finish();
      if (unheard.length > 0) {
        const reason = `${unheard.join(", ")} appeared in kaos's state directory during this sweep; a job writes only into KAOS_OUTPUT_DIR (left there for you to look at); no job of the sweep is trusted`;
        const revoked = this.state.revokeSucceeded(
          records.map((record) => record.id),
          reason,
        );
        results = results.map((result) => (result.state === "succeeded" ? { ...result, state: "failed" as const, reason } : result));
        reporter.event({ kind: "note", message: `${name} train: ${reason} (${revoked} succeeded jobs recorded as failed)` });
      }
    } finally {
      entries.close();
      releaseSeal(data.seal);
    }
    let failed = false;
    records.forEach((record, index) => {
      const result = results[index]!;
      if (result.state !== "succeeded") failed = true;
      outcome.jobs.push({
        id: record.id,
        key: record.key,
        params: record.params,
        state: result.state,
        exitCode: result.exitCode,
        reused: false,
        reason: result.reason,
      });
    });
    return failed;
  }

  /**
   * Lays out and seals the view of a local data bundle (see data-view.ts for
   * the modes). A linked view, made now or kept from an earlier run, is
   * checked against what the plan hashed once sealed, so that a file edited
   * since is found before any job sees it; a kept view that fails is laid out
   * again once, a fresh one is an error naming the file.
   */
  private async layOutDataBundle(p: PipelinePlan, tree: TreeHash): Promise<DataView> {
    const where = `pipelines.${p.pipeline.name}.data`;
    const dir = join(this.stateDir, "snapshots", tree.hash);
    const hashes = this.dataHashes(p);
    const wanted = this.dataViews();
    const kind = viewKind(dir);
    const cache = this.state.readonly ? undefined : this.state.loadStatCache(tree.root);
    const savedAt = this.state.readonly ? undefined : this.state.statCacheSavedAt(tree.root);
    // A copy laid out earlier (by a stack that asks for copies) isolates at least as well as a mount: it is kept. Clones isolate better.
    if (wanted === "mount" && kind !== "copy" && !clonesBundle(this.objects, tree)) {
      const mount = await mountNamespace(this.objects.tmpPath("mount-probe"), tree.root);
      const view = mount === undefined ? undefined : await this.mountedView(where, tree, dir, hashes, mount, cache, savedAt);
      if (view !== undefined) return view;
    }
    const mode = wanted === "copy" || kind === "copy" ? "copy" : dataViewMode(this.objects, tree);
    if (mode !== "link") {
      // A view linked to the bundle's files while they were on this device may hold edits since: not reused.
      if (kind === "linked" || kind === "mounted") removeTree(dir);
      await storeTree(this.objects, tree, where);
      materializeTree(this.objects, tree, dir, { readonlyDirs: true });
      return { dir, seal: sealTree(dir), hashes, linkedTo: undefined };
    }
    if (kind === "mounted") removeTree(dir);
    for (let attempt = 0; ; attempt++) {
      const kept = existsSync(dir);
      const laidOutNow = !isMaterialized(dir);
      materializeTree(this.objects, tree, dir, { readonlyDirs: true, linkFrom: tree.root });
      const { seal, unverified, pending } = sealLinkedView(tree, dir, cache, savedAt, { laidOutNow });
      if (unverified.length === 0) {
        const bundle = cache !== undefined && savedAt !== undefined ? { tree, cache, savedAt, pending } : undefined;
        return { dir, seal, hashes, linkedTo: tree.root, bundle };
      }
      releaseSeal(seal);
      removeTree(dir);
      if (!kept || attempt > 0) throw this.changedSinceHashed(where, tree, unverified);
    }
  }

  /**
   * The bundle's own folder, sealed and checked against what the plan hashed,
   * to be mounted at `dir` for each job; undefined when a mount would not show
   * the folder as its tree has it (see `sealBundleFolder`: it is linked then).
   */
  private async mountedView(
    where: string,
    tree: TreeHash,
    dir: string,
    hashes: DataView["hashes"],
    mount: MountNamespace,
    cache: StatCacheMap | undefined,
    savedAt: bigint | undefined,
  ): Promise<DataView | undefined> {
    const sealed = sealBundleFolder(tree, cache, savedAt);
    if ("unmountable" in sealed) return undefined;
    if (sealed.unverified.length > 0) {
      releaseSeal(sealed.seal);
      throw this.changedSinceHashed(where, tree, sealed.unverified);
    }
    makeMountPoint(dir);
    const point = statSync(dir, { bigint: true });
    // The seal's root is the bundle's real path, which each job mounts: a symlinked bundle retargeted meanwhile moves no job's data.
    const view: DataView = {
      dir,
      seal: sealed.seal,
      hashes,
      linkedTo: tree.root,
      mount: { namespace: mount, point: `${point.dev}:${point.ino}` },
    };
    view.comparison = new SweepComparison((inBackground) => this.everyStatChanged(view, { inBackground }));
    return view;
  }

  /** The error for bundle files found changed after the plan hashed them, before any job ran. */
  private changedSinceHashed(where: string, tree: TreeHash, unverified: readonly string[]): KaosError {
    // Edited after the plan, perhaps through the links of a view: the next plan walks it (see dataSpoiled).
    this.state.forgetMonitorToken(tree.root);
    return new KaosError(
      "IO",
      `${where}: ${unverified.map((path) => join(tree.root, path)).join(", ")} changed after kaos hashed ${unverified.length === 1 ? "it" : "them"}, before any job ran`,
      { hint: "rerun `kaos up`: the next plan hashes the new content" },
    );
  }

  /**
   * Linking a bundle's files moved their inode change times: the bundle's stat
   * cache takes the new ones (see `refreshedStatCache`), so that the next plan
   * reads none of them again. `checkedAt` was taken before the sweep's last
   * check of every stat of the view.
   */
  private refreshBundleStatCache(data: DataView, checkedAt: bigint): void {
    if (data.bundle === undefined || this.state.readonly) return;
    const { tree, cache, savedAt, pending } = data.bundle;
    // Another plan saved since: its cache is newer than what this one would write.
    if (this.state.statCacheSavedAt(tree.root) !== savedAt) return;
    // The monitor's token stays true for the refreshed cache: it names a point before the links were made, so
    // the monitor reports every file whose change time they moved, and the plan finds it matches the new entry.
    const monitorToken = this.state.monitorTokenOf(tree.root);
    // Made while the view was sealed, and still true when no check took a stat anew since.
    if (pending !== undefined && data.seal.resealed === 0) {
      if (pending.updated === 0) return;
      this.saveRefreshedStatCache(tree.root, pendingStatCacheRows(pending, tree), pendingCacheTime(pending, checkedAt), monitorToken);
      return;
    }
    const refreshed = refreshedStatCache(tree, data.seal, cache, savedAt, checkedAt);
    if (refreshed !== undefined) this.saveRefreshedStatCache(tree.root, refreshed, checkedAt, monitorToken);
  }

  /** Saves a bundle's refreshed stat cache: a blob patched in place gets its old change times back if it cannot be saved. */
  private saveRefreshedStatCache(
    root: string,
    refreshed: { entries: StatCacheEntry[]; treeHash: string | undefined } | { blob: Buffer; count: number; undo?: () => void },
    cacheTimeNs: bigint,
    monitorToken: string | undefined,
  ): void {
    if (!("blob" in refreshed)) {
      this.state.saveStatCache(root, refreshed.entries, cacheTimeNs, refreshed.treeHash, monitorToken);
      return;
    }
    try {
      this.state.saveStatCacheBlob(root, refreshed.blob, refreshed.count, cacheTimeNs, monitorToken);
    } catch (error) {
      refreshed.undo?.();
      throw error;
    }
  }

  /**
   * The content hash of every file of a pipeline's data view, by path. A
   * bundle's are looked up only once a check finds a file changed, which most
   * sweeps never do: its rows are searched in place then.
   */
  private dataHashes(p: PipelinePlan): { get(path: string): string | undefined } {
    if (p.dataTree !== undefined) return treeHashLookup(p.dataTree);
    const hashes = new Map<string, string>();
    if (p.manifest !== undefined && p.pipeline.data.kind === "manifest") {
      const lock = readLock(p.pipeline.data.path);
      const entries = p.manifest.entries;
      for (let index = 0; index < entries.count; index++) {
        const hash = entries.pinnedHash(index, lock);
        if (hash !== undefined) hashes.set(entries.path(index), hash);
      }
    }
    return hashes;
  }

  /**
   * The paths of a job's data view that changed (at most five), or undefined when it is as
   * it was. The first time a change is seen, the changed objects and every view
   * that shares them are removed, so that nothing after this trusts them: the
   * next run stores and lays them out again from the bundle (or downloads them).
   */
  private dataSpoiled(data: DataView): string[] | undefined {
    const known = data.seal.broken !== undefined;
    return this.dataChanged(data, known, checkSeal(data.seal, 5, { confirm: sameContent(data) }));
  }

  /** `dataSpoiled` once every stat is compared, as a sweep's last check does: what the watches cannot see (a write through a memory mapping, a lost event). */
  private async dataSpoiledEveryStat(data: DataView): Promise<string[] | undefined> {
    const known = data.seal.broken !== undefined;
    return this.dataChanged(data, known, await this.everyStatChanged(data));
  }

  /** The paths of a view found changed once every stat is compared (see `checkSealEveryStat`). */
  private everyStatChanged(data: DataView, options: { inBackground?: boolean } = {}): Promise<string[]> {
    return checkSealEveryStat(data.seal, 5, { confirm: sameContent(data), ...options });
  }

  /** What `dataSpoiled` does with the paths a check found `changed`; `known` says the seal was broken before it. */
  private dataChanged(data: DataView, known: boolean, changed: string[]): string[] | undefined {
    if (changed.length === 0) return undefined;
    // A write through a view's links is an event of the view's folders, not of the bundle's: the file
    // system monitor cannot have seen it, so the next plan walks the bundle rather than ask it.
    if (data.linkedTo !== undefined) this.state.forgetMonitorToken(data.linkedTo);
    if (!known) {
      const inodes = new Set<string>();
      for (const path of changed) {
        const signature = data.seal.stats.get(path);
        if (!signature?.startsWith("f:")) continue;
        const inode = signature.split(":")[1]!;
        inodes.add(inode);
        // The object behind the file, when the file is one (a linked view's are the bundle's own).
        const hash = data.hashes.get(path);
        if (hash === undefined) continue;
        try {
          if (String(lstatSync(this.objects.pathOf(hash), { bigint: true }).ino) === inode)
            rmSync(this.objects.pathOf(hash), { force: true });
        } catch {
          // not stored
        }
      }
      // A mount point holds nothing to distrust, and the sweep's other jobs may have the bundle mounted on it.
      discardViews(
        [join(this.stateDir, "snapshots"), join(this.stateDir, "data")],
        data.mount === undefined ? data.dir : undefined,
        inodes,
      );
    }
    return changed;
  }

  /**
   * Aborted once the record of `jobId` ends while it runs here (`kaos train
   * kill`), with the reason it ended: for work done in this process, which
   * has no process of its own to be signalled.
   */
  private watchRecord(jobId: string): { signal: AbortSignal; stop(): void } {
    const ended = new AbortController();
    const timer = setInterval(() => {
      const reason = this.endedElsewhere(jobId);
      if (reason === undefined) return;
      clearInterval(timer);
      ended.abort(new KaosError("JOBS_FAILED", reason));
    }, RECORD_CHECK_MS);
    timer.unref();
    return { signal: ended.signal, stop: () => clearInterval(timer) };
  }

  /** Why a job this process runs was ended by another process (`kaos train kill`), or undefined while it has not been. */
  private endedElsewhere(jobId: string): string | undefined {
    const job = this.state.getJob(jobId);
    return job === undefined ? undefined : endedReason(job);
  }

  /** The listings of a pipeline's trees, which the next plan diffs against once they are applied (each written once). */
  private saveListings(p: PipelinePlan): void {
    saveTreeListing(this.stateDir, p.sourceTree);
    if (p.dataTree) saveTreeListing(this.stateDir, p.dataTree);
  }

  /** Remembers what was applied, with the trees' listings for the next plan's diff. */
  private recordApplied(p: PipelinePlan, dataKey: string | null): void {
    this.saveListings(p);
    this.state.updateApplied(this.stack.name, (applied) => {
      applied[p.pipeline.name] = appliedOf(p, dataKey);
    });
  }

  private async runBuild(p: PipelinePlan, options: ExecuteOptions): Promise<NonNullable<PipelineOutcome["stages"]["build"]>> {
    const { reporter, signal, runId } = options;
    const envKey = p.keys.env;
    const job = this.state.createJob({
      runId,
      stack: this.stack.name,
      pipeline: p.pipeline.name,
      stage: "build",
      key: envKey,
      params: {},
      envKey,
      sourceKey: p.keys.source,
      dataKey: null,
      paramsKey: null,
      sweepIndex: null,
      sweepSize: null,
      outputDir: null,
      logFile: null,
    });
    const paths = jobPaths(this.stateDir, job.id);
    mkdirSync(paths.dir, { recursive: true });
    this.state.markRunning(job.id, process.pid);
    this.record(reporter, job.id);
    const control = new JobControl(signal, this.running, job);
    try {
      await storeTree(this.objects, p.sourceTree, `pipelines.${p.pipeline.name}.source`);
      materializeTree(this.objects, p.sourceTree, paths.source, { copy: true });
      const python = await resolvePython(p.bundle.pythonVersion, this.stateDir);
      if (python.note) reporter.event({ kind: "note", message: `${p.pipeline.name} build: ${python.note}` });
      await buildEnvironment({
        envsDir: this.envsDir,
        envKey,
        python,
        modelDir: join(paths.source, "model"),
        logFile: paths.log,
        jobId: job.id,
        env: { ...process.env, PIP_DISABLE_PIP_VERSION_CHECK: "1" },
        onProcess: (running) => control.attach(running),
        // `kaos train kill` of the build records it cancelled and stops its step; the next step must not start.
        isCancelled: () => {
          const ended = control.cancelled ? undefined : this.endedElsewhere(job.id);
          if (ended !== undefined) control.cancel(ended);
          return control.cancelled;
        },
      });
      if (!this.state.finishJob(job.id, { state: "succeeded", exitCode: 0 })) {
        // Killed as it finished: its word stands, and no job trains on this build in this run.
        this.record(reporter, job.id);
        return { action: "run", state: "cancelled", jobId: job.id, reason: this.endedElsewhere(job.id) ?? "cancelled" };
      }
      this.record(reporter, job.id);
      return { action: "run", state: "succeeded", jobId: job.id };
    } catch (error) {
      const ended = control.cancelled ? undefined : this.endedElsewhere(job.id);
      const state = control.cancelled || ended !== undefined ? "cancelled" : "failed";
      const reason = control.reason ?? ended ?? describeError(error);
      this.state.finishJob(job.id, { state, exitCode: null, reason });
      this.record(reporter, job.id, state === "failed" ? `see kaos train logs ${job.id}` : undefined);
      return { action: "run", state, jobId: job.id, reason };
    } finally {
      control.release(job.id);
    }
  }

  private async runTrainJob(
    record: JobRecord,
    p: PipelinePlan,
    context: { environment: string; data: DataView; entries: StateEntries; pool: ResourcePool; options: ExecuteOptions },
  ): Promise<{ state: "succeeded" | "failed" | "cancelled"; exitCode: number | null; reason: string | null }> {
    const { reporter, signal } = context.options;
    const { resources, parallelism, name } = p.pipeline;
    const paths = jobPaths(this.stateDir, record.id);
    const control = new JobControl(signal, this.running, record);
    const finish = (state: "succeeded" | "failed" | "cancelled", exitCode: number | null, reason: string | null) => {
      const { changed, job } = this.state.recordFinished(record.id, { state, exitCode, reason });
      this.report(reporter, job, state === "failed" ? `see kaos train logs ${record.id}` : undefined);
      // `kaos train kill` may have recorded the end first; its word stands.
      return changed
        ? { state, exitCode, reason }
        : { state: job.state as "succeeded" | "failed" | "cancelled", exitCode: job.exitCode, reason: job.reason };
    };
    let lease: Awaited<ReturnType<typeof context.pool.acquire>>;
    try {
      lease = await context.pool.acquire(
        { cpu: resources.cpu, memoryBytes: resources.memoryBytes ?? 0, gpu: resources.gpu, group: name, groupLimit: parallelism },
        control.queueSignal,
      );
    } catch (error) {
      control.release(record.id);
      return finish("cancelled", null, control.reason ?? describeError(error));
    }
    try {
      mkdirSync(paths.out, { recursive: true });
      materializeTree(this.objects, p.sourceTree, paths.source, { copy: true });
      writeFileSync(paths.params, `${canonicalJson(record.params)}\n`);
      const modelDir = join(paths.source, "model");
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        PATH: `${join(context.environment, "bin")}${delimiter}${process.env.PATH ?? ""}`,
        VIRTUAL_ENV: context.environment,
        PYTHONUNBUFFERED: "1",
        KAOS_OUTPUT_DIR: paths.out,
        KAOS_DATA_DIR: context.data.dir,
        KAOS_PARAMS_FILE: paths.params,
        KAOS_JOB_ID: record.id,
        KAOS_PIPELINE: name,
        CUDA_VISIBLE_DEVICES: lease.gpus.join(","),
      };
      delete env.PYTHONHOME;
      if (control.reason !== undefined) return finish("cancelled", null, control.reason);
      // Cancelled while it waited (`kaos train kill` of a queued job): it never starts.
      const endedMeanwhile = this.endedElsewhere(record.id);
      if (endedMeanwhile !== undefined) return finish("cancelled", null, endedMeanwhile);
      // Checked again only when a watch saw something since (or without watches, where
      // each job's end compares every stat): a job still running may have written.
      const seal = context.data.seal;
      if (seal.broken !== undefined || seal.stirred) this.dataSpoiled(context.data);
      if (seal.broken !== undefined) {
        const when = { written: "by a job of this sweep", changed: "before this job started" };
        return finish("failed", null, `not started: ${dataWrittenReason(context.data, when, seal.broken)}`);
      }
      const gone = mountPointGone(context.data);
      if (gone !== undefined) return finish("failed", null, `not started: ${gone}`);
      const entriesMark = context.entries.mark();
      const { mount } = context.data;
      const launch =
        mount !== undefined
          ? mount.namespace.wrap(context.data.seal.root, context.data.dir, join(modelDir, "train"), [paths.out])
          : { command: join(modelDir, "train"), args: [paths.out] };
      const current = spawnLogged({
        ...launch,
        cwd: modelDir,
        env,
        logFile: paths.log,
        memoryLimitBytes: resources.memoryBytes,
        memoryLimitText: resources.memory,
        jobId: record.id,
      });
      control.attach(current);
      // Killed between the check above and now: the process is stopped at once.
      const running = this.state.recordRunning(record.id, current.pid);
      if (!running.changed) control.cancel(endedReason(running.job) ?? "cancelled");
      this.report(reporter, running.job);
      const result = await current.done;
      // Told with the job's result, since the log that would say it could not be written.
      let logNote = result.logError === undefined ? "" : `; its log could not be written (${result.logError})`;
      let unsealed: string | undefined;
      try {
        const seal = await sealJobResults(this.stateDir, record.id, p.sourceTree);
        if (seal.sourceChangedByJob !== null) {
          logNote += `; it changed its own copy of the source while it ran (${describeChanges(seal.sourceChangedByJob)}): \`kaos train get --code\` gives the copy as it left it`;
        }
      } catch (error) {
        unsealed = `its results could not be sealed: ${describeError(error)}`;
      }
      const intruded = context.entries.foreignSince(entriesMark);
      if (control.reason !== undefined) return finish("cancelled", result.exitCode, control.reason + logNote);
      const lost = mountPointGone(context.data);
      if (lost !== undefined) return finish("failed", result.exitCode, lost + logNote);
      // The mounted view's first comparison with the plan: a change it finds breaks the seal.
      const comparison = context.data.comparison;
      // Whether the watches heard of a change while the job ran, before the comparison takes the stats again.
      const heard = context.data.seal.stirred;
      comparison?.ended(record.id);
      const found = await comparison?.result();
      // Whatever shares the changed files is discarded once, as the sweep's last check would.
      if (found !== undefined && found.length > 0 && comparison!.firstToLearn()) this.dataChanged(context.data, false, found);
      const spoiled = this.dataSpoiled(context.data);
      if (spoiled !== undefined) {
        // What only the comparison with the plan found may have changed before the job started.
        const since =
          !heard && found !== undefined && found.length > 0 ? "after kaos hashed it, by the end of this job" : "while this job ran";
        const when = { written: since, changed: since };
        return finish("failed", result.exitCode, dataWrittenReason(context.data, when, spoiled) + logNote);
      }
      if (unsealed !== undefined) return finish("failed", result.exitCode, unsealed + logNote);
      if (intruded.length > 0) {
        const reason = `${intruded.join(", ")} appeared in kaos's state directory while this job ran; a job writes only into KAOS_OUTPUT_DIR (left there for you to look at)`;
        return finish("failed", result.exitCode, reason + logNote);
      }
      if (result.oomKilled) return finish("failed", result.exitCode, (result.reason ?? "OOMKilled") + logNote);
      if (result.exitCode === 0) return finish("succeeded", 0, logNote === "" ? null : `succeeded${logNote}`);
      const reason = result.reason ?? (result.signal ? `killed by ${result.signal}` : `exited with code ${result.exitCode}`);
      return finish("failed", result.exitCode, reason + logNote);
    } catch (error) {
      return finish(control.cancelled ? "cancelled" : "failed", null, control.reason ?? describeError(error));
    } finally {
      lease.release();
      control.release(record.id);
    }
  }
}
