/**
 * Sealed results. The local backend has no sandbox: a train script runs as the
 * user (often root) and can write anywhere, including into finished jobs'
 * outputs and kaos's own files. What kaos can do is notice. When a job ends,
 * its output directory and its copy of the source are made read-only (which
 * stops scripts run as an ordinary user, not root) and sealed: the tree hash
 * of every file and symlink in them, with each file's stats, goes to
 * `.kaos/jobs/<id>/seal.json`, written atomically and read-only, outside the
 * output directory. Every later read of the results checks them against it
 * (`checkJobResults`): a file added, changed or removed since is named, and
 * the results are not trusted.
 *
 * Checks are cheap: a file whose stats (device, inode, size, modification
 * and change times, mode) still match its sealed entry is not read again.
 * Nobody can set a file's change time back, and the content is read only
 * after the clock has moved past every change time in the tree (see
 * `sealTree`), so a write after the seal always shows in the stats.
 */
import type { ResultsCheck, TreeChanges } from "../../core/backend.js";
import {
  type Stats,
  chmodSync,
  cpSync,
  type FSWatcher,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  watch,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { lstatOrUndefined } from "../../core/disk.js";
import { KaosError, describeError, errnoCode } from "../../core/errors.js";
import {
  RACY_WINDOW_COARSE_NS,
  diffTrees,
  hashTree,
  type StatCacheEntry,
  type StatCacheStore,
  type TreeFile,
  type TreeHash,
} from "../../core/hash.js";
import { STATE_DIR_NAMES, jobPaths } from "../../core/layout.js";
import { nextClockTick, resolveInside } from "../../core/snapshot.js";
import { temporaryPathFor } from "../../core/process-identity.js";

/** path, mode, size, content hash, then the stats: dev, ino, mtime and ctime in ns (decimal strings). */
type SealedEntry = [string, TreeFile["mode"], number, string, string, string, string, string];

interface SealedTree {
  /** Tree hash ("kaos-tree-v1", see hash.ts) of every file and symlink, nothing ignored. */
  hash: string;
  /** The stat cache's time for the racy rule (ns, decimal). */
  savedAtNs: string;
  entries: SealedEntry[];
}

export interface SealRecord {
  version: 1;
  jobId: string;
  sealedAt: string;
  output: SealedTree;
  /** The job's copy of its source bundle, which it ran from (its working directory is `model/` in it). */
  source: SealedTree | null;
  /** What the job itself changed in its copy of the source while it ran, against the bundle its key names. */
  sourceChangedByJob: TreeChanges | null;
}

export type { ResultsCheck, TreeChanges };

function sealPathOf(stateDir: string, jobId: string): string {
  return jobPaths(stateDir, jobId).seal;
}

/**
 * Removes every write bit under `root` (files and directories, never through
 * a symlink). Directories after their entries, which need them writable to be done.
 * Returns how many entries lie below `root`.
 */
function makeReadOnly(root: string, rootStat?: Stats): number {
  let entries = 0;
  const visit = (path: string, known?: Stats): void => {
    const stat = known ?? lstatSync(path);
    if (stat.isSymbolicLink()) return;
    if (stat.isDirectory()) {
      for (const name of readdirSync(path)) {
        entries++;
        visit(join(path, name));
      }
    }
    if ((stat.isDirectory() || stat.isFile()) && (stat.mode & 0o222) !== 0) chmodSync(path, stat.mode & 0o7555);
  };
  visit(root, rootStat);
  return entries;
}

/**
 * A stat cache that records what one hash saw, and serves it back to later
 * checks. `entries` is how many a tree not sealed yet holds, when known.
 */
function sealStore(
  sealed?: SealedTree,
  entries?: number,
): StatCacheStore & { saved: { entries: StatCacheEntry[]; cacheTimeNs: bigint } | undefined } {
  const store = {
    saved: undefined as { entries: StatCacheEntry[]; cacheTimeNs: bigint } | undefined,
    load: (): Map<string, StatCacheEntry> => {
      const entries = new Map<string, StatCacheEntry>();
      for (const [path, mode, size, hash, dev, ino, mtimeNs, ctimeNs] of sealed?.entries ?? []) {
        entries.set(path, {
          path,
          mode,
          size,
          hash,
          dev: BigInt(dev),
          ino: BigInt(ino),
          mtimeNs: BigInt(mtimeNs),
          ctimeNs: BigInt(ctimeNs),
        });
      }
      return entries;
    },
    save: (_root: string, entries: StatCacheEntry[], cacheTimeNs: bigint): void => {
      store.saved = { entries, cacheTimeNs };
    },
    savedAt: (): bigint | undefined => (sealed === undefined ? undefined : BigInt(sealed.savedAtNs)),
    // A small tree (most results are) is then hashed without starting a hashing thread.
    cachedFiles: (): number | undefined => sealed?.entries.length ?? entries,
  };
  return store;
}

/** Seals the tree at `root` of `size` entries, whose content is read only after `readFromNs` (see `nextClockTick`). */
async function sealTree(root: string, readFromNs: bigint, size: number): Promise<SealedTree> {
  const store = sealStore(undefined, size);
  const tree = await hashTree(root, { everyFile: true, statCache: store });
  const entries = store.saved?.entries ?? [];
  // Every file last changed before its content was read: any later write shows
  // in its stats, so a check need not read any file whose stats match. Else
  // (something wrote while kaos read) the racy rule decides, file by file.
  let newest = 0n;
  let settled = true;
  for (const entry of entries) {
    if (entry.ctimeNs >= readFromNs) settled = false;
    if (entry.ctimeNs > newest) newest = entry.ctimeNs;
    if (entry.mtimeNs > newest) newest = entry.mtimeNs;
  }
  const savedAtNs = settled ? newest + RACY_WINDOW_COARSE_NS + 1n : (store.saved?.cacheTimeNs ?? 0n);
  return {
    hash: tree.hash,
    savedAtNs: String(savedAtNs),
    entries: entries.map((entry) => [
      entry.path,
      entry.mode,
      entry.size,
      entry.hash,
      String(entry.dev),
      String(entry.ino),
      String(entry.mtimeNs),
      String(entry.ctimeNs),
    ]),
  };
}

function changesOf(before: TreeFile[], after: TreeFile[]): TreeChanges | null {
  const diff = diffTrees(before, after);
  const changes = {
    added: diff.added.map((file) => file.path),
    changed: [...diff.changed, ...diff.modeChanged].map((file) => file.path).sort(),
    removed: diff.removed.map((file) => file.path),
  };
  return changes.added.length + changes.changed.length + changes.removed.length === 0 ? null : changes;
}

function filesOf(sealed: SealedTree): TreeFile[] {
  return sealed.entries.map(([path, mode, size, hash]) => ({ path, mode, size, hash }));
}

/** Throws when the job replaced its output directory (kaos made it a directory) by something else; else its stats. */
function checkOutputDirectory(out: string): Stats {
  let stat: Stats;
  try {
    stat = lstatSync(out);
  } catch (error) {
    if (errnoCode(error) === "ENOENT") throw new KaosError("JOBS_FAILED", `its output directory ${out} was removed by the job`);
    throw error;
  }
  if (!stat.isDirectory()) {
    const what = stat.isSymbolicLink() ? `a symlink to ${readlinkSync(out)}` : "not a directory";
    throw new KaosError(
      "JOBS_FAILED",
      `its output directory ${out} was replaced by ${what}; outputs must be written inside KAOS_OUTPUT_DIR`,
    );
  }
  return stat;
}

/** How many entries (files, symlinks and the directories holding them) a tree of `files` lays out below its root. */
function entriesLaidOut(files: readonly TreeFile[]): number {
  const directories = new Set<string>();
  for (const file of files) {
    for (let slash = file.path.indexOf("/"); slash !== -1; slash = file.path.indexOf("/", slash + 1)) {
      directories.add(file.path.slice(0, slash));
    }
  }
  return files.length + directories.size;
}

/**
 * Seals a job that ended: makes its outputs and its copy of the source
 * read-only, hashes both and writes the seal. `sourceTree` is the source
 * bundle the job was keyed on, to tell what the job changed in its copy.
 */
export async function sealJobResults(
  stateDir: string,
  jobId: string,
  sourceTree: Pick<TreeHash, "hash" | "files"> | undefined,
): Promise<SealRecord> {
  const paths = jobPaths(stateDir, jobId);
  const outStat = checkOutputDirectory(paths.out);
  const sourceStat = lstatOrUndefined(paths.source);
  const hasSource = sourceStat?.isDirectory() === true;
  const outputEntries = makeReadOnly(paths.out, outStat);
  const sourceEntries = hasSource ? makeReadOnly(paths.source, sourceStat) : 0;
  const readFromNs = nextClockTick(paths.dir);
  const output = await sealTree(paths.out, readFromNs, outputEntries);
  const source = hasSource ? await sealTree(paths.source, readFromNs, sourceEntries) : null;
  let sourceChangedByJob: TreeChanges | null = null;
  // A copy holding the bundle's files and nothing else (no entry added, none of different content) is the
  // bundle, which most jobs leave it: only a copy that differs is walked again, as a bundle is.
  const untouched =
    source !== null && sourceTree !== undefined && source.hash === sourceTree.hash && sourceEntries === entriesLaidOut(sourceTree.files);
  if (hasSource && sourceTree !== undefined && !untouched) {
    // Hashed as bundles are, so that what a script may leave beside its code (__pycache__) does not count; the
    // seal's stats spare reading the files again.
    const asBundle = await hashTree(paths.source, { statCache: sealStore(source ?? undefined) });
    sourceChangedByJob = changesOf(sourceTree.files, asBundle.files);
  }
  const record: SealRecord = { version: 1, jobId, sealedAt: new Date().toISOString(), output, source, sourceChangedByJob };
  const target = sealPathOf(stateDir, jobId);
  const temporary = temporaryPathFor(target);
  writeFileSync(temporary, `${JSON.stringify(record)}\n`, { mode: 0o444 });
  renameSync(temporary, target);
  return record;
}

function readSeal(stateDir: string, jobId: string): SealRecord | undefined | { problem: string } {
  let text: string;
  try {
    text = readFileSync(sealPathOf(stateDir, jobId), "utf8");
  } catch (error) {
    if (errnoCode(error) === "ENOENT") return undefined;
    return { problem: `its seal ${sealPathOf(stateDir, jobId)} cannot be read (${describeError(error)})` };
  }
  try {
    const record = JSON.parse(text) as SealRecord;
    if (record.version !== 1 || record.jobId !== jobId || typeof record.output?.hash !== "string")
      throw new Error("not a seal of this job");
    return record;
  } catch (error) {
    return { problem: `its seal ${sealPathOf(stateDir, jobId)} is not a valid seal (${describeError(error)})` };
  }
}

/** The changes to one sealed tree, or a description of why it is gone. */
async function treeChanges(root: string, sealed: SealedTree): Promise<TreeChanges | null> {
  const stat = lstatOrUndefined(root);
  if (stat === undefined || !stat.isDirectory()) {
    const files = filesOf(sealed);
    return files.length === 0 && stat === undefined
      ? null
      : { added: stat === undefined ? [] : ["."], changed: [], removed: files.map((file) => file.path) };
  }
  const tree = await hashTree(root, { everyFile: true, statCache: sealStore(sealed) });
  if (tree.hash === sealed.hash) return null;
  return changesOf(filesOf(sealed), tree.files) ?? { added: [], changed: ["."], removed: [] };
}

/**
 * Checks a job's results against the seal taken when it ended: whether its
 * outputs and its copy of the source are still exactly what it left. For
 * every reader of results (`kaos train get`, `kaos train info`, a dashboard).
 * A job without a seal is still running, was interrupted, or ended before
 * kaos sealed results.
 */
export async function checkJobResults(stateDir: string, jobId: string): Promise<ResultsCheck> {
  const seal = readSeal(stateDir, jobId);
  if (seal === undefined) return { sealed: false, reason: "its results were not sealed when it ended" };
  if ("problem" in seal) {
    return { sealed: true, intact: false, sealedAt: "", output: null, source: null, problem: seal.problem, sourceChangedByJob: null };
  }
  const paths = jobPaths(stateDir, jobId);
  const output = await treeChanges(paths.out, seal.output);
  const source = seal.source === null ? null : await treeChanges(paths.source, seal.source);
  return {
    sealed: true,
    intact: output === null && source === null,
    sealedAt: seal.sealedAt,
    output,
    source,
    problem: null,
    sourceChangedByJob: seal.sourceChangedByJob,
  };
}

const SHOWN_PATHS = 10;

/** "2 changed (model.txt, w.bin), 1 added (x)" for at most SHOWN_PATHS paths each. */
export function describeChanges(changes: TreeChanges): string {
  const part = (count: string[], what: string) => {
    if (count.length === 0) return undefined;
    const shown = count.slice(0, SHOWN_PATHS).map((path) => JSON.stringify(path).slice(1, -1));
    const more = count.length > SHOWN_PATHS ? `, and ${count.length - SHOWN_PATHS} more` : "";
    return `${count.length} ${what} (${shown.join(", ")}${more})`;
  };
  return [part(changes.changed, "changed"), part(changes.added, "added"), part(changes.removed, "removed")].filter(Boolean).join(", ");
}

/** Why a check's results cannot be trusted, in one sentence; undefined when they can. */
export function resultsProblem(jobId: string, check: ResultsCheck): string | undefined {
  if (!check.sealed || check.intact) return undefined;
  if (check.problem !== null) return `job ${jobId}'s results cannot be trusted: ${check.problem}`;
  const parts: string[] = [];
  if (check.output !== null) parts.push(`its outputs: ${describeChanges(check.output)}`);
  if (check.source !== null) parts.push(`its copy of the source: ${describeChanges(check.source)}`);
  return `job ${jobId}'s results changed after it ended (sealed ${check.sealedAt}): ${parts.join("; ")}; they are not what the job produced and cannot be trusted`;
}

/**
 * Copies a job's tree (outputs or source) to `dest` as it is: symlinks keep
 * their targets, relative ones stay relative. A link that leads out of the
 * tree is not copied (it would point at whatever sits at its target on this
 * machine, not at anything the job produced), nor are sockets, FIFOs and
 * devices; `onSkip` hears of each. The copy is writable by its owner, though
 * the sealed tree is not.
 */
export function copyResults(root: string, dest: string, what: string, onSkip: (path: string, why: string) => void): void {
  const links = new Map<string, string>();
  const collect = (dir: string, prefix: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const relative = prefix === "" ? entry.name : `${prefix}/${entry.name}`;
      if (entry.isSymbolicLink()) links.set(relative, readlinkSync(join(dir, entry.name)));
      else if (entry.isDirectory()) collect(join(dir, entry.name), relative);
    }
  };
  collect(root, "");
  const prefix = root.endsWith("/") ? root : `${root}/`;
  cpSync(root, dest, {
    recursive: true,
    verbatimSymlinks: true,
    filter: (source) => {
      const stat = lstatSync(source);
      if (stat.isSymbolicLink()) {
        const relative = source.slice(prefix.length);
        const target = links.get(relative) ?? readlinkSync(source);
        if (resolveInside(links, relative.split("/").slice(0, -1), target, { hops: 40 }) !== null) return true;
        onSkip(source, `symlink to ${target} points outside the job's ${what}`);
        return false;
      }
      if (stat.isFile() || stat.isDirectory()) return true;
      onSkip(source, "not a regular file, directory or symlink");
      return false;
    },
  });
  const writable = (path: string): void => {
    const stat = lstatSync(path);
    if (stat.isSymbolicLink()) return;
    if ((stat.mode & 0o200) === 0) chmodSync(path, stat.mode | 0o200);
    if (stat.isDirectory()) for (const name of readdirSync(path)) writable(join(path, name));
  };
  writable(dest);
}

