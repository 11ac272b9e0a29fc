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
import { type BigIntStats, lstatSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { upToDateOf } from "./layout.js";
import { temporaryPathFor } from "./process-identity.js";

/** The record's format: a record of another one is not read. */
export const UP_TO_DATE_FORMAT = 1;

export interface UpToDateRecord {
  format: typeof UP_TO_DATE_FORMAT;
  /** How the `kaos up` that wrote it was started (cli/invocation.ts): the record serves only one started the same way. */
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
  const own = statIdentity(stats);
  if (!stats.isSymbolicLink()) return own;
  try {
    return `${own}>${statIdentity(statSync(path, { bigint: true }))}`;
  } catch {
    return `${own}>-`;
  }
}

/** `dev:ino:mode:size:mtimeNs:ctimeNs`: the order core/up-to-date-record.ts reads the times back in. */
function statIdentity(stats: BigIntStats): string {
  return `${stats.dev}:${stats.ino}:${stats.mode}:${stats.size}:${stats.mtimeNs}:${stats.ctimeNs}`;
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
