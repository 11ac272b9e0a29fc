/**
 * A pipeline's sweep for the dashboard: the grid its config names now (see
 * core/sweep.ts), read with the config and bundles as they stand. Hashing the
 * bundles for the keys is cheap when warm but not free, and a page following
 * a running sweep asks again and again, so the keys are kept until the config
 * or a hyperparams file changes, a new run starts (a `kaos up` or `kaos watch`
 * acting on an edit), or they are some seconds old.
 */
import { statSync } from "node:fs";
import { loadConfig, loadStack } from "../core/config.js";
import { createBackend } from "../backends/index.js";
import { sweepInputs } from "../core/engine.js";
import { currentSweep, sweepRowJson, type SweepInputs, type SweepRowJson } from "../core/sweep.js";
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

export class SweepReader {
  private cached: (Current & { at: number; stamp: string }) | undefined;

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
    if (current === undefined || inputs === undefined) return lastRun();
    const sweep = currentSweep(current.config, pipeline, this.reader.get(), inputs);
    return {
      pipeline,
      source: "config",
      metricNames: sweep.metricNames,
      leadingMetric: sweep.leadingMetric ?? null,
      items: sweep.rows.map(sweepRowJson),
    };
  }

  /** The config as it stands, and its bundles' keys, hashed on first need. */
  private async current(): Promise<Current | undefined> {
    if (this.configFile === undefined) return undefined;
    const files = [this.configFile, ...(this.cached?.config.pipelines.map((p) => p.hyperparamsFile) ?? [])];
    const stamp = [this.reader.get().recentRuns(1)[0], ...files.map(mtimeOf)].join("|");
    if (this.cached !== undefined && this.cached.stamp === stamp && Date.now() - this.cached.at < INPUTS_FRESH_MS) return this.cached;
    const config = await loadConfig({ cwd: this.reader.root, configPath: this.configFile });
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
