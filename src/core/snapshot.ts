/**
 * Snapshots: the exact trees a plan hashed, kept in the content-addressed
 * object store, so that a job trains on what was hashed even if the user edits
 * the bundle while it runs.
 *
 * - A tree listing (`.kaos/trees/<tree hash>.jsonl`) records every file of a
 *   hashed tree; plans diff against the listing of what was last applied.
 * - `storeTree` copies the files into the object store, verifying each copy
 *   against the hash the plan saw.
 * - `materializeTree` lays a tree out from the store (hardlinks to read-only
 *   objects, or copies), or as hardlinks to the bundle's own files
 *   (`linkFrom`), built beside its destination and renamed into place, so a
 *   directory that exists is complete.
 */
import { createHash, randomUUID } from "node:crypto";
import {
  type BigIntStats,
  type Dirent,
  type FSWatcher,
  chmodSync,
  closeSync,
  constants as fsConstants,
  copyFileSync,
  fstatSync,
  linkSync,
  openSync,
  readSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  watch,
  writeFileSync,
  writeSync,
  type Stats,
} from "node:fs";
import { dirname, isAbsolute, join } from "node:path";
import { StringDecoder } from "node:string_decoder";
import { lstatOrUndefined, noSpaceError, isNoSpace } from "./disk.js";
import { SealStats } from "./seal-stats.js";
import { KaosError, describeError, errnoCode } from "./errors.js";
import { differingRowsInThreads, filesOf, treeLinks, type TreeFile, type TreeHash } from "./hash.js";
import type { ObjectStore } from "./objects.js";
import { comparePaths } from "./tree-walk.js";
import { isOwnStamp, judgeOwnerStamp, OWNER_STAMP, ownerStamp, parseOwnerStamp, temporaryPathFor } from "./process-identity.js";

function listingPath(stateDir: string, treeHash: string): string {
  return join(stateDir, "trees", `${treeHash}.jsonl`);
}

/** About a megabyte of listing text per write. */
const LISTING_CHUNK_CHARS = 1 << 20;

/** Writes a tree's listing once; listings are immutable, named by their tree hash. */
export function saveTreeListing(stateDir: string, tree: Pick<TreeHash, "hash" | "files">): void {
  const target = listingPath(stateDir, tree.hash);
  if (existsSync(target)) return;
  mkdirSync(dirname(target), { recursive: true });
  const temporary = temporaryPathFor(target);
  // Written a chunk at a time: a million-file listing is never one string.
  const fd = openSync(temporary, "w");
  try {
    let chunk = "";
    let separator = "";
    for (const file of filesOf(tree)) {
      chunk += `${separator}${JSON.stringify([file.path, file.mode, file.size, file.hash])}`;
      separator = "\n";
      if (chunk.length >= LISTING_CHUNK_CHARS) {
        writeSync(fd, chunk);
        chunk = "";
      }
    }
    if (chunk !== "") writeSync(fd, chunk);
  } finally {
    closeSync(fd);
  }
  renameSync(temporary, target);
}

/** The files of a tree saved by `saveTreeListing`, or undefined when unknown. */
export function loadTreeListing(stateDir: string, treeHash: string): TreeFile[] | undefined {
  let text: string;
  try {
    text = readFileSync(listingPath(stateDir, treeHash), "utf8");
  } catch {
    return undefined;
  }
  if (text === "") return [];
  try {
    return text.split("\n").map((line) => {
      const [path, mode, size, hash] = JSON.parse(line) as [string, TreeFile["mode"], number, string];
      return { path, mode, size, hash };
    });
  } catch {
    return undefined;
  }
}

/**
 * The files of a saved listing one at a time, read a megabyte at a time: a
 * plan compares a million-file tree with its listing without holding either.
 * Undefined when unknown; iterating throws a SyntaxError on a damaged line.
 */
export function streamTreeListing(stateDir: string, treeHash: string): Iterable<TreeFile> | undefined {
  let fd: number;
  try {
    fd = openSync(listingPath(stateDir, treeHash), "r");
  } catch {
    return undefined;
  }
  return (function* () {
    try {
      const buffer = Buffer.allocUnsafe(1 << 20);
      const decoder = new StringDecoder("utf8");
      let rest = "";
      for (;;) {
        const read = readSync(fd, buffer, 0, buffer.length, null);
        if (read === 0) break;
        const lines = (rest + decoder.write(buffer.subarray(0, read))).split("\n");
        rest = lines.pop()!;
        for (const line of lines) yield listedFile(line);
      }
      rest += decoder.end();
      if (rest !== "") yield listedFile(rest);
    } finally {
      closeSync(fd);
    }
  })();
}

