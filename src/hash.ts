/**
 * Content hashing of bundle trees: the identity of every source and data bundle.
 *
 * Tree hash encoding ("kaos-tree-v1"). The tree hash is the SHA-256 of
 *
 *     "kaos-tree-v1\n"
 *     then, for every file in the order of its path's UTF-8 bytes:
 *     MODE "\0" PATH "\0" CONTENT_HASH "\n"
 *
 * where MODE is `file`, `exec` or `symlink`, PATH is the POSIX path relative to
 * the bundle root ('/' separated, UTF-8, no leading "./"), and CONTENT_HASH is
 * the lowercase hex SHA-256 of the file's bytes (for a symlink: of its target
 * string, which is never followed). A path holds no NUL and the hash has a fixed
 * length, so the encoding is unambiguous. It is a one-level Merkle list: the
 * root commits to every path, mode and content hash, and to nothing else: not
 * the directory the bundle sits in, creation order, timestamps, owners or the
 * machine. `exec` means the owner-execute bit is set (git's rule); other
 * permission bits do not count.
 *
 * Directories are not entries. Like git, a bundle is its files: an empty
 * directory adds nothing, so adding or removing one does not change the hash,
 * and a bundle with no files at all hashes to SHA-256("kaos-tree-v1\n"). The
 * reason: `files` is what snapshots and packing copy, and it has no directory
 * entries; a hash that counted directories the snapshot cannot carry would
 * promise more than the job gets. A script that needs a directory creates it.
 *
 * Skipped always, at any depth: entries named `.git`, `.kaos`, `node_modules`
 * and `__pycache__`. Then the patterns of `<root>/.kaosignore` (gitignore
 * syntax, negation included; the file itself stays in the tree) and
 * `options.ignore`. As in git, a file inside an ignored directory cannot be
 * re-included: ignored directories are not even read.
 *
 * Stat cache and the racy rule. With `statCache`, a file whose (dev, ino, size,
 * mtimeNs, ctimeNs, mode) equal its cached entry is not read. The cache also
 * records when the walk that produced it started (`savedAt`). A file whose
 * mtime or ctime is no earlier than `savedAt` minus a window may have been
 * written again within the same timestamp tick after it was read, leaving an
 * identical stat behind (git's "racy" case), so it is read again. The window
 * stands for the filesystem's timestamp granularity plus the lag of the
 * kernel's coarse clock behind ours: RACY_WINDOW_FINE_NS (1 s) when the
 * file's ctime has a sub-second part, RACY_WINDOW_COARSE_NS (3 s) when it has
 * none, as on filesystems that stamp whole seconds (ext3, HFS+) or two
 * seconds (FAT). Unlike git, `savedAt` comes from our clock, not the
 * filesystem's, so a file server whose clock runs behind ours by more than
 * the window could hide an edit made within one tick of being hashed.
 * A store without `savedAt` gives no trusted entries: every file is read.
 *
 * Speed. A small pool of worker threads (hash-worker.ts) lists directories,
 * lstats and reads files with synchronous fs calls and one reused buffer
 * each. The walk is split into units of a couple of thousand entries that any
 * worker takes, so one deep subtree or one huge directory still spreads over
 * every worker; results come back as typed arrays, a few hundred messages for
 * 100k files. Without a trusted stat cache files are hashed during the walk;
 * with one, the main thread compares the stats in path order against the
 * cache (one string comparison per file when the cache kept that order) and
 * hands out what changed as hash jobs. Files above LARGE_FILE_BYTES are
 * hashed as jobs of their own, biggest first, so big files spread over every
 * worker too.
 */
import { createHash } from "node:crypto";
import { constants as fsConstants, existsSync, readFileSync, statSync } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { join, resolve as resolvePath } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { KaosError, describeError, errnoCode } from "./errors.js";
import {
  HASH_WORKER_MARK,
  MODE_NAMES,
  STATUS_DEFERRED,
  STATUS_HASHED,
  STATUS_STATTED,
  STATUS_VANISHED,
  type HashJobRequest,
  type HashJobResult,
  type UnitResult,
  type WalkRequest,
  type WalkResult,
  type WalkUnit,
  type WorkerFileError,
  type WorkerRequest,
  type WorkerResult,
} from "./hash-worker.js";