/** The names at the top of `.kaos/` and in `.kaos/jobs/`. */
interface StateListing {
  top: Set<string>;
  jobs: Set<string>;
}

function names(dir: string): Set<string> {
  try {
    return new Set(readdirSync(dir));
  } catch {
    return new Set();
  }
}

function listState(stateDir: string): StateListing {
  return { top: names(stateDir), jobs: names(join(stateDir, "jobs")) };
}

/**
 * What appears in `.kaos/` during a sweep that kaos did not put there: a
 * name at its top that is none of kaos's own, or an entry of `.kaos/jobs/`
 * that is no job (`isJob`). It catches a script writing out of its output
 * directory into kaos's state; writes deeper in (another job's results) are
 * caught by their seals.
 *
 * Both directories are watched (inotify) while the sweep runs, and listed
 * again only once a name that is not kaos's own was heard of: `.kaos/jobs/`
 * holds an entry per job ever run, too many to list as every job ends. A
 * script's writes are heard before its end is (inotify queues them as they
 * happen, and kaos reads its events before it hears the end of the job
 * through the same event loop), so a job's look is as exact as a listing
 * before and after it. Without a watch, every look lists. `finish` lists
 * once more at the sweep's end, for whatever the watches did not hear.
 */
export class StateEntries {
  private last: StateListing;
  /** Orders what happens in `.kaos/`: each unknown name heard and each listing moves it on; a job's mark is where it stood. */
  private epoch = 0;
  /** Unknown names heard of since the last listing, with the epoch each was first heard at. */
  private readonly heard = { top: new Map<string, number>(), jobs: new Map<string, number>() };
  /** A change heard of without a name: the next look lists. */
  private stirred = false;
  /** Foreign names still present, with the epoch they appeared at: a job marked before it may have made them. */
  private readonly foreign = { top: new Map<string, number>(), jobs: new Map<string, number>() };
  private readonly reported = new Set<string>();
  private watchers: FSWatcher[] | undefined;

