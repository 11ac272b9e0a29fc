/**
 * A pipeline's sweep for the dashboard: the grid its config names now (see
 * core/sweep.ts), read with the config and bundles as they stand. Hashing the
 * bundles for the keys is cheap when warm but not free, and a page following
 * a running sweep asks again and again, so the keys are kept until the config
 * or a hyperparams file changes, a new run starts (a `kaos up` or `kaos watch`
 * acting on an edit), or they are some seconds old.
 *
 * A sweep of many thousand jobs is read once per change of the store, not
 * once per request: the page asks for it a page at a time, and again on every
 * job that changes. The metrics of a finished job are read from its files
 * once, and kept while its record says the same.
 */
import { statSync } from "node:fs";
import { loadConfig, loadStack } from "../core/config.js";
import { createBackend } from "../backends/index.js";
import { sweepInputs } from "../core/engine.js";
import { readMetrics, type JobMetrics } from "../core/metrics.js";
import { isTerminalJobState, type JobRecord } from "../core/state.js";
import { currentSweep, leadingMetric, numericMetricNames, sweepRowJson, type SweepInputs, type SweepRowJson } from "../core/sweep.js";
import type { ResolvedConfig } from "../core/types.js";
import type { StoreReader } from "./reader.js";

/** How long the config and the bundles' keys are taken as they were when nothing says they changed. */
export const INPUTS_FRESH_MS = 10_000;

export interface SweepView {
  pipeline: string;
  /** `config`: the grid the config names now; `run`: the pipeline is not in the config, so its last run's jobs. */
  source: "config" | "run";
  metricNames: string[];
  leadingMetric: string | null;
  items: SweepRowJson[];
}

interface Current {
  config: ResolvedConfig;
  inputs(): Promise<Map<string, SweepInputs>>;
}

/** A pipeline's sweep as last read, and what it was read from. */
interface KeptSweep {
  current: Current;
  /** The store's generation and data version then: a commit by any writer moves it. */
  storeStamp: string;
  /** Whether a row's job runs: its metrics may grow without a commit, so they are read again on every request. */
  unfinished: boolean;
  view: SweepView;
}

/** The metrics of finished jobs, by job id, with the record's stamp they were read under. */
type MetricsKept = Map<string, { stamp: string; metrics: JobMetrics }>;

export class SweepReader {
  private cached: (Current & { at: number; stamp: string }) | undefined;
  private readonly kept = new Map<string, KeptSweep>();
  private metricsKept: MetricsKept = new Map();

  constructor(
    private readonly reader: StoreReader,
    private readonly configFile: string | undefined,
  ) {}

  /** The names of the pipelines the config names now; undefined without a config; throws why a config does not load. */
  async pipelineNames(): Promise<string[] | undefined> {
    return (await this.current())?.config.pipelines.map((pipeline) => pipeline.name);
  }

  /** The sweep of `pipeline`, or undefined when neither the config nor the store knows it. */
  async sweep(pipeline: string, lastRun: () => SweepView | undefined): Promise<SweepView | undefined> {
    const current = await this.current();
    const inputs = current === undefined ? undefined : (await current.inputs()).get(pipeline);
    if (current === undefined || inputs === undefined) {
      this.kept.delete(pipeline);
      return lastRun();
    }
    const store = this.reader.get();
    const storeStamp = `${this.reader.generation()}|${store.dataVersion()}`;
    const kept = this.kept.get(pipeline);
    if (kept !== undefined && kept.current === current && kept.storeStamp === storeStamp) {
      if (kept.unfinished) kept.view = this.withRunningMetrics(kept.view);
      return kept.view;
    }
    const sweep = currentSweep(current.config, pipeline, store, inputs, { metricsOf: (job) => this.metricsOf(job) });
    const view: SweepView = {
      pipeline,
      source: "config",
      metricNames: sweep.metricNames,
      leadingMetric: sweep.leadingMetric ?? null,
      items: sweep.rows.map(sweepRowJson),
    };
    const unfinished = sweep.rows.some((row) => row.state === "queued" || row.state === "running");
    this.kept.set(pipeline, { current, storeStamp, unfinished, view });
    this.forgetMetricsOfOthers();
    return view;
  }

