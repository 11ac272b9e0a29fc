/**
 * Commands on a kubernetes stack: the same config and keys, applied through
 * Pulumi to Kubernetes and Pachyderm.
 */
import { KaosError } from "./errors.js";
import type { ResolvedConfig, ResolvedStack } from "./types.js";

function unavailable(): never {
  throw new KaosError("NOT_SUPPORTED", "the kubernetes backend is not available in this build");
}

export async function clusterPlan(_config: ResolvedConfig, _stack: ResolvedStack, _options: { json?: boolean; detailedExitcode?: boolean }): Promise<number> {
  return unavailable();
}
export async function clusterUp(_config: ResolvedConfig, _stack: ResolvedStack, _options: { json?: boolean; force?: boolean }): Promise<number> {
  return unavailable();
}
export async function clusterList(_config: ResolvedConfig, _stack: ResolvedStack, _options: { json?: boolean }): Promise<number> {
  return unavailable();
}
export async function clusterLogs(_config: ResolvedConfig, _stack: ResolvedStack, _options: { job: string; follow?: boolean }): Promise<number> {
  return unavailable();
}
export async function clusterRender(_config: ResolvedConfig, _stack: ResolvedStack, _options: { out: string }): Promise<number> {
  return unavailable();
}
