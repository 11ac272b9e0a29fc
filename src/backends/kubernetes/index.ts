/**
 * The Kubernetes + Pachyderm backend, applied through Pulumi. What the CLI
 * calls:
 *
 * - `renderCluster`: every pipeline spec and manifest, offline.
 * - `previewCluster` / `applyCluster`: `pulumi preview` / `pulumi up` of the
 *   cluster program through the Automation API (needs the Pulumi CLI).
 * - `listClusterJobs` / `clusterJobLogs`: jobs and logs from pachd's API.
 *
 * Pulumi's SDK takes a second to load, so it is imported only by the two
 * functions that need it.
 */
import type { HyperparamSet, ResolvedConfig, ResolvedPipeline, ResolvedStack } from "../../types.js";
import type { ClusterChangeSummary, ClusterRunOptions } from "./automation.js";

/** What the engine hands the backend for one pipeline. */
export interface ClusterPipelineInput {
  /** Absolute sourceDir, data {kind:"dir",dir}|{kind:"manifest",path}, grid, resources, parallelism. */
  pipeline: ResolvedPipeline;
  /** Hex SHA-256 keys; `data` is undefined for a manifest not yet pinned. */
  keys: { env: string; source: string; data: string | undefined; hyperparams: string };
  /** The expanded grid, in canonical order. */
  jobs: { key: string; params: HyperparamSet }[];
}

export { renderCluster, specFileName } from "./render.js";
export { validatePipelineSpec, compileSpecSchema, type SpecValidation } from "./schema.js";
export { listClusterJobs, clusterJobLogs, jobState, type ClusterJob, type ClusterJobState, type ClusterJobsOptions, type ClusterLogLine } from "./jobs.js";
export { PachdClient, PachdError } from "./pachd.js";
export { clusterSettings, type ClusterSettings } from "./settings.js";
export type { ClusterChange, ClusterChangeSummary, ClusterRunOptions, PulumiCli, PulumiExec } from "./automation.js";

/** `pulumi preview` of the stack: the change summary shown beside kaos's own plan. */
export async function previewCluster(
  config: ResolvedConfig,
  stack: ResolvedStack,
  inputs: readonly ClusterPipelineInput[],
  options?: ClusterRunOptions,
): Promise<ClusterChangeSummary> {
  const automation = await import("./automation.js");
  return automation.previewCluster(config, stack, inputs, options);
}

/** `pulumi up` of the stack. */
export async function applyCluster(
  config: ResolvedConfig,
  stack: ResolvedStack,
  inputs: readonly ClusterPipelineInput[],
  options?: ClusterRunOptions,
): Promise<ClusterChangeSummary> {
  const automation = await import("./automation.js");
  return automation.applyCluster(config, stack, inputs, options);
}