  constructor(
    private readonly stateDir: string,
    private readonly isJob: (id: string) => boolean,
  ) {
    this.watchers = this.watch();
    this.last = listState(stateDir);
  }

  private watch(): FSWatcher[] | undefined {
    const watchers: FSWatcher[] = [];
    try {
      const jobs = join(this.stateDir, "jobs");
      mkdirSync(jobs, { recursive: true });
      for (const [kind, dir] of [
        ["top", this.stateDir],
        ["jobs", jobs],
      ] as const) {
        const watcher = watch(dir, { persistent: false }, (_event, name) => this.hear(kind, name));
        // A watch that fails later has lost what it would have heard: every look lists from then on.
        watcher.on("error", () => this.close());
        watchers.push(watcher);
      }
      return watchers;
    } catch {
      for (const watcher of watchers) watcher.close();
      return undefined;
    }
  }

  private hear(kind: "top" | "jobs", name: string | null): void {
    if (name === null) {
      this.stirred = true;
      return;
    }
    if (kind === "top" ? STATE_DIR_NAMES.has(name) : this.isJob(name)) return;
    this.epoch++;
    if (!this.heard[kind].has(name)) this.heard[kind].set(name, this.epoch);
  }

  /** Taken as a job starts: what appears after it may be the job's doing. */
  mark(): number {
    return this.epoch;
  }

