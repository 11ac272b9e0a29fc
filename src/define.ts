/**
 * The typed identities a config or stack file calls. Kept free of imports so
 * that loading a user's config stays fast.
 */
import type { KaosConfig, StackConfig } from "./core/types.js";

/** Typed identity: lets an editor complete and check `kaos.config.ts`. */
export function defineConfig(config: KaosConfig): KaosConfig {
  return config;
}

/** Typed identity for `stacks/NAME.ts`. */
export function defineStack<T extends StackConfig>(stack: T): T {
  return stack;
}
