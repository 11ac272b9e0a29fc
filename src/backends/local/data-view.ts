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
 *
 * Where clones are not to be had and the machine lets kaos start a job in a
 * mount namespace of its own (mount-view.ts), neither links nor a copy are
 * made: the bundle's own folder is mounted read-only at the view for each job.
 * It is checked as a linked view is (the bundle itself is sealed), and needs
 * no same device. A bundle whose folder holds anything its tree does not (what
 * the walk skips: `.git`, ignored files, an empty folder) is linked instead,
 * since its jobs would see that too.
 */
import {
  type BigIntStats,
  type Dirent,
  constants as fsConstants,
  copyFileSync,
  linkSync,
  readdirSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { lstatOrUndefined } from "../../core/disk.js";
import { errnoCode } from "../../core/errors.js";
import { fileCountOf, filesOf, foldersOf, type StatCacheEntry, type TreeFile, type TreeHash, type WalkedFolders } from "../../core/hash.js";
import type { ObjectStore } from "../../core/objects.js";
import { SealStats, sealedFileStat } from "../../core/seal-stats.js";
import { CANNOT_LINK, inPathOrder, nextClockTick, sealOf, sealTree, type Seal } from "../../core/snapshot.js";
import type { StatCacheColumns, StatCacheMap } from "../../core/stat-cache.js";
import {
  RACY_WINDOW_COARSE_NS,
  RACY_WINDOW_FINE_NS,
  comparePaths,
  hashLinkTarget,
  hashRegularFile,
  isOutsideRacyWindow,
} from "../../core/tree-walk.js";

export type DataViewMode = "reflink" | "link" | "copy";

/** The mode found for each pair of devices `bundle:store`, probed once per process. */
const probed = new Map<string, DataViewMode>();
/** Whether the store's file system clones files from the bundle's, for each pair of devices `bundle:store`. */
const clonable = new Map<string, boolean>();

function devicePair(objects: ObjectStore, tree: TreeHash): { key: string; bundleDevice: number } {
  const bundleDevice = statSync(tree.root).dev;
  return { key: `${bundleDevice}:${statSync(objects.tmpDir()).dev}`, bundleDevice };
}

/**
 * How the data bundle `tree` reaches a view under the object store's file
 * system. Clone support is probed with FICLONE_FORCE (plain FICLONE falls back
 * to a copy without a word), on a file of the store's own; links by linking
 * one of the bundle's files.
 */
export function dataViewMode(objects: ObjectStore, tree: TreeHash): DataViewMode {
  const { key, bundleDevice } = devicePair(objects, tree);
  const known = probed.get(key);
  if (known !== undefined) return known;
  const mode = clonesFrom(objects, key, bundleDevice) ? "reflink" : probeLinks(objects, tree);
  probed.set(key, mode);
  return mode;
}

/**
 * Whether views of `tree` are clones (`reflink`), asked without linking any
 * of the bundle's files, which would move their inode change times: a
 * mounted bundle's stat cache stays true only if nothing touches them.
 */
export function clonesBundle(objects: ObjectStore, tree: TreeHash): boolean {
  const { key, bundleDevice } = devicePair(objects, tree);
  const known = probed.get(key);
  return known !== undefined ? known === "reflink" : clonesFrom(objects, key, bundleDevice);
}

function clonesFrom(objects: ObjectStore, key: string, bundleDevice: number): boolean {
  const known = clonable.get(key);
  if (known !== undefined) return known;
  const sample = objects.tmpPath("probe");
  const clone = `${sample}.clone`;
  let clones = false;
  try {
    writeFileSync(sample, "kaos clone probe\n");
    copyFileSync(sample, clone, fsConstants.COPYFILE_FICLONE_FORCE);
    // A clone stays within one file system: a bundle elsewhere is copied in.
    clones = statSync(sample).dev === bundleDevice;
  } catch {
    // No clones here.
  } finally {
    rmSync(sample, { force: true });
    rmSync(clone, { force: true });
  }
  clonable.set(key, clones);
  return clones;
}

function probeLinks(objects: ObjectStore, tree: TreeHash): DataViewMode {
  let file: TreeHash["files"][number] | undefined;
  for (const candidate of filesOf(tree)) {
    if (candidate.mode === "symlink") continue;
    file = candidate;
    break;
  }
  if (file === undefined) return "link";
  const link = `${objects.tmpPath("probe")}.link`;
  try {
    linkSync(join(tree.root, file.path), link);
    return "link";
  } catch (error) {
    if (CANNOT_LINK.has(errnoCode(error) ?? "")) return "copy";
    // The file went away or cannot be read: the plan's next step says so better than a probe can.
    return "link";
  } finally {
    rmSync(link, { force: true });
  }
}

/** An unsigned 64-bit dev or ino, however the stat cache stored it. */
function unsigned(value: bigint | number): bigint {
  return BigInt.asUintN(64, BigInt(value));
}

/** Whether a stat cache entry describes the inode, size and modification time a file was found with. */
function describesStat(entry: StatCacheEntry, stat: { ino: bigint; size: bigint; mtimeNs: bigint }): boolean {
  return unsigned(entry.ino) === stat.ino && BigInt(entry.size) === stat.size && entry.mtimeNs === stat.mtimeNs;
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
  rows: PendingRows;
  updated: number;
  /** The latest modification or inode change time among the entries sealed anew. */
  newestNs: bigint;
  /** Every entry sealed anew changed before `settledBefore` and was sealed after it. */
  settled: boolean;
}

/**
 * The entries of a pending stat cache: the loaded blob's own rows with a new
 * change time each, when every row is kept and they are the tree's files in
 * its order (a million of them then make no object each), or entries.
 */
export type PendingRows =
  | { kind: "changeTimes"; columns: StatCacheColumns; changeTimes: BigInt64Array }
  | { kind: "entries"; entries: StatCacheEntry[] };

/** A linked view sealed: its seal, the files that may not hold what was planned (at most `limit`), and the stat cache to take. */
export interface LinkedSeal {
  seal: Seal;
  unverified: string[];
  pending: PendingStatCache | undefined;
}

/**
 * A tree's files in path order, met by the paths of a walk in path order too:
 * each is found by walking both together, by position.
 */
class TreeCursor {
  private readonly files: Iterator<TreeFile>;
  private current: IteratorResult<TreeFile>;
  /** The position in the tree of the file `next` is. */
  position = 0;
  /** How many files `meet` found. */
  met = 0;

  constructor(tree: TreeHash) {
    this.files = filesOf(tree)[Symbol.iterator]();
    this.current = this.files.next();
  }

  get next(): TreeFile | undefined {
    return this.current.done ? undefined : this.current.value;
  }

  advance(): void {
    this.current = this.files.next();
    this.position++;
  }

  /** The tree file at `path`, passing over those before it (not found by the walk: left unmet). */
  meet(path: string): TreeFile | undefined {
    this.passOver(path);
    const file = this.next;
    if (file === undefined || file.path !== path) return undefined;
    this.met++;
    return file;
  }

  /** Whether a tree file lies below the folder `relative`, passing over those before it as `meet` does. */
  leadsTo(relative: string): boolean {
    const prefix = `${relative}/`;
    this.passOver(prefix);
    return this.next?.path.startsWith(prefix) === true;
  }

  private passOver(path: string): void {
    while (!this.current.done && this.current.value.path !== path && comparePaths(this.current.value.path, path) < 0) this.advance();
  }
}

/** The first `limit` files of `tree` not sealed (`sealedAs`), symlinks aside unless asked for, after `unverified`. */
function withUnsealed(
  tree: TreeHash,
  sealedAs: Uint8Array,
  unverified: string[],
  limit: number,
  options: { symlinks?: boolean } = {},
): void {
  let index = 0;
  for (const file of filesOf(tree)) {
    if (unverified.length >= limit) break;
    if (sealedAs[index++] === NOT_SEALED && (options.symlinks === true || file.mode !== "symlink")) unverified.push(file.path);
  }
}

/** How a tree file of a linked view was sealed (see `sealLinkedView`). */
const NOT_SEALED = 0;
/** Sealed as the inode, size, modification time and content its stat cache entry describes. */
const SEALED_AS_ENTRY = 1;
/** Sealed, but not as its entry describes (or a symlink, or no entry). */
const SEALED_OTHERWISE = 2;

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
 *
 * The view is sealed in the tree's path order (its files when laid out now,
 * a listing in path order otherwise), so each stat meets its tree file by
 * walking both together, and what was found is kept in typed arrays by the
 * file's position: nothing is made per file but what the walk itself makes.
 */