function listedFile(line: string): TreeFile {
  const [path, mode, size, hash] = JSON.parse(line) as [string, TreeFile["mode"], number, string];
  return { path, mode, size, hash };
}

/**
 * Copies every file of `tree` not yet stored into the object store, checking it still has the hashed content.
 * A disk that fills up meanwhile is told as such, and the objects this call
 * stored are taken back: half a snapshot serves nobody and holds the space.
 */
export async function storeTree(objects: ObjectStore, tree: TreeHash, where: string): Promise<void> {
  const pending = tree.files.filter((file) => file.mode !== "symlink" && !objects.has(file.hash));
  const stored: string[] = [];
  let failure: unknown;
  let next = 0;
  const worker = async () => {
    while (next < pending.length && failure === undefined) {
      const file = pending[next++];
      if (file === undefined) break;
      const source = join(tree.root, file.path);
      try {
        await objects.putFile(source, file.hash);
        stored.push(file.hash);
      } catch (error) {
        failure ??= isNoSpace(error)
          ? error
          : new KaosError("IO", `${where}: ${source} changed while kaos was taking its snapshot (${describeError(error)})`, {
              hint: "rerun `kaos up`: the next plan hashes the new content",
              cause: error,
            });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(4, pending.length) }, worker));
  if (failure === undefined) return;
  if (!isNoSpace(failure)) throw failure;
  for (const hash of stored) objects.discardUnlinked(hash);
  const neededBytes = [...new Map(pending.map((file) => [file.hash, file.size])).values()].reduce((sum, size) => sum + size, 0);
  throw noSpaceError(objects.dir, `${where}: cannot store the snapshot of ${tree.root}`, {
    neededBytes,
    after: "the part already stored is removed again",
    cause: failure,
  });
}

/**
 * Where a link leads when the kernel follows it, as path components inside the
 * tree, or null when it leaves the tree. Resolved physically through the
 * tree's other links (`up -> ..` then `esc -> up/..` leaves the tree although
 * `esc` normalizes to a path inside it). A loop resolves to nothing, which
 * stays inside.
 */
export function resolveInside(
  links: ReadonlyMap<string, string>,
  base: readonly string[],
  target: string,
  budget: { hops: number },
): string[] | null {
  if (isAbsolute(target)) return null;
  let stack = [...base];
  for (const part of target.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      if (stack.length === 0) return null;
      stack.pop();
      continue;
    }
    stack.push(part);
    const next = links.get(stack.join("/"));
    if (next === undefined) continue;
    if (--budget.hops < 0) return stack;
    stack.pop();
    const resolved = resolveInside(links, stack, next, budget);
    if (resolved === null) return null;
    stack = resolved;
  }
  return stack;
}

/**
 * Every symlink of `tree` with its target, after checking that none leads out
 * of the tree: a snapshot must hold what was hashed, not a door to files that
 * no key covers. `where` names the config key of the bundle.
 */
export function checkTreeLinks(tree: TreeHash, where: string): Map<string, string> {
  const links = new Map<string, string>();
  for (const file of treeLinks(tree).files) links.set(file.path, hashedLinkTarget(tree, file));
  for (const [path, target] of links) {
    const base = path.split("/").slice(0, -1);
    if (resolveInside(links, base, target, { hops: 40 }) === null) {
      throw new KaosError(
        "BUNDLE_INVALID",
        `${where}: ${join(tree.root, path)}: symlink to ${target} points outside the bundle; expected a link inside it (or a copy of the file)`,
      );
    }
  }
  return links;
}

/** The link's target as it was hashed; links are tiny, so they are read again rather than stored. */
function hashedLinkTarget(tree: TreeHash, file: TreeFile): string {
  const path = join(tree.root, file.path);
  let target: string;
  try {
    target = readlinkSync(path);
  } catch (error) {
    throw new KaosError("IO", `${path}: cannot read symlink: ${describeError(error)}`, { cause: error });
  }
  // Links hash as the SHA-256 of their target string (see hash.ts).
  if (createHash("sha256").update(target).digest("hex") !== file.hash) {
    throw new KaosError("IO", `${path} changed while kaos was taking its snapshot`, {
      hint: "rerun `kaos up`: the next plan hashes the new content",
    });
  }
  return target;
}