export interface TreeFile {
  /** POSIX relative path inside the bundle, '/' separated. */
  path: string;
  mode: "file" | "exec" | "symlink";
  /** Bytes (for symlinks: length of the target string). */
  size: number;
  /** Hex SHA-256 of the content (for symlinks: of the link target string). */
  hash: string;
}

export interface TreeHash {
  /** Absolute path hashed. */
  root: string;
  /** Hex SHA-256 Merkle root (encoding at the top of this file). */
  hash: string;
  /** Sorted by path (byte order of the UTF-8 path). */
  files: TreeFile[];
  stats: { files: number; bytes: number; hashedFiles: number; hashedBytes: number; cacheHits: number };
}

/**
 * dev and ino are unsigned 64-bit values; a store that keeps them in signed
 * 64-bit columns (SQLite INTEGER) may hand them back negative, and they are
 * read back modulo 2^64.
 */
export interface StatCacheEntry {
  path: string;
  dev: bigint | number;
  ino: bigint | number;
  size: number;
  mtimeNs: bigint;
  ctimeNs: bigint;
  mode: TreeFile["mode"];
  hash: string;
}

/** Implemented by the SQLite state store; `memoryStatCache()` is an in-memory one. */
export interface StatCacheStore {
  /** All cached entries of one tree root, loaded in one go (the warm path must not do per-file queries). */
  load(root: string): Map<string, StatCacheEntry> | Promise<Map<string, StatCacheEntry>>;
  /** Replace the cached entries of one root after a hash (one transaction). `cacheTimeNs` is when the walk started, for the racy rule. */
  save(root: string, entries: StatCacheEntry[], cacheTimeNs: bigint): void | Promise<void>;
  /** When the cache for root was last saved (the walk start time), or undefined. */
  savedAt?(root: string): bigint | undefined;
}

export interface HashTreeOptions {
  statCache?: StatCacheStore;
  /** Extra ignore patterns (gitignore syntax) on top of the defaults and `.kaosignore`. */
  ignore?: string[];
  /** Worker threads; default min(2, os.availableParallelism()). */
  workers?: number;
}

const TREE_HASH_HEADER = "kaos-tree-v1\n";
const IGNORE_FILE = ".kaosignore";

/** Racy window when the filesystem stamps sub-second times (see the top of this file). */
export const RACY_WINDOW_FINE_NS = 1_000_000_000n;
/** Racy window for filesystems that stamp whole seconds, or two (FAT). */
export const RACY_WINDOW_COARSE_NS = 3_000_000_000n;
const NS_PER_SECOND = 1_000_000_000n;

/** Entries a walk unit handles before handing the rest back: a few milliseconds of work. */
const UNIT_ENTRY_BUDGET = 2048;
/** Files above this are hashed as jobs of their own. */
const LARGE_FILE_BYTES = 8 << 20;
/** Bytes a unit (or a job of small files) reads: about 10 ms of SHA-256. */
const UNIT_BYTE_BUDGET = 16 << 20;
const JOB_MAX_FILES = 1024;
/** Messages in flight per worker: one running, one queued, so no worker waits on the main thread. */
const MAX_OUTSTANDING = 2;
const MAX_UNITS_PER_MESSAGE = 16;

// ---------------------------------------------------------------------------
// Worker pool: started on first use, kept for later calls (`kaos watch` hashes
// again and again) and unref'd while idle so it never keeps the process alive.

interface PendingRequest {
  resolve: (result: WorkerResult) => void;
  reject: (error: unknown) => void;
}

interface PoolWorker {
  thread: Worker;
  pending: Map<number, PendingRequest>;
  /** A hash job is running there: nothing else is queued behind it. */
  busyWithJob: boolean;
}

const pool: PoolWorker[] = [];
let nextRequestId = 1;

function startWorker(): PoolWorker {
  const thread = spawnWorkerThread();
  const member: PoolWorker = { thread, pending: new Map(), busyWithJob: false };
  const fail = (error: unknown): void => {
    const index = pool.indexOf(member);
    if (index >= 0) pool.splice(index, 1);
    for (const request of member.pending.values()) request.reject(error);
    member.pending.clear();
  };
  thread.on("message", (result: WorkerResult) => {
    const request = member.pending.get(result.id);
    if (request === undefined) return;
    member.pending.delete(result.id);
    if (member.pending.size === 0) thread.unref();
    request.resolve(result);
  });
  thread.on("error", fail);
  thread.on("exit", (code) => fail(new KaosError("IO", `A hashing worker thread exited unexpectedly (exit code ${code}).`)));
  thread.unref();
  return member;
}