  /** The foreign entries that appeared since `mark` (absolute paths, sorted). */
  foreignSince(mark: number): string[] {
    if (this.watchers === undefined || this.stirred || this.heard.top.size + this.heard.jobs.size > 0) this.list();
    const found: string[] = [];
    for (const [name, at] of this.foreign.top) if (at > mark) found.push(join(this.stateDir, name));
    for (const [name, at] of this.foreign.jobs) if (at > mark) found.push(join(this.stateDir, "jobs", name));
    for (const path of found) this.reported.add(path);
    return found.sort();
  }

  /** Stops watching, and lists once more: the foreign entries no job's look found (none, unless a watch missed them). */
  finish(): string[] {
    this.close();
    this.list();
    const paths = [
      ...[...this.foreign.top.keys()].map((name) => join(this.stateDir, name)),
      ...[...this.foreign.jobs.keys()].map((name) => join(this.stateDir, "jobs", name)),
    ];
    return paths.filter((path) => !this.reported.has(path)).sort();
  }

  close(): void {
    for (const watcher of this.watchers ?? []) watcher.close();
    this.watchers = undefined;
  }

  private list(): void {
    const heard = { top: new Map(this.heard.top), jobs: new Map(this.heard.jobs) };
    this.heard.top.clear();
    this.heard.jobs.clear();
    this.stirred = false;
    // What no watch heard of (there is none, or it missed it) may have appeared at any time before this listing.
    const unheard = ++this.epoch;
    const now = listState(this.stateDir);
    for (const kind of ["top", "jobs"] as const) {
      const foreign = this.foreign[kind];
      // One removed is forgotten: made again, it is new again.
      for (const name of foreign.keys()) if (!now[kind].has(name)) foreign.delete(name);
      for (const name of now[kind]) {
        if (this.last[kind].has(name) || foreign.has(name)) continue;
        if (kind === "top" ? STATE_DIR_NAMES.has(name) : this.isJob(name)) continue;
        foreign.set(name, heard[kind].get(name) ?? unheard);
      }
    }
    this.last = now;
  }
}
