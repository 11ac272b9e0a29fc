/**
 * The kubernetes backend: the same config, hashes and keys as on the local
 * backend, applied through Pulumi to Kubernetes and Pachyderm. kaos's own
 * plan says which stages and jobs are new; Pulumi's preview says which
 * resources change. Nothing here prints: Pulumi's output goes out as run
 * events, results as values.
 */
import type {
  Backend,
  BackendContext,
  FetchedOutputs,
  FetchOutputsRequest,
  JobInfo,
  JobListRequest,
  JobListing,
  LogOutput,
  PlanRequest,
  RenderedFolder,
  ResourceChanges,
  UpOutcome,
  UpRequest,
} from "../../core/backend.js";
import { buildSessionPlan } from "../../core/engine.js";
import { KaosError } from "../../core/errors.js";
import type { Reporter } from "../../core/events.js";
import { stateDirOf } from "../../core/layout.js";
import { appliedOf, jobKeyOf, type AppliedState, type Plan, type Reusable } from "../../core/plan.js";
import { saveTreeListing } from "../../core/snapshot.js";
import type { StateStore } from "../../core/state.js";
import type { Sweep } from "../../core/sweep.js";
import type { KubernetesStack, ResolvedConfig, ResolvedStack } from "../../core/types.js";
import type { ClusterPipelineInput } from "./cluster-plan.js";
import { shortJobId } from "./jobs.js";
import { DEFAULT_PROJECT } from "./settings.js";

const kubernetes = () => import("./index.js");

/** How a plan on a cluster says a job need not run. */
const APPLIED = "already applied to the cluster";

function stackConfig(stack: ResolvedStack): KubernetesStack {
  if (stack.config.backend !== "kubernetes") throw new KaosError("USAGE", `stack ${stack.name} is not a kubernetes stack`);
  return stack.config;
}

/** The kubernetes backend of a stack, as the backend registry makes it. */
export async function createKubernetesBackend(context: BackendContext): Promise<Backend> {
  return new KubernetesBackend(context.config, context.stack, context.state);
}

/** Jobs whose key is already applied to the cluster are skipped: Pachyderm keeps their outputs. */
function markApplied(plan: Plan, applied: AppliedState): Plan {
  for (const p of plan.pipelines) {
    const before = applied[p.pipeline.name];
    // A pipeline's image is tagged by its env and source keys: an environment
    // built for another pipeline, or before a source edit, is not its image.
    if (p.stages.build.action === "skip" && (before?.envKey !== p.keys.env || before.sourceKey !== p.keys.source)) {
      const reason = before === undefined ? "image not built yet" : "source changed: the image is tagged by the env and source keys";
      p.stages.build = { action: "run", key: p.keys.env, reason };
    }
    if (!before || before.dataKey === null) continue;
    const done = new Set(
      before.params.map((params) => jobKeyOf({ env: before.envKey, source: before.sourceKey, data: before.dataKey! }, params)),
    );
    p.jobs = p.jobs.map((job) => (job.key !== null && done.has(job.key) ? { ...job, action: "skip", reason: APPLIED } : job));
    const running = p.jobs.filter((job) => job.action === "run").length;
    p.stages.train =
      running > 0
        ? { action: "run", key: p.keys.hyperparams, reason: `${running} of ${p.jobs.length} jobs to run` }
        : { action: "skip", key: p.keys.hyperparams, reason: "every job already applied" };
  }
  plan.changes = plan.pipelines.some(
    (p) => p.stages.build.action === "run" || p.stages.train.action === "run" || p.stages.ingest?.action === "run",
  );
  return plan;
}

export function clusterInputs(plan: Plan): ClusterPipelineInput[] {
  return plan.pipelines.map((p) => ({
    pipeline: p.pipeline,
    keys: { env: p.keys.env, source: p.keys.source, data: p.keys.data, hyperparams: p.keys.hyperparams },
    jobs: p.jobs.filter((job) => job.key !== null).map((job) => ({ key: job.key!, params: job.params })),
  }));
}

function outputTo(reporter: Reporter): (text: string) => void {
  return (text) => reporter.event({ kind: "output", text });
}

export class KubernetesBackend implements Backend {
  readonly kind = "kubernetes";
  /** Pachyderm runs the jobs, not this process. */
  readonly runner = undefined;
  private applied: AppliedState | undefined;

  constructor(
    readonly config: ResolvedConfig,
    readonly stack: ResolvedStack,
    readonly state: StateStore,
  ) {}

  /** On a cluster the image is built from the Dockerfile. */
  async runtime(): Promise<string> {
    return `kubernetes image build (${stackConfig(this.stack).builderImage ?? "default builder"})`;
  }

  /** What was applied tells what exists. */
  environmentReady(envKey: string): boolean {
    return Object.values(this.appliedState()).some((pipeline) => pipeline.envKey === envKey);
  }

  /** kaos knows what it applied to a cluster, not which jobs Pachyderm ran: nothing is said to have succeeded. */
  succeededJob(): Reusable {
    return { job: undefined };
  }

  private appliedState(): AppliedState {
    this.applied ??= this.state.getApplied(this.stack.name);
    return this.applied;
  }

  async plan(request: PlanRequest): Promise<Plan> {
    this.applied = undefined;
    const applied = this.appliedState();
    // `refresh` re-reads the cluster (Pulumi's refresh), not the manifests' remote content.
    const plan = await buildSessionPlan(this.session(), this, {
      ...(request.force !== undefined ? { force: request.force } : {}),
      ...(request.manifests !== undefined ? { manifests: request.manifests } : {}),
    });
    plan.upToDate = APPLIED;
    return request.force ? plan : markApplied(plan, applied);
  }

