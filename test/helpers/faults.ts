/**
 * Helpers for the fault tests: fingerprints of a project's state, integrity
 * checks of what `.kaos/` trusts (objects, environments, snapshots), the
 * processes a test's kaos left behind, and a direct read of the jobs table.
 */
import { createHash } from "node:crypto";
import { type Dirent, existsSync, lstatSync, readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { openRaw } from "./sqlite.js";
import { runKaos, startKaos, type LiveKaos, type RunOptions, type RunResult } from "./rig.js";
import type { ListedJob } from "./jobs.js";

/** Every path under `dir` (relative, sorted), directories marked with a trailing '/'. */
export function listTree(dir: string, skip: (relativePath: string) => boolean = () => false): string[] {
  const out: string[] = [];
  const walk = (current: string) => {
    let entries: Dirent[];
    try {
      entries = readdirSync(current, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      const path = join(current, entry.name);
      const rel = relative(dir, path);
      if (skip(rel)) continue;
      if (entry.isDirectory()) {
        out.push(`${rel}/`);
        walk(path);
      } else {
        out.push(rel);
      }
    }
  };
  walk(dir);
  return out.sort();
}

export function sha256Of(file: string): string {
  return createHash("sha256").update(readFileSync(file)).digest("hex");
}

export interface StateFingerprint {
  exists: boolean;
  /** SHA-256 of `.kaos/state.db`, or null when there is none. */
  db: string | null;
  /** Every path in `.kaos/` but SQLite's transient -wal and -shm files. */
  files: string[];
}

/** What a bad command must leave exactly as it was: the database's bytes and every path under `.kaos/`. */
export function stateFingerprint(projectDir: string): StateFingerprint {
  const stateDir = join(projectDir, ".kaos");
  if (!existsSync(stateDir)) return { exists: false, db: null, files: [] };
  const db = join(stateDir, "state.db");
  return {
    exists: true,
    db: existsSync(db) ? sha256Of(db) : null,
    files: listTree(stateDir, (rel) => rel.endsWith("state.db-wal") || rel.endsWith("state.db-shm")),
  };
}

export interface JobRow {
  id: string;
  run_id: string;
  stage: string;
  key: string;
  state: string;
  params: string;
  pid: number | null;
  started_at: string | null;
  finished_at: string | null;
  exit_code: number | null;
  reason: string | null;
}

/** The jobs table as stored (read-only), oldest first. */
export function jobRows(projectDir: string): JobRow[] {
  const file = join(projectDir, ".kaos", "state.db");
  if (!existsSync(file)) return [];
  const db = openRaw(file, { readOnly: true });
  try {
    return db
      .prepare("SELECT id, run_id, stage, key, state, params, pid, started_at, finished_at, exit_code, reason FROM jobs ORDER BY seq")
      .all() as unknown as JobRow[];
  } finally {
    db.close();
  }
}

export function runRows(projectDir: string): { id: string; state: string; pid: number }[] {
  const file = join(projectDir, ".kaos", "state.db");
  if (!existsSync(file)) return [];
  const db = openRaw(file, { readOnly: true });
  try {
    return db.prepare("SELECT id, state, pid FROM runs ORDER BY started_at").all() as { id: string; state: string; pid: number }[];
  } finally {
    db.close();
  }
}

/** `kaos train list --json`, which must work: the state opens cleanly. */
export async function listJobs(cwd: string, env: Record<string, string> = {}): Promise<ListedJob[]> {
  const result = await runKaos(["train", "list", "--json"], { cwd, env });
  if (result.code !== 0) throw new Error(`kaos train list failed (${result.code}):\n${result.stderr}`);
  return JSON.parse(result.stdout) as ListedJob[];
}

/**
 * Problems with what `.kaos/` would trust: an object whose bytes do not hash
 * to its name, an environment without its completion marker, a snapshot or job
 * source laid out without its marker. Leftover work directories (`.building-*`,
 * `tmp/`) are not trusted by anything and are not problems.
 */
export function trustProblems(projectDir: string): string[] {
  const stateDir = join(projectDir, ".kaos");
  const problems: string[] = [];
  const objects = join(stateDir, "objects", "sha256");
  for (const prefix of safeList(objects)) {
    for (const rest of safeList(join(objects, prefix))) {
      const file = join(objects, prefix, rest);
      const actual = sha256Of(file);
      if (actual !== prefix + rest) problems.push(`object ${prefix}${rest} holds bytes hashing to ${actual}`);
      if ((lstatSync(file).mode & 0o222) !== 0) problems.push(`object ${prefix}${rest} is writable`);
    }
  }
  const envs = join(stateDir, "envs");
  for (const env of safeList(envs)) {
    if (env.startsWith(".building-")) continue;
    if (!existsSync(join(envs, env, ".kaos-complete"))) problems.push(`environment ${env} has no completion marker`);
    if (!existsSync(join(envs, env, "bin", "python"))) problems.push(`environment ${env} has no bin/python`);
  }
  // A laid-out tree is trusted when its marker `<dir>.complete` sits beside it; then it must hold what it was made of.
  // A view linked to the bundle's own files (its marker says "linked") is checked against the plan whenever it is used instead.
  // A mount point (its marker says "mounted") holds nothing outside the jobs' namespaces.
  const snapshots = join(stateDir, "snapshots");
  for (const marker of safeList(snapshots).filter((name) => name.endsWith(".complete"))) {
    const kind = readFileSync(join(snapshots, marker), "utf8");
    if (kind === "linked\n") continue;
    const hash = marker.slice(0, -".complete".length);
    if (!existsSync(join(snapshots, hash))) continue;
    if (kind === "mounted\n") {
      if (safeList(join(snapshots, hash)).length > 0) problems.push(`mount point ${hash} is not empty`);
      continue;
    }
    const listing = join(stateDir, "trees", `${hash}.jsonl`);
    if (!existsSync(listing)) continue;
    for (const line of readFileSync(listing, "utf8").split("\n").filter(Boolean)) {
      const [path, mode, , contentHash] = JSON.parse(line) as [string, string, number, string];
      if (mode === "symlink") continue;
      const file = join(snapshots, hash, path);
      if (!existsSync(file) || sha256Of(file) !== contentHash) problems.push(`snapshot ${hash} has ${path} not matching its hash`);
    }
  }
  return problems;
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Pids of live (non-zombie) processes whose environment holds `name=value`. */
export function processesWithEnv(name: string, value: string): number[] {
  const needle = `${name}=${value}`;
  const found: number[] = [];
  for (const entry of safeList("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) continue;
      const environ = readFileSync(`/proc/${entry}/environ`, "latin1");
      if (environ.split("\0").includes(needle)) found.push(Number(entry));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return found;
}

/** Waits until `check` holds, polling; returns whether it did before the deadline. */
export async function eventually(check: () => boolean, timeoutMs = 10_000, everyMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (check()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((done) => setTimeout(done, everyMs));
  }
}

/** Kills every process still carrying a test's tag, so that a failed test leaves nothing running. */
export function killTagged(name: string, value: string): void {
  for (const pid of processesWithEnv(name, value)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/** Starts kaos and SIGKILLs it once `when` resolves (or it exits first); returns how it ended. */
export async function killWhen(
  args: string[],
  options: RunOptions,
  when: (live: LiveKaos) => Promise<unknown>,
): Promise<{ killed: boolean; result: RunResult }> {
  const live = startKaos(args, options);
  let exited = false;
  void live.exited.then(() => (exited = true));
  await Promise.race([when(live).catch(() => undefined), live.exited]);
  const killed = !exited;
  if (killed) live.child.kill("SIGKILL");
  return { killed, result: await live.exited };
}

export { runKaos, startKaos };

export { pidAlive } from "./rig.js";
