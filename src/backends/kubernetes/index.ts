/**
 * The Kubernetes + Pachyderm backend, applied through Pulumi. What the CLI
 * calls:
 *
 * - `renderCluster`: every pipeline spec and manifest, offline.
 * - `previewCluster` / `applyCluster`: `pulumi preview` / `pulumi up` of the
 *   cluster program through the Automation API (needs the Pulumi CLI).
 * - `listClusterJobs` / `clusterJobLogs` / `clusterJobEnd` / `inspectClusterJob` / `fetchClusterOutputs`: jobs, logs and
 *   outputs from pachd's API.
 *
 * Pulumi's SDK takes a second to load, and local-only projects need not
 * install it at all, so it is imported only by the two functions that need it.
 */
import { KaosError } from "../../core/errors.js";
import packageJson from "../../../package.json" with { type: "json" };
import type { ResolvedConfig, ResolvedStack } from "../../core/types.js";
import type { ClusterChangeSummary, ClusterRunOptions } from "./automation.js";
import type { ClusterPipelineInput } from "./cluster-plan.js";

export type { ClusterPipelineInput } from "./cluster-plan.js";
export { renderCluster, specFileName } from "./render.js";
export { validatePipelineSpec, compileSpecSchema, type SpecValidation } from "./schema.js";
export {
  listClusterJobs,
  clusterJobEnd,
  clusterJobLogs,
  inspectClusterJob,
  jobState,
  type ClusterJobDetails,
  type ClusterJob,
  type ClusterJobState,
  type ClusterJobsOptions,
  type ClusterLogLine,
} from "./jobs.js";
export { fetchClusterOutputs } from "./outputs.js";
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
  const automation = await loadAutomation();
  return automation.previewCluster(config, stack, inputs, options);
}

/** `pulumi up` of the stack. */
export async function applyCluster(
  config: ResolvedConfig,
  stack: ResolvedStack,
  inputs: readonly ClusterPipelineInput[],
  options?: ClusterRunOptions,
): Promise<ClusterChangeSummary> {
  const automation = await loadAutomation();
  return automation.applyCluster(config, stack, inputs, options);
}

/** The Pulumi packages are optional peer dependencies: a project that never uses a kubernetes stack does not install them. */
async function loadAutomation(): Promise<typeof import("./automation.js")> {
  try {
    return await import("./automation.js");
  } catch (error) {
    const missing = /Cannot find (?:package|module) '(@pulumi\/[a-z-]+)/.exec(error instanceof Error ? error.message : "")?.[1];
    if (missing === undefined) throw error;
    const peers = packageJson.peerDependencies;
    const install = Object.entries(peers)
      .map(([name, range]) => `${name}@${range}`)
      .join(" ");
    throw new KaosError("PULUMI_SDK_MISSING", `a kubernetes stack needs the Pulumi SDK, and ${missing} is not installed in this project`, {
      hint: `install it beside kaos-ml: npm install -D ${install}`,
      cause: error,
    });
  }
}
