/**
 * `kaos train get` on the local backend: copies a train job's output
 * directory (and, asked, its source snapshot and params) out of `.kaos/`,
 * refusing results that changed after the job ended unless forced.
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { BackendContext, FetchedOutputs, FetchOutputsRequest } from "../../core/backend.js";
import { emptyDestination } from "../../core/destination.js";
import { KaosError } from "../../core/errors.js";
import { displayLine, displayText } from "../../core/format.js";
import { jobPaths, stateDirOf } from "../../core/layout.js";
import { checkJobResults, copyResults, resultsProblem } from "./results.js";

export async function fetchLocalOutputs(context: BackendContext, request: FetchOutputsRequest): Promise<FetchedOutputs> {
  const stateDir = stateDirOf(context.config.root);
  const job = context.state.resolveJob(request.job);
  const paths = jobPaths(stateDir, job.id);
  const outDir = job.outputDir ?? paths.out;
  if (job.stage !== "train")
    throw new KaosError(
      "USAGE",
      `job ${job.id} is ${job.stage === "ingest" ? "an" : "a"} ${job.stage} job; expected a train job, which has outputs`,
    );
  if (job.collectedAt !== null) {
    throw new KaosError("JOB_NOT_FOUND", `job ${job.id}'s outputs were collected by kaos gc at ${job.collectedAt}`, {
      hint: "a `kaos up` whose config still holds its inputs and params trains it again",
    });
  }
  if (!existsSync(outDir)) throw new KaosError("JOB_NOT_FOUND", `job ${job.id} has no outputs at ${outDir} (${job.state})`);
  const destination = emptyDestination(request.outDir ?? job.id);
  const notes: string[] = [];
  if (job.state === "queued" || job.state === "running") {
    // As on a cluster stack: what a job has not finished writing is not its result.
    const unfinished = `job ${job.id} is ${job.state}: it has not ended, so its outputs may still change`;
    if (!request.force) {
      throw new KaosError("USAGE", unfinished, {
        hint: `get it once it ends (\`kaos train logs -f ${job.id}\` waits for that), or pass --force to copy what it has written so far`,
      });
    }
    notes.push(`warning: ${unfinished}; copied what it has written so far (--force)`);
  } else if (job.state !== "succeeded") {
    notes.push(`note: job ${job.id} ${job.state}${job.reason ? ` (${displayLine(job.reason)})` : ""}: copied the outputs it left`);
  }
  const untrusted = resultsProblem(job.id, await checkJobResults(stateDir, job.id));
  if (untrusted !== undefined) {
    if (!request.force)
      throw new KaosError("RESULTS_CHANGED", untrusted, { hint: "rerun the job (kaos up --force), or pass --force to copy them anyway" });
    notes.push(`warning: ${untrusted}; copied anyway (--force)`);
  }
  mkdirSync(destination, { recursive: true });
  // What cannot be copied as the job left it (FIFOs, links out of the tree) is skipped and named.
  const skipped = (source: string, why: string) => notes.push(`skipped ${displayText(source)}: ${displayLine(why)}`);
  copyResults(outDir, join(destination, "out"), "outputs", skipped);
  if (request.code) copyResults(paths.source, join(destination, "source"), "source", skipped);
  if (request.params) writeFileSync(join(destination, "params.json"), `${JSON.stringify(job.params, null, 2)}\n`);
  return { id: job.id, destination, notes };
}