/**
 * The compiled worker sits beside this file in dist/. When the sources run
 * directly (tests run src/*.ts), the worker's TypeScript goes through jiti.
 */
function spawnWorkerThread(): Worker {
  const compiled = new URL("./hash-worker.js", import.meta.url);
  if (existsSync(fileURLToPath(compiled))) return new Worker(compiled, { workerData: HASH_WORKER_MARK });
  const source = fileURLToPath(new URL("./hash-worker.ts", import.meta.url));
  const jiti = pathToFileURL(createRequire(import.meta.url).resolve("jiti")).href;
  // A dynamic import runs whether the eval'd code is taken as CommonJS or, with
  // an inherited --input-type=module, as an ES module.
  const bootstrap = `import(${JSON.stringify(jiti)}).then((jiti) => jiti.createJiti(${JSON.stringify(source)}).import(${JSON.stringify(source)}));`;
  return new Worker(bootstrap, { eval: true, workerData: HASH_WORKER_MARK });
}

function workersFor(requested: number | undefined): PoolWorker[] {
  const wanted = Math.max(1, Math.floor(requested ?? Math.min(2, availableParallelism())));
  while (pool.length < wanted) pool.push(startWorker());
  return pool.slice(0, wanted);
}

function sendToWorker(member: PoolWorker, request: WorkerRequest): Promise<WorkerResult> {
  return new Promise((resolve, reject) => {
    member.pending.set(request.id, { resolve, reject });
    member.thread.ref();
    member.thread.postMessage(request);
  });
}

/** Stops the worker threads (they are restarted on demand); for tests and long-lived hosts. */
export async function stopHashWorkers(): Promise<void> {
  const members = pool.splice(0, pool.length);
  await Promise.all(members.map((member) => member.thread.terminate()));
}

// ---------------------------------------------------------------------------
// One hashTree call: walk units out to the workers, then hash jobs.

/** A unit of the walk; its files come before all of its children's in path order. */
interface UnitRecord {
  unit: WalkUnit;
  result?: UnitResult;
  paths?: string[];
  children: UnitRecord[];
  /** Trusted cache entry per path, for the files that need no reading. */
  hits?: (StatCacheEntry | undefined)[];
  /** Hashes from jobs by index; "" when the file vanished. */
  late?: Map<number, string>;
}

interface HashJob {
  record: UnitRecord;
  indexes: number[];
  bytes: number;
}

class TreeRun {
  private readonly unitQueue: UnitRecord[] = [];
  private readonly jobQueue: HashJob[] = [];
  private inFlight = 0;
  private failure: unknown;
  private waiter: { resolve: () => void; reject: (error: unknown) => void } | undefined;

  constructor(
    private readonly root: string,
    private readonly workers: PoolWorker[],
    private readonly walkSettings: Omit<WalkRequest, "kind" | "id" | "units">,
  ) {}

  /** Walks the tree under `record` (results land in the records) and runs the jobs it defers. */
  walk(record: UnitRecord): Promise<void> {
    this.unitQueue.push(record);
    return this.whenIdle();
  }

  hash(jobs: HashJob[]): Promise<void> {
    this.jobQueue.push(...jobs);
    return this.whenIdle();
  }

