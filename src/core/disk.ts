/**
 * What kaos says when the disk under `.kaos/` stops it: full (which disk, how
 * much was needed, how much is free), read-only, or a `.kaos` link leading
 * nowhere. These are facts about the machine, not about kaos's data, so each
 * message names the path and the mount point, and says what to do there.
 */
import {
  type BigIntStats,
  accessSync,
  constants,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  statSync,
  statfsSync,
  type Stats,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve, sep } from "node:path";
import { KaosError, describeError, errnoCode } from "./errors.js";
import { formatBytes } from "./format.js";

const NO_SPACE_CODES = new Set(["ENOSPC", "EDQUOT", "SQLITE_FULL"]);

/**
 * Below this, a write that failed for a vaguer reason (SQLite's "disk I/O
 * error" when it cannot grow its shared-memory file) is taken as the disk
 * being full: SQLite needs a few pages and a 32 KiB index to open a database.
 */
const NEARLY_FULL_BYTES = 1 << 20;

/** Whether `error`, or an error it was caused by, says that the disk is full. */
export function isNoSpace(error: unknown): boolean {
  let current: unknown = error;
  for (let depth = 0; current !== undefined && depth < 8; depth++) {
    const code = errnoCode(current);
    if (code !== undefined && NO_SPACE_CODES.has(code)) return true;
    current = current instanceof Error ? current.cause : undefined;
  }
  return false;
}

/**
 * What is at `path` itself (a link is not followed), or undefined when nothing
 * can be seen there: the path is missing, runs through a file, or lies in a
 * folder that may not be searched. Callers treat all of these as "not there".
 */
export function lstatOrUndefined(path: string): Stats | undefined;
export function lstatOrUndefined(path: string, options: { bigint: true }): BigIntStats | undefined;
export function lstatOrUndefined(path: string, options?: { bigint: true }): Stats | BigIntStats | undefined {
  try {
    return options === undefined ? lstatSync(path) : lstatSync(path, options);
  } catch {
    return undefined;
  }
}

/** `path` itself when it exists, else its closest existing ancestor. */
export function existingAncestor(path: string): string {
  let current = resolve(path);
  while (!existsSync(current)) {
    const parent = dirname(current);
    if (parent === current) break;
    current = parent;
  }
  return current;
}

/** Mount points listed by the kernel (Linux), which also knows bind mounts that share a device with their parent. */
function kernelMountPoints(): string[] | undefined {
  let text: string;
  try {
    text = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return undefined;
  }
  // The fifth field is the mount point, with spaces and the like escaped as octal.
  return text
    .split("\n")
    .map((line) => line.split(" ")[4])
    .filter((field): field is string => field !== undefined && field !== "")
    .map((field) => field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))));
}

const isWithin = (child: string, dir: string): boolean => child === dir || child.startsWith(dir.endsWith(sep) ? dir : dir + sep);

/** Where the file system holding `path` is mounted. */
export function mountPointOf(path: string): string {
  let current = existingAncestor(path);
  try {
    current = realpathSync(current);
  } catch {
    // Judged as written.
  }
  const mounts = kernelMountPoints();
  if (mounts !== undefined) {
    const holding = mounts.filter((mount) => isWithin(current, mount)).sort((a, b) => b.length - a.length)[0];
    if (holding !== undefined) return holding;
  }
  // Elsewhere: the topmost ancestor on the same device.
  try {
    const device = statSync(current).dev;
    for (let parent = dirname(current); parent !== current; current = parent, parent = dirname(current)) {
      if (statSync(parent).dev !== device) break;
    }
  } catch {
    // An ancestor we may not stat: the deepest one known is the answer.
  }
  return current;
}

/** Bytes an unprivileged writer may still use on the disk holding `path`, or undefined when unknown. */
export function freeBytes(path: string): number | undefined {
  try {
    const stats = statfsSync(existingAncestor(path));
    return stats.bavail * stats.bsize;
  } catch {
    return undefined;
  }
}

/** `the disk holding P (mounted at M)`. */
function diskOf(path: string): string {
  const mount = mountPointOf(path);
  return mount === path ? `the disk mounted at ${path}` : `the disk holding ${path} (mounted at ${mount})`;
}

/**
 * The error for a write into `path` that found no space: `doing` says what
 * failed, `neededBytes` how much it takes in all, `detail` what the failing
 * call said, and `after` what kaos did about it.
 */
export function noSpaceError(
  path: string,
  doing: string,
  options: { neededBytes?: number; detail?: string; after?: string; cause?: unknown } = {},
): KaosError {
  const free = freeBytes(path);
  const facts = [
    ...(options.neededBytes === undefined ? [] : [`${formatBytes(options.neededBytes)} needed`]),
    free === undefined ? "free space unknown" : `${formatBytes(free)} free`,
    ...(options.detail === undefined ? [] : [options.detail]),
  ];
  const after = options.after === undefined ? "" : `; ${options.after}`;
  return new KaosError("IO", `${doing}: ${diskOf(path)} is full (${facts.join(", ")})${after}`, {
    hint: `free some space on ${mountPointOf(path)} (or put .kaos/ on a bigger disk) and run kaos again`,
    cause: options.cause,
  });
}

