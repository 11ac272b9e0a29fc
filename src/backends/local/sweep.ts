/**
 * `kaos train compare`, `train info` and `train get --best` on the local
 * backend: a pipeline's sweep as its config stands, with the jobs the state
 * store recorded for it.
 */
import type { BackendContext } from "../../core/backend.js";
import { sweepInputs } from "../../core/engine.js";
import { startHashWorkers, stopHashWorkers } from "../../core/hash.js";
import { jobPaths, stateDirOf } from "../../core/layout.js";
import { readMetrics } from "../../core/metrics.js";
import type { PlanOracle } from "../../core/plan.js";
import type { JobRecord, StateStore } from "../../core/state.js";
import { currentSweep, type Sweep, type SweepRow } from "../../core/sweep.js";
import type { HyperparamSet } from "../../core/types.js";

/** The current sweep of `pipeline`, keyed as `kaos up` on this stack would key its jobs. */
export async function localSweep(context: BackendContext, oracle: Pick<PlanOracle, "runtime">, pipeline: string): Promise<Sweep> {
  const { config, stack, state } = context;
  // The keys are the bundles' hashes: the hashing threads boot while the plan loads.
  startHashWorkers();
  try {
    const inputs = (await sweepInputs(config, stack, state, oracle, [pipeline])).get(pipeline);
    if (inputs === undefined) throw new Error(`no keys were computed for pipeline ${pipeline}`);
    return currentSweep(config, pipeline, state, inputs);
  } finally {
    await stopHashWorkers();
  }
}

/** For a job no config pipeline describes (`train deploy`, a pipeline since removed): the train jobs of its own run. */
export function runSweepRows(root: string, state: StateStore, job: JobRecord): SweepRow[] {
  const stateDir = stateDirOf(root);
  return state
    .sweepMembers(job.runId, job.pipeline)
    .filter((member) => member.stage === "train")
    .map((member, index) => ({
      index,
      key: member.key,
      params: member.params as HyperparamSet,
      state: member.state,
      jobId: member.id,
      runId: member.runId,
      ...(member.finishedAt !== null ? { finishedAt: member.finishedAt } : {}),
      metrics: readMetrics(member.outputDir ?? jobPaths(stateDir, member.id).out).values,
    }));
}