  private whenIdle(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.pump();
    });
  }

  private fail(error: unknown): void {
    if (this.failure !== undefined) return;
    this.failure = error;
    this.unitQueue.length = 0;
    this.jobQueue.length = 0;
    this.waiter?.reject(error);
  }

  private pump(): void {
    if (this.failure !== undefined) {
      this.waiter?.reject(this.failure);
      return;
    }
    for (;;) {
      const member = this.idlestWorker();
      if (member === undefined) break;
      if (this.unitQueue.length > 0) {
        const share = Math.ceil(this.unitQueue.length / (MAX_OUTSTANDING * this.workers.length));
        this.dispatchUnits(member, this.unitQueue.splice(0, Math.min(MAX_UNITS_PER_MESSAGE, share)));
        continue;
      }
      const job = this.takeBiggestJob();
      if (job === undefined) break;
      this.dispatchJob(member, job);
    }
    if (this.inFlight === 0 && this.unitQueue.length === 0 && this.jobQueue.length === 0) this.waiter?.resolve();
  }

  private idlestWorker(): PoolWorker | undefined {
    let best: PoolWorker | undefined;
    for (const member of this.workers) {
      if (member.busyWithJob || member.pending.size >= MAX_OUTSTANDING) continue;
      if (best === undefined || member.pending.size < best.pending.size) best = member;
    }
    // A job goes only to a worker with nothing queued, so it never delays a walk unit.
    if (best !== undefined && this.unitQueue.length === 0 && best.pending.size > 0) return undefined;
    return best;
  }

  private takeBiggestJob(): HashJob | undefined {
    if (this.jobQueue.length === 0) return undefined;
    let biggest = 0;
    for (let index = 1; index < this.jobQueue.length; index++) {
      if (this.jobQueue[index]!.bytes > this.jobQueue[biggest]!.bytes) biggest = index;
    }
    return this.jobQueue.splice(biggest, 1)[0];
  }

  private dispatchUnits(member: PoolWorker, records: UnitRecord[]): void {
    this.inFlight++;
    const request: WalkRequest = { kind: "walk", id: nextRequestId++, units: records.map((record) => record.unit), ...this.walkSettings };
    sendToWorker(member, request).then(
      (result) => {
        this.inFlight--;
        this.acceptUnits(records, result as WalkResult);
        this.pump();
      },
      (error: unknown) => {
        this.inFlight--;
        this.fail(error);
      },
    );
  }

  private dispatchJob(member: PoolWorker, job: HashJob): void {
    this.inFlight++;
    member.busyWithJob = true;
    const result = job.record.result!;
    const request: HashJobRequest = {
      kind: "hash",
      id: nextRequestId++,
      rootPrefix: this.walkSettings.rootPrefix,
      paths: job.indexes.map((index) => job.record.paths![index]!),
      modes: job.indexes.map((index) => result.modes[index]!),
    };
    sendToWorker(member, request).then(
      (outcome) => {
        member.busyWithJob = false;
        this.inFlight--;
        this.acceptJob(job, outcome as HashJobResult);
        this.pump();
      },
      (error: unknown) => {
        member.busyWithJob = false;
        this.inFlight--;
        this.fail(error);
      },
    );
  }

  private acceptUnits(records: UnitRecord[], result: WalkResult): void {
    if (result.error !== undefined) {
      this.fail(workerError(this.root, result.error));
      return;
    }
    records.forEach((record, position) => {
      const unit = result.units[position]!;
      record.result = unit;
      record.paths = unit.status.length === 0 ? [] : unit.paths.split("\0");
      record.children = unit.children.map((child) => ({ unit: child, children: [] }));
      this.unitQueue.push(...record.children);
      let deferred: number[] | undefined;
      for (let index = 0; index < unit.status.length; index++) {
        if (unit.status[index] === STATUS_DEFERRED) (deferred ??= []).push(index);
      }
      if (deferred !== undefined) this.jobQueue.push(...jobsFor(record, deferred));
    });
  }

  private acceptJob(job: HashJob, result: HashJobResult): void {
    if (result.error !== undefined) {
      this.fail(workerError(this.root, result.error));
      return;
    }
    const late = (job.record.late ??= new Map());
    job.indexes.forEach((index, position) => late.set(index, result.hashes[position] ?? ""));
  }
}

/** Big files alone, small ones in groups, so that every job is a few milliseconds or one file. */
function jobsFor(record: UnitRecord, indexes: number[]): HashJob[] {
  const ids = record.result!.ids;
  const jobs: HashJob[] = [];
  let small: HashJob | undefined;
  for (const index of indexes) {
    const bytes = Number(ids[index * 3 + 2]);
    if (bytes > LARGE_FILE_BYTES) {
      jobs.push({ record, indexes: [index], bytes });
      continue;
    }
    if (small === undefined || small.bytes + bytes > UNIT_BYTE_BUDGET || small.indexes.length === JOB_MAX_FILES) {
      small = { record, indexes: [], bytes: 0 };
      jobs.push(small);
    }
    small.indexes.push(index);
    small.bytes += bytes;
  }
  return jobs;
}

