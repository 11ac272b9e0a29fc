/**
 * What every backend does for the commands, and the only way core and the
 * CLI reach one: `up`, `plan`, `watch`, `render` and every `train` command
 * but `deploy` ask a `Backend`, which `backends/index.ts` makes from the
 * stack's `backend`.
 * A backend returns values and emits run events (events.ts); it never prints.
 */
import type { OwnedFolderChanges } from "./destination.js";
import type { Reporter } from "./events.js";
import type { ManifestEntries, ManifestLock } from "./manifest.js";
import type { JobMetrics } from "./metrics.js";
import type { Plan, PlanOracle } from "./plan.js";
import type { JobFilter, JobRecord, JobState, Stage, StateStore } from "./state.js";
import type { Sweep, SweepRow } from "./sweep.js";
import type { HyperparamSet, ResolvedConfig, ResolvedStack } from "./types.js";

/** Each manifest's entries and lock as checkInputs read them, by manifest path. */
export type CheckedManifests = ReadonlyMap<string, { entries: ManifestEntries; lock: ManifestLock | undefined }>;

export interface ExecuteOptions {
  plan: Plan;
  runId: string;
  reporter: Reporter;
  signal: AbortSignal;
  refresh?: boolean;
}

export interface PipelineOutcome {
  name: string;
  stages: Partial<
    Record<
      "ingest" | "build" | "train",
      { action: "run" | "skip"; state: "succeeded" | "failed" | "cancelled" | "skipped"; jobId?: string; reason?: string }
    >
  >;
  jobs: {
    id: string | null;
    key: string | null;
    params: Record<string, unknown>;
    state: string;
    exitCode: number | null;
    reused: boolean;
    reason: string | null;
  }[];
}

export interface ExecuteResult {
  succeeded: boolean;
  cancelled: boolean;
  pipelines: PipelineOutcome[];
}

/** What crash recovery did with the work in progress of kaos processes elsewhere (paths under the state directory). */
export interface CrashRecovery {
  /** Removed: made by the kaos whose origin was given as stale. */
  removedElsewhere: string[];
  /** Left: made by a kaos on another machine or in another container, which may still be at work. */
  keptElsewhere: string[];
}

/** A backend that runs jobs in this process: the engine's `apply` (and so `kaos watch`) drives it. */
export interface JobRunner {
  /**
   * Stops what a dead kaos left running, and clears what it was writing when it
   * died. What a kaos on another machine (or container) sharing the project is
   * writing is left, unless `staleOrigin` names its origin tag (`originTag`):
   * its lock was broken, so it is known to have stopped.
   */
  recoverAfterCrash(interrupted: readonly JobRecord[], options?: { staleOrigin?: string }): Promise<CrashRecovery>;
  /** Refuses a plan this machine cannot run (a job wanting more CPUs than there are). */
  checkResources(plan: Plan): void;
  execute(options: ExecuteOptions): Promise<ExecuteResult>;
  stopAll(reason: string): Promise<void>;
  /** Cancels the running jobs `select` picks, recording `reason`. */
  cancel(reason: string, select?: (job: JobRecord) => boolean): void;
}

/** What applying a plan changes outside kaos (Pulumi's preview or update). */
export interface ResourceChange {
  op: string;
  type: string;
  name: string;
  urn: string;
}

export interface ResourceChanges {
  stack: string;
  create: number;
  update: number;
  delete: number;
  replace: number;
  same: number;
  /** Steps that change something, in the order they were reported. */
  resources: ResourceChange[];
  /** What was checked before the change started. */
  checked?: { kubeContext: string; kubeServer: string; pachdVersion: string };
}

export interface PlanRequest {
  force?: boolean | undefined;
  refresh?: boolean | undefined;
  /** What checkInputs read just before; without it the plan reads the manifests itself. */
  manifests?: CheckedManifests | undefined;
}

export interface UpRequest extends PlanRequest {
  command: string;
  reporter: Reporter;
  signal: AbortSignal;
  /** Called when what a crash left is settled and the plan is being made: until `onPlan`, stopping loses nothing. */
  onPlanning?: () => void;
  /** Called with the plan before jobs run in this process. */
  onPlan?: (plan: Plan) => void;
}

export type UpOutcome =
  /** Jobs ran here and were recorded as run `runId`. */
  | { kind: "run"; runId: string; plan: Plan; result: ExecuteResult }
  /** The plan was handed to a system that runs the jobs itself. */
  | { kind: "applied"; plan: Plan; changes: ResourceChanges };

