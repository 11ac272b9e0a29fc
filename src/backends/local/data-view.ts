/**
 * How a local data bundle reaches its jobs without a second copy of its bytes.
 *
 * Chosen once per pair of file systems (the bundle's and `.kaos/`'s):
 *
 * - `reflink` (btrfs, XFS, APFS): the bundle is stored in the object store as
 *   clones, which share the bundle's blocks until either side is written, and
 *   the view links to those objects. A write on either side breaks the sharing
 *   and touches only itself: the job is fully isolated from later edits.
 * - `link` (ext4 and other file systems with hardlinks but no clones, on the
 *   same device): the view's files are hardlinks to the bundle's own files.
 *   Nothing is stored. A file is the same inode on both sides, so an edit of
 *   the bundle shows in the view and a write into the view changes the
 *   bundle: neither can be prevented without a copy, so both are found (the
 *   view is checked against what the plan hashed before the sweep, and its seal
 *   after each job, with the bundle's directories watched too) and the job
 *   whose data changed is failed with the file named, never recorded as
 *   succeeded on other data.
 * - `copy` (the bundle on another device, or where links are refused): the
 *   bundle is copied into the object store and the view links to the objects,
 *   as with `reflink` but at the cost of a copy.
 */
import { type BigIntStats, constants as fsConstants, copyFileSync, linkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { errnoCode } from "../../core/errors.js";
import type { StatCacheEntry, TreeFile, TreeHash } from "../../core/hash.js";
import type { ObjectStore } from "../../core/objects.js";
import { nextClockTick, sealTree, sealedFileStat, type Seal } from "../../core/snapshot.js";
import { RACY_WINDOW_COARSE_NS, RACY_WINDOW_FINE_NS, hashRegularFile, isOutsideRacyWindow } from "../../core/tree-walk.js";

export type DataViewMode = "reflink" | "link" | "copy";

/** The mode found for each pair of devices `bundle:store`, probed once per process. */
const probed = new Map<string, DataViewMode>();

/**
 * How the data bundle `tree` reaches a view under the object store's file
 * system. Clone support is probed with FICLONE_FORCE (plain FICLONE falls back
 * to a copy without a word), on a file of the store's own; links by linking
 * one of the bundle's files.
 */
export function dataViewMode(objects: ObjectStore, tree: TreeHash): DataViewMode {
  const store = objects.tmpDir();
  const bundleDevice = statSync(tree.root).dev;
  const key = `${bundleDevice}:${statSync(store).dev}`;
  const known = probed.get(key);
  if (known !== undefined) return known;
  const mode = probe(objects, tree, bundleDevice);
  probed.set(key, mode);
  return mode;
}

function probe(objects: ObjectStore, tree: TreeHash, bundleDevice: number): DataViewMode {
  const sample = objects.tmpPath("probe");
  const clone = `${sample}.clone`;
  try {
    writeFileSync(sample, "kaos clone probe\n");
    try {
      copyFileSync(sample, clone, fsConstants.COPYFILE_FICLONE_FORCE);
      // A clone stays within one file system: a bundle elsewhere is copied in.
      return statSync(sample).dev === bundleDevice ? "reflink" : "copy";
    } catch {
      // No clones here.
    }
    const file = tree.files.find((candidate) => candidate.mode !== "symlink");
    if (file === undefined) return "link";
    const link = `${sample}.link`;
    try {
      linkSync(join(tree.root, file.path), link);
      return "link";
    } catch (error) {
      const code = errnoCode(error);
      if (code === "EXDEV" || code === "EPERM" || code === "EMLINK" || code === "ENOTSUP" || code === "EOPNOTSUPP") return "copy";
      // The file went away or cannot be read: the plan's next step says so better than a probe can.
      return "link";
    } finally {
      rmSync(link, { force: true });
    }
  } finally {
    rmSync(sample, { force: true });
    rmSync(clone, { force: true });
  }
}

/** An unsigned 64-bit dev or ino, however the stat cache stored it. */
function unsigned(value: bigint | number): bigint {
  return BigInt.asUintN(64, BigInt(value));
}

/**
 * The stat cache a linked bundle takes once its sweep's data checks out, made
 * while the view was sealed: the planned entries in the cache's order, each
 * with the inode change time its file was sealed with when it is the inode,
 * size, modification time and content the entry describes (`updated` of them
 * moved). `settledBefore` is a tick of the file system's clock taken after
 * the links were made and before any file was sealed.
 */
export interface PendingStatCache {
  entries: StatCacheEntry[];
  updated: number;
  /** The latest modification or inode change time among the entries sealed anew. */
  newestNs: bigint;
  /** Every entry sealed anew changed before `settledBefore` and was sealed after it. */
  settled: boolean;
}

/** A linked view sealed: its seal, the files that may not hold what was planned (at most `limit`), and the stat cache to take. */
export interface LinkedSeal {
  seal: Seal;
  unverified: string[];
  pending: PendingStatCache | undefined;
}

/**
 * Seals the linked view at `dir` of the bundle `tree` and checks it against
 * what the plan hashed, with one lstat per file: the seal's stat is the
 * check's, and the stat cache's next entry (a hardlink is the bundle's own
 * inode). `laidOutNow` says the view was just made from `tree`, so its files
 * are known without listing a directory. A file is trusted without being read
 * when it is the inode the plan's stat cache entry describes, with the same
 * size and modification time, the entry names the hashed content and lies
 * outside the racy window (the same rule that lets a warm plan skip it); its
 * inode change time moved when it was linked, so it cannot take part. Any
 * other file is read and hashed through the view.
 *
 * The clock tick taken between linking and sealing is what lets the next plan
 * trust the new inode change times at once (`settled`): a write after a
 * file's seal moves its change time past that tick, so a stat sealed with an
 * older one held the checked content until the stat changes.
 */
export function sealLinkedView(
  tree: TreeHash,
  dir: string,
  cache: { get(path: string): StatCacheEntry | undefined; readonly size: number } | undefined,
  savedAt: bigint | undefined,
  options: { laidOutNow: boolean; limit?: number },
): LinkedSeal {
  const limit = options.limit ?? 5;
  const settledBefore = nextClockTick(dirname(dir));
  const viewDevice = statSync(dir, { bigint: true }).dev;
  const fine = savedAt === undefined ? 0n : savedAt - RACY_WINDOW_FINE_NS;
  const coarse = savedAt === undefined ? 0n : savedAt - RACY_WINDOW_COARSE_NS;
  const files = tree.files;
  // Sealed in the tree's order when laid out now; a kept view is listed, in directory order.
  let cursor = 0;
  let byPath: Map<string, number> | undefined;
  const indexOf = (path: string): number => {
    if (cursor < files.length && files[cursor]!.path === path) return cursor++;
    byPath ??= new Map(files.map((file, index) => [file.path, index]));
    return byPath.get(path) ?? -1;
  };
  // What each tree file was sealed with: undefined until sealed.
  const sealedEntries: (StatCacheEntry | null | undefined)[] = new Array(files.length);
  const unverified: string[] = [];
  let updated = 0;
  let newestNs = 0n;
  let settled = true;
  const onStat = (relative: string, stat: BigIntStats | undefined): void => {
    // Directories are no tree's files: a file of the tree found as one stays unsealed, and unverified.
    if (relative === "" || stat?.isDirectory() === true) return;
    const index = indexOf(relative);
    if (index < 0) return;
    const file = files[index]!;
    if (file.mode === "symlink") {
      sealedEntries[index] = null;
      return;
    }
    if (stat === undefined || !stat.isFile()) {
      if (unverified.length < limit) unverified.push(file.path);
      sealedEntries[index] = null;
      return;
    }
    const entry = savedAt === undefined ? undefined : cache?.get(file.path);
    const same =
      entry !== undefined &&
      entry.hash === file.hash &&
      entry.mode === file.mode &&
      unsigned(entry.ino) === stat.ino &&
      BigInt(entry.size) === stat.size &&
      entry.mtimeNs === stat.mtimeNs;
    const trusted = same && unsigned(entry.dev) === viewDevice && isOutsideRacyWindow(entry.mtimeNs, entry.ctimeNs, fine, coarse);
    if (!trusted && unverified.length < limit && !holdsHash(join(dir, file.path), file.hash)) unverified.push(file.path);
    if (!same) {
      sealedEntries[index] = null;
      return;
    }
    const ctimeNs = stat.ctimeNs;
    if (entry.ctimeNs !== ctimeNs) updated++;
    if (ctimeNs >= settledBefore || stat.mtimeNs >= settledBefore) settled = false;
    if (ctimeNs > newestNs) newestNs = ctimeNs;
    if (stat.mtimeNs > newestNs) newestNs = stat.mtimeNs;
    sealedEntries[index] = entry.ctimeNs === ctimeNs ? entry : { ...entry, ctimeNs };
  };
  const seal = sealTree(dir, {
    alsoWatch: tree.root,
    onStat,
    ...(options.laidOutNow ? { paths: files.map((file) => file.path) } : {}),
  });
  for (let index = 0; index < files.length && unverified.length < limit; index++) {
    const file = files[index]!;
    if (sealedEntries[index] === undefined && file.mode !== "symlink") unverified.push(file.path);
  }
  return { seal, unverified, pending: pendingStatCache(files, sealedEntries, cache, savedAt, { updated, newestNs, settled }) };
}

/**
 * The stat cache to take after the sweep, in the cache's order (the tree's):
 * entries sealed anew, and the others that were outside the racy window of
 * the old cache time. Undefined when the cache is not the tree's file for
 * file (`refreshedStatCache` then works it out after the sweep).
 */
function pendingStatCache(
  files: readonly TreeFile[],
  sealedEntries: readonly (StatCacheEntry | null | undefined)[],
  cache: { get(path: string): StatCacheEntry | undefined; readonly size: number } | undefined,
  savedAt: bigint | undefined,
  found: { updated: number; newestNs: bigint; settled: boolean },
): PendingStatCache | undefined {
  if (cache === undefined || savedAt === undefined || cache.size !== files.length) return undefined;
  const fine = savedAt - RACY_WINDOW_FINE_NS;
  const coarse = savedAt - RACY_WINDOW_COARSE_NS;
  const entries: StatCacheEntry[] = [];
  for (let index = 0; index < files.length; index++) {
    const sealed = sealedEntries[index];
    if (sealed !== undefined && sealed !== null) {
      entries.push(sealed);
      continue;
    }
    const entry = cache.get(files[index]!.path);
    if (entry === undefined) return undefined;
    if (isOutsideRacyWindow(entry.mtimeNs, entry.ctimeNs, fine, coarse)) entries.push(entry);
  }
  return { entries, ...found };
}

/**
 * The cache time to save `pending` with, once the sweep's last check at
 * `checkedAt` found every sealed stat unchanged. Settled entries are past the
 * racy window however soon the next plan comes: the time is put just beyond
 * it. Otherwise `checkedAt`, and entries linked within the window of it are
 * read again by the next plan.
 */
export function pendingCacheTime(pending: PendingStatCache, checkedAt: bigint): bigint {
  const beyond = pending.newestNs + RACY_WINDOW_COARSE_NS + 1n;
  return pending.settled && beyond > checkedAt ? beyond : checkedAt;
}

/** Whether the file at `path` has the content `hash`; false when it cannot be read. */
export function holdsHash(path: string, hash: string): boolean {
  try {
    return hashRegularFile(path) === hash;
  } catch {
    return false;
  }
}

/**
 * The stat cache of a linked bundle brought up to date after its view was
 * sealed and checked at `checkedAt` (every file of the view still had the
 * stats it was sealed with). Linking moved each file's inode change time, so
 * without this the next plan would read the whole bundle again. A file takes
 * the inode change time it was sealed with when it is the inode, size,
 * modification time and content the entry describes; the view was confirmed
 * to hold the planned content when sealed (`unverifiedFiles`). The cache time
 * becomes `checkedAt`: an entry that was within the racy window of the old
 * cache time and is not confirmed here is dropped, so that moving the time
 * trusts nothing new. Undefined when no file would be skipped by the next
 * plan that is not already (a sweep shorter than the racy window).
 */
export function refreshedStatCache(
  tree: TreeHash,
  seal: Seal,
  cache: ReadonlyMap<string, StatCacheEntry>,
  savedAt: bigint,
  checkedAt: bigint,
): { entries: StatCacheEntry[]; treeHash: string | undefined } | undefined {
  const fine = savedAt - RACY_WINDOW_FINE_NS;
  const coarse = savedAt - RACY_WINDOW_COARSE_NS;
  const settledFine = checkedAt - RACY_WINDOW_FINE_NS;
  const settledCoarse = checkedAt - RACY_WINDOW_COARSE_NS;
  const planned = new Map(tree.files.map((file) => [file.path, file.hash]));
  const entries: StatCacheEntry[] = [];
  let updated = 0;
  for (const entry of cache.values()) {
    const signature = seal.stats.get(entry.path);
    const sealed = sealedFileStat(signature);
    const ctimeNs = signature === undefined ? undefined : sealedChangeTime(signature);
    if (
      sealed !== undefined &&
      ctimeNs !== undefined &&
      entry.mode !== "symlink" &&
      planned.get(entry.path) === entry.hash &&
      unsigned(entry.ino) === sealed.ino &&
      BigInt(entry.size) === sealed.size &&
      entry.mtimeNs === sealed.mtimeNs
    ) {
      // Stamps still within the racy window of `checkedAt` are read again by the next plan all the same.
      if (entry.ctimeNs !== ctimeNs && isOutsideRacyWindow(entry.mtimeNs, ctimeNs, settledFine, settledCoarse)) updated++;
      entries.push({ ...entry, ctimeNs });
    } else if (isOutsideRacyWindow(entry.mtimeNs, entry.ctimeNs, fine, coarse)) {
      entries.push(entry);
    }
  }
  if (updated === 0 || checkedAt <= savedAt) return undefined;
  return { entries, treeHash: entries.length === cache.size && entries.length === tree.files.length ? tree.hash : undefined };
}

/** The inode change time a file's seal signature (`f:ino:size:mtime|ctime`) holds. */
function sealedChangeTime(signature: string): bigint | undefined {
  const bar = signature.indexOf("|");
  return bar < 0 ? undefined : BigInt(signature.slice(bar + 1));
}
