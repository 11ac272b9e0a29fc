/**
 * What a `kaos.config.ts` or a stack file imports.
 */
export { defineConfig, defineStack } from "./define.js";
export type {
  DataSource,
  HyperparamGrid,
  HyperparamScalar,
  HyperparamSet,
  KaosConfig,
  KubernetesStack,
  LocalStack,
  PipelineConfig,
  Resources,
  StackConfig,
  Toleration,
  WatchOptions,
} from "./types.js";
