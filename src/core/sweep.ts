/**
 * A pipeline's sweep: the grid its config names now, every combination of it
 * joined with the job last recorded for that combination's job key, whichever
 * run trained it. A job reused by later runs belongs to the sweep as much as
 * one trained by the last run; a combination no job was ever recorded for is
 * `pending`; a combination dropped from the config is not in the sweep.
 *
 * The keys are the planner's own (`jobKeyOf` over `expandSpace`, as in
 * plan.ts), so the sweep names exactly the jobs `kaos up` would reuse or run.
 * Hashing the bundles into the env, source and data keys is not done here:
 * the caller hands them over (`PipelinePlan.keys` of a plan, or
 * `sweepInputs` of engine.ts), which keeps this module free of the backends.
 *
 *     const sweep = currentSweep(config, "svm", state, inputs);
 *     const best = rankSweep(sweep.rows, "loss", { ascending: true })[0];
 */
import { jobPaths, stateDirOf } from "./layout.js";
import { KaosError } from "./errors.js";
import { expandSpace } from "./hyperparams.js";
import { readMetrics, type JobMetrics, type MetricValue } from "./metrics.js";
import { jobKeyOf } from "./plan.js";
import type { JobRecord, JobState, Stage } from "./state.js";
import type { HyperparamSet, ResolvedConfig } from "./types.js";

/** A combination's state: its latest job's, or `pending` when no job was ever recorded for it. */
export type SweepRowState = JobState | "pending";

export interface SweepRow {
  /** Position in the grid as the config expands it, from 0. */
  index: number;
  /** The job key; null while the data key is unknown (a manifest not ingested yet). */
  key: string | null;
  params: HyperparamSet;
  state: SweepRowState;
  /** The latest job recorded for the key; absent when pending. */
  jobId?: string;
  runId?: string;
  finishedAt?: string;
  /** When `kaos gc` removed the job's outputs (its metrics are gone with them). */
  collectedAt?: string;
  /** The job's metrics (OUT/metrics/*.json, and the last value of each per-step field); empty when pending. */
  metrics: Record<string, MetricValue>;
}

export interface Sweep {
  pipeline: string;
  rows: SweepRow[];
  /** The metrics that are numbers in at least one row, sorted: what the sweep can be ranked by. */
  metricNames: string[];
  /** The first metric the jobs write (in grid order), the one to show first; undefined when none has a numeric one. */
  leadingMetric: string | undefined;
}

/**
 * A sweep row as `--json` output and the dashboard's API give it: one shape
 * for both, with null for what a pending row lacks.
 */
export interface SweepRowJson {
  index: number;
  key: string | null;
  id: string | null;
  runId: string | null;
  state: SweepRowState;
  params: Record<string, unknown>;
  metrics: Record<string, MetricValue>;
  finishedAt: string | null;
  collectedAt: string | null;
}

export function sweepRowJson(row: SweepRow): SweepRowJson {
  return {
    index: row.index,
    key: row.key,
    id: row.jobId ?? null,
    runId: row.runId ?? null,
    state: row.state,
    params: row.params,
    metrics: row.metrics,
    finishedAt: row.finishedAt ?? null,
    collectedAt: row.collectedAt ?? null,
  };
}

/** The env, source and data keys of a pipeline's current bundles; `data` is undefined while a manifest is not ingested. */
export interface SweepInputs {
  env: string;
  source: string;
  data: string | undefined;
}

/** What the sweep reads of the state store (a `StateStore` is one). */
export interface SweepJobSource {
  latestJobsByKey(stage: Stage, keys: readonly string[]): Map<string, JobRecord>;
}

export interface SweepOptions {
  /** Reads a job's metrics; by default from its output directory under `<root>/.kaos`. */
  metricsOf?: (job: JobRecord) => JobMetrics;
}

/**
 * The sweep of `pipelineName` as its config stands: one row per combination,
 * in grid order, with the latest job recorded for the row's key (any run, any
 * state), its state and metrics.
 */
