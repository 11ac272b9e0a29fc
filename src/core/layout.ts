/**
 * Where kaos keeps things in `.kaos/` beside the config. One place, so that
 * the backend that writes and the commands that read agree.
 */
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The root of the kaos-ml package (where its package.json is), from wherever
 * this module runs: the flat dist/ of an install, or src/ in this repository.
 */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
  return dir;
}

export const CONFIG_FILE_NAMES = ["kaos.config.ts", "kaos.config.mts", "kaos.config.js", "kaos.config.mjs"];

/** The config file in `cwd` or its nearest parent. */
export function findConfig(cwd: string): string | undefined {
  let dir = resolve(cwd);
  for (;;) {
    for (const name of CONFIG_FILE_NAMES) {
      const candidate = join(dir, name);
      if (existsSync(candidate)) return candidate;
    }
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

export function stateDirOf(root: string): string {
  return join(root, ".kaos");
}

/**
 * What kaos itself keeps at the top of `.kaos/`: the state database and its
 * SQLite companions, the object store, environments, laid-out data, tree
 * listings, job directories, Pulumi's state and the interpreter hint. Any
 * other name there was put by someone else.
 */
export const STATE_DIR_NAMES: ReadonlySet<string> = new Set([
  "state.db",
  "state.db-wal",
  "state.db-shm",
  "state.db-journal",
  "state.db.verified",
  "objects",
  "envs",
  "snapshots",
  "data",
  "trees",
  "jobs",
  "pulumi",
  "python-probe",
]);

/** A job's files: outputs, timestamped log, params, and its copy of the source. */
export function jobPaths(stateDir: string, jobId: string) {
  const dir = join(stateDir, "jobs", jobId);
  return {
    dir,
    out: join(dir, "out"),
    log: join(dir, "log"),
    params: join(dir, "params.json"),
    source: join(dir, "source"),
    /** The seal of its results, written when it ended (see backends/local/results.ts). */
    seal: join(dir, "seal.json"),
  };
}
