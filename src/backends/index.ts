/**
 * Which backend runs a stack: one entry per `backend` a stack file may name.
 * Each is imported when a stack uses it, so a local-only project never loads
 * Pulumi. A new backend is a folder beside these and one line here.
 */
import type { Backend, BackendContext, BackendFactory } from "../core/backend.js";
import type { StackConfig } from "../core/types.js";

const registry: Record<StackConfig["backend"], () => Promise<BackendFactory>> = {
  local: async () => (await import("./local/index.js")).createLocalBackend,
  kubernetes: async () => (await import("./kubernetes/backend.js")).createKubernetesBackend,
};

export const createBackend: BackendFactory = async (context: BackendContext): Promise<Backend> => {
  const factory = await registry[context.stack.config.backend]();
  return factory(context);
};
