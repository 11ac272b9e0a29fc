/**
 * `kaos train list` and `kaos train logs` on a kubernetes stack, read from
 * Pachyderm through pachd's API.
 *
 * A Pachyderm job of a build or ingest pipeline is one kaos job. A train
 * job runs one datum per combination of the grid; each datum is one kaos
 * job whose id is its job key (the name of its params file). A datum that
 * Pachyderm skipped because an earlier job already ran it is shown once,
 * from the job that ran it.
 */
import type { LogEnd } from "../../core/backend.js";
import { KaosError } from "../../core/errors.js";
import type { HyperparamSet, ResolvedStack } from "../../core/types.js";
import {
  PachdClient,
  PachdError,
  pipelineRef,
  type CommitRef,
  type DatumInfo,
  type JobInfo,
  type JobRef,
  type PachydermDatumState,
  type PachydermJobState,
} from "./pachd.js";
import { DEFAULT_PROJECT, DEFAULT_TOKEN_ENV, kubernetesStack, pachydermName } from "./settings.js";
import type { Stage } from "./specs.js";

export type ClusterJobState = "queued" | "running" | "succeeded" | "failed" | "cancelled";

/** The shape of `kaos train list --json`. */
export interface ClusterJob {
  id: string;
  pipeline: string;
  stage: Stage;
  state: ClusterJobState;
  params: HyperparamSet;
  startedAt: string | null;
  finishedAt: string | null;
  exitCode: number | null;
}

export interface ClusterJobsOptions {
  fetch?: typeof fetch;
  /** Environment read for the token. Default process.env. */
  env?: NodeJS.ProcessEnv;
  /** Only this workspace's pipelines (recommended: the project's workspace). */
  workspace?: string;
  /** Combinations by job key, when the caller knows them; others are read from the params repo. */
  params?: ReadonlyMap<string, HyperparamSet>;
}

export interface ClusterLogLine {
  time: string | undefined;
  /** True for what the script printed, false for Pachyderm's own worker lines. */
  user: boolean;
  message: string;
}

export interface Located {
  job: ClusterJob;
  pachydermJob: JobRef;
  datum: string | undefined;
}

const STAGES: readonly Stage[] = ["build", "ingest", "train"];

/** Pachyderm's job state in the words of `train list`. */
export function jobState(state: PachydermJobState | undefined): ClusterJobState {
  switch (state) {
    case "JOB_SUCCESS":
      return "succeeded";
    case "JOB_FAILURE":
    case "JOB_UNRUNNABLE":
      return "failed";
    case "JOB_KILLED":
      return "cancelled";
    case "JOB_RUNNING":
    case "JOB_EGRESSING":
    case "JOB_FINISHING":
      return "running";
    default:
      return "queued";
  }
}

function datumState(state: PachydermDatumState | undefined, job: ClusterJobState): ClusterJobState {
  switch (state) {
    case "SUCCESS":
      return "succeeded";
    case "FAILED":
    case "RECOVERED":
      return "failed";
    case "STARTING":
      return job === "cancelled" || job === "failed" ? job : "running";
    default:
      return job === "running" ? "queued" : job;
  }
}

