/**
 * The record a `kaos up` that found nothing to do leaves in
 * `.kaos/up-to-date.json`, so that the next `kaos up` can tell it has nothing
 * to do either without loading the config, hashing a bundle or planning: it
 * then costs little more than starting Node (cli/up-from-record.ts). It is
 * wireit's fingerprint and git's index applied to the whole plan, and it is
 * only a shortcut: any doubt means the full `kaos up`.
 *
 * The record vouches for "nothing to do" while everything that plan read is
 * as it was:
 * - how kaos was started: its build, Node, the arguments, the working
 *   directory, the whole environment, and which of stdout and stderr are
 *   terminals (they decide colours and the live view);
 * - every file and folder the config's modules and the stack's are made of,
 *   every file and folder of each bundle, the hyperparams file, and what
 *   `.kaos/` holds for the reused environments and jobs: each by its lstat
 *   (inode, mode, size, modification and change times), a symlink by its
 *   target's too; a path that did not exist must still not exist;
 * - the interpreter environments are built with, as `.kaos/` knows it
 *   (backends/local/python.ts);
 * - the state store's revision: a count, kept by SQLite triggers, of every
 *   change to runs, jobs, applied plans and writer locks (core/state.ts).
 *
 * It is written (core/up-to-date-record.ts) only when all of that can be
 * vouched for, and read by the first thing `kaos up` does. This module is
 * what both sides share, and stays small: it is loaded before anything else.
 */
import { createHash } from "node:crypto";
import { type BigIntStats, lstatSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { kaosVersion, upToDateOf } from "./layout.js";
import { temporaryPathFor } from "./process-identity.js";

/** The record's format: a record of another one is not read. */
export const UP_TO_DATE_FORMAT = 1;

/** Set to 1 to have `kaos up` say on stderr whether it used the record, and if not, why. Not part of the invocation. */
export const TRACE_VARIABLE = "KAOS_TRACE_UP_TO_DATE";

/** Arguments that name the config file: a `kaos up` given one neither writes nor looks for a record. */
export const CONFIG_ARGUMENT = /^(?:-c|--config)/;

export interface UpToDateRecord {
  format: typeof UP_TO_DATE_FORMAT;
  /** `invocationKey` of the `kaos up` that wrote it. */
  invocation: string;
  stack: string;
  /** The state store's revision after that run was recorded (`StateStore.revision`). */
  revision: string;
  /** Each path the plan read, and its `pathIdentity` then. */
  witnesses: [path: string, identity: string][];
  /** The interpreter each Dockerfile's Python version resolved to (`knownRuntime`). */
  runtimes: { wanted: string | null; runtime: string }[];
  /** What the run printed on stderr before its summary, line by line, as printed. */
  lines: string[];
  /** The summary line after `run ID: `. */
  summary: string;
}

/** What a path is, as far as its lstat tells (and, for a symlink, its target's stat): "-" for nothing there. */
export function pathIdentity(path: string): string {
  let stats: BigIntStats;
  try {
    stats = lstatSync(path, { bigint: true });
  } catch {
    return "-";
  }
  const own = `${stats.dev}:${stats.ino}:${stats.mode}:${stats.size}:${stats.mtimeNs}:${stats.ctimeNs}`;
  if (!stats.isSymbolicLink()) return own;
  try {
    const target = statSync(path, { bigint: true });
    return `${own}>${target.dev}:${target.ino}:${target.mode}:${target.size}:${target.mtimeNs}:${target.ctimeNs}`;
  } catch {
    return `${own}>-`;
  }
}

let buildIdentity: string | undefined;

/** This kaos: its version and this module's build (a rebuilt checkout keeps its version). */
function kaosBuild(): string {
  if (buildIdentity === undefined) {
    const self = statSync(fileURLToPath(import.meta.url), { bigint: true });
    buildIdentity = `${kaosVersion()}|${self.ino}|${self.size}|${self.mtimeNs}`;
  }
  return buildIdentity;
}

/**
 * What a shell sets about itself in every program's environment: the path of
 * the command run, how deep the shell is nested, the directory before the
 * last `cd`. Keyed on, they would tie a record to one shell.
 */
const SHELL_BOOKKEEPING: ReadonlySet<string> = new Set(["_", "SHLVL", "OLDPWD", TRACE_VARIABLE]);

/**
 * How this process was started, as a digest: a record is used only by a
 * `kaos up` started the same way. The environment goes in whole but for the
 * shell's bookkeeping (a config or an interpreter may read any of it), and
 * hashed: it may hold secrets.
 */
export function invocationKey(): string {
  const environment = Object.entries(process.env)
    .filter(([name]) => !SHELL_BOOKKEEPING.has(name))
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return createHash("sha256")
    .update(
      JSON.stringify([
        kaosBuild(),
        process.version,
        process.execPath,
        process.argv.slice(2),
        process.cwd(),
        environment,
        process.stdout.isTTY === true,
        process.stderr.isTTY === true,
      ]),
    )
    .digest("hex");
}

/** The record in `stateDir`, if one is there and reads as one. */
export function readUpToDate(stateDir: string): UpToDateRecord | undefined {
  let value: Partial<UpToDateRecord>;
  try {
    value = JSON.parse(readFileSync(upToDateOf(stateDir), "utf8")) as Partial<UpToDateRecord>;
  } catch {
    return undefined;
  }
  const wellFormed =
    value.format === UP_TO_DATE_FORMAT &&
    typeof value.invocation === "string" &&
    typeof value.stack === "string" &&
    typeof value.revision === "string" &&
    Array.isArray(value.witnesses) &&
    Array.isArray(value.runtimes) &&
    Array.isArray(value.lines) &&
    typeof value.summary === "string";
  return wellFormed ? (value as UpToDateRecord) : undefined;
}

/** The first path of the record that is no longer what it was, if any. */
export function changedWitness(record: UpToDateRecord): string | undefined {
  for (const [path, identity] of record.witnesses) if (pathIdentity(path) !== identity) return path;
  return undefined;
}

/** Writes (or replaces) the record in `stateDir`, whole or not at all. */
export function writeUpToDate(stateDir: string, record: UpToDateRecord): void {
  const target = upToDateOf(stateDir);
  const temporary = temporaryPathFor(target);
  writeFileSync(temporary, JSON.stringify(record));
  renameSync(temporary, target);
}

/** Says on stderr, when TRACE_VARIABLE asks, what became of the record. */
export function traceUpToDate(message: string): void {
  if (process.env[TRACE_VARIABLE] === "1") process.stderr.write(`kaos up-to-date record: ${message}\n`);
}

/** When this process started, on the wall clock, in nanoseconds: before it read anything. */
export function processStartNs(): bigint {
  return BigInt(Math.floor(performance.timeOrigin * 1e6));
}