/** A job that runs outside kaos, as its backend reports it. */
export interface RemoteJob {
  id: string;
  pipeline: string;
  stage: Stage;
  state: string;
  params: HyperparamSet;
  startedAt: string | null;
  finishedAt: string | null;
  exitCode: number | null;
}

/** What `kaos train list` narrows the jobs to. */
export type JobListFilter = Pick<JobFilter, "pipeline" | "state" | "runId">;

export interface JobListRequest {
  filter?: JobListFilter;
  limit?: number | undefined;
}

export type JobListing =
  /** Newest first; `total` counts every match when `limit` cut the list short. */
  | {
      kind: "records";
      jobs: JobRecord[];
      total?: number;
      /** The listed jobs still recorded queued or running whose kaos is gone: nobody will end them but the next up. */
      abandoned: ReadonlySet<string>;
    }
  | { kind: "remote"; stack: string; jobs: RemoteJob[]; shortId(id: string): string };

export type LogOutput =
  /** Bytes of the job's log as it wrote them. */
  | { kind: "chunk"; data: Uint8Array }
  /** One line of a log kept by the system that ran the job. */
  | { kind: "line"; time: string | undefined; user: boolean; message: string }
  /** Something kaos says about the log (for stderr). */
  | { kind: "note"; message: string }
  | LogEnd;

/**
 * How a followed job ended: the last output of `jobLogs` with `follow`, once
 * the job has ended (at once when it had already). `state` is still `running`
 * or `queued` when following stopped without an end to tell (the process
 * that ran the job is gone, the log stream ended first), and `reason` says why.
 */
export interface LogEnd {
  kind: "end";
  /** The job's id as `kaos train info` takes it. */
  job: string;
  state: JobState;
  /** The script's exit code, when it exited and the backend knows it. */
  exitCode: number | null;
  /** Why it failed or was cancelled (an exit code, a signal, a kill), when known. */
  reason: string | null;
}

/** Paths that differ between two states of a tree; `changed` includes a change of the executable bit alone. */
export interface TreeChanges {
  added: string[];
  changed: string[];
  removed: string[];
}

/** Whether a job's results are as it left them (the local backend's `checkJobResults`). */
export type ResultsCheck =
  | { sealed: false; reason: string }
  | {
      sealed: true;
      /** Nothing changed since the seal: the results are what the job left. */
      intact: boolean;
      sealedAt: string;
      /** Changes since the seal, or null when none. */
      output: TreeChanges | null;
      source: TreeChanges | null;
      /** Set when the seal itself cannot be read: nothing about the results is known. */
      problem: string | null;
      /** What the job changed in its own copy of the source while it ran (not a seal break). */
      sourceChangedByJob: TreeChanges | null;
    };

/** What `kaos train info JOB` shows of a job its backend records itself. */
export interface RecordedJobInfo {
  kind: "record";
  job: JobRecord;
  outputDir: string;
  metrics: JobMetrics;
  /** Per field of the per-step series: how far it got (`metrics` already names what it skipped). */
  series: Record<string, { points: number; lastStep: number }>;
  /** Undefined for a job that leaves no results (build, ingest); `problem` says why they are not trusted. */
  results: { check: ResultsCheck; problem: string | undefined } | undefined;
  /** The packages of its environment; undefined when they are not known. */
  packages: { names: string[]; file: string } | undefined;
  /** Its pipeline's current sweep, or, with `note` saying why, the train jobs of its own run. */
  sweep: { rows: SweepRow[]; note: string | undefined };
  /** Recorded queued or running by a kaos that is gone: nobody will end it but the next up. */
  abandoned: boolean;
}

/** A job that runs outside kaos, as its backend reports it for `kaos train info JOB`. */
export interface RemoteJobInfo {
  kind: "remote";
  stack: string;
  job: RemoteJob;
  shortId(id: string): string;
  /** Where its outputs are kept, in the words of the system that ran it; undefined when it has none. */
  outputs: string | undefined;
}

export type JobInfo = RecordedJobInfo | RemoteJobInfo;

