/**
 * core/sweep.ts over a real state store in a temp dir: which job each
 * combination of the current grid stands at, and how a sweep is ranked.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { KaosError } from "../src/core/errors.js";
import { jobKeyOf } from "../src/core/plan.js";
import type { MetricValue } from "../src/core/metrics.js";
import { StateStore, type JobState } from "../src/core/state.js";
import { bestOfSweep, currentSweep, rankSweep, type SweepInputs } from "../src/core/sweep.js";
import type { HyperparamSpace, ResolvedConfig } from "../src/core/types.js";

const roots: string[] = [];
const stores: StateStore[] = [];
afterEach(() => {
  for (const store of stores.splice(0)) store.close();
  for (const root of roots.splice(0)) rmSync(root, { recursive: true, force: true });
});

const inputs: SweepInputs = { env: "e".repeat(64), source: "s".repeat(64), data: "d".repeat(64) };

function setup(hyperparams: HyperparamSpace): { root: string; config: ResolvedConfig; state: StateStore } {
  const root = mkdtempSync(join(tmpdir(), "kaos-sweep-"));
  roots.push(root);
  const config: ResolvedConfig = {
    file: join(root, "kaos.config.ts"),
    root,
    workspace: "w",
    pipelines: [
      {
        name: "svm",
        sourceDir: join(root, "src"),
        data: { kind: "dir", dir: join(root, "data") },
        hyperparams,
        hyperparamsFile: undefined,
        resources: { cpu: 1, memory: undefined, memoryBytes: undefined, gpu: 0 },
        parallelism: 1,
      },
    ],
    watch: { debounceMs: 200, onChange: "restart" },
  };
  const state = StateStore.open(root);
  stores.push(state);
  return { root, config, state };
}

/** Records a finished train job for `params` in a run of its own, with metrics in its output directory. */
function record(
  root: string,
  state: StateStore,
  params: Record<string, string | number>,
  end: JobState,
  metrics: Record<string, unknown> = {},
  pipeline = "svm",
): string {
  const run = state.beginRun("local", "up");
  const outputDir = join(root, "outs", `${run.id}-${JSON.stringify(params)}`);
  mkdirSync(join(outputDir, "metrics"), { recursive: true });
  writeFileSync(join(outputDir, "metrics", "m.json"), JSON.stringify(metrics));
  const job = state.createJob({
    runId: run.id,
    stack: "local",
    pipeline,
    stage: "train",
    key: jobKeyOf({ env: inputs.env, source: inputs.source, data: inputs.data! }, params),
    params,
    envKey: inputs.env,
    sourceKey: inputs.source,
    dataKey: inputs.data!,
    paramsKey: null,
    sweepIndex: 0,
    sweepSize: 1,
    outputDir,
    logFile: null,
  });
  state.markRunning(job.id, null);
  if (end !== "running")
    state.finishJob(job.id, { state: end as "succeeded" | "failed" | "cancelled", exitCode: end === "succeeded" ? 0 : 1 });
  state.finishRun(run.id, "succeeded");
  return job.id;
}

describe("currentSweep", () => {
  it("lists every combination the config names, in grid order, with the job last recorded for it in any run", () => {
    const { root, config, state } = setup({ c: [1, 2, 3] });
    const first = record(root, state, { c: 1 }, "succeeded", { acc: 0.5, loss: 2 });
    // A combination trained in another run (reused since) is part of the sweep all the same.
    const second = record(root, state, { c: 2 }, "cancelled");
    const secondAgain = record(root, state, { c: 2 }, "succeeded", { acc: 0.75, loss: 1 });
    // A combination the config no longer names is not.
    record(root, state, { c: 9 }, "succeeded", { acc: 1 });

    const sweep = currentSweep(config, "svm", state, inputs);
    expect(sweep.pipeline).toBe("svm");
    expect(sweep.rows.map((row) => [row.params, row.state, row.jobId])).toEqual([
      [{ c: 1 }, "succeeded", first],
      [{ c: 2 }, "succeeded", secondAgain],
      [{ c: 3 }, "pending", undefined],
    ]);
    expect(second).not.toBe(secondAgain);
    expect(sweep.rows[0]!.metrics).toEqual({ acc: 0.5, loss: 2 });
    expect(sweep.rows[2]!.metrics).toEqual({});
    expect(sweep.rows[2]!.key).toBe(jobKeyOf({ env: inputs.env, source: inputs.source, data: inputs.data! }, { c: 3 }));
    expect(sweep.metricNames).toEqual(["acc", "loss"]);
    expect(sweep.leadingMetric).toBe("acc");
  });

  it("shows the latest attempt: a job cancelled after an earlier success stands cancelled", () => {
    const { root, config, state } = setup({ c: [1] });
    record(root, state, { c: 1 }, "succeeded", { acc: 0.5 });
    const cancelled = record(root, state, { c: 1 }, "cancelled");
    expect(currentSweep(config, "svm", state, inputs).rows.map((row) => [row.state, row.jobId])).toEqual([["cancelled", cancelled]]);
  });

  it("counts a job another pipeline recorded for the same key, as `kaos up` reuses it", () => {
    const { root, config, state } = setup({ c: [1] });
    const shared = record(root, state, { c: 1 }, "succeeded", { acc: 0.5 }, "other");
    expect(currentSweep(config, "svm", state, inputs).rows[0]!.jobId).toBe(shared);
  });

  it("is all pending, without keys, while the data key is unknown", () => {
    const { root, config, state } = setup({ c: [1, 2] });
    record(root, state, { c: 1 }, "succeeded");
    const sweep = currentSweep(config, "svm", state, { ...inputs, data: undefined });
    expect(sweep.rows.map((row) => [row.key, row.state])).toEqual([
      [null, "pending"],
      [null, "pending"],
    ]);
  });

  it("names the pipelines when asked for one the config lacks", () => {
    const { config, state } = setup({});
    expect(() => currentSweep(config, "nope", state, inputs)).toThrow(KaosError);
    expect(() => currentSweep(config, "nope", state, inputs)).toThrow(/expected one of: svm/);
  });
});

describe("rankSweep and bestOfSweep", () => {
  const rows: { name: string; state: "succeeded" | "failed"; metrics: Record<string, MetricValue> }[] = [
    { name: "a", state: "succeeded" as const, metrics: { loss: 0.5 } },
    { name: "b", state: "succeeded" as const, metrics: {} },
    { name: "c", state: "failed" as const, metrics: { loss: 0.1 } },
    { name: "d", state: "succeeded" as const, metrics: { loss: 0.9 } },
    { name: "e", state: "succeeded" as const, metrics: { loss: "n/a" } },
    { name: "f", state: "succeeded" as const, metrics: { loss: 0.5 } },
  ];

  it("ranks highest first by default, lowest first when ascending, rows missing the metric last, ties in order", () => {
    expect(rankSweep(rows, "loss").map((row) => row.name)).toEqual(["d", "a", "f", "c", "b", "e"]);
    expect(rankSweep(rows, "loss", { ascending: true }).map((row) => row.name)).toEqual(["c", "a", "f", "d", "b", "e"]);
    expect(rows.map((row) => row.name)).toEqual(["a", "b", "c", "d", "e", "f"]);
  });

  it("picks the best succeeded row, or none when no succeeded row has the metric", () => {
    expect(bestOfSweep(rows, "loss", { ascending: true })?.name).toBe("a");
    expect(bestOfSweep(rows, "loss")?.name).toBe("d");
    expect(bestOfSweep(rows, "accuracy")).toBeUndefined();
  });
});
