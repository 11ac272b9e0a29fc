/**
 * Which backend runs a stack: one entry per `backend` a stack file may name.
 * The local one, which every project without `--stack` runs, loads with this
 * module; the others are imported when a stack uses them, so a local-only
 * project never loads Pulumi. A new backend is a folder beside these and one
 * line here.
 */
import type { Backend, BackendContext, BackendFactory } from "../core/backend.js";
import type { StackConfig } from "../core/types.js";
import { createLocalBackend } from "./local/index.js";

const registry: Record<StackConfig["backend"], () => Promise<BackendFactory>> = {
  local: async () => createLocalBackend,
  kubernetes: async () => (await import("./kubernetes/backend.js")).createKubernetesBackend,
};

export const createBackend: BackendFactory = async (context: BackendContext): Promise<Backend> => {
  const factory = await registry[context.stack.config.backend]();
  return factory(context);
};