/**
 * A laid-out tree is complete when the marker beside it exists: `<dest>.complete`.
 * Beside, not inside: a bundle may hold a file of any name, and a marker written
 * over one would write into the object it is linked to.
 */
function markerOf(dest: string): string {
  return `${dest}.complete`;
}

export function isMaterialized(dest: string): boolean {
  return existsSync(markerOf(dest)) && existsSync(dest);
}

/** What a complete tree's marker holds when its files are links to a bundle's own files rather than to objects. */
const LINKED_MARKER = "linked\n";
/** What the marker holds when the tree is an empty folder its bundle is mounted at for each job (backends/local/mount-view.ts). */
const MOUNTED_MARKER = "mounted\n";

/**
 * What the complete tree at `dest` is: objects laid out (`copy`), links to a
 * bundle's own files (laid out with `linkFrom`), or a mount point; undefined
 * when it is not complete.
 */
export function viewKind(dest: string): "copy" | "linked" | "mounted" | undefined {
  if (!isMaterialized(dest)) return undefined;
  try {
    const marker = readFileSync(markerOf(dest), "utf8");
    return marker === LINKED_MARKER ? "linked" : marker === MOUNTED_MARKER ? "mounted" : "copy";
  } catch {
    return undefined;
  }
}

/** Makes `dest` the empty, read-only folder a bundle is mounted at, complete with its marker. */
export function makeMountPoint(dest: string): void {
  if (viewKind(dest) === "mounted") return;
  if (existsSync(dest)) removeTree(dest);
  mkdirSync(dirname(dest), { recursive: true });
  mkdirSync(dest, { mode: 0o555 });
  writeFileSync(markerOf(dest), MOUNTED_MARKER);
}

/** Errors of link(2) that say this file cannot be linked here, not that something is wrong. */
export const CANNOT_LINK: ReadonlySet<string> = new Set(["EXDEV", "EPERM", "EMLINK", "ENOTSUP", "EOPNOTSUPP"]);

/** Links `source` at `target`, or copies it (reflinked when possible) where it cannot be linked. */
function linkOrCopy(source: string, target: string): void {
  try {
    linkSync(source, target);
  } catch (error) {
    if (!CANNOT_LINK.has(errnoCode(error) ?? "")) throw error;
    copyFileSync(source, target, fsConstants.COPYFILE_FICLONE);
  }
}

/** Removes a laid-out tree: its marker first, so that a removal cut short leaves nothing that looks complete. */
/** The files beside a laid-out tree that go with it (its completion marker, then its seal's time): `removeTree` removes them first. */
export function markersOf(dest: string): string[] {
  return [markerOf(dest), sealedAtFile(dest)];
}

export function removeTree(dest: string): void {
  for (const marker of markersOf(dest)) rmSync(marker, { force: true });
  makeWritable(dest);
  rmSync(dest, { recursive: true, force: true });
}

