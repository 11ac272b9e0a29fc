/**
 * `kaos train info JOB` on the local backend: the job as the state store
 * recorded it, with what its folder under `.kaos/jobs/` holds (metrics,
 * sealed results) and the packages of the environment it ran in.
 */
import { join } from "node:path";
import { abandonedJobs, type BackendContext, type RecordedJobInfo } from "../../core/backend.js";
import { KaosError, describeError } from "../../core/errors.js";
import { jobPaths, stateDirOf } from "../../core/layout.js";
import { readMetricsAndSeries } from "../../core/metrics.js";
import type { SweepRow } from "../../core/sweep.js";
import { environmentPackages, environmentPath, freezePath } from "./build.js";
import { checkJobResults, resultsProblem } from "./results.js";
import { runSweepRows } from "./sweep.js";

export async function localJobInfo(
  context: BackendContext,
  jobRef: string,
  sweepOf: (pipeline: string) => Promise<{ rows: SweepRow[] }>,
): Promise<RecordedJobInfo> {
  const { config, state } = context;
  const job = state.resolveJob(jobRef);
  const stateDir = stateDirOf(config.root);
  const envsDir = join(stateDir, "envs");
  // A build's result is the environment it made, an ingest's the data it brought in; their job folders hold only the log.
  const outputDir =
    job.stage === "build" && job.envKey !== null
      ? environmentPath(envsDir, job.envKey)
      : job.stage === "ingest" && job.dataKey !== null
        ? join(stateDir, "data", job.dataKey)
        : (job.outputDir ?? jobPaths(stateDir, job.id).out);
  // One read of the series files gives both: a long run's may be gigabytes.
  const { metrics, extents: series } =
    job.stage === "train" ? readMetricsAndSeries(outputDir) : { metrics: { values: {}, skipped: [] }, extents: {} };
  let rows: SweepRow[] = [];
  let note: string | undefined;
  if (job.stage === "train") {
    if (config.pipelines.some((p) => p.name === job.pipeline)) {
      try {
        rows = (await sweepOf(job.pipeline)).rows;
      } catch (error) {
        if (!(error instanceof KaosError)) throw error;
        // The job is still worth showing when its pipeline's inputs cannot be read now.
        note = `the current sweep could not be read (${describeError(error).split("\n")[0]}); shown: the jobs of run ${job.runId}`;
        rows = runSweepRows(config.root, state, job);
      }
    } else rows = runSweepRows(config.root, state, job);
  }
  const check = job.stage === "train" ? await checkJobResults(stateDir, job.id) : undefined;
  const packages = job.envKey === null ? undefined : environmentPackages(envsDir, job.envKey);
  return {
    kind: "record",
    job,
    outputDir,
    metrics,
    series,
    results: check === undefined ? undefined : { check, problem: resultsProblem(job.id, check) },
    packages: packages === undefined ? undefined : { names: packages, file: freezePath(envsDir, job.envKey!) },
    sweep: { rows, note },
    abandoned: abandonedJobs(state, [job]).size > 0,
  };
}