export function sealLinkedView(
  tree: TreeHash,
  dir: string,
  cache: StatCacheMap | undefined,
  savedAt: bigint | undefined,
  options: { laidOutNow: boolean; limit?: number },
): LinkedSeal {
  const limit = options.limit ?? 5;
  const settledBefore = nextClockTick(dirname(dir));
  const viewDevice = statSync(dir, { bigint: true }).dev;
  const fine = savedAt === undefined ? 0n : savedAt - RACY_WINDOW_FINE_NS;
  const coarse = savedAt === undefined ? 0n : savedAt - RACY_WINDOW_COARSE_NS;
  const count = fileCountOf(tree);
  const columns = savedAt === undefined ? undefined : cache?.columns();
  const sealedAs = new Uint8Array(count);
  // The change time each file sealed as its entry was sealed with, by position: the pending blob's new column when aligned.
  const changeTimes = new BigInt64Array(count);
  // Whether every tree file met so far is the cache row of its own position.
  let aligned = columns?.inPathOrder === true && columns.count === count;
  const cursor = new TreeCursor(tree);
  const unverified: string[] = [];
  let updated = 0;
  let newestNs = 0n;
  let settled = true;
  const onStat = (relative: string, stat: BigIntStats | undefined): void => {
    // Directories are no tree's files: a file of the tree found as one stays unsealed, and unverified.
    if (relative === "" || stat?.isDirectory() === true) return;
    const file = cursor.meet(relative);
    if (file === undefined) return;
    const index = cursor.position;
    cursor.advance();
    // Found by its own position while the two agree: the search is one comparison.
    const row = columns === undefined ? -1 : columns.find(file.path);
    if (aligned && row !== index) aligned = false;
    sealedAs[index] = SEALED_OTHERWISE;
    if (file.mode === "symlink") return;
    if (stat === undefined || !stat.isFile()) {
      if (unverified.length < limit) unverified.push(file.path);
      return;
    }
    const entry =
      columns !== undefined ? (row < 0 ? undefined : columns.peekAt(row)) : savedAt === undefined ? undefined : cache?.peek(file.path);
    const same = entry !== undefined && entry.hash === file.hash && entry.mode === file.mode && describesStat(entry, stat);
    const trusted = same && unsigned(entry.dev) === viewDevice && isOutsideRacyWindow(entry.mtimeNs, entry.ctimeNs, fine, coarse);
    if (!trusted && unverified.length < limit && !holdsHash(join(dir, file.path), file.hash)) unverified.push(file.path);
    if (!same) return;
    const ctimeNs = stat.ctimeNs;
    if (entry.ctimeNs !== ctimeNs) updated++;
    if (ctimeNs >= settledBefore || stat.mtimeNs >= settledBefore) settled = false;
    if (ctimeNs > newestNs) newestNs = ctimeNs;
    if (stat.mtimeNs > newestNs) newestNs = stat.mtimeNs;
    sealedAs[index] = SEALED_AS_ENTRY;
    changeTimes[index] = ctimeNs;
  };
  // Laid out now: the tree's own paths, taken from the same walk over its files that meets each stat.
  function* treePaths(): Generator<string> {
    for (let file = cursor.next; file !== undefined; file = cursor.next) {
      const at = cursor.position;
      yield file.path;
      // Its stat was a directory's, or missing from the walk: on to the next file all the same.
      if (cursor.position === at) cursor.advance();
    }
  }
  const seal = sealTree(dir, { alsoWatch: tree.root, onStat, ...(options.laidOutNow ? { paths: treePaths() } : {}) });
  if (cursor.met < count) withUnsealed(tree, sealedAs, unverified, limit);
  const found = { updated, newestNs, settled };
  // A view that does not check out is laid out again: no cache to take.
  if (unverified.length > 0 || cache === undefined || savedAt === undefined || cache.size !== count)
    return { seal, unverified, pending: undefined };
  const rows =
    (aligned && cursor.met === count ? changeTimesRows(columns!, sealedAs, changeTimes, fine, coarse) : undefined) ??
    entriesRows(tree, sealedAs, changeTimes, cache, fine, coarse);
  return { seal, unverified, pending: rows === undefined ? undefined : { rows, ...found } };
}