function workerError(root: string, error: WorkerFileError): KaosError {
  const where = `"${error.path}" in bundle ${root}`;
  if (error.code === "special") {
    return new KaosError("BUNDLE_INVALID", `Cannot hash ${where}: ${error.message}, which a bundle cannot hold.`, {
      hint: `Remove it from the bundle or exclude it in ${IGNORE_FILE}.`,
    });
  }
  const what = error.directory ? "list directory" : "read";
  if (error.code === "EACCES" || error.code === "EPERM") {
    return new KaosError("IO", `Cannot ${what} ${where}: permission denied.`, {
      hint: `Make it readable (chmod u+r${error.directory ? "x" : ""}) or exclude it in ${IGNORE_FILE}.`,
    });
  }
  return new KaosError("IO", `Cannot ${what} ${where}: ${error.message}.`);
}

// ---------------------------------------------------------------------------
// Cache comparison.

/**
 * Finds each walked path's cache entry and compares stats. Paths are visited
 * in sorted order and a cache saved by hashTree lists them in that order too,
 * so a cursor over the cache's keys usually finds the entry with one string
 * comparison; a Map lookup (hashing a freshly split string, several times
 * slower over 100k paths) is the fallback for new paths and for stores that
 * reorder entries.
 *
 * The cached stats are packed once into 64-bit slots laid out like the
 * worker's, and both are compared as pairs of 32-bit halves: reading a
 * BigInt64Array element allocates a BigInt, and half a million of those per
 * 100k files is most of the garbage a warm run would make.
 */
class CacheCursor {
  private readonly keys: string[];
  private readonly values: StatCacheEntry[];
  /** Per entry: dev, ino, size, mtimeNs, ctimeNs. */
  private readonly packed: Int32Array;
  private position = 0;

  constructor(private readonly cache: Map<string, StatCacheEntry>) {
    this.keys = Array.from(cache.keys());
    this.values = Array.from(cache.values());
    const slots = new BigInt64Array(this.values.length * 5);
    this.values.forEach((entry, index) => {
      // Assignment wraps modulo 2^64, so signed, unsigned and plain-number
      // ids all land on the bit pattern lstat gives.
      slots[index * 5] = BigInt(entry.dev);
      slots[index * 5 + 1] = BigInt(entry.ino);
      slots[index * 5 + 2] = BigInt(entry.size);
      slots[index * 5 + 3] = entry.mtimeNs;
      slots[index * 5 + 4] = entry.ctimeNs;
    });
    this.packed = new Int32Array(slots.buffer);
  }

  /** The entry for `path` if it still describes the file (same stat, outside the racy window). */
  unchanged(path: string, result: UnitResult, halves: StatHalves, index: number, limits: RacyLimits): StatCacheEntry | undefined {
    let slot = -1;
    while (this.position < this.keys.length) {
      const key = this.keys[this.position]!;
      if (key === path) {
        slot = this.position++;
        break;
      }
      if (key > path) break;
      this.position++;
    }
    if (slot < 0) {
      const entry = this.cache.get(path);
      return entry !== undefined && isUnchanged(entry, result, index, limits) ? entry : undefined;
    }
    const entry = this.values[slot]!;
    const cached = this.packed;
    const c = slot * 10;
    const { ids, times } = halves;
    const i = index * 6;
    const t = index * 4;
    if (
      cached[c + 6] !== times[t] || cached[c + 7] !== times[t + 1] ||
      cached[c + 8] !== times[t + 2] || cached[c + 9] !== times[t + 3] ||
      cached[c + 4] !== ids[i + 4] || cached[c + 5] !== ids[i + 5] ||
      cached[c + 2] !== ids[i + 2] || cached[c + 3] !== ids[i + 3] ||
      cached[c] !== ids[i] || cached[c + 1] !== ids[i + 1] ||
      entry.mode !== MODE_NAMES[result.modes[index]!]
    ) {
      return undefined;
    }
    return isOutsideRacyWindow(result, index, limits) ? entry : undefined;
  }
}

/** 32-bit views of a unit's stat arrays (no copy). */
interface StatHalves {
  ids: Int32Array;
  times: Int32Array;
}

function halvesOf(result: UnitResult): StatHalves {
  return {
    ids: new Int32Array(result.ids.buffer, result.ids.byteOffset, result.ids.length * 2),
    times: new Int32Array(result.times.buffer, result.times.byteOffset, result.times.length * 2),
  };
}

function sameId(cached: bigint | number, current: bigint): boolean {
  if (typeof cached === "number") return cached === Number(current);
  return cached === current || (cached < 0n && BigInt.asUintN(64, cached) === current);
}

