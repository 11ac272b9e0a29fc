/**
 * What a `kaos.config.ts` or a stack file imports.
 */
export { defineConfig, defineStack } from "./define.js";
export type {
  DataSource,
  HyperparamGrid,
  HyperparamScalar,
  HyperparamSet,
  HyperparamSpace,
  KaosConfig,
  KubernetesStack,
  LocalStack,
  PipelineConfig,
  RandomSearch,
  Resources,
  SearchDistribution,
  StackConfig,
  Toleration,
  WatchOptions,
} from "./core/types.js";

/** For tools that show local results (a dashboard): whether a job's results are still what it left. */
export { checkJobResults, resultsProblem } from "./backends/local/results.js";
export type { ResultsCheck, TreeChanges } from "./backends/local/results.js";

/** For tools that follow a job's training (a dashboard): the per-step series it appends to OUT/metrics/*.jsonl. */
export { readMetricSeries } from "./core/metrics.js";
export type { MetricPoint, MetricSeries, SkippedMetric } from "./core/metrics.js";