/**
 * Seals the bundle's own folder, to be mounted for its jobs (mount-view.ts),
 * and checks it against what the plan hashed before any job sees it; or
 * names the first entry a read-only bind mount of the folder would not show
 * as the tree has it (`unmountable`): one that is no file of the tree nor a
 * folder on the way to one (what the walk skips, an empty folder), or a file
 * system mounted inside the bundle, which a bind mount hides. The bundle is
 * linked then.
 *
 * The folder is sealed through its real path, which is what is mounted: a
 * bundle that is a symlink retargeted later does not move a job's data.
 * Its folders are taken as the plan's walk listed and stat'ed them when that
 * still holds (`walkStillHolds`), and listed and stat'ed again otherwise; a
 * file the plan's stat cache vouches
 * for (the hashed content, on this device, outside the racy window) is sealed
 * with the stat the plan found it with, any other file is stat'ed and read (a
 * symlink's target compared with the hashed one). The seal's directories are
 * watched from then on; a file changed between the plan and the watches is
 * found by comparing every stat once (`SweepComparison`), which the sweep
 * does before any job's result is trusted. Nothing is pending: a mount moves
 * no change time.
 */
export function sealBundleFolder(
  tree: TreeHash,
  cache: StatCacheMap | undefined,
  savedAt: bigint | undefined,
  limit = 5,
): LinkedSeal | { unmountable: string } {
  const unverified: string[] = [];
  let root: string;
  try {
    root = realpathSync(tree.root);
  } catch {
    return { seal: sealOf(tree.root, new SealStats(), 0n), unverified: ["."], pending: undefined };
  }
  const rootStat = statSync(root, { bigint: true });
  const device = rootStat.dev;
  const fine = savedAt === undefined ? 0n : savedAt - RACY_WINDOW_FINE_NS;
  const coarse = savedAt === undefined ? 0n : savedAt - RACY_WINDOW_COARSE_NS;
  const columns = savedAt === undefined ? undefined : cache?.columns();
  const count = fileCountOf(tree);
  const sealedAs = new Uint8Array(count);
  const cursor = new TreeCursor(tree);
  const stats = new SealStats();
  let lastChangeNs = 0n;
  const stat = (path: string, relative: string): BigIntStats | undefined => {
    const found = lstatOrUndefined(path, { bigint: true });
    if (found !== undefined && found.ctimeNs > lastChangeNs) lastChangeNs = found.ctimeNs;
    if (found !== undefined || relative === "") stats.add(relative, found);
    return found;
  };
  const vouchedFor = (file: TreeFile): StatCacheEntry | undefined => {
    if (file.mode === "symlink" || savedAt === undefined) return undefined;
    const row = columns === undefined ? -1 : columns.find(file.path);
    const entry = columns !== undefined ? (row < 0 ? undefined : columns.peekAt(row)) : cache?.peek(file.path);
    const trusted =
      entry !== undefined &&
      entry.hash === file.hash &&
      entry.mode === file.mode &&
      unsigned(entry.dev) === device &&
      isOutsideRacyWindow(entry.mtimeNs, entry.ctimeNs, fine, coarse);
    return trusted ? entry : undefined;
  };
  const holdsPlanned = (path: string, file: TreeFile, found: BigIntStats | undefined): boolean => {
    if (found === undefined) return false;
    if (file.mode === "symlink") return found.isSymbolicLink() && holdsLinkTarget(path, file.hash);
    return found.isFile() && holdsHash(path, file.hash);
  };
  /** Seals a file with the stat the plan found it with. */
  const sealAsPlanned = (path: string, ino: bigint, size: bigint, mtimeNs: bigint, ctimeNs: bigint): void => {
    stats.addFile(path, ino, size, mtimeNs, ctimeNs);
    if (ctimeNs > lastChangeNs) lastChangeNs = ctimeNs;
  };
  /** Seals a file the stat cache does not vouch for with a stat taken now, its content read; the path when it is on another device. */
  const sealNow = (file: TreeFile): string | undefined => {
    const path = `${root}/${file.path}`;
    const found = stat(path, file.path);
    if (found !== undefined && found.dev !== device) return file.path;
    if (unverified.length < limit && !holdsPlanned(path, file, found)) unverified.push(file.path);
    return undefined;
  };
  /** Seals a file of the tree, as the plan's stat cache vouches for it or as it is now; the path when it is on another device. */
  const sealFile = (file: TreeFile): string | undefined => {
    const entry = vouchedFor(file);
    if (entry === undefined) return sealNow(file);
    sealAsPlanned(file.path, unsigned(entry.ino), BigInt(entry.size), entry.mtimeNs, entry.ctimeNs);
    return undefined;
  };
  /** The first entry below `dir` a mount would not show as the tree has it, or undefined. */
  const walk = (dir: string, prefix: string): string | undefined => {
    let entries: Dirent[];
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      // Gone or unreadable since the plan listed it: what it held is unverified below.
      return undefined;
    }
    for (const dirent of inPathOrder(entries)) {
      const relative = prefix === "" ? dirent.name : `${prefix}/${dirent.name}`;
      const path = `${dir}/${dirent.name}`;
      if (dirent.isDirectory()) {
        if (!cursor.leadsTo(relative)) return relative;
        if (stat(path, relative)?.dev !== device) return relative;
        const unmountable = walk(path, relative);
        if (unmountable !== undefined) return unmountable;
        continue;
      }
      const file = cursor.meet(relative);
      if (file === undefined) return relative;
      sealedAs[cursor.position] = SEALED_OTHERWISE;
      cursor.advance();
      const elsewhere = sealFile(file);
      if (elsewhere !== undefined) return elsewhere;
    }
    return undefined;
  };
  /**
   * The folders as the plan's walk listed them, each stat'ed just before: no
   * folder is listed again. An entry added or removed since moves its
   * folder's inode change time, which the comparison with the plan finds.
   */
  const sealFromWalk = (folders: WalkedFolders): string | undefined => {
    const { paths, stats: folderStats } = folders;
    let next = 0;
    const addFoldersBefore = (path: string | undefined): void => {
      // A folder's entries sort after it as if its name ended with "/".
      for (; next < paths.length; next++) {
        const folder = paths[next]!;
        if (path !== undefined && folder !== "" && comparePaths(`${folder}/`, path) > 0) return;
        const ctimeNs = folderStats[4 * next + 3]!;
        stats.addDirectory(folder, BigInt.asUintN(64, folderStats[4 * next + 1]!), folderStats[4 * next + 2]!, ctimeNs);
        if (ctimeNs > lastChangeNs) lastChangeNs = ctimeNs;
      }
    };
    // The rows the plan's walk saved are the tree's, file for file (the tree hash says so): row i is file i.
    if (columns !== undefined && columns.treeHash === tree.hash && columns.count === count && columns.inPathOrder) {
      for (let row = 0; row < count; row++) {
        const path = columns.pathAt(row);
        addFoldersBefore(path);
        const at = columns.statAt(row);
        // What `vouchedFor` asks, but for the hash and mode, which are the tree's own here.
        if (at.mode !== "symlink" && at.dev === device && isOutsideRacyWindow(at.mtimeNs, at.ctimeNs, fine, coarse)) {
          sealAsPlanned(path, at.ino, BigInt(at.size), at.mtimeNs, at.ctimeNs);
          continue;
        }
        const entry = columns.peekAt(row);
        const elsewhere = sealNow({ path, mode: entry.mode, size: entry.size, hash: entry.hash });
        if (elsewhere !== undefined) return elsewhere;
      }
    } else {
      for (const file of filesOf(tree)) {
        addFoldersBefore(file.path);
        const elsewhere = sealFile(file);
        if (elsewhere !== undefined) return elsewhere;
      }
    }
    addFoldersBefore(undefined);
    return undefined;
  };
  const folders = foldersOf(tree);
  const fromWalk = folders !== undefined && savedAt !== undefined && walkStillHolds(folders, rootStat);
  let unmountable: string | undefined;
  if (fromWalk) {
    unmountable = sealFromWalk(folders);
  } else {
    stat(root, "");
    unmountable = walk(root, "");
    // A file of the tree the listing did not meet is gone.
    if (unmountable === undefined && cursor.met < count) withUnsealed(tree, sealedAs, unverified, limit, { symlinks: true });
  }
  if (unmountable !== undefined) return { unmountable };
  return { seal: sealOf(root, stats, lastChangeNs), unverified, pending: undefined };
}

