/** Plans, outcomes and what failed, in the words `kaos watch` prints. */
import { displayLine, plural } from "../../core/format.js";
import type { Plan } from "../../core/plan.js";
import type { ExecuteResult } from "../../core/backend.js";
import type { JobRecord } from "../../core/state.js";

export function planSummary(plan: Plan): string {
  if (!plan.changes) return "nothing to run, every job is up to date";
  let stages = 0;
  let run = 0;
  let skipped = 0;
  for (const p of plan.pipelines) {
    if (p.stages.ingest?.action === "run") stages += 1;
    if (p.stages.build.action === "run") stages += 1;
    for (const job of p.jobs) {
      if (job.action === "run") run += 1;
      else skipped += 1;
    }
  }
  return `${plural(stages, "stage")} and ${plural(run, "job")} to run, ${skipped} skipped`;
}

/** The work a plan would do, each item named by pipeline, stage and key. */
export function runItems(plan: Plan): Map<string, string[]> {
  const items = new Map<string, string[]>();
  for (const p of plan.pipelines) {
    const name = p.pipeline.name;
    // A manifest whose data key is only known after the download: its entries stand in for it.
    const pending = (): string => `pending:${p.manifest?.entries.digest() ?? ""}`;
    const list: string[] = [];
    if (p.stages.ingest?.action === "run") list.push(`${name} ingest ${p.stages.ingest.key ?? pending()}`);
    if (p.stages.build.action === "run") list.push(`${name} build ${p.stages.build.key ?? ""}`);
    for (const job of p.jobs) if (job.action === "run") list.push(`${name} train ${job.key ?? `${pending()}:${job.paramsKey}`}`);
    items.set(name, list);
  }
  return items;
}

/** What failed in a run, by the keys it had: none of it is retried until a key changes. */
export function failedItems(plan: Plan, result: ExecuteResult): Set<string> {
  const failed = new Set<string>();
  const items = runItems(plan);
  for (const outcome of result.pipelines) {
    const stageFailed = outcome.stages.ingest?.state === "failed" || outcome.stages.build?.state === "failed";
    if (stageFailed) {
      for (const item of items.get(outcome.name) ?? []) failed.add(item);
      continue;
    }
    for (const job of outcome.jobs) if (job.state === "failed" && job.key !== null) failed.add(`${outcome.name} train ${job.key}`);
  }
  return failed;
}

/** Every key the plan wants, run or skipped: a running job whose key is not here has stale inputs. */
export function wantedKeys(plan: Plan): Set<string> {
  const wanted = new Set<string>();
  for (const p of plan.pipelines) {
    const name = p.pipeline.name;
    if (p.stages.ingest) wanted.add(`${name} ingest ${p.stages.ingest.key ?? "pending"}`);
    if (p.stages.build.key !== null) wanted.add(`${name} build ${p.stages.build.key}`);
    for (const job of p.jobs) if (job.key !== null) wanted.add(`${name} train ${job.key}`);
  }
  return wanted;
}

export function jobItem(job: JobRecord): string {
  return `${job.pipeline} ${job.stage} ${job.key}`;
}

/** Why a run failed, in one line: a reason may quote what a job left behind. */
export function failureReason(result: ExecuteResult): string {
  return displayLine(rawFailureReason(result));
}

function rawFailureReason(result: ExecuteResult): string {
  for (const outcome of result.pipelines) {
    for (const stage of ["ingest", "build"] as const) {
      const decision = outcome.stages[stage];
      if (decision?.state === "failed")
        return `${outcome.name} ${stage}${decision.jobId ? ` ${decision.jobId}` : ""}: ${decision.reason ?? "failed"}`;
    }
    const job = outcome.jobs.find((j) => j.state === "failed");
    if (job)
      return `${outcome.name} train${job.id ? ` ${job.id}` : ""}: ${job.reason ?? (job.exitCode !== null ? `exited with code ${job.exitCode}` : "failed")}`;
    if (outcome.stages.train?.state === "failed") return `${outcome.name} train: ${outcome.stages.train.reason ?? "failed"}`;
  }
  return "a job did not succeed";
}
