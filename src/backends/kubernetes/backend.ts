/**
 * Commands on a kubernetes stack: the same config, hashes and keys as on the
 * local backend, applied through Pulumi to Kubernetes and Pachyderm. kaos's
 * own plan says which stages and jobs are new; Pulumi's preview says which
 * resources change.
 */
import { join, resolve } from "node:path";
import { KaosError } from "../../core/errors.js";
import type { ClusterChangeSummary, ClusterPipelineInput } from "./index.js";
import { shortJobId } from "./jobs.js";
import { saveTreeListing } from "../../core/snapshot.js";
import { stateDirOf } from "../../core/layout.js";
import { colors, printJson, table } from "../../cli/output.js";
import { displayText, paramsText } from "../../core/format.js";
import { appliedOf, buildPlan, formatPlan, jobKeyOf, planJson, type AppliedState, type Plan, type PlanOracle } from "../../core/plan.js";
import { StateStore } from "../../core/state.js";
import type { KubernetesStack, ResolvedConfig, ResolvedStack } from "../../core/types.js";

const kubernetes = () => import("./index.js");

function stackConfig(stack: ResolvedStack): KubernetesStack {
  if (stack.config.backend !== "kubernetes") throw new KaosError("USAGE", `stack ${stack.name} is not a kubernetes stack`);
  return stack.config;
}

/** On a cluster the image is built from the Dockerfile; what was applied tells what exists. */
function clusterOracle(stack: ResolvedStack, applied: AppliedState): PlanOracle {
  const builder = stackConfig(stack).builderImage ?? "default builder";
  const envKeys = new Set(Object.values(applied).map((pipeline) => pipeline.envKey));
  return {
    runtime: async () => `kubernetes image build (${builder})`,
    environmentReady: (envKey) => envKeys.has(envKey),
    succeededJob: () => ({ job: undefined }),
  };
}