  /**
   * The view with the metrics its running jobs have written since: they grow
   * without a commit to the store. The same view when none moved, so that
   * what was sorted from it is still good.
   */
  private withRunningMetrics(view: SweepView): SweepView {
    const store = this.reader.get();
    let items: SweepRowJson[] | undefined;
    view.items.forEach((row, position) => {
      if (row.id === null || row.state !== "running") return;
      const job = store.getJob(row.id);
      if (job === undefined) return;
      const metrics = readMetrics(this.reader.outDirOf(job)).values;
      if (JSON.stringify(metrics) === JSON.stringify(row.metrics)) return;
      items ??= [...view.items];
      items[position] = { ...row, metrics };
    });
    if (items === undefined) return view;
    return { ...view, metricNames: numericMetricNames(items), leadingMetric: leadingMetric(items) ?? null, items };
  }

  /** A job's metrics: read from its files, once for a job that has ended. */
  metricsOf(job: JobRecord): JobMetrics {
    if (!isTerminalJobState(job.state)) return readMetrics(this.reader.outDirOf(job));
    const stamp = `${job.state}|${job.finishedAt}|${job.collectedAt}|${job.outputDir}`;
    const kept = this.metricsKept.get(job.id);
    if (kept !== undefined && kept.stamp === stamp) return kept.metrics;
    const metrics = readMetrics(this.reader.outDirOf(job));
    this.metricsKept.set(job.id, { stamp, metrics });
    return metrics;
  }

  /** Keeps the metrics of the jobs the kept sweeps show, and no others: jobs replaced by newer ones would pile up. */
  private forgetMetricsOfOthers(): void {
    const shown = new Set<string>();
    for (const { view } of this.kept.values()) for (const row of view.items) if (row.id !== null) shown.add(row.id);
    const fresh: MetricsKept = new Map();
    for (const [id, entry] of this.metricsKept) if (shown.has(id)) fresh.set(id, entry);
    this.metricsKept = fresh;
  }

  /** The config as it stands, and its bundles' keys, hashed on first need. */
  private async current(): Promise<Current | undefined> {
    if (this.configFile === undefined) return undefined;
    const files = [this.configFile, ...(this.cached?.config.pipelines.map((p) => p.hyperparamsFile) ?? [])];
    const stamp = [this.reader.get().recentRuns(1)[0], ...files.map(mtimeOf)].join("|");
    if (this.cached !== undefined && this.cached.stamp === stamp && Date.now() - this.cached.at < INPUTS_FRESH_MS) return this.cached;
    // In a thread of its own: a module the config imports is read as it is now, not as this process first loaded it.
    const config = await loadConfig({ cwd: this.reader.root, configPath: this.configFile, isolated: true });
    let hashed: Promise<Map<string, SweepInputs>> | undefined;
    const inputs = (): Promise<Map<string, SweepInputs>> => {
      hashed ??= this.hashInputs(config);
      // A failure (a bundle being edited, say) is not kept: the next request tries again.
      hashed.catch(() => {
        if (this.cached?.inputs === inputs) this.cached = undefined;
      });
      return hashed;
    };
    const hyperparams = config.pipelines.map((p) => mtimeOf(p.hyperparamsFile));
    this.cached = {
      at: Date.now(),
      stamp: [this.reader.get().recentRuns(1)[0], mtimeOf(this.configFile), ...hyperparams].join("|"),
      config,
      inputs,
    };
    return this.cached;
  }

  /** The keys of every pipeline's bundles, hashed as the local backend's planner hashes them. */
  private async hashInputs(config: ResolvedConfig): Promise<Map<string, SweepInputs>> {
    const stack = await loadStack(config, undefined);
    const state = this.reader.get();
    const backend = await createBackend({ config, stack, state });
    return sweepInputs(config, stack, state, backend);
  }
}

function mtimeOf(file: string | undefined): string {
  if (file === undefined) return "";
  try {
    const stats = statSync(file, { bigint: true });
    return `${stats.mtimeNs}:${stats.size}`;
  } catch {
    return "missing";
  }
}