export function clientFor(stack: ResolvedStack, options: ClusterJobsOptions): { client: PachdClient; project: string } {
  const k8s = kubernetesStack(stack);
  const env = options.env ?? process.env;
  const tokenEnv = k8s.pachyderm.tokenEnv ?? DEFAULT_TOKEN_ENV;
  const client = new PachdClient({
    address: k8s.pachyderm.address,
    token: env[tokenEnv],
    tokenEnv,
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  return { client, project: k8s.pachyderm.project ?? DEFAULT_PROJECT };
}

/** Splits `<prefix>-<pipeline>-<stage>` into the kaos pipeline and stage, or undefined when not kaos's. */
function parsePipelineName(name: string, prefix: string | undefined): { pipeline: string; stage: Stage } | undefined {
  for (const stage of STAGES) {
    if (!name.endsWith(`-${stage}`)) continue;
    let pipeline = name.slice(0, -(stage.length + 1));
    if (prefix !== undefined) {
      if (!pipeline.startsWith(`${prefix}-`)) return undefined;
      pipeline = pipeline.slice(prefix.length + 1);
    }
    return pipeline === "" ? undefined : { pipeline, stage };
  }
  return undefined;
}

async function locateJobs(stack: ResolvedStack, options: ClusterJobsOptions): Promise<Located[]> {
  const { client, project } = clientFor(stack, options);
  const prefix = options.workspace === undefined ? undefined : pachydermName(options.workspace);
  const infos = await client.listJobs(project);
  const located: Located[] = [];
  const seenKeys = new Set<string>();
  for (const info of infos) {
    const pipelineName = info.job?.pipeline?.name;
    const id = info.job?.id;
    if (pipelineName === undefined || id === undefined) continue;
    const parsed = parsePipelineName(pipelineName, prefix);
    if (!parsed) continue;
    const pachydermJob: JobRef = { pipeline: pipelineRef(project, pipelineName), id };
    const base = jobEntry(info, parsed.pipeline, parsed.stage, `${pipelineName}@${id}`);
    if (parsed.stage !== "train") {
      located.push({ job: base, pachydermJob, datum: undefined });
      continue;
    }
    const datums = await datumsOf(client, pachydermJob);
    const paramsRepo = `${pipelineName.slice(0, -"-train".length)}-params`;
    let listed = 0;
    for (const datum of datums) {
      const file = paramsFile(datum, paramsRepo);
      if (!file || datum.state === "SKIPPED") continue;
      listed += 1;
      const key = file.path.replace(/^\//, "").replace(/\.json$/, "");
      if (seenKeys.has(key)) continue;
      seenKeys.add(key);
      const params = options.params?.get(key) ?? (await readParams(client, file.commit, file.path));
      located.push({
        job: { ...base, id: key, state: datumState(datum.state, base.state), params },
        pachydermJob,
        datum: datum.datum?.id,
      });
    }
    if (listed === 0) located.push({ job: base, pachydermJob, datum: undefined });
  }
  return located;
}

/**
 * A job's datums; none when pachd cannot list them yet (it lists them from the
 * job's meta commit, which builds on the previous job's: while that one runs,
 * ListDatum fails), so the job is shown whole.
 */
async function datumsOf(client: PachdClient, job: JobRef): Promise<DatumInfo[]> {
  try {
    return await client.listDatums(job);
  } catch (error) {
    if (error instanceof PachdError && error.grpcCode !== undefined && /\bunfinished\b/.test(error.message)) return [];
    throw error;
  }
}

function jobEntry(info: JobInfo, pipeline: string, stage: Stage, id: string): ClusterJob {
  return {
    id,
    pipeline,
    stage,
    state: jobState(info.state),
    params: {},
    startedAt: info.started ?? null,
    finishedAt: info.finished ?? null,
    // Pachyderm records no exit status of the script.
    exitCode: null,
  };
}

function paramsFile(datum: DatumInfo, paramsRepo: string): { path: string; commit: CommitRef | undefined } | undefined {
  for (const file of datum.data ?? []) {
    const path = file.file?.path;
    if (file.file?.commit?.repo?.name === paramsRepo && path !== undefined && path.endsWith(".json")) {
      return { path, commit: file.file.commit };
    }
  }
  return undefined;
}

async function readParams(client: PachdClient, commit: CommitRef | undefined, path: string): Promise<HyperparamSet> {
  if (commit === undefined) return {};
  try {
    const parsed: unknown = JSON.parse((await client.getFile(commit, path)).toString("utf8"));
    return parsed !== null && typeof parsed === "object" && !Array.isArray(parsed) ? (parsed as HyperparamSet) : {};
  } catch {
    // A params file that cannot be read does not hide the job.
    return {};
  }
}

/** Every kaos job Pachyderm knows of on this stack, newest first. */
export async function listClusterJobs(stack: ResolvedStack, options: ClusterJobsOptions = {}): Promise<ClusterJob[]> {
  return (await locateJobs(stack, options)).map((entry) => entry.job);
}

/**
 * A job's log lines. `jobId` is an id from `train list`: a job key (or a
 * unique prefix of one) for a train job, `<pipeline>@<id>` for a build or
 * ingest job.
 */
export async function* clusterJobLogs(
  stack: ResolvedStack,
  jobId: string,
  options: ClusterJobsOptions & { follow?: boolean; signal?: AbortSignal } = {},
): AsyncGenerator<ClusterLogLine> {
  const { client } = clientFor(stack, options);
  const k8s = kubernetesStack(stack);
  const found = await findJob(stack, jobId, options);
  const request: Parameters<PachdClient["getLogs"]>[0] = { job: found.pachydermJob, follow: options.follow ?? false };
  if (options.signal) request.signal = options.signal;
  const datum = found.datum;
  if (datum !== undefined) request.datum = datum;
  try {
    for await (const line of client.getLogs(request)) {
      if (datum !== undefined && line.datumId !== undefined && line.datumId !== datum) continue;
      yield { time: line.ts ?? undefined, user: line.user ?? false, message: line.message ?? "" };
    }
  } catch (error) {
    // Without Loki, pachd reads logs from the pipeline's worker pods, and fails when there are none.
    if (!(error instanceof PachdError) || !/no pods belonging to the rc/.test(error.message)) throw error;
    const pipeline = found.pachydermJob.pipeline.name;
    throw new KaosError(
      "PACHD_FAILED",
      `no logs for job '${shortJobId(found.job.id)}': Pachyderm has no worker pods of pipeline ${pipeline} to read them from`,
      {
        hint: `its workers are not running (yet, or any more): \`kubectl -n ${k8s.namespace} get pods -l pipelineName=${pipeline}\` shows them; Pachyderm without Loki keeps logs only while they run`,
        cause: error,
      },
    );
  }
}

/**
 * How a job stands once its followed log has ended (pachd ends the stream
 * when the job ends): the end `kaos train logs -f` exits by. Pachyderm
 * records no exit code of the script.
 */
export async function clusterJobEnd(stack: ResolvedStack, jobId: string, options: ClusterJobsOptions = {}): Promise<LogEnd> {
  const { job } = await findJob(stack, jobId, options);
  const ended = job.state !== "running" && job.state !== "queued";
  return {
    kind: "end",
    job: shortJobId(job.id),
    state: job.state,
    exitCode: null,
    reason: ended ? null : "pachd ended its log stream before the job ended",
  };
}

/** A job and the file of Pachyderm's output commit that holds what it wrote. */
export interface ClusterJobDetails {
  job: ClusterJob;
  /** `<repo>@<commit>:<path>`, as `pachctl get file` takes it. */
  outputs: string;
  /** `<pipeline>@<id>` of the Pachyderm job, as `pachctl stop job` takes it: for a train job, every combination it runs. */
  pachydermJob: string;
}

/** A job by an id from `train list` (or a unique prefix of one), as `clusterJobLogs` finds it. */
export async function inspectClusterJob(stack: ResolvedStack, jobId: string, options: ClusterJobsOptions = {}): Promise<ClusterJobDetails> {
  const found = await findJob(stack, jobId, options);
  const { pipeline, id } = found.pachydermJob;
  // A train datum writes under /pfs/out/<job key> (see trainScript); the output commit of a job has the job's id.
  const path = found.job.stage === "train" && found.datum !== undefined ? `/${found.job.id}` : "/";
  return { job: found.job, outputs: `${pipeline.name}@${id}:${path}`, pachydermJob: `${pipeline.name}@${id}` };
}

/**
 * An id as `train list` shows it, still a prefix `train logs` finds: a job
 * key to 16 characters; `<pipeline>@<id>` keeps its pipeline name whole.
 */
export function shortJobId(id: string): string {
  const at = id.lastIndexOf("@");
  return at < 0 ? id.slice(0, 16) : `${id.slice(0, at + 1)}${id.slice(at + 1, at + 13)}`;
}

/** A job by an id from `train list` or a unique prefix of one; JOB_NOT_FOUND or JOB_AMBIGUOUS otherwise. */
export async function findJob(stack: ResolvedStack, jobId: string, options: ClusterJobsOptions): Promise<Located> {
  const all = await locateJobs(stack, options);
  const exact = all.find((entry) => entry.job.id === jobId);
  if (exact) return exact;
  const matches = jobId.length >= 4 ? all.filter((entry) => entry.job.id.startsWith(jobId)) : [];
  if (matches.length === 1 && matches[0]) return matches[0];
  if (matches.length > 1) {
    throw new KaosError("JOB_AMBIGUOUS", `'${jobId}' matches ${matches.length} jobs on stack '${stack.name}'`, {
      hint: `give more of the id: ${matches
        .slice(0, 5)
        .map((entry) => shortJobId(entry.job.id))
        .join(", ")}`,
    });
  }
  throw new KaosError("JOB_NOT_FOUND", `no job '${jobId}' on stack '${stack.name}'`, {
    hint: `\`kaos train list --stack ${stack.name}\` shows the jobs`,
  });
}