/**
 * A mounted view's first comparison of every stat with the plan's, which
 * every job of the sweep awaits before its result counts. It is started by
 * the first job to end rather than at the seal: when no other job of the
 * sweep can read the data after it (a sweep of one job, say), it is also
 * the sweep's last check of every stat, and one pass over a big bundle's
 * stats does for both.
 */
export class SweepComparison {
  private readonly unended = new Set<string>();
  private running: Promise<string[]> | undefined;
  private told = false;
  /** When it started, if it was the sweep's last check too; taken before any stat. */
  lastCheckAt: bigint | undefined;

  constructor(private readonly compare: (inBackground: boolean) => Promise<string[]>) {}

  /** The jobs of the sweep, before any of them starts. */
  expect(jobIds: Iterable<string>): void {
    for (const id of jobIds) this.unended.add(id);
  }

  /** `jobId` ran and ended, or never will run: it reads the data no more. */
  ended(jobId: string): void {
    this.unended.delete(jobId);
  }

  /** The paths found changed (at most the seal's limit), the comparison started now unless it was. */
  result(): Promise<string[]> {
    if (this.running === undefined) {
      const last = this.unended.size === 0;
      if (last) this.lastCheckAt = BigInt(Date.now()) * 1_000_000n;
      // The sweep's last check has this thread's help; one that runs beside jobs leaves it to the idle threads.
      this.running = this.compare(!last);
    }
    return this.running;
  }