/** Jobs whose key is already applied to the cluster are skipped: Pachyderm keeps their outputs. */
function markApplied(plan: Plan, applied: AppliedState): Plan {
  for (const p of plan.pipelines) {
    const before = applied[p.pipeline.name];
    if (!before || before.dataKey === null) continue;
    const done = new Set(
      before.params.map((params) => jobKeyOf({ env: before.envKey, source: before.sourceKey, data: before.dataKey! }, params)),
    );
    p.jobs = p.jobs.map((job) =>
      job.key !== null && done.has(job.key) ? { ...job, action: "skip", reason: "already applied to the cluster" } : job,
    );
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

async function clusterPlanOf(config: ResolvedConfig, stack: ResolvedStack, state: StateStore, force = false): Promise<Plan> {
  const applied = state.getApplied(stack.name);
  const plan = await buildPlan({ config, stack, state, oracle: clusterOracle(stack, applied), force });
  return force ? plan : markApplied(plan, applied);
}

export function clusterInputs(plan: Plan): ClusterPipelineInput[] {
  return plan.pipelines.map((p) => ({
    pipeline: p.pipeline,
    keys: { env: p.keys.env, source: p.keys.source, data: p.keys.data, hyperparams: p.keys.hyperparams },
    jobs: p.jobs.filter((job) => job.key !== null).map((job) => ({ key: job.key!, params: job.params })),
  }));
}

/**
 * kaos's plan for a cluster: on a cluster kaos knows what it applied, not
 * which jobs Pachyderm ran, so nothing is said to have succeeded.
 */
export function formatClusterPlan(plan: Plan): string {
  const text = formatPlan(plan, colors());
  if (plan.changes) return text;
  const jobs = plan.pipelines.reduce((sum, p) => sum + p.jobs.length, 0);
  const lines = text.split("\n");
  lines[lines.length - 1] = colors().green(`No changes: ${jobs} job${jobs === 1 ? "" : "s"} already applied to the cluster.`);
  return lines.join("\n");
}

function summaryLines(summary: ClusterChangeSummary): string {
  const checked = summary.checked
    ? `kube context ${summary.checked.kubeContext} (${summary.checked.kubeServer}) answers; pachd ${summary.checked.pachdVersion}\n`
    : "";
  const head = `${checked}Pulumi (stack ${summary.stack}): ${summary.create} to create, ${summary.update} to update, ${summary.replace} to replace, ${summary.delete} to delete, ${summary.same} unchanged`;
  return [head, ...summary.resources.map((change) => `  ${change.op.padEnd(8)} ${change.type}  ${change.name}`)].join("\n");
}

export async function clusterPlan(
  config: ResolvedConfig,
  stack: ResolvedStack,
  options: { json?: boolean; detailedExitcode?: boolean; refresh?: boolean },
): Promise<number> {
  const state = StateStore.open(config.root);
  try {
    const plan = await clusterPlanOf(config, stack, state);
    if (!options.json) process.stdout.write(`${formatClusterPlan(plan)}\n\n`);
    const { previewCluster } = await kubernetes();
    const summary = await previewCluster(config, stack, clusterInputs(plan), {
      ...(options.json ? {} : { onOutput: (line: string) => process.stderr.write(line) }),
      ...(options.refresh ? { refresh: true } : {}),
    });
    const pulumiChanges = summary.create + summary.update + summary.replace + summary.delete > 0;
    if (options.json) printJson({ ...(planJson(plan) as object), pulumi: summary });
    else process.stdout.write(`${summaryLines(summary)}\n`);
    return options.detailedExitcode && (plan.changes || pulumiChanges) ? 2 : 0;
  } finally {
    state.close();
  }
}

export async function clusterUp(
  config: ResolvedConfig,
  stack: ResolvedStack,
  options: { json?: boolean; force?: boolean; refresh?: boolean },
): Promise<number> {
  const state = StateStore.open(config.root);
  const lock = state.acquireWriter(stack.name, "up");
  try {
    const plan = await clusterPlanOf(config, stack, state, options.force);
    if (!options.json) process.stdout.write(`${formatClusterPlan(plan)}\n\n`);
    const { applyCluster } = await kubernetes();
    const summary = await applyCluster(config, stack, clusterInputs(plan), {
      onOutput: options.json ? undefined : (line: string) => process.stderr.write(line),
      ...(options.refresh ? { refresh: true } : {}),
    });
    // What the next plan compares an edit with, as the local backend keeps it.
    for (const p of plan.pipelines) {
      saveTreeListing(stateDirOf(config.root), p.sourceTree);
      if (p.dataTree) saveTreeListing(stateDirOf(config.root), p.dataTree);
    }
    state.updateApplied(stack.name, (applied) => {
      for (const p of plan.pipelines) applied[p.pipeline.name] = appliedOf(p, p.keys.data ?? null);
    });
    if (options.json) printJson({ ...(planJson(plan) as object), pulumi: summary });
    else process.stdout.write(`applied: ${summaryLines(summary)}\n`);
    return 0;
  } finally {
    lock.release();
    state.close();
  }
}

export async function clusterList(config: ResolvedConfig, stack: ResolvedStack, options: { json?: boolean }): Promise<number> {
  const { listClusterJobs } = await kubernetes();
  const jobs = await listClusterJobs(stack, { workspace: config.workspace });
  if (options.json) {
    printJson(jobs);
    return 0;
  }
  if (jobs.length === 0) {
    process.stdout.write(`no jobs on stack ${stack.name} yet: run \`kaos up --stack ${stack.name}\`\n`);
    return 0;
  }
  const rows = jobs.map((job) => [
    displayText(shortJobId(job.id)),
    displayText(job.pipeline),
    displayText(job.stage),
    displayText(job.state),
    displayText(job.startedAt ?? ""),
    paramsText(job.params),
  ]);
  process.stdout.write(`${table([["ID", "PIPELINE", "STAGE", "STATE", "STARTED", "PARAMS"], ...rows])}\n`);
  return 0;
}

export async function clusterLogs(
  config: ResolvedConfig,
  stack: ResolvedStack,
  options: { job: string; follow?: boolean },
): Promise<number> {
  const { clusterJobLogs } = await kubernetes();
  for await (const line of clusterJobLogs(stack, options.job, { workspace: config.workspace, follow: options.follow ?? false })) {
    process.stdout.write(`${line.time ?? ""} ${line.user ? "user  " : "worker"} | ${line.message.replace(/\n$/, "")}\n`);
  }
  return 0;
}

export async function clusterRender(config: ResolvedConfig, stack: ResolvedStack, options: { out: string }): Promise<number> {
  // Rendering reads the project but records nothing: it works from a read-only store.
  const state = StateStore.open(config.root, { readonly: true });
  try {
    const plan = await clusterPlanOf(config, stack, state);
    const { renderCluster } = await kubernetes();
    const outDir = resolve(options.out);
    const files = await renderCluster(config, stack, clusterInputs(plan), outDir);
    process.stdout.write(
      `${files.map((file) => join(file).replace(`${outDir}/`, "")).join("\n")}\nwrote ${files.length} files to ${outDir}\n`,
    );
    return 0;
  } finally {
    state.close();
  }
}
