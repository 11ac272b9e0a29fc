/**
 * `kaos train get` on a kubernetes stack: a train job's outputs are the
 * files under /<job key> of its Pachyderm job's output commit (see
 * trainScript), read through pachd's GlobFile and GetFile once that job has
 * ended, when the commit no longer changes.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { FetchedOutputs, FetchOutputsRequest } from "../../core/backend.js";
import { emptyDestination } from "../../core/destination.js";
import { KaosError } from "../../core/errors.js";
import type { ResolvedStack } from "../../core/types.js";
import { clientFor, findJob, shortJobId, type ClusterJobsOptions } from "./jobs.js";
import { repoRef } from "./pachd.js";

export async function fetchClusterOutputs(
  stack: ResolvedStack,
  request: FetchOutputsRequest,
  options: ClusterJobsOptions,
): Promise<FetchedOutputs> {
  const found = await findJob(stack, request.job, options);
  const { job, pachydermJob, datum } = found;
  const shown = shortJobId(job.id);
  if (job.stage !== "train") throw new KaosError("USAGE", `job ${shown} is a ${job.stage} job; expected a train job, which has outputs`);
  const where = `${pachydermJob.pipeline.name}@${pachydermJob.id}:/${job.id}`;
  if (datum === undefined) {
    throw new KaosError("JOB_NOT_FOUND", `job ${shown} is a Pachyderm job whose combinations Pachyderm does not list (${job.state})`, {
      hint: `\`kaos train list --stack ${stack.name}\` shows its combinations once pachd lists them; get one of those`,
    });
  }
  if (job.finishedAt === null) {
    throw new KaosError(
      "USAGE",
      `job ${shown} is ${job.state}: Pachyderm job ${pachydermJob.pipeline.name}@${pachydermJob.id} has not ended, so its output commit may still change`,
      {
        hint: `get it once \`kaos train list --stack ${stack.name}\` shows that job ended`,
      },
    );
  }
  if (request.code) {
    throw new KaosError("NOT_SUPPORTED", `kaos train get --code: not supported on stack ${stack.name}, which uses the kubernetes backend`, {
      hint: "leave out --code: the outputs (and --params) are copied from Pachyderm",
    });
  }
  const destination = emptyDestination(request.outDir ?? shown);
  const { client, project } = clientFor(stack, options);
  const commit = { repo: repoRef(project, pachydermJob.pipeline.name), id: pachydermJob.id };
  const prefix = `/${job.id}/`;
  const files = (await client.globFile(commit, `${prefix}**`)).flatMap((info) => {
    const path = info.file?.path;
    return info.fileType === "FILE" && path?.startsWith(prefix) ? [path] : [];
  });
  if (files.length === 0) throw new KaosError("JOB_NOT_FOUND", `job ${shown} has no outputs at ${where} (${job.state})`);
  const notes: string[] = [];
  for (const path of files) {
    const relative = path.slice(prefix.length);
    // pachd's paths are clean; one that climbs out is not written.
    if (relative.split("/").some((part) => part === ".." || part === "")) {
      notes.push(`skipped ${path}: not a path under ${prefix}`);
      continue;
    }
    const target = join(destination, "out", relative);
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target, await client.getFile(commit, path));
  }
  if (request.params) writeFileSync(join(destination, "params.json"), `${JSON.stringify(job.params, null, 2)}\n`);
  return { id: job.id, destination, notes };
}