  /** True for the first caller only: the one job that acts on what the comparison found. */
  firstToLearn(): boolean {
    if (this.told) return false;
    this.told = true;
    return true;
  }
}

/**
 * Whether the folders a plan's walk listed still say what the bundle's
 * folder holds: each held exactly the tree's entries, the walk's root is the
 * folder sealed now, every folder is on its device, and none changed within
 * the racy window before the walk, so that an entry added or removed after
 * the walk listed a folder moves that folder's inode change time (which a
 * writer cannot set back, as it can the modification time).
 */
function walkStillHolds(folders: WalkedFolders, root: BigIntStats): boolean {
  const { paths, stats } = folders;
  if (!folders.exact || paths[0] !== "") return false;
  if (BigInt.asUintN(64, stats[0]!) !== root.dev || BigInt.asUintN(64, stats[1]!) !== root.ino) return false;
  const settled = folders.walkedAt - RACY_WINDOW_COARSE_NS;
  for (let index = 0; index < paths.length; index++) {
    if (BigInt.asUintN(64, stats[4 * index]!) !== root.dev) return false;
    if (stats[4 * index + 3]! >= settled) return false;
  }
  return true;
}

/** Whether the symlink at `path` has the target the tree hashed as `hash`. */
function holdsLinkTarget(path: string, hash: string): boolean {
  try {
    return hashLinkTarget(path) === hash;
  } catch {
    return false;
  }
}

