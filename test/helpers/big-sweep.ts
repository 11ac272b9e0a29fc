/**
 * A project whose pipeline `p` sweeps a 100 x 100 grid, with a job recorded
 * for every combination straight into the state store (running 10,000 real
 * jobs would take minutes): the keys are the ones `kaos plan --json` gives,
 * so the dashboard's sweep joins them to the grid as it does after a real
 * `kaos up`. Each job's outputs hold a `score` metric, distinct per job.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { StateStore } from "../../src/core/state.js";
import { makeProject, runKaosOk, trivialSourceBundle, under, type Project } from "./rig.js";

export const BIG_SIDE = 100;
export const BIG_JOBS = BIG_SIDE * BIG_SIDE;

/** Every score differs: the grid index spread over 0..99.99. */
export function scoreOf(index: number): number {
  return ((index * 7919) % BIG_JOBS) / 100;
}

/** The combinations recorded as failed (without a score), so that a sort by state has something to order. */
export function failsAt(index: number): boolean {
  return index % 97 === 5;
}

export interface BigSweep {
  project: Project;
  /** The job of each combination, by grid index. */
  ids: string[];
}

/**
 * Records the sweep; the jobs at `running` grid indexes are left running,
 * without outputs yet, for a test to finish with {@link finishBigSweepJob}.
 */
export async function bigSweepProject(options: { running?: readonly number[] } = {}): Promise<BigSweep> {
  const running = new Set(options.running ?? []);
  const grid = { a: [...Array(BIG_SIDE).keys()], b: [...Array(BIG_SIDE).keys()] };
  const project = makeProject({
    "kaos.config.ts":
      'import { defineConfig } from "kaos-ml";\n\nexport default defineConfig({\n  pipelines: {\n    p: { source: "src", data: "data", hyperparams: "grid.json" },\n  },\n});\n',
    "grid.json": JSON.stringify(grid),
    "data/value.txt": "v1",
    ...under("src", trivialSourceBundle("#!/bin/sh\n", { requirements: "# no requirements\n" })),
  });
  const plan = await runKaosOk(["plan", "--json"], { cwd: project.dir, timeoutMs: 120_000 });
  const planned = JSON.parse(plan.stdout) as { pipelines: { jobs: { key: string; params: Record<string, unknown> }[] }[] };
  const jobs = planned.pipelines[0]!.jobs;
  const state = StateStore.open(project.dir);
  const ids: string[] = [];
  try {
    state.transaction(() => {
      const run = state.beginRun("local", "up");
      jobs.forEach(({ key, params }, index) => {
        const outputDir = project.path("outs", String(index));
        const job = state.createJob({
          runId: run.id,
          stack: "local",
          pipeline: "p",
          stage: "train",
          key,
          params,
          envKey: null,
          sourceKey: null,
          dataKey: null,
          paramsKey: null,
          sweepIndex: index,
          sweepSize: jobs.length,
          outputDir,
          logFile: null,
        });
        ids.push(job.id);
        state.markRunning(job.id, null);
        if (running.has(index)) return;
        if (failsAt(index)) {
          state.finishJob(job.id, { state: "failed", exitCode: 1, reason: "exited with code 1" });
          return;
        }
        writeScore(outputDir, index);
        state.finishJob(job.id, { state: "succeeded", exitCode: 0 });
      });
      if (running.size === 0) state.finishRun(run.id, "succeeded");
    });
  } finally {
    state.close();
  }
  return { project, ids };
}

/** Writes the job's score and records it succeeded, as its `kaos up` would. */
export function finishBigSweepJob(sweep: BigSweep, index: number): void {
  writeScore(sweep.project.path("outs", String(index)), index);
  const state = StateStore.open(sweep.project.dir);
  try {
    state.finishJob(sweep.ids[index]!, { state: "succeeded", exitCode: 0 });
  } finally {
    state.close();
  }
}

function writeScore(outputDir: string, index: number): void {
  mkdirSync(join(outputDir, "metrics"), { recursive: true });
  writeFileSync(join(outputDir, "metrics", "m.json"), JSON.stringify({ score: scoreOf(index) }));
}