interface RacyLimits {
  fine: bigint;
  coarse: bigint;
}

/** Whether a cache entry still describes the file: same stat, and not stamped within the racy window. */
function isUnchanged(entry: StatCacheEntry, result: UnitResult, index: number, limits: RacyLimits): boolean {
  return (
    entry.mtimeNs === result.times[index * 2] &&
    entry.ctimeNs === result.times[index * 2 + 1] &&
    entry.size === Number(result.ids[index * 3 + 2]) &&
    entry.mode === MODE_NAMES[result.modes[index]!] &&
    sameId(entry.ino, result.ids[index * 3 + 1]!) &&
    sameId(entry.dev, result.ids[index * 3]!) &&
    isOutsideRacyWindow(result, index, limits)
  );
}

/**
 * Racy rule: a file stamped too close to the moment its content was last read
 * may have been written again within the same timestamp tick, leaving the same
 * stat behind; it is read again until it has aged past the window.
 */
function isOutsideRacyWindow(result: UnitResult, index: number, limits: RacyLimits): boolean {
  const mtime = result.times[index * 2]!;
  const ctime = result.times[index * 2 + 1]!;
  const newest = mtime > ctime ? mtime : ctime;
  if (newest < limits.coarse) return true;
  return ctime % NS_PER_SECOND !== 0n && newest < limits.fine;
}

// ---------------------------------------------------------------------------
// hashTree.

function checkRoot(root: string): void {
  let isDirectory: boolean;
  try {
    isDirectory = statSync(root).isDirectory();
  } catch (error) {
    const code = errnoCode(error);
    if (code === "ENOENT" || code === "ENOTDIR") {
      throw new KaosError("BUNDLE_INVALID", `Bundle directory ${root} does not exist.`, {
        hint: "Check the bundle path in kaos.config.ts (paths are relative to the config file).",
      });
    }
    throw new KaosError("IO", `Cannot read bundle directory ${root}: ${describeError(error)}.`);
  }
  if (!isDirectory) {
    throw new KaosError("BUNDLE_INVALID", `Bundle ${root} is not a directory.`, {
      hint: "A bundle is a directory; point the config at the directory that holds the files.",
    });
  }
}

function ignoreRules(root: string, extra: string[] | undefined): string[] | null {
  const rules: string[] = [];
  try {
    // One pattern per element: `ignore` splits a string into lines, not array elements.
    rules.push(...readFileSync(join(root, IGNORE_FILE), "utf8").split(/\r?\n/));
  } catch (error) {
    if (errnoCode(error) !== "ENOENT") {
      throw new KaosError("IO", `Cannot read ${join(root, IGNORE_FILE)}: ${describeError(error)}.`, {
        hint: `Make ${IGNORE_FILE} a readable file of gitignore patterns.`,
      });
    }
  }
  if (extra !== undefined) rules.push(...extra);
  return rules.length === 0 ? null : rules;
}

/** Walk records in path order: a record's own files, then each child's subtree. */
function inPathOrder(root: UnitRecord): UnitRecord[] {
  const ordered: UnitRecord[] = [];
  const stack = [root];
  while (stack.length > 0) {
    const record = stack.pop()!;
    ordered.push(record);
    for (let index = record.children.length - 1; index >= 0; index--) stack.push(record.children[index]!);
  }
  return ordered;
}