/** The names in `dir`, or none when it cannot be read (gone, or never made). */
export function namesIn(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** What a writer names its work in progress: trees being laid out, files being written (`temporaryPathFor`), data views being ingested. */
const TEMPORARY_NAMES = [
  new RegExp(`\\.building-(${OWNER_STAMP})-[0-9a-f]{8}$`),
  new RegExp(`\\.(${OWNER_STAMP})\\.[0-9a-f]{8}\\.tmp$`),
  new RegExp(`\\.tmp-(${OWNER_STAMP})-[0-9a-z]+$`),
];

/** What {@link removeAbandonedTemporaries} did with the work in progress it found. */
export interface AbandonedTemporaries {
  /** Every one removed (or, with `dryRun`, that would be). */
  removed: string[];
  /** Made by a kaos on another machine or in another container, and removed because `isStale` said its writer stopped. */
  removedElsewhere: string[];
  /** Made by a kaos on another machine or in another container, and left: nothing here can tell whether it still runs. */
  keptElsewhere: string[];
}

/**
 * Removes, from the entries of `dirs` (listed here, or as the caller listed
 * them already), the work in progress of writers that died (SIGKILL, a
 * crash) before renaming it into place. Only `names` that hold
 * an owner stamp (the pattern's first group, see `ownerStamp`) are touched,
 * and only when that process is gone, so a writer still at work keeps its own.
 * One that ran where this process cannot look (another machine sharing the
 * volume) is removed only when `isStale` is given its origin tag and says so.
 * `dryRun` only tells what would be removed.
 */
export function removeAbandonedTemporaries(
  dirs: readonly (string | { dir: string; entries: readonly string[] })[],
  options: { names?: readonly RegExp[]; isStale?: (tag: string) => boolean; dryRun?: boolean } = {},
): AbandonedTemporaries {
  const names = options.names ?? TEMPORARY_NAMES;
  const result: AbandonedTemporaries = { removed: [], removedElsewhere: [], keptElsewhere: [] };
  for (const listed of dirs) {
    const { dir, entries } = typeof listed === "string" ? { dir: listed, entries: namesIn(listed) } : listed;
    for (const entry of entries) {
      const stamp = names.map((pattern) => pattern.exec(entry)?.[1]).find((found) => found !== undefined);
      if (stamp === undefined || isOwnStamp(stamp)) continue;
      const liveness = judgeOwnerStamp(stamp);
      if (liveness === "alive") continue;
      const path = join(dir, entry);
      if (liveness === "unknown") {
        const tag = parseOwnerStamp(stamp).tag;
        if (tag === null || options.isStale?.(tag) !== true) {
          result.keptElsewhere.push(path);
          continue;
        }
      }
      try {
        if (options.dryRun !== true) removeTree(path);
        result.removed.push(path);
        if (liveness === "unknown") result.removedElsewhere.push(path);
      } catch {
        // Left for a later run: a leftover that cannot be removed now must not stop this one.
      }
    }
  }
  return result;
}

/**
 * Lays out `tree` at `dest` from the object store. `copy` gives the job files
 * of its own (for the source, which scripts may write beside); otherwise
 * read-only hardlinks are shared. `linkFrom` links each file to the file of
 * that name under it instead (the bundle the tree was hashed from), copying
 * where a link cannot be made: nothing is stored, and nothing here checks that
 * the files still hold what was hashed (the caller does, see
 * backends/local/data-view.ts). An existing complete `dest` is kept.
 */
export function materializeTree(
  objects: ObjectStore,
  tree: TreeHash,
  dest: string,
  options: { copy?: boolean; readonlyDirs?: boolean; linkFrom?: string } = {},
): void {
  if (isMaterialized(dest)) return;
  const building = `${dest}.building-${ownerStamp()}-${randomUUID().slice(0, 8)}`;
  try {
    const links = checkTreeLinks(tree, "bundle");
    mkdirSync(building, { recursive: true });
    const directories = new Set<string>([building]);
    // A tree's paths are relative and normal (the walk made them): joined by hand, which over
    // many files costs less than path.join's normalizing.
    const linkFrom = options.linkFrom === undefined ? undefined : `${options.linkFrom}/`;
    for (const file of filesOf(tree)) {
      const target = `${building}/${file.path}`;
      const slash = target.lastIndexOf("/");
      const parent = target.slice(0, slash);
      if (!directories.has(parent)) {
        mkdirSync(parent, { recursive: true });
        directories.add(parent);
      }
      if (file.mode === "symlink") {
        symlinkSync(links.get(file.path)!, target);
      } else if (linkFrom !== undefined) {
        linkOrCopy(linkFrom + file.path, target);
      } else if (options.copy) {
        objects.copyTo(file.hash, target, file.mode === "exec");
      } else {
        objects.link(file.hash, target, file.mode);
      }
    }
    if (options.readonlyDirs) {
      for (const directory of [...directories].sort((a, b) => b.length - a.length)) chmodSync(directory, 0o555);
    }
    mkdirSync(dirname(dest), { recursive: true });
    if (isMaterialized(dest)) {
      // Another process finished the same snapshot meanwhile: theirs is as good.
      removeTree(building);
      return;
    }
    // A directory without its marker was left by a crash: it is not trusted.
    if (existsSync(dest)) removeTree(dest);
    try {
      renameSync(building, dest);
    } catch (error) {
      if (!isMaterialized(dest)) throw error;
      removeTree(building);
      return;
    }
    writeFileSync(markerOf(dest), options.linkFrom !== undefined ? LINKED_MARKER : "");
  } catch (error) {
    removeTree(building);
    if (error instanceof KaosError) throw error;
    throw new KaosError("IO", `cannot lay out a snapshot at ${dest}: ${describeError(error)}`, { cause: error });
  }
}

/** Restores write permission on a tree made read-only, so it can be removed. */
export function makeWritable(dir: string): void {
  let stat: Stats;
  try {
    stat = statSync(dir);
  } catch {
    return;
  }
  if (!stat.isDirectory()) return;
  chmodSync(dir, 0o755);
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) makeWritable(join(dir, entry.name));
  }
}

