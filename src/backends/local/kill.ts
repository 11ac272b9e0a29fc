/**
 * `kaos train kill` on the local backend: records the job cancelled, then
 * stops its process group, or a build's steps (SIGTERM, then SIGKILL after
 * five seconds). The kaos running the job sees it already ended, keeps this
 * result, and starts neither a job killed while queued nor the next step of
 * a killed build, and a running ingest stops its transfers as at Ctrl-C (its
 * partial downloads are resumed by the next `kaos up`). A train job whose
 * kaos is gone has its processes found by their tag instead; what it wrote
 * into its data view meanwhile is checked by the crash recovery of the next
 * `kaos up` (or `kaos unlock`), which holds the writer lock that check needs.
 */
import type { BackendContext } from "../../core/backend.js";
import { KaosError } from "../../core/errors.js";
import { StateStore, type JobRecord } from "../../core/state.js";
import { groupAlive, killGroup, stopOrphanedJobs } from "./process.js";

const GRACE_MS = 5000;
const POLL_MS = 100;

export async function killLocalJob(context: BackendContext, jobRef: string): Promise<{ id: string }> {
  // Resolved in the store as the command opened it first: a job that does not exist must not create `.kaos/`.
  context.state.resolveJob(jobRef);
  const state = StateStore.open(context.config.root);
  let job: JobRecord;
  let ownerRunsHere: boolean;
  try {
    job = state.resolveJob(jobRef);
    if (job.state !== "running" && job.state !== "queued") {
      throw new KaosError("USAGE", `job ${job.id} is ${job.state}; only a queued or running job can be killed`);
    }
    ownerRunsHere = state.runOwnerLiveness(job.runId) === "alive";
    // Record first, then signal: the runner sees the job already ended and keeps this result.
    state.finishJob(job.id, { state: "cancelled", exitCode: null, reason: "cancelled by kaos train kill" });
  } finally {
    state.close();
  }
  if (job.stage === "build" || (job.stage === "train" && !ownerRunsHere)) {
    // A build runs inside the kaos that applies it (its recorded pid); its steps (venv, pip) carry the job's id.
    // A train job's recorded pid named its process group only while its kaos lived to reap it; since then it
    // may be anybody's (or another machine's). What the job left running here still carries its tag.
    await stopOrphanedJobs([job.id], GRACE_MS);
  } else if (job.stage === "train" && job.pid !== null && job.pid !== process.pid) {
    killGroup(job.pid, "SIGTERM");
    const deadline = Date.now() + GRACE_MS;
    while (groupAlive(job.pid) && Date.now() < deadline) await new Promise((done) => setTimeout(done, POLL_MS));
    if (groupAlive(job.pid)) killGroup(job.pid, "SIGKILL");
  }
  return { id: job.id };
}