export async function hashTree(root: string, options: HashTreeOptions = {}): Promise<TreeHash> {
  const absoluteRoot = resolvePath(root);
  // Taken before anything is read, so that every file read in this call was
  // read after this moment (what the racy rule needs from it).
  const cacheTimeNs = BigInt(Date.now()) * 1_000_000n;
  checkRoot(absoluteRoot);
  const rules = ignoreRules(absoluteRoot, options.ignore);
  const workers = workersFor(options.workers);
  const store = options.statCache;
  const cache = store === undefined ? undefined : await store.load(absoluteRoot);
  const savedAt = store?.savedAt?.(absoluteRoot);
  const limits = savedAt === undefined ? undefined : { fine: savedAt - RACY_WINDOW_FINE_NS, coarse: savedAt - RACY_WINDOW_COARSE_NS };
  const cursor = cache === undefined || cache.size === 0 || limits === undefined ? undefined : new CacheCursor(cache);

  const run = new TreeRun(absoluteRoot, workers, {
    rootPrefix: absoluteRoot.endsWith("/") ? absoluteRoot : `${absoluteRoot}/`,
    ignoreRules: rules,
    // Without entries to trust every file is read anyway: read it while walking.
    hashInline: cursor === undefined,
    entryBudget: UNIT_ENTRY_BUDGET,
    largeFileBytes: LARGE_FILE_BYTES,
    byteBudget: UNIT_BYTE_BUDGET,
  });
  const top: UnitRecord = { unit: { prefix: "", names: null }, children: [] };
  await run.walk(top);
  const records = inPathOrder(top);

  let cacheHits = 0;
  let misses = 0;
  if (cursor !== undefined && limits !== undefined) {
    const jobs: HashJob[] = [];
    for (const record of records) {
      const result = record.result!;
      const paths = record.paths!;
      const hits: (StatCacheEntry | undefined)[] = (record.hits = new Array<StatCacheEntry | undefined>(paths.length));
      const halves = halvesOf(result);
      let unread: number[] | undefined;
      for (let index = 0; index < paths.length; index++) {
        if (result.status[index] !== STATUS_STATTED) continue;
        const entry = cursor.unchanged(paths[index]!, result, halves, index, limits);
        if (entry !== undefined) {
          hits[index] = entry;
          cacheHits++;
        } else {
          (unread ??= []).push(index);
          misses++;
        }
      }
      if (unread !== undefined) jobs.push(...jobsFor(record, unread));
    }
    if (jobs.length > 0) await run.hash(jobs);
  }
  // Skip the save when every cached entry was hit and nothing else was read.
  const unchanged = cursor !== undefined && misses === 0 && cacheHits === cache?.size;
  return assemble(absoluteRoot, records, store !== undefined && !unchanged, cacheHits, async (entries) => {
    await store?.save(absoluteRoot, entries, cacheTimeNs);
  });
}

/**
 * Feeds the "kaos-tree-v1" lines to SHA-256 through one reused buffer rather
 * than a string per file.
 */
class TreeDigest {
  private readonly digest = createHash("sha256");
  private readonly buffer = Buffer.allocUnsafe(1 << 16);
  private used = 0;

  constructor() {
    this.used = this.buffer.write(TREE_HASH_HEADER, 0, "latin1");
  }

  add(file: TreeFile): void {
    // Worst case: mode, two NULs, 3 bytes per UTF-16 unit of the path, hash, newline.
    const needed = 7 + 2 + file.path.length * 3 + 64 + 1;
    if (this.used + needed > this.buffer.length) {
      this.flush();
      if (needed > this.buffer.length) {
        this.digest.update(`${file.mode}\0${file.path}\0${file.hash}\n`, "utf8");
        return;
      }
    }
    const buffer = this.buffer;
    let at = this.used;
    at += buffer.write(file.mode, at, "latin1");
    buffer[at++] = 0;
    at += buffer.write(file.path, at, "utf8");
    buffer[at++] = 0;
    at += buffer.write(file.hash, at, "latin1");
    buffer[at++] = 10;
    this.used = at;
  }

  private flush(): void {
    this.digest.update(this.buffer.subarray(0, this.used));
    this.used = 0;
  }

  finish(): string {
    this.flush();
    return this.digest.digest("hex");
  }
}

async function assemble(
  root: string,
  records: UnitRecord[],
  saveNeeded: boolean,
  cacheHits: number,
  save: (entries: StatCacheEntry[]) => Promise<void>,
): Promise<TreeHash> {
  const files: TreeFile[] = [];
  const entries: StatCacheEntry[] = [];
  const digest = new TreeDigest();
  let bytes = 0;
  let hashedFiles = 0;
  let hashedBytes = 0;
  for (const record of records) {
    const result = record.result!;
    const paths = record.paths!;
    let nextInlineHash = 0;
    for (let index = 0; index < paths.length; index++) {
      const status = result.status[index];
      if (status === STATUS_VANISHED) continue;
      const path = paths[index]!;
      const hit = record.hits?.[index];
      let file: TreeFile;
      if (hit !== undefined) {
        file = { path, mode: hit.mode, size: hit.size, hash: hit.hash };
        if (saveNeeded) entries.push(hit);
      } else {
        let hash: string;
        if (status === STATUS_HASHED) {
          hash = result.hashes.slice(nextInlineHash * 64, nextInlineHash * 64 + 64);
          nextInlineHash++;
        } else {
          hash = record.late?.get(index) ?? "";
          if (hash === "") continue;
        }
        const mode = MODE_NAMES[result.modes[index]!]!;
        const size = Number(result.ids[index * 3 + 2]);
        file = { path, mode, size, hash };
        if (saveNeeded) {
          entries.push({
            path,
            dev: result.ids[index * 3]!,
            ino: result.ids[index * 3 + 1]!,
            size,
            mtimeNs: result.times[index * 2]!,
            ctimeNs: result.times[index * 2 + 1]!,
            mode,
            hash,
          });
        }
        hashedFiles++;
        hashedBytes += size;
      }
      files.push(file);
      bytes += file.size;
      digest.add(file);
    }
  }
  if (saveNeeded) await save(entries);
  return {
    root,
    hash: digest.finish(),
    files,
    stats: { files: files.length, bytes, hashedFiles, hashedBytes, cacheHits },
  };
}