/**
 * What a write into a laid-out tree would change: per path, its type, inode,
 * size and modification time (a directory's changes when an entry is added or
 * removed). Reading changes none of them.
 *
 * Comparing them all costs a stat per file, and a sweep checks after every
 * job. On Linux the seal therefore also watches every directory of the tree
 * (inotify reports writes, attribute changes, creations and removals of the
 * entries of a watched directory), and the stats are compared only once
 * something stirred; each check is then free however big the data. inotify
 * does not see writes through a shared memory mapping, nor events lost to an
 * overflowing queue: a sweep ends with one check of every stat
 * (`checkSealEveryStat`) for those. Where watching is not possible (another system,
 * or the watch limit reached) every check compares every stat.
 */
export interface Seal {
  root: string;
  stats: SealStats;
  /** The latest inode change time in the tree when it was sealed (ns). */
  lastChangeNs: bigint;
  /** Set once a change was found, with the paths that changed. */
  broken: string[] | undefined;
  /** Watching every directory: checks compare stats only after an event. */
  watchers: FSWatcher[] | undefined;
  /** An event came since the stats were last compared. */
  stirred: boolean;
  /** How many stats a check took anew after confirming their content (see `checkSeal`). */
  resealed: number;
}

/** Directory entries in the byte order of the paths they lead to: a directory's name sorts as if followed by its "/". */
export function inPathOrder(entries: Dirent[]): Dirent[] {
  const keyed = entries.map((entry) => ({ entry, key: entry.isDirectory() ? `${entry.name}/` : entry.name }));
  keyed.sort((left, right) => comparePaths(left.key, right.key));
  return keyed.map(({ entry }) => entry);
}

/**
 * Takes the seal of the tree at `root`: every entry below it, and it.
 * `alsoWatch` is a second tree whose directories of the same names are
 * watched too: the bundle a linked view's files are links to, since a write
 * through the bundle's own names is reported to its directories, not the view's.
 * `paths` lists the tree's files (relative, normal) when the caller has just
 * laid it out and knows them: they and their directories are sealed without
 * listing any directory. `onStat` sees every entry's stat as it is sealed,
 * so that one lstat per file serves the caller's own checks too.
 */
export function sealTree(
  root: string,
  options: {
    alsoWatch?: string;
    paths?: Iterable<string>;
    onStat?: (relative: string, stat: BigIntStats | undefined) => void;
  } = {},
): Seal {
  const stats = new SealStats();
  let lastChangeNs = 0n;
  const onStat = options.onStat;
  const record = (path: string, relative: string): void => {
    const stat = lstatOrUndefined(path, { bigint: true });
    if (stat !== undefined && stat.ctimeNs > lastChangeNs) lastChangeNs = stat.ctimeNs;
    if (stat !== undefined || relative === "") stats.add(relative, stat);
    onStat?.(relative, stat);
  };
  // In the order of the tree's paths, so that looking up its files one after another finds each at once.
  const walk = (dir: string, prefix: string) => {
    for (const entry of inPathOrder(readdirSync(dir, { withFileTypes: true }))) {
      const relative = prefix === "" ? entry.name : `${prefix}/${entry.name}`;
      const path = `${dir}/${entry.name}`;
      record(path, relative);
      if (entry.isDirectory()) walk(path, relative);
    }
  };
  record(root, "");
  if (options.paths === undefined) {
    walk(root, "");
  } else {
    const prefix = root.endsWith("/") ? root : `${root}/`;
    const directories = new Set<string>([""]);
    for (const relative of options.paths) {
      // The directories on the way, each once, before their first entry.
      const parentEnd = relative.lastIndexOf("/");
      if (parentEnd >= 0 && !directories.has(relative.slice(0, parentEnd)))
        for (let slash = relative.indexOf("/"); slash >= 0; slash = relative.indexOf("/", slash + 1)) {
          const directory = relative.slice(0, slash);
          if (directories.has(directory)) continue;
          directories.add(directory);
          record(prefix + directory, directory);
        }
      record(prefix + relative, relative);
    }
  }
  return sealOf(root, stats, lastChangeNs, options.alsoWatch);
}