/**
 * The pending cache as the blob's rows with new change times, when every row
 * is kept: the entries sealed anew, and the others outside the racy window of
 * the old cache time. Undefined when one must go (`entriesRows` then).
 */
function changeTimesRows(
  columns: StatCacheColumns,
  sealedAs: Uint8Array,
  changeTimes: BigInt64Array,
  fine: bigint,
  coarse: bigint,
): PendingRows | undefined {
  for (let i = 0; i < columns.count; i++) {
    if (sealedAs[i] === SEALED_AS_ENTRY) continue;
    const entry = columns.peekAt(i);
    if (!isOutsideRacyWindow(entry.mtimeNs, entry.ctimeNs, fine, coarse)) return undefined;
    changeTimes[i] = entry.ctimeNs;
  }
  return { kind: "changeTimes", columns, changeTimes };
}

/**
 * The pending cache in the tree's order (the cache's): entries sealed anew,
 * and the others that were outside the racy window of the old cache time.
 * Undefined when the cache is not the tree's file for file
 * (`refreshedStatCache` then works it out after the sweep).
 */
function entriesRows(
  tree: TreeHash,
  sealedAs: Uint8Array,
  changeTimes: BigInt64Array,
  cache: StatCacheMap,
  fine: bigint,
  coarse: bigint,
): PendingRows | undefined {
  const entries: StatCacheEntry[] = [];
  let index = 0;
  for (const file of filesOf(tree)) {
    const at = index++;
    const entry = cache.peek(file.path);
    if (entry === undefined) return undefined;
    if (sealedAs[at] === SEALED_AS_ENTRY) {
      const ctimeNs = changeTimes[at] as bigint;
      entries.push(entry.ctimeNs === ctimeNs ? entry : { ...entry, ctimeNs });
    } else if (isOutsideRacyWindow(entry.mtimeNs, entry.ctimeNs, fine, coarse)) {
      entries.push(entry);
    }
  }
  return { kind: "entries", entries };
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

/**
 * What saving `pending` as the cache of `tree` writes: the blob patched in
 * place when its rows are exactly the tree's (`undo` puts the old change
 * times back if the save fails), a patched copy without the tree hash when
 * they are not, or the entries.
 */
export function pendingStatCacheRows(
  pending: PendingStatCache,
  tree: TreeHash,
): { entries: StatCacheEntry[]; treeHash: string | undefined } | { blob: Buffer; count: number; undo?: () => void } {
  const rows = pending.rows;
  if (rows.kind === "entries")
    return { entries: rows.entries, treeHash: rows.entries.length === fileCountOf(tree) ? tree.hash : undefined };
  return patchedBlob(rows.columns, rows.changeTimes, rows.columns.treeHash === tree.hash);
}

/** The blob of `columns` with `changeTimes`: in place when `exactlyTheTree`, else in a copy without the tree hash. */
function patchedBlob(
  columns: StatCacheColumns,
  changeTimes: BigInt64Array,
  exactlyTheTree: boolean,
): { blob: Buffer; count: number; undo?: () => void } {
  if (!exactlyTheTree) return { blob: columns.withChangeTimes((i) => changeTimes[i] as bigint, false), count: columns.count };
  return { ...columns.setChangeTimes(changeTimes), count: columns.count };
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
 * to hold the planned content when sealed (`sealLinkedView`). The cache time
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
  if (sealed !== undefined && ctimeNs !== undefined && entry.mode !== "symlink" && planned === entry.hash && describesStat(entry, sealed)) {
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
    while (!file.done && comparePaths(file.value.path, entry.path) < 0) {
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
  return patchedBlob(columns, changeTimes, treeFiles === columns.count && columns.treeHash === tree.hash);
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
