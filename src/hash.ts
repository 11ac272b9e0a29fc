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
 * Speed. A small pool of worker threads (hash-worker.ts) does the lstat calls,
 * the cache comparison and the reading, with synchronous fs calls and one
 * reused buffer each. The main thread reads directories, applies ignore rules
 * and hands out batches of paths, a few hundred messages for 100k files.
 * Files above LARGE_FILE_BYTES, and anything past a batch's byte budget, come
 * back unhashed and are handed out one by one, biggest first, so big files
 * spread over every worker.
 */
import { createHash } from "node:crypto";
import { type Dirent, constants as fsConstants, existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { resolve as resolvePath } from "node:path";
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import ignore, { type Ignore } from "ignore";
import { KaosError, describeError, errnoCode } from "./errors.js";
import {
  HASH_WORKER_MARK,
  MODE_EXEC,
  MODE_FILE,
  MODE_NONE,
  MODE_SYMLINK,
  STATUS_DEFERRED,
  STATUS_HASHED,
  STATUS_HIT,
  STATUS_VANISHED,
  type HashJobRequest,
  type HashJobResult,
  type StatBatchRequest,
  type StatBatchResult,
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
const ALWAYS_IGNORED = new Set([".git", ".kaos", "node_modules", "__pycache__"]);
const IGNORE_FILE = ".kaosignore";
const MODE_NAMES: readonly TreeFile["mode"][] = ["file", "exec", "symlink"];

/** Racy window when the filesystem stamps sub-second times (see the top of this file). */
export const RACY_WINDOW_FINE_NS = 1_000_000_000n;
/** Racy window for filesystems that stamp whole seconds, or two (FAT). */
export const RACY_WINDOW_COARSE_NS = 3_000_000_000n;

/** Paths per stat batch: big enough that messages cost little, small enough to balance. */
const BATCH_FILES = 1024;
/** Files above this are hashed as jobs of their own. */
const LARGE_FILE_BYTES = 8 << 20;
/** Bytes a stat batch may read inline (about 10 ms of SHA-256) before deferring the rest. */
const BATCH_BUDGET_BYTES = 16 << 20;
/** How long the directory walk runs before letting worker results in. */
const WALK_SLICE_MS = 2;
/** Messages in flight per worker: one running, one queued, so no worker waits on the main thread. */
const MAX_OUTSTANDING = 2;

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

function sendToWorker(member: PoolWorker, request: WorkerRequest, transfer: ArrayBuffer[] = []): Promise<WorkerResult> {
  return new Promise((resolve, reject) => {
    member.pending.set(request.id, { resolve, reject });
    member.thread.ref();
    member.thread.postMessage(request, transfer);
  });
}

/** Stops the worker threads (they are restarted on demand); for tests and long-lived hosts. */
export async function stopHashWorkers(): Promise<void> {
  const members = pool.splice(0, pool.length);
  await Promise.all(members.map((member) => member.thread.terminate()));
}

// ---------------------------------------------------------------------------
// One hashTree call.

interface StatBatch {
  request: StatBatchRequest;
  paths: string[];
  /** Cache entry per path (trusted or not), to reuse on a hit. */
  cached: (StatCacheEntry | undefined)[];
  result?: StatBatchResult;
  /** Hashes of DEFERRED paths by index, "" when the file vanished. */
  lateHashes?: Map<number, string>;
}

interface HashJob {
  batch: StatBatch;
  indexes: number[];
  bytes: number;
}

class TreeRun {
  private readonly statQueue: StatBatch[] = [];
  private readonly jobQueue: HashJob[] = [];
  private inFlight = 0;
  private walking = true;
  private failure: unknown;
  private settle: { resolve: () => void; reject: (error: unknown) => void } | undefined;

  constructor(
    private readonly root: string,
    private readonly workers: PoolWorker[],
  ) {}

  enqueue(batch: StatBatch): void {
    this.statQueue.push(batch);
    this.pump();
  }

  /** Resolves once the walk has ended and every batch and job came back. */
  finish(): Promise<void> {
    this.walking = false;
    return new Promise((resolve, reject) => {
      if (this.failure !== undefined) {
        reject(this.failure);
        return;
      }
      this.settle = { resolve, reject };
      this.pump();
    });
  }

  get failed(): unknown {
    return this.failure;
  }

  private fail(error: unknown): void {
    if (this.failure !== undefined) return;
    this.failure = error;
    this.settle?.reject(error);
  }

  private pump(): void {
    if (this.failure !== undefined) return;
    for (;;) {
      const member = this.idlestWorker();
      if (member === undefined) break;
      const batch = this.statQueue.shift();
      if (batch !== undefined) {
        this.dispatchBatch(member, batch);
        continue;
      }
      const job = this.takeBiggestJob();
      if (job === undefined) break;
      this.dispatchJob(member, job);
    }
    if (!this.walking && this.inFlight === 0 && this.statQueue.length === 0 && this.jobQueue.length === 0) {
      this.settle?.resolve();
    }
  }

  private idlestWorker(): PoolWorker | undefined {
    let best: PoolWorker | undefined;
    for (const member of this.workers) {
      if (member.busyWithJob || member.pending.size >= MAX_OUTSTANDING) continue;
      if (best === undefined || member.pending.size < best.pending.size) best = member;
    }
    // A job waits for a worker with nothing queued, so it never delays a batch.
    if (best !== undefined && this.statQueue.length === 0 && best.pending.size > 0) {
      return this.workers.find((member) => !member.busyWithJob && member.pending.size === 0) ?? undefined;
    }
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

  private dispatchBatch(member: PoolWorker, batch: StatBatch): void {
    this.inFlight++;
    const cache = batch.request.cache;
    const transfer = cache === null ? [] : [cache.ids.buffer, cache.sizes.buffer, cache.times.buffer, cache.modes.buffer];
    sendToWorker(member, batch.request, transfer as ArrayBuffer[]).then(
      (result) => {
        this.inFlight--;
        this.acceptBatch(batch, result as StatBatchResult);
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
    const request: HashJobRequest = {
      kind: "hash",
      id: nextRequestId++,
      rootPrefix: batchRootPrefix(this.root),
      paths: job.indexes.map((index) => job.batch.paths[index]!),
    };
    sendToWorker(member, request).then(
      (result) => {
        member.busyWithJob = false;
        this.inFlight--;
        this.acceptJob(job, result as HashJobResult);
        this.pump();
      },
      (error: unknown) => {
        member.busyWithJob = false;
        this.inFlight--;
        this.fail(error);
      },
    );
  }

  private acceptBatch(batch: StatBatch, result: StatBatchResult): void {
    if (result.error !== undefined) {
      this.fail(fileError(this.root, result.error));
      return;
    }
    batch.result = result;
    let small: HashJob | undefined;
    for (let index = 0; index < result.status.length; index++) {
      if (result.status[index] !== STATUS_DEFERRED) continue;
      const bytes = Number(result.ids[index * 3 + 2]);
      if (bytes > LARGE_FILE_BYTES) {
        this.jobQueue.push({ batch, indexes: [index], bytes });
        continue;
      }
      if (small === undefined || small.bytes + bytes > BATCH_BUDGET_BYTES) {
        small = { batch, indexes: [], bytes: 0 };
        this.jobQueue.push(small);
      }
      small.indexes.push(index);
      small.bytes += bytes;
    }
  }

  private acceptJob(job: HashJob, result: HashJobResult): void {
    if (result.error !== undefined) {
      this.fail(fileError(this.root, result.error));
      return;
    }
    const late = (job.batch.lateHashes ??= new Map());
    job.indexes.forEach((index, position) => late.set(index, result.hashes[position] ?? ""));
  }

  /** Stops handing out work after the walk failed; batches already sent finish unseen. */
  abandon(error: unknown): void {
    this.fail(error);
    this.statQueue.length = 0;
    this.jobQueue.length = 0;
  }
}

function batchRootPrefix(root: string): string {
  return root.endsWith("/") ? root : `${root}/`;
}

function fileError(root: string, error: WorkerFileError): KaosError {
  const where = `"${error.path}" in bundle ${root}`;
  if (error.code === "special") {
    return new KaosError("BUNDLE_INVALID", `Cannot hash ${where}: ${error.message}.`, {
      hint: `Remove it from the bundle or exclude it in ${IGNORE_FILE}.`,
    });
  }
  if (error.code === "EACCES" || error.code === "EPERM") {
    return new KaosError("IO", `Cannot read ${where}: permission denied.`, {
      hint: `Make it readable (chmod u+r) or exclude it in ${IGNORE_FILE}.`,
    });
  }
  return new KaosError("IO", `Cannot hash ${where}: ${error.message}.`);
}

// ---------------------------------------------------------------------------
// Directory walk.

/**
 * Sorting directory names with '/' appended makes a depth-first walk emit
 * paths in the byte order of the whole path ("a-b" < "a/c" because '-' < '/').
 * Plain string comparison is UTF-16 order, which differs from UTF-8 byte
 * order only for characters outside the BMP; names holding those are sorted
 * by code point instead.
 */
function sortKeys(keys: string[]): void {
  keys.sort();
  if (keys.some((key) => /[\uD800-\uDFFF]/.test(key))) keys.sort(compareCodePoints);
}

function compareCodePoints(left: string, right: string): number {
  const a = Array.from(left, (char) => char.codePointAt(0) ?? 0);
  const b = Array.from(right, (char) => char.codePointAt(0) ?? 0);
  const shared = Math.min(a.length, b.length);
  for (let index = 0; index < shared; index++) {
    if (a[index] !== b[index]) return a[index]! - b[index]!;
  }
  return a.length - b.length;
}

interface WalkFrame {
  directory: string;
  prefix: string;
  keys: string[];
  next: number;
}

function loadIgnoreRules(root: string, extra: string[] | undefined): Ignore | undefined {
  let text: string | undefined;
  try {
    text = readFileSync(`${batchRootPrefix(root)}${IGNORE_FILE}`, "utf8");
  } catch (error) {
    const code = errnoCode(error);
    if (code !== "ENOENT") {
      throw new KaosError("IO", `Cannot read ${root}/${IGNORE_FILE}: ${describeError(error)}.`, {
        hint: `Make ${IGNORE_FILE} a readable file of gitignore patterns.`,
      });
    }
  }
  if (text === undefined && (extra === undefined || extra.length === 0)) return undefined;
  const rules = ignore();
  if (text !== undefined) rules.add(text);
  if (extra !== undefined) rules.add(extra);
  return rules;
}

function readDirectory(directory: string, relative: string, root: string): Dirent[] | undefined {
  try {
    return readdirSync(directory, { withFileTypes: true });
  } catch (error) {
    const code = errnoCode(error);
    // Removed or replaced while we walked: it is simply not part of this tree.
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    if (code === "EACCES" || code === "EPERM") {
      throw new KaosError("IO", `Cannot list directory "${relative}" in bundle ${root}: permission denied.`, {
        hint: `Make it readable and searchable (chmod u+rx) or exclude it in ${IGNORE_FILE}.`,
      });
    }
    throw new KaosError("IO", `Cannot list directory "${relative}" in bundle ${root}: ${describeError(error)}.`);
  }
}

function entryKeys(entries: Dirent[], prefix: string, rules: Ignore | undefined, root: string): string[] {
  const keys: string[] = [];
  for (const entry of entries) {
    const name = entry.name;
    if (ALWAYS_IGNORED.has(name)) continue;
    if (entry.isDirectory()) {
      if (rules !== undefined && rules.ignores(`${prefix}${name}/`)) continue;
      keys.push(`${name}/`);
    } else if (entry.isFile() || entry.isSymbolicLink()) {
      if (rules !== undefined && rules.ignores(prefix + name)) continue;
      keys.push(name);
    } else {
      if (rules !== undefined && rules.ignores(prefix + name)) continue;
      throw new KaosError("BUNDLE_INVALID", `Cannot hash "${prefix}${name}" in bundle ${root}: it is a socket, FIFO or device file, which a bundle cannot hold.`, {
        hint: `Remove it from the bundle or exclude it in ${IGNORE_FILE}.`,
      });
    }
  }
  sortKeys(keys);
  return keys;
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

function toUnsigned(value: bigint | number): bigint {
  const big = typeof value === "bigint" ? value : BigInt(value);
  return big < 0n ? BigInt.asUintN(64, big) : big;
}

function modeCodeOf(mode: TreeFile["mode"]): number {
  return mode === "file" ? MODE_FILE : mode === "exec" ? MODE_EXEC : MODE_SYMLINK;
}

/**
 * Finds each walked path's cache entry. The walk visits paths in sorted order
 * and a cache saved by hashTree lists them in that order too, so a cursor over
 * the cache's keys usually finds the entry with one string comparison; a Map
 * lookup (a hash of a freshly built string, several times slower over 100k
 * paths) is the fallback for new paths and for stores that reorder entries.
 */
class CacheCursor {
  private readonly keys: string[];
  private readonly values: StatCacheEntry[];
  private position = 0;

  constructor(private readonly cache: Map<string, StatCacheEntry>) {
    this.keys = Array.from(cache.keys());
    this.values = Array.from(cache.values());
  }

  find(path: string): StatCacheEntry | undefined {
    while (this.position < this.keys.length) {
      const key = this.keys[this.position]!;
      if (key === path) return this.values[this.position++];
      if (key > path) break;
      this.position++;
    }
    return this.cache.get(path);
  }
}

function makeBatch(
  root: string,
  paths: string[],
  cursor: CacheCursor | undefined,
  savedAt: bigint | undefined,
): StatBatch {
  const count = paths.length;
  const cached: (StatCacheEntry | undefined)[] = new Array<StatCacheEntry | undefined>(count);
  let requestCache: StatBatchRequest["cache"] = null;
  if (cursor !== undefined) {
    const ids = new BigUint64Array(count * 2);
    const sizes = new Float64Array(count);
    const times = new BigInt64Array(count * 2);
    const modes = new Int8Array(count).fill(MODE_NONE);
    for (let index = 0; index < count; index++) {
      const entry = cursor.find(paths[index]!);
      cached[index] = entry;
      if (entry === undefined || savedAt === undefined) continue;
      ids[index * 2] = toUnsigned(entry.dev);
      ids[index * 2 + 1] = toUnsigned(entry.ino);
      sizes[index] = entry.size;
      times[index * 2] = entry.mtimeNs;
      times[index * 2 + 1] = entry.ctimeNs;
      modes[index] = modeCodeOf(entry.mode);
    }
    if (savedAt !== undefined) {
      requestCache = {
        ids,
        sizes,
        times,
        modes,
        fineRacyLimitNs: savedAt - RACY_WINDOW_FINE_NS,
        coarseRacyLimitNs: savedAt - RACY_WINDOW_COARSE_NS,
      };
    }
  }
  return {
    request: {
      kind: "stat",
      id: nextRequestId++,
      rootPrefix: batchRootPrefix(root),
      paths: paths.join("\0"),
      cache: requestCache,
      largeFileBytes: LARGE_FILE_BYTES,
      batchBudgetBytes: BATCH_BUDGET_BYTES,
    },
    paths,
    cached,
  };
}

async function walk(
  root: string,
  rules: Ignore | undefined,
  emit: (paths: string[]) => void,
  failed: () => unknown,
): Promise<void> {
  const stack: WalkFrame[] = [];
  const rootEntries = readDirectory(root, ".", root) ?? [];
  stack.push({ directory: root, prefix: "", keys: entryKeys(rootEntries, "", rules, root), next: 0 });
  let batch: string[] = [];
  let sliceStart = performance.now();
  let sinceCheck = 0;
  while (stack.length > 0) {
    const frame = stack[stack.length - 1]!;
    if (frame.next >= frame.keys.length) {
      stack.pop();
      continue;
    }
    const key = frame.keys[frame.next++]!;
    if (key.endsWith("/")) {
      const name = key.slice(0, -1);
      const prefix = frame.prefix + key;
      const directory = `${frame.directory}/${name}`;
      const entries = readDirectory(directory, frame.prefix + name, root);
      if (entries !== undefined) stack.push({ directory, prefix, keys: entryKeys(entries, prefix, rules, root), next: 0 });
      sinceCheck += 16;
    } else {
      batch.push(frame.prefix + key);
      sinceCheck++;
      if (batch.length === BATCH_FILES) {
        emit(batch);
        batch = [];
      }
    }
    if (sinceCheck >= 256) {
      sinceCheck = 0;
      if (performance.now() - sliceStart >= WALK_SLICE_MS) {
        await yieldToEventLoop();
        if (failed() !== undefined) return;
        sliceStart = performance.now();
      }
    }
  }
  if (batch.length > 0) emit(batch);
}

function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

export async function hashTree(root: string, options: HashTreeOptions = {}): Promise<TreeHash> {
  const absoluteRoot = resolvePath(root);
  // Taken before anything is read, so that every file read in this call was
  // read after this moment (what the racy rule needs from it).
  const cacheTimeNs = nowNs();
  checkRoot(absoluteRoot);
  const rules = loadIgnoreRules(absoluteRoot, options.ignore);
  const workers = workersFor(options.workers);
  const store = options.statCache;
  const cache = store === undefined ? undefined : await store.load(absoluteRoot);
  const savedAt = store?.savedAt?.(absoluteRoot);

  const cursor = cache === undefined || cache.size === 0 ? undefined : new CacheCursor(cache);
  const run = new TreeRun(absoluteRoot, workers);
  const batches: StatBatch[] = [];
  try {
    await walk(
      absoluteRoot,
      rules,
      (paths) => {
        const batch = makeBatch(absoluteRoot, paths, cursor, savedAt);
        batches.push(batch);
        run.enqueue(batch);
      },
      () => run.failed,
    );
  } catch (error) {
    run.abandon(error);
    throw error;
  }
  await run.finish();
  return assemble(absoluteRoot, batches, cache, store, cacheTimeNs);
}

async function assemble(
  root: string,
  batches: StatBatch[],
  cache: Map<string, StatCacheEntry> | undefined,
  store: StatCacheStore | undefined,
  cacheTimeNs: bigint,
): Promise<TreeHash> {
  const files: TreeFile[] = [];
  const entries: StatCacheEntry[] = [];
  const digest = createHash("sha256");
  digest.update(TREE_HASH_HEADER);
  let chunk = "";
  let bytes = 0;
  let hashedFiles = 0;
  let hashedBytes = 0;
  let cacheHits = 0;
  for (const batch of batches) {
    const result = batch.result!;
    let nextInlineHash = 0;
    for (let index = 0; index < batch.paths.length; index++) {
      const status = result.status[index];
      if (status === STATUS_VANISHED) continue;
      const path = batch.paths[index]!;
      let file: TreeFile;
      if (status === STATUS_HIT) {
        const entry = batch.cached[index]!;
        file = { path, mode: entry.mode, size: entry.size, hash: entry.hash };
        entries.push(entry);
        cacheHits++;
      } else {
        let hash: string;
        if (status === STATUS_HASHED) {
          hash = result.hashes.slice(nextInlineHash * 64, nextInlineHash * 64 + 64);
          nextInlineHash++;
        } else {
          hash = batch.lateHashes?.get(index) ?? "";
          if (hash === "") continue;
        }
        const mode = MODE_NAMES[result.modes[index]!]!;
        const size = Number(result.ids[index * 3 + 2]);
        file = { path, mode, size, hash };
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
        hashedFiles++;
        hashedBytes += size;
      }
      files.push(file);
      bytes += file.size;
      chunk += `${file.mode}\0${path}\0${file.hash}\n`;
      if (chunk.length >= 1 << 16) {
        digest.update(chunk);
        chunk = "";
      }
    }
  }
  digest.update(chunk);
  const unchanged = hashedFiles === 0 && cache !== undefined && cacheHits === cache.size;
  if (store !== undefined && !unchanged) await store.save(root, entries, cacheTimeNs);
  return {
    root,
    hash: digest.digest("hex"),
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