/** The seal of the tree at `root` whose entries are `stats`, its directories watched (and those of `alsoWatch`; see `sealTree`). */
export function sealOf(root: string, stats: SealStats, lastChangeNs: bigint, alsoWatch?: string): Seal {
  const seal: Seal = { root, stats, lastChangeNs, broken: undefined, watchers: undefined, stirred: false, resealed: 0 };
  if (process.platform === "linux") seal.watchers = watchDirectories(seal, alsoWatch);
  return seal;
}

/** One inotify watch per directory (of the seal's tree, and of `alsoWatch`), or undefined when they cannot all be set. */
function watchDirectories(seal: Seal, alsoWatch: string | undefined): FSWatcher[] | undefined {
  const watchers: FSWatcher[] = [];
  const stir = () => {
    seal.stirred = true;
  };
  try {
    const stats = seal.stats;
    for (let row = 0; row < stats.size; row++) {
      if (!stats.isDirectoryAt(row)) continue;
      const path = stats.pathAt(row);
      for (const root of alsoWatch === undefined ? [seal.root] : [seal.root, alsoWatch]) {
        const watcher = watch(path === "" ? root : `${root}/${path}`, { persistent: false }, stir);
        // A watch that fails later (its directory removed) has stirred too.
        watcher.on("error", stir);
        watchers.push(watcher);
      }
    }
    return watchers;
  } catch {
    for (const watcher of watchers) watcher.close();
    return undefined;
  }
}

/**
 * Beside a sealed tree, written as the seal is taken: its modification time,
 * from the same kernel clock as every later write into the tree, is the
 * seal's time for `writtenSinceSeal` after a crash.
 */
function sealedAtFile(root: string): string {
  return `${root}.sealed`;
}

/**
 * Waits until the file system's clock has moved past its current tick, and
 * returns the new time (ns), read from a probe file written in `dir`. A file
 * of that file system changed before this call then has a change time older
 * than it; one changed after, this time or a later one.
 */
export function nextClockTick(dir: string): bigint {
  const probe = temporaryPathFor(join(dir, "clock"));
  // One descriptor for every write and stat: a sealed job's results wait on this once each.
  const fd = openSync(probe, "w");
  try {
    writeSync(fd, "0");
    const first = fstatSync(fd, { bigint: true }).mtimeNs;
    for (let attempt = 1; attempt < 2000; attempt++) {
      writeSync(fd, "1");
      const now = fstatSync(fd, { bigint: true }).mtimeNs;
      if (now > first) return now;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    }
    return first;
  } finally {
    closeSync(fd);
    unlinkIfPresent(probe);
  }
}

function unlinkIfPresent(path: string): void {
  try {
    unlinkSync(path);
  } catch (error) {
    if (errnoCode(error) !== "ENOENT") throw error;
  }
}

/**
 * Records that `seal` was just taken, so that a later run can tell what
 * changed after it even if this one dies. The record is written again until
 * its time is past every change in the tree (a clock tick at most): what was
 * laid out in the seal's own tick would otherwise look written after it.
 */
export function markSealed(seal: Seal): void {
  const path = sealedAtFile(seal.root);
  try {
    for (let attempt = 0; attempt < 50; attempt++) {
      writeFileSync(path, `${new Date().toISOString()}\n`);
      if (lstatSync(path, { bigint: true }).mtimeNs > seal.lastChangeNs) return;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    }
  } catch {
    // Without it a crash's check takes every file as possibly changed.
  }
}

/**
 * What was written into a sealed tree since it was last sealed, found by
 * change times alone (a run that died left no watches and no seal in memory):
 * files changed since (dev:ino of each), and whether any directory was
 * (entries added or removed). The inode change time, not the modification
 * time, because a writer can set the latter back and nobody can set the
 * former. A file linked or unlinked elsewhere since (its object shared with
 * another view) shows too; hashing it then clears it.
 * Undefined when nothing was; every file counts when the seal's time is
 * unknown.
 */
