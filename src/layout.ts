/**
 * Where kaos keeps things in `.kaos/` beside the config. One place, so that
 * the backend that writes and the commands that read agree.
 */
import { join } from "node:path";

export function stateDirOf(root: string): string {
  return join(root, ".kaos");
}

/** A job's files: outputs, timestamped log, params, and its copy of the source. */
export function jobPaths(stateDir: string, jobId: string) {
  const dir = join(stateDir, "jobs", jobId);
  return { dir, out: join(dir, "out"), log: join(dir, "log"), params: join(dir, "params.json"), source: join(dir, "source") };
}