  async preview(plan: Plan, request: { refresh?: boolean | undefined; reporter: Reporter }): Promise<ResourceChanges> {
    const { previewCluster } = await kubernetes();
    return previewCluster(this.config, this.stack, clusterInputs(plan), {
      onOutput: outputTo(request.reporter),
      ...(request.refresh ? { refresh: true } : {}),
    });
  }

  async up(request: UpRequest): Promise<UpOutcome> {
    const lock = this.state.acquireWriter(this.stack.name, request.command);
    try {
      const plan = await this.plan({ force: request.force, manifests: request.manifests });
      request.reporter.event({ kind: "plan", plan });
      const { applyCluster } = await kubernetes();
      const changes = await applyCluster(this.config, this.stack, clusterInputs(plan), {
        onOutput: outputTo(request.reporter),
        signal: request.signal,
        ...(request.refresh ? { refresh: true } : {}),
      });
      // What the next plan compares an edit with, as the local backend keeps it.
      const stateDir = stateDirOf(this.config.root);
      for (const p of plan.pipelines) {
        saveTreeListing(stateDir, p.sourceTree);
        if (p.dataTree) saveTreeListing(stateDir, p.dataTree);
      }
      this.state.updateApplied(this.stack.name, (applied) => {
        // Pulumi deleted what the config no longer declares: added back, its jobs run again.
        const declared = new Set(plan.pipelines.map((p) => p.pipeline.name));
        for (const name of Object.keys(applied)) if (!declared.has(name)) delete applied[name];
        for (const p of plan.pipelines) applied[p.pipeline.name] = appliedOf(p, p.keys.data ?? null);
      });
      return { kind: "applied", plan, changes };
    } finally {
      lock.release();
    }
  }

  async listJobs(request: JobListRequest): Promise<JobListing> {
    const flags = { pipeline: "--pipeline", state: "--state", runId: "--run" } as const;
    const unsupported = (Object.keys(flags) as (keyof typeof flags)[]).filter((key) => request.filter?.[key] !== undefined);
    if (unsupported.length > 0) {
      throw new KaosError(
        "NOT_SUPPORTED",
        `kaos train list ${unsupported.map((key) => flags[key]).join(", ")}: not supported on stack ${this.stack.name}, which uses the kubernetes backend`,
        { hint: "list the cluster's jobs without these options" },
      );
    }
    const { listClusterJobs } = await kubernetes();
    const jobs = await listClusterJobs(this.stack, { workspace: this.config.workspace });
    return { kind: "remote", stack: this.stack.name, jobs, shortId: shortJobId };
  }

  async *jobLogs(request: { job: string; follow: boolean }): AsyncGenerator<LogOutput> {
    const { clusterJobLogs, clusterJobEnd } = await kubernetes();
    const options = { workspace: this.config.workspace };
    for await (const line of clusterJobLogs(this.stack, request.job, { ...options, follow: request.follow })) {
      yield { kind: "line", ...line };
    }
    if (request.follow) yield await clusterJobEnd(this.stack, request.job, options);
  }

  /** kaos does not read the metrics of a cluster's jobs, which a sweep ranks by. */
  async sweep(request: { pipeline: string; command: string }): Promise<Sweep> {
    throw new KaosError(
      "NOT_SUPPORTED",
      `${request.command} reads the local backend's state; stack ${this.stack.name} uses the kubernetes backend, whose jobs' metrics kaos does not read`,
      {
        hint: `\`kaos train list --stack ${this.stack.name}\` lists its jobs, \`kaos train info JOB --stack ${this.stack.name}\` says where a job's outputs are; or run it without --stack (or with a local stack)`,
      },
    );
  }

  async jobInfo(request: { job: string }): Promise<JobInfo> {
    const { inspectClusterJob } = await kubernetes();
    const found = await inspectClusterJob(this.stack, request.job, { workspace: this.config.workspace });
    return { kind: "remote", stack: this.stack.name, job: found.job, shortId: shortJobId, outputs: found.outputs };
  }

  /** Copies a train job's files from its Pachyderm job's output commit. */
  async fetchOutputs(request: FetchOutputsRequest): Promise<FetchedOutputs> {
    const { fetchClusterOutputs } = await kubernetes();
    return fetchClusterOutputs(this.stack, request, { workspace: this.config.workspace });
  }

  /** Pachyderm stops a whole job, which for a train job is every combination it runs. */
  async killJob(request: { job: string }): Promise<{ id: string }> {
    const { inspectClusterJob } = await kubernetes();
    const found = await inspectClusterJob(this.stack, request.job, { workspace: this.config.workspace });
    const whole = found.job.stage === "train" ? " (it stops every combination that Pachyderm job runs)" : "";
    throw new KaosError(
      "NOT_SUPPORTED",
      `kaos train kill: not supported on stack ${this.stack.name}, which uses the kubernetes backend; job ${shortJobId(found.job.id)} runs in Pachyderm job ${found.pachydermJob}`,
      { hint: `stop it with pachctl: \`pachctl stop job ${found.pachydermJob}${this.projectFlag()}\`${whole}` },
    );
  }

  private projectFlag(): string {
    const project = stackConfig(this.stack).pachyderm.project ?? DEFAULT_PROJECT;
    return project === DEFAULT_PROJECT ? "" : ` --project ${project}`;
  }

  async render(request: { outDir: string }): Promise<RenderedFolder> {
    const plan = await this.plan({});
    const { renderCluster } = await kubernetes();
    return renderCluster(this.config, this.stack, clusterInputs(plan), request.outDir);
  }

  private session() {
    return { config: this.config, stack: this.stack, state: this.state, backend: this, close() {} };
  }
}
