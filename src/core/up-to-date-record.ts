/**
 * Writes the up-to-date record (see core/up-to-date.ts) after a `kaos up`
 * whose plan had nothing to do, when everything that plan read can be
 * vouched for by the record; otherwise says why not, and the next `kaos up`
 * runs in full.
 */
import { type Dirent, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import type { Session } from "./engine.js";
import { moduleInputs } from "./config-cache.js";
import { CONFIG_FILE_NAMES, findConfigs, stacksDirOf, stateDirOf } from "./layout.js";
import type { Plan } from "./plan.js";
import { ALWAYS_IGNORED, RACY_WINDOW_COARSE_NS, RACY_WINDOW_FINE_NS, isOutsideRacyWindow } from "./tree-walk.js";
import { UP_TO_DATE_FORMAT, pathIdentity, writeUpToDate } from "./up-to-date.js";

/**
 * Most paths a record holds. Past that, checking them costs a good part of
 * what planning does, so the record would save little: such a project
 * plans in full.
 */
export const MAX_WITNESSES = 20_000;

export interface UpToDateRequest {
  session: Session;
  plan: Plan;
  /** How the command was started (cli/invocation.ts), and where: the config was found from there. */
  invocation: string;
  cwd: string;
  /** When the command started (wall clock, nanoseconds), before it read anything. */
  startedAtNs: bigint;
  /** What the run printed on stderr before its summary, as printed. */
  lines: string[];
  summary: string;
}

/** Writes the record for `request`; or, when it cannot vouch for the plan, writes nothing and says why. */
export function recordUpToDate(request: UpToDateRequest): string | undefined {
  const { session, plan } = request;
  const { config, stack, state, backend } = session;
  if (plan.changes) return "the plan had something to do";
  const settled = backend.settledInputs?.(plan) ?? `the ${backend.kind} backend's plan asks more than files`;
  if (typeof settled === "string") return settled;
  const witnesses = new Witnesses();
  // Finding the config: a config file added nearer the working directory, or beside it, would be found
  // instead or refused. The names themselves, not their folders: a folder changes with every file made in it.
  const cwd = resolve(request.cwd);
  if (findConfigs(cwd)[0] !== config.file) return "the config is not the one found from the working directory";
  for (let dir = cwd; ; dir = dirname(dir)) {
    for (const name of CONFIG_FILE_NAMES) witnesses.add(join(dir, name));
    if (dir === config.root || dir === dirname(dir)) break;
  }
  for (const file of [config.file, ...(stack.file === undefined ? [] : [stack.file])]) {
    const inputs = moduleInputs(file);
    if (inputs === undefined) return `${file} reads more than its files`;
    // Each file an import may load, there or not: one appearing where there was none is a change.
    for (const input of inputs) witnesses.add(input);
  }
  // A stack file added under the stack's name, or a second one beside it.
  witnesses.add(stacksDirOf(config.root));
  for (const p of config.pipelines) {
    witnesses.addTree(p.sourceDir, ALWAYS_IGNORED);
    if (p.data.kind === "dir") witnesses.addTree(p.data.dir, ALWAYS_IGNORED);
    if (p.hyperparamsFile !== undefined) witnesses.add(p.hyperparamsFile);
  }
  for (const p of plan.pipelines) {
    // requirements.txt may bring in files from outside the bundle.
    for (const include of p.bundle.includes) witnesses.add(include);
  }
  for (const file of settled.files) witnesses.addWithParent(file);
  // What a backend left (a job's results) is checked file by file whatever the names: a bundle's skipped folders are no exception.
  for (const tree of settled.trees) witnesses.addTree(tree);
  if (witnesses.overBudget) return `the project has more than ${MAX_WITNESSES} files and folders to check`;
  const racy = witnesses.changedSince(request.startedAtNs);
  if (racy !== undefined) return `${racy} changed too recently to be vouched for by its stat`;
  const revision = state.settledRevision();
  if (revision === undefined) return "another kaos wrote the state store meanwhile, or a run or job is unfinished";
  writeUpToDate(stateDirOf(config.root), {
    format: UP_TO_DATE_FORMAT,
    invocation: request.invocation,
    stack: stack.name,
    revision,
    witnesses: [...witnesses.identities],
    runtimes: settled.runtimes,
    lines: request.lines,
    summary: request.summary,
  });
  return undefined;
}

const NONE: ReadonlySet<string> = new Set();

/** The paths a record vouches for, with their identities as read now. */
class Witnesses {
  readonly identities = new Map<string, string>();
  overBudget = false;

  add(path: string): void {
    if (this.identities.has(path)) return;
    if (this.identities.size >= MAX_WITNESSES) {
      this.overBudget = true;
      return;
    }
    this.identities.set(path, pathIdentity(path));
  }

  /**
   * A path, and, when it is missing, the nearest folder above it that is
   * there: where it would appear, or, for what went while the plan ran (a
   * folder of `.kaos/` removed meanwhile), what the racy check finds changed.
   */
  addWithParent(path: string): void {
    this.add(path);
    const parent = dirname(path);
    if (this.identities.get(path) === "-" && parent !== path) this.addWithParent(parent);
  }

  /**
   * A folder and everything in it but the folders named in `skipped` (those a
   * bundle's walk never enters; their coming and going changes the folder
   * itself). Ignore files are not read here: a bundle's walk sees less.
   */
  addTree(dir: string, skipped: ReadonlySet<string> = NONE): void {
    this.addWithParent(dir);
    let entries: Dirent[];
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      if (this.overBudget) return;
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory()) {
        if (!skipped.has(entry.name)) this.addTree(path, skipped);
      } else {
        this.add(path);
      }
    }
  }

  /**
   * A path whose modification or change time falls within the racy window
   * before `sinceNs` (see core/hash.ts): it may have changed again within the
   * same timestamp tick after it was read, leaving the same stat behind.
   */
  changedSince(sinceNs: bigint): string | undefined {
    const fineLimit = sinceNs - RACY_WINDOW_FINE_NS;
    const coarseLimit = sinceNs - RACY_WINDOW_COARSE_NS;
    for (const [path, identity] of this.identities) {
      if (identity === "-") continue;
      // The path's own stat, and a symlink's target's after the `>` (see `pathIdentity`).
      for (const part of identity.split(">")) {
        const [, , , , mtime, ctime] = part.split(":");
        if (mtime === undefined || ctime === undefined) continue;
        if (!isOutsideRacyWindow(BigInt(mtime), BigInt(ctime), fineLimit, coarseLimit)) return path;
      }
    }
    return undefined;
  }
}