// ---------------------------------------------------------------------------
// Single files, strings, diffs.

export async function hashFile(path: string): Promise<string> {
  const absolute = resolvePath(path);
  let handle: FileHandle;
  try {
    // O_NONBLOCK so that a FIFO is refused below instead of hanging open().
    handle = await open(absolute, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  } catch (error) {
    const code = errnoCode(error);
    const reason = code === "ENOENT" ? "it does not exist" : code === "EACCES" ? "permission denied" : describeError(error);
    throw new KaosError("IO", `Cannot hash file ${absolute}: ${reason}.`);
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) throw new KaosError("IO", `Cannot hash ${absolute}: it is not a regular file.`);
    const digest = createHash("sha256");
    const buffer = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      digest.update(buffer.subarray(0, bytesRead));
    }
    return digest.digest("hex");
  } catch (error) {
    if (error instanceof KaosError) throw error;
    throw new KaosError("IO", `Cannot read file ${absolute}: ${describeError(error)}.`);
  } finally {
    await handle.close();
  }
}

/**
 * SHA-256 over the parts, each written as its UTF-8 byte length in decimal, a
 * colon and the bytes ("5:hello"), so ("ab", "c") and ("a", "bc") differ.
 */
export function hashString(...parts: string[]): string {
  const digest = createHash("sha256");
  for (const part of parts) {
    digest.update(`${Buffer.byteLength(part, "utf8")}:`);
    digest.update(part, "utf8");
  }
  return digest.digest("hex");
}

/**
 * What changed between two listings. `changed`: the content differs (the mode
 * may too); `modeChanged`: same content, different mode. Lists hold the `after`
 * file, except `removed` (the `before` one), in path order.
 */
export function diffTrees(
  before: TreeFile[] | undefined,
  after: TreeFile[],
): { added: TreeFile[]; changed: TreeFile[]; removed: TreeFile[]; modeChanged: TreeFile[] } {
  const previous = new Map((before ?? []).map((file) => [file.path, file]));
  const added: TreeFile[] = [];
  const changed: TreeFile[] = [];
  const modeChanged: TreeFile[] = [];
  for (const file of after) {
    const old = previous.get(file.path);
    if (old === undefined) added.push(file);
    else if (old.hash !== file.hash) changed.push(file);
    else if (old.mode !== file.mode) modeChanged.push(file);
    previous.delete(file.path);
  }
  const removed = [...previous.values()];
  return { added, changed, removed, modeChanged };
}

// ---------------------------------------------------------------------------
// In-memory stat cache, for tests and benchmarks.

export interface MemoryStatCache extends StatCacheStore {
  /** How many times save() ran (a no-op hash must not save). */
  readonly saveCount: number;
  savedAt(root: string): bigint | undefined;
}

export function memoryStatCache(): MemoryStatCache {
  const roots = new Map<string, { entries: Map<string, StatCacheEntry>; savedAt: bigint }>();
  let saveCount = 0;
  return {
    get saveCount() {
      return saveCount;
    },
    load(root) {
      return roots.get(root)?.entries ?? new Map();
    },
    save(root, entries, cacheTimeNs) {
      saveCount++;
      roots.set(root, { entries: new Map(entries.map((entry) => [entry.path, entry])), savedAt: cacheTimeNs });
    },
    savedAt(root) {
      return roots.get(root)?.savedAt;
    },
  };
}