export function currentSweep(
  config: ResolvedConfig,
  pipelineName: string,
  state: SweepJobSource,
  inputs: SweepInputs,
  options: SweepOptions = {},
): Sweep {
  const pipeline = config.pipelines.find((p) => p.name === pipelineName);
  if (pipeline === undefined) {
    throw new KaosError(
      "USAGE",
      `no pipeline '${pipelineName}' in ${config.file}; expected one of: ${config.pipelines.map((p) => p.name).join(", ") || "(none)"}`,
    );
  }
  const stateDir = stateDirOf(config.root);
  const metricsOf = options.metricsOf ?? ((job: JobRecord) => readMetrics(job.outputDir ?? jobPaths(stateDir, job.id).out));
  const { data } = inputs;
  const combinations = expandSpace(pipeline.hyperparams).map((params) => ({
    params,
    key: data === undefined ? null : jobKeyOf({ env: inputs.env, source: inputs.source, data }, params),
  }));
  const latest = state.latestJobsByKey(
    "train",
    combinations.flatMap(({ key }) => (key === null ? [] : [key])),
  );
  const rows = combinations.map(({ params, key }, index): SweepRow => {
    const job = key === null ? undefined : latest.get(key);
    if (job === undefined) return { index, key, params, state: "pending", metrics: {} };
    return {
      index,
      key,
      params,
      state: job.state,
      jobId: job.id,
      runId: job.runId,
      ...(job.finishedAt !== null ? { finishedAt: job.finishedAt } : {}),
      ...(job.collectedAt !== null ? { collectedAt: job.collectedAt } : {}),
      metrics: metricsOf(job).values,
    };
  });
  return { pipeline: pipeline.name, rows, metricNames: numericMetricNames(rows), leadingMetric: leadingMetric(rows) };
}

/** The metric names that are numbers in at least one row, sorted. */
export function numericMetricNames(rows: readonly { metrics: Record<string, MetricValue> }[]): string[] {
  const names = new Set<string>();
  for (const row of rows) for (const [name, value] of Object.entries(row.metrics)) if (typeof value === "number") names.add(name);
  return [...names].sort();
}

/** The first numeric metric of the first row that has one: the metric the script writes first. */
export function leadingMetric(rows: readonly { metrics: Record<string, MetricValue> }[]): string | undefined {
  for (const row of rows) {
    const name = Object.keys(row.metrics).find((key) => typeof row.metrics[key] === "number");
    if (name !== undefined) return name;
  }
  return undefined;
}

/**
 * The rows ranked by a numeric metric, highest first (`ascending` for a loss:
 * lowest first). Rows without the metric as a number follow, in the order
 * given; ties keep it too. The rows given are left as they are.
 */
export function rankSweep<Row extends { metrics: Record<string, MetricValue> }>(
  rows: readonly Row[],
  metric: string,
  options: { ascending?: boolean } = {},
): Row[] {
  const direction = options.ascending ? 1 : -1;
  return rows
    .map((row, order) => ({ row, order, value: row.metrics[metric] }))
    .sort((a, b) => {
      const x = typeof a.value === "number" && !Number.isNaN(a.value) ? a.value : undefined;
      const y = typeof b.value === "number" && !Number.isNaN(b.value) ? b.value : undefined;
      if (x === undefined || y === undefined) return x !== undefined ? -1 : y !== undefined ? 1 : a.order - b.order;
      return x === y ? a.order - b.order : (x - y) * direction;
    })
    .map(({ row }) => row);
}

/** The best succeeded row by `metric`, or undefined when no succeeded row has it as a number. */
export function bestOfSweep<Row extends { state: SweepRowState; metrics: Record<string, MetricValue> }>(
  rows: readonly Row[],
  metric: string,
  options: { ascending?: boolean } = {},
): Row | undefined {
  const [best] = rankSweep(
    rows.filter((row) => row.state === "succeeded"),
    metric,
    options,
  );
  return best !== undefined && typeof best.metrics[metric] === "number" ? best : undefined;
}