export function writtenSinceSeal(root: string): { files: { path: string; inode: string }[]; directories: boolean } | undefined {
  let since = 0n;
  try {
    since = lstatSync(sealedAtFile(root), { bigint: true }).mtimeNs;
  } catch {
    // unknown: everything is suspect
  }
  const files: { path: string; inode: string }[] = [];
  let directories = false;
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = `${dir}/${entry.name}`;
      const stat = lstatSync(path, { bigint: true });
      if (entry.isDirectory()) {
        if (stat.ctimeNs >= since) directories = true;
        walk(path);
      } else if (entry.isFile() && stat.ctimeNs >= since) {
        files.push({ path, inode: `${stat.dev}:${stat.ino}` });
      }
    }
  };
  try {
    if (lstatSync(root, { bigint: true }).ctimeNs >= since) directories = true;
    walk(root);
  } catch {
    return { files, directories: true };
  }
  return files.length > 0 || directories ? { files, directories } : undefined;
}

/** Stops watching a seal's tree; later checks compare every stat. */
export function releaseSeal(seal: Seal): void {
  for (const watcher of seal.watchers ?? []) watcher.close();
  seal.watchers = undefined;
}

/**
 * Paths of a sealed tree that changed since the seal (at most `limit`), and
 * marks the seal broken when any did. Entries added inside show as a change
 * of their directory. A file whose inode change time alone moved counts as
 * changed only when `confirm` is given and says its content is not what was
 * sealed; one it vouches for is sealed again as it is now.
 */
export function checkSeal(seal: Seal, limit = 5, options: { confirm?: (path: string) => boolean } = {}): string[] {
  if (seal.broken !== undefined) return seal.broken;
  if (seal.watchers !== undefined && !seal.stirred) return [];
  seal.stirred = false;
  return checkRows(seal, undefined, limit, options.confirm);
}

/**
 * `checkSeal` of every stat, as a sweep's last check makes it: a big seal's
 * rows are stat'ed by this thread and an idle hashing thread, half each, and
 * only the rows either found not as sealed are looked at again here. With
 * `inBackground`, the idle hashing threads take every row and this thread
 * goes on meanwhile (where none is idle, this thread checks them all first).
 */
export async function checkSealEveryStat(
  seal: Seal,
  limit = 5,
  options: { confirm?: (path: string) => boolean; inBackground?: boolean } = {},
): Promise<string[]> {
  if (seal.broken !== undefined) return seal.broken;
  const stats = seal.stats;
  // Before the rows are stat'ed: an event while they are is a reason for the next check to look again.
  seal.stirred = false;
  // Undefined (no thread to share with, or one that failed): this thread checks every row.
  let differing: number[] | undefined;
  try {
    differing = await differingRowsInThreads(seal.root, stats.size, (from, to) => stats.rows(from, to), options);
  } catch {
    differing = undefined;
  }
  return checkRows(seal, differing, limit, options.confirm);
}

/** The paths of `rows` (in order; every row when undefined) that changed since the seal, at most `limit`; marks the seal broken when any did. */
function checkRows(
  seal: Seal,
  rows: readonly number[] | undefined,
  limit: number,
  confirm: ((path: string) => boolean) | undefined,
): string[] {
  const changed: string[] = [];
  // Concatenated, not joined: the paths are already normal, and path.join cost
  // more than the lstat itself over a data view of many files.
  const prefix = seal.root.endsWith("/") ? seal.root : `${seal.root}/`;
  const stats = seal.stats;
  const count = rows === undefined ? stats.size : rows.length;
  for (let at = 0; at < count; at++) {
    const row = rows === undefined ? at : rows[at]!;
    const path = stats.pathAt(row);
    const now = lstatOrUndefined(path === "" ? seal.root : prefix + path, { bigint: true });
    const comparison = stats.compare(row, now);
    if (comparison === "same") continue;
    if (comparison === "changeTimeOnly") {
      if (confirm === undefined) continue;
      if (confirm(path)) {
        stats.record(row, now);
        seal.resealed++;
        continue;
      }
    }
    changed.push(path === "" ? "." : path);
    if (changed.length >= limit) break;
  }
  if (changed.length > 0) seal.broken = changed;
  return changed;
}