/** Why this process cannot write `target` (a file, or into a directory), when it cannot: a read-only file system or permissions. */
function unwritable(target: string): "read-only" | "denied" | undefined {
  try {
    accessSync(target, constants.W_OK);
    return undefined;
  } catch (error) {
    const code = errnoCode(error);
    return code === "EROFS" ? "read-only" : code === "EACCES" || code === "EPERM" ? "denied" : undefined;
  }
}

const READ_ONLY_COMMANDS = "kaos train list, train info, train logs and train get only read";

/** The error for a state database that cannot be written because `target` (it, or its directory) cannot be. */
function unwritableError(dbPath: string, target: string, reason: "read-only" | "denied", cause?: unknown): KaosError {
  const why =
    reason === "read-only"
      ? `${target} is on a read-only file system (mounted at ${mountPointOf(target)})`
      : `${target} is not writable by this user (uid ${process.getuid?.() ?? "?"})`;
  const fix =
    reason === "read-only"
      ? "remount it read-write, or link .kaos to a writable directory"
      : `run kaos as the owner of ${target}, or give this user write permission there`;
  return new KaosError("IO", `cannot write ${dbPath}: ${why}`, { hint: `${fix}; ${READ_ONLY_COMMANDS} and work on it as it is`, cause });
}

/**
 * The state database at `dbPath` could not be opened: says so precisely when
 * the disk is the reason (full, read-only, not writable), else undefined.
 */
export function explainStateOpenFailure(error: unknown, dbPath: string): KaosError | undefined {
  const code = errnoCode(error) ?? "";
  const dir = dirname(dbPath);
  const vague = code.startsWith("SQLITE_IOERR") || code.startsWith("SQLITE_CANTOPEN") || code.startsWith("SQLITE_READONLY");
  if (isNoSpace(error) || (vague && (freeBytes(dir) ?? Number.POSITIVE_INFINITY) < NEARLY_FULL_BYTES)) {
    return noSpaceError(dir, `cannot open ${dbPath}`, { detail: describeError(error), cause: error });
  }
  if (!vague) return undefined;
  for (const target of [dir, dbPath]) {
    const reason = unwritable(target);
    if (reason !== undefined) return unwritableError(dbPath, target, reason, error);
  }
  return undefined;
}

/**
 * Checks where the state database lives before anything opens or creates it:
 * a `.kaos` symlink whose target is gone (an unmounted disk, a removed folder)
 * is named with its target, rather than taken for an empty project or a
 * permission problem; and a writer is told up front when the database or its
 * directory cannot be written (SQLite would open it read-only and fail at the
 * first write).
 */
export function checkStateLocation(dbPath: string, forWriting: boolean): void {
  const dir = dirname(dbPath);
  checkStateLink(dir);
  if (!forWriting) return;
  for (const target of [dir, dbPath]) {
    const reason = unwritable(target);
    if (reason !== undefined) throw unwritableError(dbPath, target, reason);
  }
}

function checkStateLink(dir: string): void {
  let link: string;
  try {
    if (!lstatSync(dir).isSymbolicLink()) return;
    link = readlinkSync(dir);
  } catch {
    return;
  }
  try {
    if (statSync(dir).isDirectory()) return;
    throw new KaosError("IO", `${dir} is a symlink to ${link}, which is not a directory`, {
      hint: `point ${basename(dir)} at a directory, or remove the link and kaos makes a fresh ${basename(dir)} directory`,
    });
  } catch (error) {
    if (error instanceof KaosError) throw error;
    const code = errnoCode(error);
    const what =
      code === "ENOENT"
        ? "which does not exist"
        : code === "ELOOP"
          ? "which is a loop of links"
          : `which cannot be reached (${describeError(error)})`;
    throw new KaosError("IO", `${dir} is a symlink to ${link}, ${what}`, {
      hint: `create ${resolve(dirname(dir), link)} (or mount the disk it is on), or remove the link and kaos makes a fresh ${basename(dir)} directory`,
      cause: error,
    });
  }
}

/**
 * Opens the state database for reading with `open`; when that fails because
 * its directory cannot be written (a read-only file system, a full disk:
 * SQLite in WAL mode must create its shared-memory file even to read), reads
 * a private copy instead, removed when the process exits. Nothing can change
 * the original meanwhile but a writer that itself cannot write there.
 */
export function openReadable<T>(dbPath: string, open: (path: string) => T): T {
  try {
    return open(dbPath);
  } catch (error) {
    const cause = error instanceof Error && error.cause !== undefined ? error.cause : error;
    if (explainStateOpenFailure(cause, dbPath) === undefined) throw error;
    let copyDir: string | undefined;
    try {
      copyDir = mkdtempSync(join(tmpdir(), "kaos-state-"));
      const kept = copyDir;
      process.once("exit", () => rmSync(kept, { recursive: true, force: true }));
      const copy = join(copyDir, basename(dbPath));
      copyFileSync(dbPath, copy);
      if (existsSync(`${dbPath}-wal`)) copyFileSync(`${dbPath}-wal`, `${copy}-wal`);
      return open(copy);
    } catch {
      if (copyDir !== undefined) rmSync(copyDir, { recursive: true, force: true });
      throw explainStateOpenFailure(cause, dbPath) ?? error;
    }
  }
}
