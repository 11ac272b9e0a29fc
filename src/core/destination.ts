/** Where `kaos train get`, `kaos render` and `kaos template get` write: a directory given with `-o`. */
import { createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  renameSync,
  rmdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { dirname, isAbsolute, join, normalize, relative, resolve, sep } from "node:path";
import { KaosError } from "./errors.js";
import { existingAncestor, lstatOrUndefined } from "./disk.js";
import { temporaryPathFor } from "./process-identity.js";
import { STATE_DIR_NAME } from "./layout.js";

/** `path` as the file system resolves the part of it that exists, so that a symlink into a state directory is seen. */
function resolvedAsFarAsItExists(path: string): string {
  const existing = existingAncestor(path);
  try {
    return join(realpathSync(existing), relative(existing, path));
  } catch {
    return path;
  }
}

/** The state directory (`.../.kaos`) that holds `path`, or undefined. */
function stateDirHolding(path: string): string | undefined {
  for (const candidate of [path, resolvedAsFarAsItExists(path)]) {
    const parts = candidate.split(sep);
    const at = parts.indexOf(STATE_DIR_NAME);
    if (at > 0) return parts.slice(0, at + 1).join(sep);
  }
  return undefined;
}

/**
 * `dir` (the value of `flag`) as an absolute path, refused when it is empty
 * (an unset shell variable would otherwise name the working directory), an
 * existing file, or inside a project's `.kaos/`: kaos owns what is there, and
 * a name it does not know appearing there fails the jobs running meanwhile.
 */
export function destinationDir(dir: string, options: { flag: string; expected: string }): string {
  if (dir.trim() === "") {
    throw new KaosError("USAGE", `${options.flag}: expected ${options.expected}, found an empty value`, {
      hint: `pass ${options.flag} DIR`,
    });
  }
  const destination = resolve(dir);
  const stateDir = stateDirHolding(destination);
  if (stateDir !== undefined) {
    throw new KaosError(
      "USAGE",
      `${options.flag} ${destination}: inside ${stateDir}, kaos's state directory; expected ${options.expected} outside it`,
      { hint: `kaos owns what ${STATE_DIR_NAME}/ holds; pass ${options.flag} DIR elsewhere` },
    );
  }
  // The destination, or the nearest of its parents that is there, must be a directory (or a link to one) for it to be made.
  for (let path = destination; ; path = dirname(path)) {
    if (lstatOrUndefined(path) === undefined) continue;
    if (!existsSync(path)) {
      throw new KaosError("USAGE", `${path} is a symlink to ${readlinkSync(path)}, which does not exist; expected ${options.expected}`, {
        hint: `pass ${options.flag} DIR`,
      });
    }
    if (!statSync(path).isDirectory()) {
      throw new KaosError("USAGE", `${path} is a file; expected ${options.expected}`, { hint: `pass ${options.flag} DIR` });
    }
    return destination;
  }
}

/** `dir` as an absolute path, refused when it holds anything (and as `destinationDir` refuses it). */
export function emptyDestination(dir: string): string {
  const destination = destinationDir(dir, { flag: "-o", expected: "a new or empty directory" });
  if (existsSync(destination) && readdirSync(destination).length > 0) {
    throw new KaosError("USAGE", `${destination} already exists and is not empty; expected a new or empty directory`, {
      hint: "pass -o DIR",
    });
  }
  return destination;
}

/**
 * The list of what `kaos render` wrote into its folder, one `SHA256  PATH` line
 * per file as `sha256sum` writes them (so `sha256sum -c` checks the folder),
 * sorted by path. Not a `.json` or `.yaml` file: `kubectl apply -f DIR` would read it.
 */
export const RENDER_MANIFEST = ".kaos-render.sha256";

/** What writing a folder kaos owns did besides writing its files. */
export interface OwnedFolderChanges {
  /** Files an earlier render wrote that this one does not, removed (relative to the folder, sorted). */
  removed: string[];
  /** Files an earlier render wrote that this one does not, left where they are because kaos no longer owns them. */
  kept: { path: string; why: string }[];
}

function sha256(content: string | Buffer): string {
  return createHash("sha256").update(content).digest("hex");
}

/** A path kaos may have written: relative, normalised, inside the folder, and not the manifest itself. */
function isOwnablePath(path: string): boolean {
  return path !== "" && !isAbsolute(path) && normalize(path) === path && !path.split(sep).includes("..") && path !== RENDER_MANIFEST;
}

/** What the last render recorded it wrote: path to content hash. Lines that are not a hash and a path kaos could own are ignored. */
function recordedFiles(dir: string): Map<string, string> {
  const recorded = new Map<string, string>();
  let text: string;
  try {
    text = readFileSync(join(dir, RENDER_MANIFEST), "utf8");
  } catch {
    return recorded;
  }
  for (const line of text.split("\n")) {
    const match = /^([0-9a-f]{64}) {2}(.+)$/.exec(line);
    if (match !== null && isOwnablePath(match[2]!)) recorded.set(match[2]!, match[1]!);
  }
  return recorded;
}

function atomicWrite(path: string, content: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const partial = temporaryPathFor(path);
  writeFileSync(partial, content);
  renameSync(partial, path);
}

/**
 * Writes `files` (relative path to content) into `dir` as the folder's owner:
 * a file the previous write recorded in RENDER_MANIFEST and this one does not
 * make is removed, unless it changed since (then it is the user's, and kept);
 * a file kaos never recorded is never touched. A path kaos would write that
 * holds a directory or a symlink is refused before anything is written. The
 * manifest is written last, so a write cut short leaves the old one, which
 * still names every file the next write may have to remove.
 */
export function writeOwnedFolder(dir: string, files: ReadonlyMap<string, string>): OwnedFolderChanges {
  for (const path of files.keys()) {
    const target = join(dir, path);
    const stats = lstatOrUndefined(target);
    if (stats === undefined) continue;
    if (!stats.isFile()) {
      throw new KaosError(
        "USAGE",
        `${target} is a ${stats.isDirectory() ? "directory" : "symlink or special file"}, where kaos writes a file of its own`,
        {
          hint: `move it out of ${dir}, or pass -o DIR elsewhere`,
        },
      );
    }
  }
  const recorded = recordedFiles(dir);
  for (const [path, content] of files) atomicWrite(join(dir, path), content);
  const changes: OwnedFolderChanges = { removed: [], kept: [] };
  for (const path of [...recorded.keys()].sort()) {
    if (files.has(path)) continue;
    const hash = recorded.get(path);
    const target = join(dir, path);
    const stats = lstatOrUndefined(target);
    if (stats === undefined) continue;
    if (!stats.isFile()) changes.kept.push({ path, why: "it is no longer the file kaos wrote" });
    else if (sha256(readFileSync(target)) !== hash) changes.kept.push({ path, why: "it changed since kaos wrote it" });
    else {
      rmSync(target);
      changes.removed.push(path);
      removeEmptyParents(dir, dirname(target));
    }
  }
  const listing = [...files.keys()]
    .sort()
    .map((path) => `${sha256(files.get(path)!)}  ${path}\n`)
    .join("");
  atomicWrite(join(dir, RENDER_MANIFEST), listing);
  return changes;
}

/** Removes `from` and its parents up to `dir` while they are empty: the folders kaos made for files it removed. */
function removeEmptyParents(dir: string, from: string): void {
  for (let folder = from; folder !== dir && folder.startsWith(`${dir}${sep}`); folder = dirname(folder)) {
    try {
      rmdirSync(folder);
    } catch {
      return;
    }
  }
}
