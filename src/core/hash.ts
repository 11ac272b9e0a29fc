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
 * `everyFile` turns all of this off, for trees that are results rather than
 * bundles (a job's outputs): every file and symlink counts, and sockets,
 * FIFOs and devices, which have no content to hash, are left out.
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
 * File system monitor. With `monitor` and a store that keeps its token, the
 * monitor is asked, before anything is walked, what changed since the token
 * saved with the cache. When it names the paths exactly, only those are
 * lstat'ed (and read when their stat differs or is racy) and every other
 * file is taken from the cache as it is: no event since the token means no
 * change since the walk that read it began. The cache then keeps its old
 * `savedAt`, the earliest moment any of its entries was read. When the
 * monitor cannot tell, or the changes are more than paths to look at one by
 * one, the tree is walked, and the token asked for before the walk is saved
 * with what it found. A store that keeps the tree beside its rows
 * (`keptTree`: the token, tree hash, size, link count and first files) is
 * asked first: when the monitor names no change, the rows are not loaded at
 * all, so a no-op plan of a million files costs what one of a thousand does.
 * A monitor still setting up its watches of the root cannot vouch for any
 * walk begun before it is done: the tree is walked at once, alongside the
 * set-up, and saved without a token; then, once the monitor says every
 * directory is watched (it reports progress meanwhile: the wait lasts as long
 * as the set-up advances), the token it gives is asked for and the tree
 * walked again from the stat cache just written, reading only what changed
 * since. That cache is kept with the token, so the next plan walks nothing.
 *
 * Speed. A small pool of worker threads (hash-worker.ts) lists directories,
 * lstats and reads files with synchronous fs calls and one reused buffer
 * each. The walk is split into units of a couple of thousand entries that any
 * worker takes, so one deep subtree or one huge directory still spreads over
 * every worker; results come back as typed arrays, a few hundred messages for
 * 100k files. Without a trusted stat cache files are hashed during the walk.
 * With one that the store can pack (`loadPacked`: columns in a
 * SharedArrayBuffer, in walk order), the workers compare each file's stat
 * with its row themselves and send back only the rows of the hits; a tree
 * found exactly as cached takes its hash from the cache and builds its
 * `files` only when asked. With any other store the main thread takes the
 * results in path order while the workers go on walking, compares each file's
 * stat with its entry (one string comparison to find it when the cache kept
 * that order, no allocation to compare). Either way the main thread hands out
 * what must be read as hash jobs. Files above
 * LARGE_FILE_BYTES are jobs of their own, biggest first, so big files spread
 * over every worker too. `startHashWorkers()` and `startHashWorkersFor()` let
 * a caller start threads early, overlapping their start-up with its own. A
 * tree the stat cache lists at most SMALL_TREE_FILES files of is walked by
 * one thread already running, or by the calling thread with the same code,
 * starting none. A bigger one is walked by the calling thread too until a
 * thread has started (it would only wait for them otherwise).
 */
import { createHash } from "node:crypto";
import { type BigIntStats, constants as fsConstants, existsSync, lstatSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { join, resolve as resolvePath } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { Worker } from "node:worker_threads";
import { KaosError, describeError, errnoCode } from "./errors.js";
import { keepYoungGenerationsSmall } from "./heap.js";
import type { MonitorAnswer, TreeMonitor } from "./monitor.js";
import {
  ALWAYS_IGNORED,
  HASH_WORKER_MARK,
  MODE_NAMES,
  RACY_WINDOW_COARSE_NS,
  RACY_WINDOW_FINE_NS,
  STATUS_HASHED,
  STATUS_HIT,
  STATUS_STATTED,
  STATUS_VANISHED,
  WORKER_READY,
  comparePaths,
  isOutsideRacyWindow,
  type HashJobRequest,
  type PackedColumns,
  type HashJobResult,
  type UnitResult,
  type WalkRequest,
  type WalkResult,
  type WalkUnit,
  type WorkerFileError,
  type WorkerRequest,
  type WorkerResult,
  hashRegularFile,
  isEditorFile,
  rulesFor,
  runRequest,
  searchSortedRows,
} from "./tree-walk.js";
import { differingRows, type SealRows } from "./seal-stats.js";

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
  stats: {
    files: number;
    bytes: number;
    hashedFiles: number;
    hashedBytes: number;
    cacheHits: number;
    /** The file system monitor named what changed: only that was looked at. */
    monitored?: boolean;
    /** The file system monitor was still setting up its watches of the tree when asked: it was walked. */
    monitorSettingUp?: boolean;
  };
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

/**
 * A stat cache the hashing threads compare against in place (see
 * PackedColumns), with the tree hash of its entries when known and the
 * entries themselves on demand.
 */
export interface PackedStatCache extends PackedColumns {
  treeHash: string | undefined;
  /** Where the raw 32-byte hashes start in `bytes`; undefined when the blob keeps them as text. */
  rawHashes: number | undefined;
  /** Every path is ASCII. */
  asciiPaths: boolean;
  entryAt(row: number): StatCacheEntry;
  /** The file at `row`, made afresh (entryAt keeps what it makes). */
  fileAt(row: number): TreeFile;
  pathAt(row: number): string;
  modeAt(row: number): TreeFile["mode"];
}

/** Implemented by the SQLite state store; `memoryStatCache()` is an in-memory one. */
export interface StatCacheStore {
  /** All cached entries of one tree root, loaded in one go (the warm path must not do per-file queries). */
  load(root: string): Map<string, StatCacheEntry> | Promise<Map<string, StatCacheEntry>>;
  /**
   * The cache of one root packed for the hashing threads, with the time it was
   * saved at; undefined when there is none or it cannot be packed (`load` then
   * serves it).
   */
  loadPacked?(root: string): PackedStatCache | undefined;
  /**
   * Replace the cached entries of one root after a hash (one transaction). `cacheTimeNs` is when the walk started, for the racy rule;
   * `treeHash` is the tree hash of exactly these entries.
   */
  save(root: string, entries: StatCacheEntry[], cacheTimeNs: bigint, treeHash?: string, monitorToken?: string): void | Promise<void>;
  /** `save` for the rows a walk leaves (cached rows kept by position), so that no object is made per file. */
  saveRows?(root: string, rows: StatCacheRows, cacheTimeNs: bigint, treeHash?: string, monitorToken?: string): void | Promise<void>;
  /** When the cache for root was last saved (the walk start time), or undefined. */
  savedAt?(root: string): bigint | undefined;
  /** How many files the cache of root lists, when it knows without loading them (a store without `loadPacked`). */
  cachedFiles?(root: string): number | undefined;
  /**
   * The file system monitor's token saved together with the entries last
   * loaded: every change since it is one the monitor can name. Undefined
   * when the walk that saved them did not ask the monitor first.
   */
  monitorToken?(root: string): string | undefined;
  /** Pairs a newer token with the entries last loaded or saved, found still true. */
  recordMonitorToken?(root: string, token: string): void;
  /**
   * What the cache of root keeps beside its rows for the monitor, read
   * without loading them: a tree the monitor finds unchanged is described
   * from it alone. Undefined when no token or tree hash is kept with them.
   */
  keptTree?(root: string): KeptTree | undefined;
}

/** A stat cache's tree described without its rows (see `StatCacheStore.keptTree`). */
export interface KeptTree {
  /** The monitor's token paired with the rows. */
  monitorToken: string;
  /** The tree hash of the rows. */
  hash: string;
  files: number;
  bytes: number;
  /** How many of the files are symlinks. */
  links: number;
  /** The first few files, in path order. */
  head: TreeFile[];
}

export interface HashTreeOptions {
  statCache?: StatCacheStore;
  /** Extra ignore patterns (gitignore syntax) on top of the defaults and `.kaosignore`. */
  ignore?: string[];
  /** Worker threads; default min(2, os.availableParallelism()). */
  workers?: number;
  /**
   * Hash every file and symlink under the root, as a job's outputs are: no
   * default ignores, no `.kaosignore`, no editor files left out. Sockets,
   * FIFOs and devices, which hold no content, are left out instead of refused.
   */
  everyFile?: boolean;
  /**
   * A file system monitor to ask what changed since the stat cache was saved
   * (core/monitor.ts); when it can say exactly, only those paths are looked
   * at. Only with a `statCache` that keeps its token.
   */
  monitor?: TreeMonitor;
}

const TREE_HASH_HEADER = "kaos-tree-v1\n";
const IGNORE_FILE = ".kaosignore";

/** Racy windows: 1 s when the filesystem stamps sub-second times, 3 s for whole seconds, or two (FAT); see the top of this file. */
export { RACY_WINDOW_COARSE_NS, RACY_WINDOW_FINE_NS };

/** Entries a walk unit handles before handing the rest back: a few milliseconds of work. */
const UNIT_ENTRY_BUDGET = 2048;
/** The first unit hands work back sooner, so that the other workers start early. */
const FIRST_UNIT_ENTRY_BUDGET = 256;
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
  /** Undefined for the calling thread itself (see `CALLING_THREAD`). */
  thread: Worker | undefined;
  pending: Map<number, PendingRequest>;
  /** A hash job is running there: nothing else is queued behind it. */
  busyWithJob: boolean;
  /** Its start-up is over: what is sent to it now is taken at once. */
  ready: boolean;
}

const pool: PoolWorker[] = [];
let nextRequestId = 1;

function startWorker(): PoolWorker {
  const thread = spawnWorkerThread();
  const member: PoolWorker = { thread, pending: new Map(), busyWithJob: false, ready: false };
  const fail = (error: unknown): void => {
    const index = pool.indexOf(member);
    if (index >= 0) pool.splice(index, 1);
    for (const request of member.pending.values()) request.reject(error);
    member.pending.clear();
  };
  thread.on("message", (result: WorkerResult | typeof WORKER_READY) => {
    if (result === WORKER_READY) {
      member.ready = true;
      return;
    }
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
 * A hashing thread's short-lived objects (walk results, paths) die young; left
 * to grow, each thread's young generation reached tens of megabytes over a
 * million-file walk without saving any time.
 */
const WORKER_YOUNG_GENERATION_MB = 12;

/**
 * The compiled worker sits beside this file in dist/. When the sources run
 * directly (tests run src/*.ts), the worker's TypeScript goes through jiti.
 */
function spawnWorkerThread(): Worker {
  // Loaded here, not imported: a small tree is hashed in the calling thread, and
  // worker_threads costs every command that never starts a thread.
  const { Worker } = process.getBuiltinModule("node:worker_threads");
  const compiled = new URL("./hash-worker.js", import.meta.url);
  const options = { workerData: HASH_WORKER_MARK, resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB } };
  if (existsSync(fileURLToPath(compiled))) return new Worker(compiled, options);
  const source = fileURLToPath(new URL("./hash-worker.ts", import.meta.url));
  const jiti = pathToFileURL(createRequire(import.meta.url).resolve("jiti")).href;
  // A dynamic import runs whether the eval'd code is taken as CommonJS or, with
  // an inherited --input-type=module, as an ES module.
  const bootstrap = `import(${JSON.stringify(jiti)}).then((jiti) => jiti.createJiti(${JSON.stringify(source)}).import(${JSON.stringify(source)}));`;
  return new Worker(bootstrap, { eval: true, ...options });
}

/**
 * Starts worker threads ahead of the first hashTree call, so that their
 * start-up (tens of milliseconds) overlaps whatever the caller does meanwhile,
 * such as loading the config and opening the state store. By default one:
 * a tree the stat cache knows to be small needs no more (see `walkersFor`),
 * and a big one starts the rest when its walk starts, the first thread
 * already walking.
 */
export function startHashWorkers(workers = 1): void {
  workersFor(workers);
}

/**
 * Starts, ahead of the first hashTree call, the threads that a walk of a tree
 * the stat cache lists `cachedFiles` files of will use: none for a small
 * one, which needs none (see `walkersFor`), all of them for a big one, whose
 * walk then finds them ready instead of waiting for their start-up.
 */
export function startHashWorkersFor(cachedFiles: number | undefined): void {
  if (cachedFiles !== undefined && cachedFiles > SMALL_TREE_FILES) workersFor(undefined);
}

function workersFor(requested: number | undefined): PoolWorker[] {
  const wanted = Math.max(1, Math.floor(requested ?? Math.min(2, availableParallelism())));
  // Threads walk trees too big, or not yet known, to be small.
  if (pool.length < wanted) keepYoungGenerationsSmall();
  while (pool.length < wanted) pool.push(startWorker());
  return pool.slice(0, wanted);
}

/** Trees the stat cache lists at most this many files of are walked without starting threads. */
const SMALL_TREE_FILES = 2000;

/**
 * The calling thread as a pool member, for small trees: the same walk code
 * runs here, a request at a time on later turns of the event loop, and no
 * thread pays its start-up (tens of milliseconds of CPU each) for a walk of
 * a few milliseconds.
 */
const CALLING_THREAD: PoolWorker = { thread: undefined, pending: new Map(), busyWithJob: false, ready: true };

/**
 * Who walks a tree that the stat cache lists `cachedFiles` files of: a small
 * one goes to one thread already running, or to the calling thread.
 */
function walkersFor(requested: number | undefined, cachedFiles: number | undefined): PoolWorker[] {
  if (requested !== undefined) return workersFor(requested);
  if (cachedFiles !== undefined && cachedFiles <= SMALL_TREE_FILES) return pool[0]?.ready === true ? pool.slice(0, 1) : [CALLING_THREAD];
  // The calling thread, idle while the threads walk, walks too until one of them is ready.
  return [CALLING_THREAD, ...workersFor(undefined)];
}

function sendToWorker(member: PoolWorker, request: WorkerRequest): Promise<WorkerResult> {
  return new Promise((resolve, reject) => {
    member.pending.set(request.id, { resolve, reject });
    const thread = member.thread;
    if (thread === undefined) {
      setImmediate(() => {
        member.pending.delete(request.id);
        try {
          resolve(runRequest(request));
        } catch (error) {
          reject(error);
        }
      });
      return;
    }
    thread.ref();
    thread.postMessage(request);
  });
}

/**
 * Seals of fewer rows are checked by the calling thread alone: a thread's
 * share would cost more to send than to stat. Nor are seals of more than
 * `THREADED_CHECK_MAX_ROWS`: the copy of the share and the threads' heaps,
 * kept past the plan for it, would cost a million-file run more memory than it
 * has to spare.
 */
export const THREADED_CHECK_ROWS = 4096;
export const THREADED_CHECK_MAX_ROWS = 250_000;

/**
 * The rows of a seal (`rows` of the tree at `root`) whose entry is not now as
 * sealed, found by the calling thread and a hashing thread with nothing to do,
 * each stat'ing half: checking every stat of a big data view is one lstat per
 * file. `inBackground`: the idle threads share every row, and the calling
 * thread goes on at once. Undefined when the seal is too small or too big, or
 * no thread is idle.
 */
export async function differingRowsInThreads(
  root: string,
  size: number,
  rows: (from: number, to: number) => SealRows,
  options: { inBackground?: boolean } = {},
): Promise<number[] | undefined> {
  if (size < THREADED_CHECK_ROWS || size > THREADED_CHECK_MAX_ROWS) return undefined;
  const idle = pool.filter((member) => member.ready && member.thread !== undefined && member.pending.size === 0);
  if (idle.length === 0) return undefined;
  // In the background the calling thread goes on at once, and the idle threads share every row.
  const shares = options.inBackground === true ? idle.length : 2;
  const ends = Array.from({ length: shares + 1 }, (_, share) => Math.floor((size * share) / shares));
  const asked = ends.slice(0, -1).map((from, share) => ({ from, to: ends[share + 1]! }));
  const threads = options.inBackground === true ? asked : asked.slice(1);
  const theirs = threads.map(({ from, to }, share) =>
    sendToWorker(idle[share]!, { kind: "stat", id: nextRequestId++, root, ...rows(from, to) }).then((result) => {
      if (result.kind !== "stat") throw new Error(`a hashing thread answered a seal check with a ${result.kind} result`);
      return result.differing.map((row) => row + from);
    }),
  );
  const ours = options.inBackground === true ? [] : differingRows(root, rows(0, ends[1]!));
  return [...ours, ...(await Promise.all(theirs)).flat()];
}

/** Stops the worker threads (they are restarted on demand); for tests and long-lived hosts. */
export async function stopHashWorkers(): Promise<void> {
  const members = pool.splice(0, pool.length);
  await Promise.all(members.map((member) => member.thread?.terminate()));
}

// ---------------------------------------------------------------------------
// One hashTree call. Walk units go out to the workers (children of a unit go
// to the front of the queue, so results come back roughly in path order);
// the main thread consumes results in path order as soon as they are there,
// comparing with the stat cache and building the listing while the workers
// are still walking. Files that need reading become hash jobs.

/** A unit of the walk; its files come before all of its children's in path order. */
interface UnitRecord {
  unit: WalkUnit;
  result?: UnitResult;
  children: UnitRecord[];
}

/** A file of the listing whose content must be read: its fresh row, path and size. */
interface PendingFile {
  row: number;
  path: string;
  size: number;
}

interface HashJob {
  files: PendingFile[];
  modes: number[];
  bytes: number;
}

class TreeRun {
  private readonly unitQueue: UnitRecord[] = [];
  private readonly jobQueue: HashJob[] = [];
  private inFlight = 0;
  private failure: unknown;
  private waiter: { resolve: () => void; reject: (error: unknown) => void } | undefined;
  private started = false;
  /** Records not yet consumed, next in path order on top. */
  private readonly order: UnitRecord[];
  private consumer: ((record: UnitRecord) => void) | undefined;

  constructor(
    private readonly root: string,
    private readonly workers: PoolWorker[],
    private readonly walkSettings: Omit<WalkRequest, "kind" | "id" | "units">,
    top: UnitRecord,
    /** Where a job's digests go, by fresh row ("" for a file gone meanwhile). */
    private readonly hashed: (row: number, hash: string) => void,
  ) {
    this.order = [top];
    this.unitQueue.push(top);
    this.pump();
  }

  /** Starts consuming results in path order (those already back, then the rest as they come). */
  consume(consumer: (record: UnitRecord) => void): void {
    this.consumer = consumer;
    this.drainInOrder();
  }

  addJobs(jobs: HashJob[]): void {
    this.jobQueue.push(...jobs);
    this.pump();
  }

  /** Resolves once every unit is walked and consumed and every job is done. */
  finished(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.pump();
    });
  }

  /** Gives up (the caller failed): results still on their way are dropped. */
  abandon(error: unknown): void {
    this.fail(error);
  }

  private fail(error: unknown): void {
    if (this.failure !== undefined) return;
    this.failure = error;
    this.unitQueue.length = 0;
    this.jobQueue.length = 0;
    this.waiter?.reject(error);
  }

  private drainInOrder(): void {
    if (this.consumer === undefined || this.failure !== undefined) return;
    try {
      while (this.order.length > 0 && this.order[this.order.length - 1]!.result !== undefined) {
        const record = this.order.pop()!;
        for (let index = record.children.length - 1; index >= 0; index--) this.order.push(record.children[index]!);
        this.consumer(record);
      }
    } catch (error) {
      this.fail(error);
    }
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
    const idle = this.inFlight === 0 && this.unitQueue.length === 0 && this.jobQueue.length === 0;
    if (idle && this.order.length === 0) this.waiter?.resolve();
  }

  private idlestWorker(): PoolWorker | undefined {
    let best: PoolWorker | undefined;
    const threadReady = this.workers.some((member) => member.thread !== undefined && member.ready);
    for (const member of this.workers) {
      if (member.busyWithJob || member.pending.size >= MAX_OUTSTANDING) continue;
      if (member === CALLING_THREAD && threadReady && this.workers.length > 1) continue;
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
    if (!this.started) {
      this.started = true;
      request.entryBudget = FIRST_UNIT_ENTRY_BUDGET;
    }
    sendToWorker(member, request).then(
      (result) => {
        this.inFlight--;
        this.acceptUnits(records, result as WalkResult);
        this.pump();
        this.drainInOrder();
        this.pump();
      },
      (error: unknown) => {
        this.inFlight--;
        this.fail(error);
      },
    );
  }

  private dispatchJob(assigned: PoolWorker, job: HashJob): void {
    // A big file is never read on the calling thread, whose event loop it would
    // hold for as long (a cache that called the tree small may be out of date).
    const member = assigned.thread === undefined && job.bytes > LARGE_FILE_BYTES ? workersFor(1)[0]! : assigned;
    this.inFlight++;
    member.busyWithJob = true;
    const request: HashJobRequest = {
      kind: "hash",
      id: nextRequestId++,
      rootPrefix: this.walkSettings.rootPrefix,
      paths: job.files.map((pending) => pending.path),
      modes: job.modes,
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
    const children: UnitRecord[] = [];
    records.forEach((record, position) => {
      const unit = result.units[position]!;
      record.result = unit;
      record.children = unit.children.map((child) => ({ unit: child, children: [] }));
      children.push(...record.children);
    });
    // Depth first: what lies next in path order goes out next.
    this.unitQueue.unshift(...children);
  }

  private acceptJob(job: HashJob, result: HashJobResult): void {
    if (result.error !== undefined) {
      this.fail(workerError(this.root, result.error));
      return;
    }
    job.files.forEach((pending, position) => {
      this.hashed(pending.row, result.hashes[position] ?? "");
    });
  }
}

/** Big files alone, small ones in groups, so that every job is a few milliseconds or one file. */
class JobBuilder {
  readonly jobs: HashJob[] = [];
  private small: HashJob | undefined;

  add(pending: PendingFile, mode: number): void {
    const bytes = pending.size;
    if (bytes > LARGE_FILE_BYTES) {
      this.jobs.push({ files: [pending], modes: [mode], bytes });
      return;
    }
    if (this.small === undefined || this.small.bytes + bytes > UNIT_BYTE_BUDGET || this.small.files.length === JOB_MAX_FILES) {
      this.small = { files: [], modes: [], bytes: 0 };
      this.jobs.push(this.small);
    }
    this.small.files.push(pending);
    this.small.modes.push(mode);
    this.small.bytes += bytes;
  }

  take(): HashJob[] {
    const jobs = this.jobs.splice(0, this.jobs.length);
    this.small = undefined;
    return jobs;
  }
}

function workerError(root: string, error: WorkerFileError): KaosError {
  const where = `"${error.path}" in bundle ${root}`;
  if (error.code === "special") {
    return new KaosError("BUNDLE_INVALID", `Cannot hash ${where}: ${error.message}, which a bundle cannot hold.`, {
      hint: `Remove it from the bundle or exclude it in ${IGNORE_FILE}.`,
    });
  }
  if (error.code === "badname") {
    return new KaosError("BUNDLE_INVALID", `Cannot hash ${where}: ${error.message}.`, {
      hint: `Rename it (bundle paths must be UTF-8) or exclude it in ${IGNORE_FILE}.`,
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
 * Finds each walked path's cache entry and compares stats, without allocating.
 *
 * Paths are visited in sorted order, and a cache saved by hashTree lists them
 * in that order too. From a plain Map, a cursor over its keys finds each
 * entry with one string comparison (a Map lookup hashes a freshly split
 * string, several times slower over 100k paths) and falls back to get() for
 * new paths and reordered stores. A Map subclass is only asked get(), in path
 * order: a store may keep its entries lazily and make in-order lookups cheap,
 * and iterating would undo that.
 *
 * Stats are compared as 32-bit halves: reading a BigInt64Array element makes
 * a BigInt, and half a million of those per 100k files would be most of the
 * garbage a warm run makes.
 */
class CacheLookup {
  private readonly keys: string[] | undefined;
  private readonly values: StatCacheEntry[] | undefined;
  private position = 0;

  constructor(
    private readonly cache: Map<string, StatCacheEntry>,
    private readonly limits: RacyLimits,
  ) {
    if (Object.getPrototypeOf(cache) === Map.prototype) {
      this.keys = Array.from(cache.keys());
      this.values = Array.from(cache.values());
    }
  }

  private find(path: string): StatCacheEntry | undefined {
    const keys = this.keys;
    if (keys === undefined) return this.cache.get(path);
    while (this.position < keys.length) {
      const key = keys[this.position]!;
      if (key === path) return this.values![this.position++];
      if (key > path) break;
      this.position++;
    }
    return this.cache.get(path);
  }

  /** The entry for `path` if it still describes the file (same stat, outside the racy window). */
  unchanged(path: string, result: UnitResult, halves: StatHalves, index: number): StatCacheEntry | undefined {
    const entry = this.find(path);
    if (entry === undefined) return undefined;
    const { ids, times } = halves;
    const i = index * 6;
    const t = index * 4;
    if (
      !sameBits(entry.mtimeNs, times, t) ||
      !sameBits(entry.ctimeNs, times, t + 2) ||
      entry.size !== numberAt(ids, i + 4) ||
      entry.mode !== MODE_NAMES[result.modes[index]!] ||
      !sameId(entry.ino, ids, i + 2) ||
      !sameId(entry.dev, ids, i)
    ) {
      return undefined;
    }
    const outside = isOutsideRacyWindow(result.times[index * 2]!, result.times[index * 2 + 1]!, this.limits.fine, this.limits.coarse);
    return outside ? entry : undefined;
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

const scratch = new BigInt64Array(1);
const scratchWords = new Int32Array(scratch.buffer);

/** Whether `value` has the 64 bits at `words[at]`, `words[at + 1]` (writing a BigInt64Array wraps modulo 2^64). */
function sameBits(value: bigint, words: Int32Array, at: number): boolean {
  scratch[0] = value;
  return scratchWords[0] === words[at] && scratchWords[1] === words[at + 1];
}

/** The unsigned 64-bit value at `words[at]` as a number (exact below 2^53). */
function numberAt(words: Int32Array, at: number): number {
  return (words[at + 1]! >>> 0) * 0x1_0000_0000 + (words[at]! >>> 0);
}

/** dev and ino: signed, unsigned and plain-number forms of the same value all match. */
function sameId(cached: bigint | number, words: Int32Array, at: number): boolean {
  return typeof cached === "number" ? cached === numberAt(words, at) : sameBits(cached, words, at);
}

interface RacyLimits {
  fine: bigint;
  coarse: bigint;
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

/**
 * Trees are hashed one at a time: every walk shares the pool's threads, and a
 * walk hands out more work only when its own replies come back, so two at
 * once could each wait for threads the other keeps busy. Callers that start
 * several (sealing jobs that end together, a plan checking reused results)
 * are queued here.
 */
let treeQueue: Promise<unknown> = Promise.resolve();

export function hashTree(root: string, options: HashTreeOptions = {}): Promise<TreeHash> {
  const run = treeQueue.then(() => hashOneTree(root, options));
  treeQueue = run.catch(() => undefined);
  return run;
}

/**
 * After a walk that began while the monitor was setting up its watches: once
 * it is done, the tree walked again from the stat cache that walk wrote, with
 * the monitor's token asked for before, so that the cache is kept with it.
 * A file changed during the first walk differs from its cached stat and is
 * read again. When the monitor gives up, the first walk is the answer.
 */
async function hashOneTree(root: string, options: HashTreeOptions): Promise<TreeHash> {
  let walked: TreeHash | undefined = await walkOneTree(root, options);
  if (walked.stats.monitorSettingUp !== true || options.monitor === undefined) return walked;
  const ready = await options.monitor.changesSince(resolvePath(root), undefined, { untilReady: true });
  if (ready === undefined || ready.settingUp !== undefined) return walked;
  const { hashedFiles, hashedBytes } = walked.stats;
  // Let the first walk's columns go before the second is made: a million files' worth.
  walked = undefined;
  const tree = await walkOneTree(root, options, ready);
  tree.stats.hashedFiles += hashedFiles;
  tree.stats.hashedBytes += hashedBytes;
  tree.stats.cacheHits = Math.max(0, tree.stats.files - tree.stats.hashedFiles);
  tree.stats.monitorSettingUp = true;
  return tree;
}

/**
 * One look at the tree. `ready` is the monitor's answer once it had set up
 * its watches of the root, for the walk that pairs the cache with its token.
 */
async function walkOneTree(root: string, options: HashTreeOptions, ready?: MonitorAnswer): Promise<TreeHash> {
  const absoluteRoot = resolvePath(root);
  // Taken before anything is read, so that every file read in this call was
  // read after this moment (what the racy rule needs from it).
  const cacheTimeNs = BigInt(Date.now()) * 1_000_000n;
  checkRoot(absoluteRoot);
  const rules = options.everyFile === true ? null : ignoreRules(absoluteRoot, options.ignore);
  const store = options.statCache;
  const monitor = options.everyFile === true || store?.monitorToken === undefined ? undefined : options.monitor;
  // With a monitor, the tree kept beside the cache's rows may be all there is
  // to know: when nothing changed since its token, the rows are not even loaded.
  const kept = monitor === undefined || ready !== undefined ? undefined : store?.keptTree?.(absoluteRoot);
  let early: MonitorAnswer | undefined;
  if (monitor !== undefined && kept !== undefined) {
    early = await monitor.changesSince(absoluteRoot, kept.monitorToken);
    if (early?.changed?.length === 0) return keptTreeHash(absoluteRoot, kept, store!, early.token);
  }
  // A cache the threads can read in place is loaded before they start: they
  // compare each file with it and send back little more than its row.
  const packed = store?.loadPacked?.(absoluteRoot);
  const savedAt = packed !== undefined ? packed.savedAt : store?.savedAt?.(absoluteRoot);
  // Asked before anything is walked: whatever changes from here on, the monitor names next time.
  let monitorToken: string | undefined;
  let settingUp = false;
  if (monitor !== undefined && store?.monitorToken !== undefined) {
    const previous = store.monitorToken(absoluteRoot);
    // The answer already given holds for the rows loaded only if they are the ones its token was kept with.
    let answer = early;
    if (ready !== undefined) answer = ready;
    else if (kept === undefined) answer = await monitor.changesSince(absoluteRoot, previous);
    else if (early !== undefined && previous !== kept.monitorToken) answer = { token: early.token, changed: null };
    settingUp = answer?.settingUp !== undefined;
    // A token given during the set-up vouches for nothing this walk reads.
    monitorToken = settingUp ? undefined : answer?.token;
    if (answer !== undefined && answer.changed !== null && previous !== undefined && packed !== undefined) {
      const tree = await treeFromChanges(absoluteRoot, rules, packed, answer.changed, store, answer.token);
      if (tree !== undefined) return tree;
    }
  }
  const workers = walkersFor(options.workers, packed !== undefined ? packed.count : store?.cachedFiles?.(absoluteRoot));
  const limits = savedAt === undefined ? undefined : { fine: savedAt - RACY_WINDOW_FINE_NS, coarse: savedAt - RACY_WINDOW_COARSE_NS };
  const listing = new Listing(packed !== undefined && packed.count > 0 && savedAt !== undefined ? packed : undefined);
  const run = new TreeRun(
    absoluteRoot,
    workers,
    {
      rootPrefix: absoluteRoot.endsWith("/") ? absoluteRoot : `${absoluteRoot}/`,
      ignoreRules: rules,
      everyFile: options.everyFile === true,
      // Without entries to trust every file is read anyway: read it while walking.
      hashInline: savedAt === undefined,
      cache: packed === undefined || packed.count === 0 ? null : columnsOf(packed),
      cacheId: nextCacheId++,
      entryBudget: UNIT_ENTRY_BUDGET,
      largeFileBytes: LARGE_FILE_BYTES,
      byteBudget: UNIT_BYTE_BUDGET,
    },
    { unit: { prefix: "", names: null }, children: [] },
    (row, hash) => listing.fresh.setHash(row, hash),
  );
  // Otherwise the workers are walking already while the cache loads.
  let cache: Map<string, StatCacheEntry> | undefined;
  try {
    cache = store === undefined || packed !== undefined ? undefined : await store.load(absoluteRoot);
  } catch (error) {
    run.abandon(error);
    throw error;
  }
  const cursor = cache === undefined || cache.size === 0 || limits === undefined ? undefined : new CacheLookup(cache, limits);
  listing.cursor = cursor;
  run.consume((record) => {
    const jobs = listing.add(record);
    if (jobs.length > 0) run.addJobs(jobs);
  });
  await run.finished();
  const tree = listing.finish(absoluteRoot, cacheTimeNs);
  // Skip the save when every cached entry was hit and nothing was read
  // (unless the store lacks the tree hash of an unchanged tree: then it learns it).
  const unchanged =
    listing.unchangedPacked !== undefined
      ? listing.unchangedPacked.treeHash !== undefined
      : cursor !== undefined && listing.read === 0 && listing.cacheHits === cache?.size;
  if (store !== undefined && !unchanged) {
    // A store that takes rows copies the cached ones by the column; others get one entry per file.
    if (store.saveRows !== undefined) {
      await store.saveRows(absoluteRoot, listing.rows(), cacheTimeNs, tree.hash, monitorToken);
      // The saved blob holds exactly the tree's rows: the tree reads them there, and the walk's own columns can go.
      const saved = store.loadPacked?.(absoluteRoot);
      if (saved !== undefined && saved.count === tree.stats.files && saved.treeHash === tree.hash && rowTrees.has(tree)) {
        rowTrees.set(tree, savedRows(saved));
      }
    } else {
      await store.save(absoluteRoot, listing.rows().entries(), cacheTimeNs, tree.hash, monitorToken);
    }
  } else if (monitorToken !== undefined) store?.recordMonitorToken?.(absoluteRoot, monitorToken);
  if (settingUp) tree.stats.monitorSettingUp = true;
  return tree;
}

/**
 * The tree the monitor found unchanged since the token kept with it, from
 * what the store keeps beside the rows. Its files are read from the rows only
 * if asked for, and links are checked only if it has any.
 */
function keptTreeHash(root: string, kept: KeptTree, store: StatCacheStore, token: string): TreeHash {
  store.recordMonitorToken?.(root, token);
  let packed: PackedStatCache | undefined;
  const loaded = (): PackedStatCache => {
    if (packed !== undefined) return packed;
    const rows = store.loadPacked?.(root);
    // Another process may have saved a different tree since the kept one was read.
    if (rows === undefined || rows.count !== kept.files || (rows.treeHash ?? digestOfRows(rows)) !== kept.hash) {
      throw new KaosError("IO", `The stat cache of ${root} was rewritten by another kaos process while this one read it.`, {
        hint: "Run the command again.",
      });
    }
    packed = rows;
    return packed;
  };
  const rows: TreeRows = {
    count: kept.files,
    links: kept.links,
    fileAt: (row) => (row < kept.head.length ? { ...kept.head[row]! } : loaded().fileAt(row)),
    modeAt: (row) => (row < kept.head.length ? kept.head[row]!.mode : loaded().modeAt(row)),
  };
  const stats = { files: kept.files, bytes: kept.bytes, hashedFiles: 0, hashedBytes: 0, cacheHits: kept.files, monitored: true };
  return lazyTree(root, kept.hash, rows, stats);
}

/** Changed paths past this many are walked in parallel instead of looked at one by one here. */
const MONITORED_CHANGES_MAX = 256;

/**
 * The tree from its packed stat cache and the paths the monitor says changed
 * since the cache was saved: only those are lstat'ed (and read when their
 * stat differs or is racy); every other file is as cached. Undefined when
 * the changes are not plain files to look at one by one (a directory came
 * or went, `.kaosignore` changed, too many of them): the caller walks.
 */
async function treeFromChanges(
  root: string,
  rules: string[] | null,
  packed: PackedStatCache,
  changed: string[],
  store: StatCacheStore,
  token: string,
): Promise<TreeHash | undefined> {
  if (changed.length > MONITORED_CHANGES_MAX || changed.includes(IGNORE_FILE)) return undefined;
  const ignored = rulesFor(rules);
  const limits: RacyLimits = { fine: packed.savedAt - RACY_WINDOW_FINE_NS, coarse: packed.savedAt - RACY_WINDOW_COARSE_NS };
  /** New entries by path; null for paths that are no longer part of the tree. */
  const updates = new Map<string, StatCacheEntry | null>();
  const removedPrefixes: string[] = [];
  const directories = new Map<string, boolean>();
  // Only a path the cache lists changes the tree by going: an editor's swap file coming and going does not.
  const drop = (path: string): void => {
    if (findRow(packed, path) >= 0) updates.set(path, null);
    else updates.delete(path);
  };
  let read = 0;
  let readBytes = 0;
  for (const path of changed) {
    if (path === "" || path.startsWith("/") || path.split("/").some((part) => part === "" || part === "." || part === ".."))
      return undefined;
    if (isLeftOut(path, ignored)) continue;
    const absolute = `${root}/${path}`;
    if (!underRealDirectories(root, path, directories)) {
      // A directory on the way became a link or a file, or went: the walk does not go in there.
      drop(path);
      continue;
    }
    let stats: BigIntStats | undefined;
    try {
      stats = lstatSync(absolute, { bigint: true, throwIfNoEntry: false });
    } catch {
      return undefined;
    }
    if (stats?.isDirectory() === true) {
      // A directory that came (or was moved in) holds files no event named.
      if (ignored?.ignores(`${path}/`) !== true) return undefined;
      drop(path);
      removedPrefixes.push(`${path}/`);
      continue;
    }
    // Whatever this path held below it, as a directory, is gone.
    removedPrefixes.push(`${path}/`);
    const name = path.slice(path.lastIndexOf("/") + 1);
    if (stats === undefined || isEditorFile(name) || ignored?.ignores(path) === true) {
      drop(path);
      continue;
    }
    // Sockets and FIFOs: the walk says what is wrong with them.
    if (!stats.isFile() && !stats.isSymbolicLink()) return undefined;
    const mode: TreeFile["mode"] = stats.isSymbolicLink() ? "symlink" : (stats.mode & 0o100n) !== 0n ? "exec" : "file";
    const row = findRow(packed, path);
    const cached = row < 0 ? undefined : packed.entryAt(row);
    if (cached !== undefined && sameStats(cached, stats, mode, limits)) continue;
    let hash: string;
    let size = Number(stats.size);
    try {
      if (mode === "symlink") {
        const target = readlinkSync(absolute, { encoding: "buffer" });
        size = target.length;
        hash = createHash("sha256").update(target).digest("hex");
      } else {
        hash = hashRegularFile(absolute);
      }
    } catch (error) {
      if (errnoCode(error) === "ENOENT") {
        drop(path);
        continue;
      }
      // The walk reports it with the bundle's wording.
      return undefined;
    }
    read++;
    readBytes += size;
    updates.set(path, { path, dev: stats.dev, ino: stats.ino, size, mtimeNs: stats.mtimeNs, ctimeNs: stats.ctimeNs, mode, hash });
  }
  const removedRows = rowsUnder(packed, removedPrefixes);
  if (updates.size === 0 && removedRows.size === 0) {
    let bytes = 0;
    const sizes = new Float64Array(packed.bytes.buffer, packed.bytes.byteOffset + packed.size, packed.count);
    for (let row = 0; row < sizes.length; row++) bytes += sizes[row]!;
    const stats = { files: packed.count, bytes, hashedFiles: 0, hashedBytes: 0, cacheHits: packed.count, monitored: true };
    const tree = lazyTree(root, packed.treeHash ?? digestOfRows(packed), packedRows(packed), stats);
    store.recordMonitorToken?.(root, token);
    return tree;
  }
  // Every row stays but those replaced or gone, copied by the run; new paths go in in path order.
  const changedRows = new Map<number, StatCacheEntry | null>();
  const added: { at: number; entry: StatCacheEntry }[] = [];
  for (const [path, update] of updates) {
    const found = searchSortedRows(packed.count, (at) => comparePaths(packed.pathAt(at), path));
    if (found.row >= 0) changedRows.set(found.row, update);
    else if (update !== null) added.push({ at: found.next, entry: update });
  }
  for (const row of removedRows) if (!changedRows.has(row)) changedRows.set(row, null);
  added.sort((a, b) => comparePaths(a.entry.path, b.entry.path));
  const fresh = new FreshRows();
  const runs: RowRun[] = [];
  const pushFresh = (entry: StatCacheEntry): void => {
    const row = fresh.push(entry.path, entry.mode, entry.dev, entry.ino, entry.size, entry.mtimeNs, entry.ctimeNs, entry.hash);
    appendRun(runs, { fromPacked: false, first: row, count: 1 });
  };
  let next = 0;
  let kept = 0;
  // Cached rows up to `row` (excluded) go in, with the new paths that sort before it.
  const keepUpTo = (row: number): void => {
    for (; next < added.length && added[next]!.at <= row; next++) {
      appendRun(runs, { fromPacked: true, first: kept, count: added[next]!.at - kept });
      kept = added[next]!.at;
      pushFresh(added[next]!.entry);
    }
    appendRun(runs, { fromPacked: true, first: kept, count: row - kept });
    kept = row;
  };
  for (const row of [...changedRows.keys()].sort((a, b) => a - b)) {
    keepUpTo(row);
    const update = changedRows.get(row);
    if (update !== null && update !== undefined) pushFresh(update);
    kept = row + 1;
  }
  keepUpTo(packed.count);
  const rows = new StatCacheRows(runs, packed, fresh);
  const { hash, bytes } = digestOfRuns(runs, packed, fresh);
  // Entries kept from the cache were read before its time, new ones after: the
  // cache's time stays, the earliest, which is what the racy rule needs.
  if (store.saveRows !== undefined) await store.saveRows(root, rows, packed.savedAt, hash, token);
  else await store.save(root, rows.entries(), packed.savedAt, hash, token);
  const stats = { files: rows.count, bytes, hashedFiles: read, hashedBytes: readBytes, cacheHits: rows.count - read, monitored: true };
  return lazyTree(root, hash, rows, stats);
}

/** Adds a run of rows to a listing's runs, joined to the last one when it continues it; empty runs add nothing. */
function appendRun(runs: RowRun[], run: RowRun): void {
  if (run.count === 0) return;
  const last = runs[runs.length - 1];
  if (last !== undefined && last.fromPacked === run.fromPacked && last.first + last.count === run.first) last.count += run.count;
  else runs.push({ ...run });
}

/** Whether every directory above `path` is a directory, not a symlink to one (results kept in `known`). */
function underRealDirectories(root: string, path: string, known: Map<string, boolean>): boolean {
  for (let slash = path.indexOf("/"); slash >= 0; slash = path.indexOf("/", slash + 1)) {
    const directory = path.slice(0, slash);
    let real = known.get(directory);
    if (real === undefined) {
      real = lstatSync(`${root}/${directory}`, { throwIfNoEntry: false })?.isDirectory() === true;
      known.set(directory, real);
    }
    if (!real) return false;
  }
  return true;
}

/** Left out of every bundle whatever it holds: an always-ignored name on the way, or an ignored directory above it. */
function isLeftOut(path: string, ignored: ReturnType<typeof rulesFor>): boolean {
  const parts = path.split("/");
  let prefix = "";
  for (let index = 0; index < parts.length; index++) {
    const part = parts[index]!;
    if (ALWAYS_IGNORED.has(part)) return true;
    if (index < parts.length - 1) {
      prefix += `${part}/`;
      if (ignored?.ignores(prefix) === true) return true;
    }
  }
  return false;
}

function sameStats(entry: StatCacheEntry, stats: BigIntStats, mode: TreeFile["mode"], limits: RacyLimits): boolean {
  return (
    entry.mode === mode &&
    entry.size === Number(stats.size) &&
    entry.mtimeNs === stats.mtimeNs &&
    entry.ctimeNs === stats.ctimeNs &&
    BigInt.asUintN(64, BigInt(entry.ino)) === BigInt.asUintN(64, stats.ino) &&
    BigInt.asUintN(64, BigInt(entry.dev)) === BigInt.asUintN(64, stats.dev) &&
    isOutsideRacyWindow(stats.mtimeNs, stats.ctimeNs, limits.fine, limits.coarse)
  );
}

function findRow(packed: PackedStatCache, path: string): number {
  return searchSortedRows(packed.count, (row) => comparePaths(packed.entryAt(row).path, path)).row;
}

/** The rows whose paths start with one of the prefixes. */
function rowsUnder(packed: PackedStatCache, prefixes: string[]): Set<number> {
  const rows = new Set<number>();
  for (const prefix of prefixes) {
    let row = searchSortedRows(packed.count, (at) => comparePaths(packed.entryAt(at).path, prefix)).next;
    while (row < packed.count && packed.entryAt(row).path.startsWith(prefix)) rows.add(row++);
  }
  return rows;
}

function digestOfRows(packed: PackedStatCache): string {
  const digest = new TreeDigest();
  for (let row = 0; row < packed.count; row++) digest.add(packed.fileAt(row));
  return digest.finish();
}

let nextCacheId = 1;

/** The data part of a packed cache: what is sent to the threads. */
function columnsOf(packed: PackedStatCache): PackedColumns {
  const { bytes, count, dev, ino, mtime, ctime, size, pathEnd, kind, paths, savedAt } = packed;
  return { bytes, count, dev, ino, mtime, ctime, size, pathEnd, kind, paths, savedAt };
}

/** The files of a tree as rows, made into objects one at a time. */
interface TreeRows {
  count: number;
  /** How many of the rows are symlinks, when known without looking at them. */
  links?: number;
  fileAt(row: number): TreeFile;
  modeAt(row: number): TreeFile["mode"];
}

function packedRows(packed: PackedStatCache): TreeRows {
  return { count: packed.count, fileAt: (row) => packed.fileAt(row), modeAt: (row) => packed.modeAt(row) };
}

/** A tree's rows read from the stat cache it was just saved as, each hash made from its bytes alone. */
function savedRows(packed: PackedStatCache): TreeRows {
  const raw =
    packed.rawHashes === undefined
      ? undefined
      : Buffer.from(packed.bytes.buffer, packed.bytes.byteOffset + packed.rawHashes, 32 * packed.count);
  const sizes = new Float64Array(packed.bytes.buffer, packed.bytes.byteOffset + packed.size, packed.count);
  return {
    count: packed.count,
    fileAt: (row) =>
      raw === undefined
        ? packed.fileAt(row)
        : { path: packed.pathAt(row), mode: packed.modeAt(row), size: sizes[row]!, hash: raw.toString("hex", 32 * row, 32 * row + 32) },
    modeAt: (row) => packed.modeAt(row),
  };
}

/** Trees whose files are still only rows (see `lazyTree`). */
const rowTrees = new WeakMap<Pick<TreeHash, "files">, TreeRows>();

/**
 * The folders a walk listed to make a tree, each stat'ed just before it was
 * listed: with them, a folder's listing since is known unchanged by its
 * stat alone (see `sealBundleFolder`).
 */
export interface WalkedFolders {
  /** Every folder held exactly the tree's entries: nothing left out (ignored, editors' or special files), none empty, no file vanished. */
  exact: boolean;
  /** Relative paths ("" for the root), in path order. */
  paths: string[];
  /** dev, ino (their bits), mtimeNs, ctimeNs per folder. */
  stats: BigInt64Array;
  /** When the walk began (ns): a folder changed within the racy window before it may change again unseen by its times. */
  walkedAt: bigint;
}

/** What the walk that made each tree saw of its folders; none for a tree made without listing them (the monitor's, a kept one). */
const walkedFolders = new WeakMap<TreeHash, WalkedFolders>();

/** The folders the walk that made `tree` listed, or undefined when it listed none. */
export function foldersOf(tree: TreeHash): WalkedFolders | undefined {
  return walkedFolders.get(tree);
}

/**
 * A tree whose `files` are made from its rows only when asked for: a plan
 * that finds nothing changed needs only the hash, and one that finds a few
 * changes need not hold a million objects.
 */
function lazyTree(root: string, hash: string, rows: TreeRows, stats: TreeHash["stats"]): TreeHash {
  let files: TreeFile[] | undefined;
  const tree = { root, hash, stats } as TreeHash;
  const list = (): TreeFile[] => {
    // Read at the time of asking: the rows may have moved to the saved stat cache since.
    const current = rowTrees.get(tree)!;
    return Array.from({ length: current.count }, (_, row) => current.fileAt(row));
  };
  Object.defineProperty(tree, "files", {
    enumerable: true,
    configurable: true,
    get: () => (files ??= list()),
    set: (value: TreeFile[]) => {
      files = value;
      rowTrees.delete(tree);
    },
  });
  rowTrees.set(tree, rows);
  return tree;
}

/**
 * The tree with its symlinks as its only files, for checks that look only at
 * links: an unchanged tree finds them without making every file.
 */
export function treeLinks(tree: TreeHash): TreeHash {
  const rows = rowTrees.get(tree);
  const links: TreeFile[] = [];
  if (rows?.links === 0) return { root: tree.root, hash: tree.hash, files: links, stats: tree.stats };
  if (rows === undefined) {
    for (const file of tree.files) if (file.mode === "symlink") links.push(file);
  } else {
    for (let row = 0; row < rows.count; row++) if (rows.modeAt(row) === "symlink") links.push(rows.fileAt(row));
  }
  return { root: tree.root, hash: tree.hash, files: links, stats: tree.stats };
}

/** How many files a tree has, counted without making them for a tree still kept as rows. */
export function fileCountOf(tree: Pick<TreeHash, "files">): number {
  return rowTrees.get(tree)?.count ?? tree.files.length;
}

/** The files of a tree in path order, made one at a time from a tree still kept as rows. */
export function* filesOf(tree: Pick<TreeHash, "files">): Generator<TreeFile> {
  const rows = rowTrees.get(tree);
  if (rows === undefined) {
    yield* tree.files;
    return;
  }
  for (let row = 0; row < rows.count; row++) yield rows.fileAt(row);
}

/**
 * The content hash of a tree's file by path, for the few lookups a sweep
 * makes when a file of its data changed: a tree still kept as rows is
 * searched in place (its rows are in path order), any other is indexed once.
 */
export function treeHashLookup(tree: TreeHash): { get(path: string): string | undefined } {
  const rows = rowTrees.get(tree);
  if (rows === undefined) {
    let index: Map<string, string> | undefined;
    return {
      get: (path) => {
        index ??= new Map(tree.files.map((file) => [file.path, file.hash]));
        return index.get(path);
      },
    };
  }
  return {
    get: (path) => {
      const row = searchSortedRows(rows.count, (at) => comparePaths(rows.fileAt(at).path, path)).row;
      return row < 0 ? undefined : rows.fileAt(row).hash;
    },
  };
}

/** The first `count` files of a tree, without listing the rest of a tree still kept as cache rows. */
export function firstFiles(tree: TreeHash, count: number): TreeFile[] {
  const rows = rowTrees.get(tree);
  if (rows === undefined) return tree.files.slice(0, count);
  const files: TreeFile[] = [];
  for (let row = 0; row < Math.min(count, rows.count); row++) files.push(rows.fileAt(row));
  return files;
}

/** A run of a listing's rows, in path order: rows of the packed stat cache, or fresh rows of the listing. */
export interface RowRun {
  fromPacked: boolean;
  first: number;
  count: number;
}

const HEX_HASH = /^[0-9a-f]{64}$/;
const FRESH_DEV_IS_NUMBER = 1;
const FRESH_INO_IS_NUMBER = 2;
/** The content is still being read. */
const FRESH_PENDING = 4;
/** Its hash is not 64 lower-case hex digits: kept as text in `odd`. */
const FRESH_ODD_HASH = 8;

/**
 * The files of a listing that are not rows of the packed stat cache (read
 * this time, or found in an unpacked cache), as columns: a million files cost
 * a few typed arrays and their path strings, not a million objects.
 */
export class FreshRows {
  count = 0;
  private capacity = 1024;
  readonly paths: string[] = [];
  modes = new Uint8Array(this.capacity);
  flags = new Uint8Array(this.capacity);
  sizes = new Float64Array(this.capacity);
  /** dev, ino per row. */
  ids = new BigUint64Array(this.capacity * 2);
  /** mtimeNs, ctimeNs per row. */
  times = new BigInt64Array(this.capacity * 2);
  /** Raw 32-byte SHA-256 per row. */
  hashes = Buffer.alloc(this.capacity * 32);
  /** Hashes that are not 64 lower-case hex digits, by row ("" for a file gone before it was read). */
  readonly odd = new Map<number, string>();

  /** A new row; `hash` undefined while its content is still to be read. */
  push(
    path: string,
    mode: TreeFile["mode"],
    dev: bigint | number,
    ino: bigint | number,
    size: number,
    mtimeNs: bigint,
    ctimeNs: bigint,
    hash: string | undefined,
  ): number {
    if (this.count === this.capacity) this.grow();
    const row = this.count++;
    this.paths.push(path);
    this.modes[row] = MODE_NAMES.indexOf(mode);
    this.flags[row] = (typeof dev === "number" ? FRESH_DEV_IS_NUMBER : 0) | (typeof ino === "number" ? FRESH_INO_IS_NUMBER : 0);
    this.sizes[row] = size;
    this.ids[2 * row] = BigInt(dev);
    this.ids[2 * row + 1] = BigInt(ino);
    this.times[2 * row] = mtimeNs;
    this.times[2 * row + 1] = ctimeNs;
    if (hash === undefined) this.flags[row]! |= FRESH_PENDING;
    else this.setHash(row, hash);
    return row;
  }

  setHash(row: number, hash: string): void {
    this.flags[row]! &= ~(FRESH_PENDING | FRESH_ODD_HASH);
    if (HEX_HASH.test(hash)) {
      this.hashes.write(hash, 32 * row, 32, "hex");
      this.odd.delete(row);
    } else {
      this.flags[row]! |= FRESH_ODD_HASH;
      this.odd.set(row, hash);
    }
  }

  hashAt(row: number): string {
    if ((this.flags[row]! & FRESH_ODD_HASH) !== 0) return this.odd.get(row) ?? "";
    if ((this.flags[row]! & FRESH_PENDING) !== 0) return "";
    return this.hashes.toString("hex", 32 * row, 32 * row + 32);
  }

  modeAt(row: number): TreeFile["mode"] {
    return MODE_NAMES[this.modes[row]!]!;
  }

  fileAt(row: number): TreeFile {
    return { path: this.paths[row]!, mode: this.modeAt(row), size: this.sizes[row]!, hash: this.hashAt(row) };
  }

  entryAt(row: number): StatCacheEntry {
    const flags = this.flags[row]!;
    const dev = this.ids[2 * row]!;
    const ino = this.ids[2 * row + 1]!;
    return {
      path: this.paths[row]!,
      dev: (flags & FRESH_DEV_IS_NUMBER) !== 0 ? Number(dev) : dev,
      ino: (flags & FRESH_INO_IS_NUMBER) !== 0 ? Number(ino) : ino,
      size: this.sizes[row]!,
      mtimeNs: this.times[2 * row]!,
      ctimeNs: this.times[2 * row + 1]!,
      mode: this.modeAt(row),
      hash: this.hashAt(row),
    };
  }

  /** Whether dev and ino of `row` were numbers rather than bigints (bits as in the stat cache's kind column, shifted down by 2). */
  numberBits(row: number): number {
    return this.flags[row]! & (FRESH_DEV_IS_NUMBER | FRESH_INO_IS_NUMBER);
  }

  private grow(): void {
    this.capacity *= 2;
    const grown = <T extends { set(source: T): void }>(old: T, make: (length: number) => T, perRow: number): T => {
      const next = make(this.capacity * perRow);
      next.set(old);
      return next;
    };
    this.modes = grown(this.modes, (n) => new Uint8Array(n), 1);
    this.flags = grown(this.flags, (n) => new Uint8Array(n), 1);
    this.sizes = grown(this.sizes, (n) => new Float64Array(n), 1);
    this.ids = grown(this.ids, (n) => new BigUint64Array(n), 2);
    this.times = grown(this.times, (n) => new BigInt64Array(n), 2);
    const hashes = Buffer.alloc(this.capacity * 32);
    this.hashes.copy(hashes);
    this.hashes = hashes;
  }
}

/**
 * What the stat cache should hold after a walk, in path order: runs of the
 * packed cache's rows (copied by the column) and fresh rows. A store that
 * takes these (`saveRows`) never makes an object per file.
 */
export class StatCacheRows {
  readonly count: number;
  private runIndex = 0;
  private runStart = 0;

  constructor(
    readonly runs: readonly RowRun[],
    readonly packed: PackedStatCache | undefined,
    readonly fresh: FreshRows,
  ) {
    let count = 0;
    for (const run of runs) count += run.count;
    this.count = count;
  }

  /** Where row `i` of the listing lies: its run and its row there. Cheap when asked in order. */
  private locate(i: number): { fromPacked: boolean; row: number } {
    if (i < this.runStart) {
      this.runIndex = 0;
      this.runStart = 0;
    }
    while (i >= this.runStart + this.runs[this.runIndex]!.count) {
      this.runStart += this.runs[this.runIndex]!.count;
      this.runIndex++;
    }
    const run = this.runs[this.runIndex]!;
    return { fromPacked: run.fromPacked, row: run.first + i - this.runStart };
  }

  fileAt(i: number): TreeFile {
    const { fromPacked, row } = this.locate(i);
    return fromPacked ? this.packed!.fileAt(row) : this.fresh.fileAt(row);
  }

  modeAt(i: number): TreeFile["mode"] {
    const { fromPacked, row } = this.locate(i);
    return fromPacked ? this.packed!.modeAt(row) : this.fresh.modeAt(row);
  }

  entryAt(i: number): StatCacheEntry {
    const { fromPacked, row } = this.locate(i);
    return fromPacked ? this.packed!.entryAt(row) : this.fresh.entryAt(row);
  }

  entries(): StatCacheEntry[] {
    return Array.from({ length: this.count }, (_, i) => this.entryAt(i));
  }
}

/** The listing of one tree, built in path order as walk results come in. */
class Listing {
  readonly fresh = new FreshRows();
  private runs: RowRun[] = [];
  cacheHits = 0;
  /** Files whose content this run reads (or read while walking), and their bytes. */
  read = 0;
  readBytes = 0;
  private readonly jobs = new JobBuilder();
  /** Set by finish() when the tree is exactly the packed cache's. */
  unchangedPacked: PackedStatCache | undefined;
  cursor: CacheLookup | undefined;
  private finalRows: StatCacheRows | undefined;
  private readonly folderPaths: string[] = [];
  private readonly folderStats: BigInt64Array[] = [];
  private inexact = false;

  constructor(private readonly packed: PackedStatCache | undefined) {}

  private addFolders(result: UnitResult): void {
    if (result.inexact) this.inexact = true;
    if (result.folders === "" && result.folderStats.length === 0) return;
    for (const path of result.folders.split("\0")) this.folderPaths.push(path);
    this.folderStats.push(result.folderStats);
  }

  /** The folders walked, in path order (units come in path order; sorted all the same, they are few). */
  private walkedFolders(walkedAt: bigint): WalkedFolders {
    const order = this.folderPaths.map((_, index) => index);
    const keys = this.folderPaths.map((path) => (path === "" ? "" : `${path}/`));
    order.sort((left, right) => comparePaths(keys[left]!, keys[right]!));
    const joined = new BigInt64Array(4 * order.length);
    let offset = 0;
    for (const piece of this.folderStats) {
      joined.set(piece, offset);
      offset += piece.length;
    }
    const stats = new BigInt64Array(4 * order.length);
    for (const [to, from] of order.entries()) stats.set(joined.subarray(4 * from, 4 * from + 4), 4 * to);
    return { exact: !this.inexact, paths: order.map((index) => this.folderPaths[index]!), stats, walkedAt };
  }

  private addRows(fromPacked: boolean, first: number, count: number): void {
    appendRun(this.runs, { fromPacked, first, count });
  }

  /** Takes one walk result; returns the hash jobs for what must be read. */
  add(record: UnitRecord): HashJob[] {
    const result = record.result!;
    this.addFolders(result);
    const count = result.status.length;
    if (count === 0) return [];
    if (this.packed !== undefined && result.allHits) {
      this.addRows(true, result.firstRow, count);
      this.cacheHits += count;
      return [];
    }
    // A unit of hits only sends no paths: each comes from its cache row.
    const paths = result.allHits ? [] : result.paths.split("\0");
    const cursor = this.cursor;
    const halves = cursor === undefined ? undefined : halvesOf(result);
    const fresh = this.fresh;
    let inlineHashes = 0;
    for (let index = 0; index < count; index++) {
      const status = result.status[index];
      if (status === STATUS_VANISHED) continue;
      if (status === STATUS_HIT) {
        this.addRows(true, result.cacheRows[index]!, 1);
        this.cacheHits++;
        continue;
      }
      const path = paths[index]!;
      if (status === STATUS_STATTED && cursor !== undefined) {
        const hit = cursor.unchanged(path, result, halves!, index);
        if (hit !== undefined) {
          const row = fresh.push(path, hit.mode, hit.dev, hit.ino, hit.size, hit.mtimeNs, hit.ctimeNs, hit.hash);
          this.addRows(false, row, 1);
          this.cacheHits++;
          continue;
        }
      }
      const modeCode = result.modes[index]!;
      const size = Number(result.ids[index * 3 + 2]);
      let hash: string | undefined;
      if (status === STATUS_HASHED) hash = result.hashes.slice(inlineHashes * 64, ++inlineHashes * 64);
      const row = fresh.push(
        path,
        MODE_NAMES[modeCode]!,
        result.ids[index * 3]!,
        result.ids[index * 3 + 1]!,
        size,
        result.times[index * 2]!,
        result.times[index * 2 + 1]!,
        hash,
      );
      this.addRows(false, row, 1);
      this.read++;
      this.readBytes += size;
      if (hash === undefined) this.jobs.add({ row, path, size }, modeCode);
    }
    return this.jobs.take();
  }

  /** What the stat cache should hold now, in path order (after finish()). */
  rows(): StatCacheRows {
    return this.finalRows ?? new StatCacheRows(this.runs, this.packed, this.fresh);
  }

  /** `walkedAt`: when the walk began. */
  finish(root: string, walkedAt: bigint): TreeHash {
    const packed = this.packed;
    const only = this.runs.length === 1 ? this.runs[0]! : undefined;
    if (packed !== undefined && only?.fromPacked === true && only.first === 0 && only.count === packed.count) {
      this.unchangedPacked = packed;
      const stats = { files: packed.count, bytes: sumOf(packed), hashedFiles: 0, hashedBytes: 0, cacheHits: packed.count };
      const tree = lazyTree(root, packed.treeHash ?? digestOfRows(packed), packedRows(packed), stats);
      walkedFolders.set(tree, this.walkedFolders(walkedAt));
      return tree;
    }
    if (this.dropVanished()) this.inexact = true;
    const rows = new StatCacheRows(this.runs, packed, this.fresh);
    this.finalRows = rows;
    const { hash, bytes } = digestOfRuns(this.runs, packed, this.fresh);
    const stats = { files: rows.count, bytes, hashedFiles: this.read, hashedBytes: this.readBytes, cacheHits: this.cacheHits };
    const tree = lazyTree(root, hash, rows, stats);
    walkedFolders.set(tree, this.walkedFolders(walkedAt));
    return tree;
  }

  /** Files that vanished before their job could read them are not part of the tree; whether any did. */
  private dropVanished(): boolean {
    const fresh = this.fresh;
    const gone = (row: number): boolean => fresh.odd.get(row) === "";
    if (fresh.odd.size === 0 || ![...fresh.odd.values()].includes("")) return false;
    const runs: RowRun[] = [];
    const keep = (run: RowRun): void => appendRun(runs, run);
    for (const run of this.runs) {
      if (run.fromPacked) {
        keep(run);
        continue;
      }
      for (let row = run.first; row < run.first + run.count; row++) {
        if (!gone(row)) {
          keep({ fromPacked: false, first: row, count: 1 });
          continue;
        }
        this.read--;
        this.readBytes -= fresh.sizes[row]!;
      }
    }
    this.runs = runs;
    return true;
  }
}

/** The tree hash and total size of a listing's runs, row by row from the columns: no file objects, and no hex text of every cached hash at once. */
function digestOfRuns(runs: readonly RowRun[], packed: PackedStatCache | undefined, fresh: FreshRows): { hash: string; bytes: number } {
  const digest = new TreeDigest();
  let bytes = 0;
  const freshHashes = fresh.hashes;
  for (const run of runs) {
    const end = run.first + run.count;
    if (!run.fromPacked) {
      for (let row = run.first; row < end; row++) {
        const hash = fresh.odd.size > 0 ? fresh.hashAt(row) : freshHashes.toString("hex", 32 * row, 32 * row + 32);
        digest.addLine(fresh.modeAt(row), fresh.paths[row]!, hash);
        bytes += fresh.sizes[row]!;
      }
      continue;
    }
    const source = packed!;
    const sizes = new Float64Array(source.bytes.buffer, source.bytes.byteOffset + source.size, source.count);
    const raw = source.rawHashes === undefined ? undefined : Buffer.from(source.bytes.buffer, source.bytes.byteOffset + source.rawHashes);
    for (let row = run.first; row < end; row++) {
      const hash = raw === undefined ? source.fileAt(row).hash : raw.toString("hex", 32 * row, 32 * row + 32);
      digest.addLine(source.modeAt(row), source.pathAt(row), hash);
      bytes += sizes[row]!;
    }
  }
  return { hash: digest.finish(), bytes };
}

function sumOf(packed: PackedStatCache): number {
  let bytes = 0;
  const sizes = new Float64Array(packed.bytes.buffer, packed.bytes.byteOffset + packed.size, packed.count);
  for (let row = 0; row < sizes.length; row++) bytes += sizes[row]!;
  return bytes;
}

/**
 * Feeds the "kaos-tree-v1" lines to SHA-256 in 64 KiB strings: concatenating
 * and encoding a chunk at once costs less than a Buffer write per field.
 */
class TreeDigest {
  private readonly digest = createHash("sha256");
  private chunk = TREE_HASH_HEADER;

  add(file: TreeFile): void {
    this.addLine(file.mode, file.path, file.hash);
  }

  addLine(mode: TreeFile["mode"], path: string, hash: string): void {
    this.chunk += mode + "\0" + path + "\0" + hash + "\n";
    if (this.chunk.length >= 1 << 16) {
      this.digest.update(this.chunk, "utf8");
      this.chunk = "";
    }
  }

  finish(): string {
    this.digest.update(this.chunk, "utf8");
    return this.digest.digest("hex");
  }
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
