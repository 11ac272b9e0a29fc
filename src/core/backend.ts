/**
 * What every backend does for the commands, and the only way core and the
 * CLI reach one: `up`, `plan`, `watch`, `train list/logs` and `render` ask a
 * `Backend`, which `backends/index.ts` makes from the stack's `backend`.
 * A backend returns values and emits run events (events.ts); it never prints.
 */
import type { Reporter } from "./events.js";
import type { ManifestEntry, ManifestLock } from "./manifest.js";
import type { Plan, PlanOracle } from "./plan.js";
import type { JobFilter, JobRecord, Stage, StateStore } from "./state.js";
import type { HyperparamSet, ResolvedConfig, ResolvedStack } from "./types.js";

/** Each manifest's entries and lock as checkInputs read them, by manifest path. */
export type CheckedManifests = ReadonlyMap<string, { entries: ManifestEntry[]; lock: ManifestLock | undefined }>;

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

/** A backend that runs jobs in this process: the engine's `apply` (and so `kaos watch`) drives it. */
export interface JobRunner {
  /** Stops what a dead kaos left running, and clears what it was writing when it died. */
  recoverAfterCrash(interrupted: readonly JobRecord[]): Promise<void>;
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
  | { kind: "records"; jobs: JobRecord[]; total?: number }
  | { kind: "remote"; stack: string; jobs: RemoteJob[]; shortId(id: string): string };

export type LogOutput =
  /** Bytes of the job's log as it wrote them. */
  | { kind: "chunk"; data: Uint8Array }
  /** One line of a log kept by the system that ran the job. */
  | { kind: "line"; time: string | undefined; user: boolean; message: string }
  /** Something kaos says about the log (for stderr). */
  | { kind: "note"; message: string };

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
  listJobs(request: JobListRequest): Promise<JobListing>;
  jobLogs(request: { job: string; follow: boolean }): AsyncIterable<LogOutput>;
  /** Writes what would be applied, offline; returns the files written. */
  render(request: { outDir: string }): Promise<string[]>;
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
  return request.limit !== undefined && jobs.length === request.limit
    ? { kind: "records", jobs, total: state.countJobs(filter) }
    : { kind: "records", jobs };
}
