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
import { constants as fsConstants, copyFileSync, linkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { errnoCode } from "../../core/errors.js";
import { filesOf, type StatCacheEntry, type TreeHash } from "../../core/hash.js";
import type { ObjectStore } from "../../core/objects.js";
import { sealedFileStat, type Seal } from "../../core/snapshot.js";
import type { StatCacheMap } from "../../core/stat-cache.js";
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
    let file: TreeHash["files"][number] | undefined;
    for (const candidate of filesOf(tree)) {
      if (candidate.mode === "symlink") continue;
      file = candidate;
      break;
    }
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
 * The files of a linked view (at most `limit`) that may not hold what the
 * plan hashed. A file is trusted without being read when it is the inode the
 * plan's stat cache entry describes, with the same size and modification time,
 * the entry names the hashed content and lies outside the racy window (the
 * same rule that lets a warm plan skip it); its inode change time moved when
 * it was linked, so it cannot take part. Any other file is read and hashed
 * through the view.
 */
export function unverifiedFiles(
  tree: TreeHash,
  seal: Seal,
  cache: StatCacheMap | undefined,
  savedAt: bigint | undefined,
  limit = 5,
): string[] {
  const viewDevice = statSync(seal.root, { bigint: true }).dev;
  const fine = savedAt === undefined ? 0n : savedAt - RACY_WINDOW_FINE_NS;
  const coarse = savedAt === undefined ? 0n : savedAt - RACY_WINDOW_COARSE_NS;
  const unverified: string[] = [];
  for (const file of filesOf(tree)) {
    if (file.mode === "symlink") continue;
    const sealed = sealedFileStat(seal.stats.get(file.path));
    if (sealed === undefined) {
      unverified.push(file.path);
    } else {
      const entry = savedAt === undefined ? undefined : cache?.peek(file.path);
      const trusted =
        entry !== undefined &&
        entry.hash === file.hash &&
        entry.mode === file.mode &&
        unsigned(entry.dev) === viewDevice &&
        unsigned(entry.ino) === sealed.ino &&
        BigInt(entry.size) === sealed.size &&
        entry.mtimeNs === sealed.mtimeNs &&
        isOutsideRacyWindow(entry.mtimeNs, entry.ctimeNs, fine, coarse);
      if (!trusted && !holdsHash(join(seal.root, file.path), file.hash)) unverified.push(file.path);
    }
    if (unverified.length >= limit) break;
  }
  return unverified;
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
  cache: StatCacheMap,
  savedAt: bigint,
  checkedAt: bigint,
): { entries: StatCacheEntry[]; treeHash: string | undefined } | { blob: Buffer; count: number; undo?: () => void } | undefined {
  if (checkedAt <= savedAt) return undefined;
  const fromColumns = refreshedColumns(tree, seal, cache, savedAt, checkedAt);
  // null: nothing the next plan would skip that it does not already.
  if (fromColumns === null) return undefined;
  return fromColumns ?? refreshedEntries(tree, seal, cache, savedAt, checkedAt);
}

/** What the refreshed cache holds for one entry: its new inode change time, or undefined when it is dropped. */
function refreshedChangeTime(
  entry: StatCacheEntry,
  planned: string | undefined,
  signature: string | undefined,
  fine: bigint,
  coarse: bigint,
): bigint | undefined {
  const sealed = sealedFileStat(signature);
  const ctimeNs = signature === undefined ? undefined : sealedChangeTime(signature);
  if (
    sealed !== undefined &&
    ctimeNs !== undefined &&
    entry.mode !== "symlink" &&
    planned === entry.hash &&
    unsigned(entry.ino) === sealed.ino &&
    BigInt(entry.size) === sealed.size &&
    entry.mtimeNs === sealed.mtimeNs
  ) {
    return ctimeNs;
  }
  return isOutsideRacyWindow(entry.mtimeNs, entry.ctimeNs, fine, coarse) ? entry.ctimeNs : undefined;
}

/**
 * The refreshed cache as the loaded blob with new change times (set in
 * place, or in a copy when the tree hash must go),
 * when every entry is kept and the blob's paths are in the tree's order (the
 * cache a plan just saved): no object per file is kept. Undefined otherwise.
 */
function refreshedColumns(
  tree: TreeHash,
  seal: Seal,
  cache: StatCacheMap,
  savedAt: bigint,
  checkedAt: bigint,
): { blob: Buffer; count: number; undo?: () => void } | null | undefined {
  const columns = cache.columns();
  if (columns === undefined || !columns.inPathOrder) return undefined;
  const fine = savedAt - RACY_WINDOW_FINE_NS;
  const coarse = savedAt - RACY_WINDOW_COARSE_NS;
  const settledFine = checkedAt - RACY_WINDOW_FINE_NS;
  const settledCoarse = checkedAt - RACY_WINDOW_COARSE_NS;
  const changeTimes = new BigInt64Array(columns.count);
  const files = filesOf(tree)[Symbol.iterator]();
  let file = files.next();
  let treeFiles = 0;
  let updated = 0;
  for (let i = 0; i < columns.count; i++) {
    const entry = columns.peekAt(i);
    // Both in path order: the tree's file of this path, if any, is the next one not before it.
    while (!file.done && pathBefore(file.value.path, entry.path)) {
      file = files.next();
      treeFiles++;
    }
    const planned = !file.done && file.value.path === entry.path ? file.value.hash : undefined;
    const ctimeNs = refreshedChangeTime(entry, planned, seal.stats.get(entry.path), fine, coarse);
    // An entry to drop: the general way below.
    if (ctimeNs === undefined) return undefined;
    if (ctimeNs !== entry.ctimeNs && isOutsideRacyWindow(entry.mtimeNs, ctimeNs, settledFine, settledCoarse)) updated++;
    changeTimes[i] = ctimeNs;
  }
  while (!file.done) {
    file = files.next();
    treeFiles++;
  }
  if (updated === 0) return null;
  const exactlyTheTree = treeFiles === columns.count && columns.treeHash === tree.hash;
  if (!exactlyTheTree) return { blob: columns.withChangeTimes((i) => changeTimes[i] as bigint, false), count: columns.count };
  return { ...columns.setChangeTimes(changeTimes), count: columns.count };
}

/** Whether `left` sorts before `right` in the byte order of their UTF-8. */
function pathBefore(left: string, right: string): boolean {
  if (/[\uD800-\uDFFF]/.test(left) || /[\uD800-\uDFFF]/.test(right))
    return Buffer.compare(Buffer.from(left, "utf8"), Buffer.from(right, "utf8")) < 0;
  return left < right;
}

function refreshedEntries(
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
    const ctimeNs = refreshedChangeTime(entry, planned.get(entry.path), seal.stats.get(entry.path), fine, coarse);
    if (ctimeNs === undefined) continue;
    // Stamps still within the racy window of `checkedAt` are read again by the next plan all the same.
    if (ctimeNs !== entry.ctimeNs && isOutsideRacyWindow(entry.mtimeNs, ctimeNs, settledFine, settledCoarse)) updated++;
    entries.push(ctimeNs === entry.ctimeNs ? entry : { ...entry, ctimeNs });
  }
  if (updated === 0) return undefined;
  return { entries, treeHash: entries.length === cache.size && entries.length === tree.files.length ? tree.hash : undefined };
}

/** The inode change time a file's seal signature (`f:ino:size:mtime|ctime`) holds. */
function sealedChangeTime(signature: string): bigint | undefined {
  const bar = signature.indexOf("|");
  return bar < 0 ? undefined : BigInt(signature.slice(bar + 1));
}