export interface FetchOutputsRequest {
  job: string;
  /** The destination (a new or empty directory); default `./<job id>`. */
  outDir: string | undefined;
  /** Also the source snapshot the job ran. */
  code: boolean;
  /** Also the job's params.json. */
  params: boolean;
  /** Copy results that changed after the job ended anyway. */
  force: boolean;
}

export interface FetchedOutputs {
  id: string;
  destination: string;
  /** What was copied anyway or left out, for stderr. */
  notes: string[];
}

export interface Backend extends PlanOracle {
  /** The stack's `backend`. */
  readonly kind: string;
  /** Set when jobs run in this process; `kaos watch` and `train deploy` need it. */
  readonly runner: JobRunner | undefined;
  /** kaos's plan on this backend: what runs and why. */
  plan(request: PlanRequest): Promise<Plan>;
  /** What applying `plan` would change outside kaos; absent on a backend that changes nothing outside kaos. */
  preview?(plan: Plan, request: { refresh?: boolean | undefined; reporter: Reporter }): Promise<ResourceChanges>;
  up(request: UpRequest): Promise<UpOutcome>;
  /**
   * What the decisions of `plan`, which had nothing to do, read beyond the
   * config, the bundles and the state store: files to compare by their stat,
   * trees to compare file by file, and the runtime each Python version
   * resolves to; or why that cannot be told from files (core/up-to-date-record.ts).
   * Absent on a backend whose plan asks more than files.
   */
  settledInputs?(plan: Plan): SettledInputs | string;
  listJobs(request: JobListRequest): Promise<JobListing>;
  /** A job's log; with `follow`, until the job ends, then how it ended (a `LogEnd`). */
  jobLogs(request: { job: string; follow: boolean }): AsyncIterable<LogOutput>;
  /**
   * A pipeline's current sweep: every combination of its grid now, with the
   * job last recorded for each. `command` names what asks, for a refusal.
   */
  sweep(request: { pipeline: string; command: string }): Promise<Sweep>;
  /** What is known of one job (an id or an unambiguous prefix). */
  jobInfo(request: { job: string }): Promise<JobInfo>;
  /** Copies a train job's outputs (and, asked, its code and params) to a directory. */
  fetchOutputs(request: FetchOutputsRequest): Promise<FetchedOutputs>;
  /** Stops a queued or running job, recorded as cancelled; answers its id. */
  killJob(request: { job: string }): Promise<{ id: string }>;
  /** Writes what would be applied, offline, into a folder it owns; says what it wrote and removed. */
  render(request: { outDir: string }): Promise<RenderedFolder>;
}

/** See `Backend.settledInputs`. */
export interface SettledInputs {
  files: string[];
  trees: string[];
  runtimes: { wanted: string | null; runtime: string }[];
}

/** What `render` did to its folder: the files it wrote (absolute, sorted), and what it removed or left of an earlier render. */
export interface RenderedFolder extends OwnedFolderChanges {
  files: string[];
}

/** What a backend is made from. */
export interface BackendContext {
  config: ResolvedConfig;
  stack: ResolvedStack;
  state: StateStore;
}

/** Makes the backend of a stack: `backends/index.ts` is the one implementation, the engine takes it as a parameter. */
export type BackendFactory = (context: BackendContext) => Promise<Backend>;

/** The jobs a store records, for `request`; only `stack`'s when given. */
export function listRecords(state: StateStore, request: JobListRequest, stack?: string): JobListing {
  const filter: JobFilter = { ...request.filter, ...(stack !== undefined ? { stack } : {}) };
  const jobs = state.listJobs({ ...filter, ...(request.limit !== undefined ? { limit: request.limit } : {}) });
  const abandoned = abandonedJobs(state, jobs);
  return request.limit !== undefined && jobs.length === request.limit
    ? { kind: "records", jobs, total: state.countJobs(filter), abandoned }
    : { kind: "records", jobs, abandoned };
}

/** The ids of `jobs` recorded queued or running by a kaos that is gone (killed, crashed), each run asked once. */
export function abandonedJobs(state: StateStore, jobs: readonly JobRecord[]): Set<string> {
  const ownerAlive = new Map<string, boolean>();
  const abandoned = new Set<string>();
  for (const job of jobs) {
    if (job.state !== "running" && job.state !== "queued") continue;
    const alive = ownerAlive.get(job.runId) ?? state.runOwnerAlive(job.runId);
    ownerAlive.set(job.runId, alive);
    if (!alive) abandoned.add(job.id);
  }
  return abandoned;
}
