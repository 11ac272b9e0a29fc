/**
 * Worker thread for hash.ts: lstat, stat-cache comparison and content hashing.
 *
 * Everything here is synchronous on purpose: a worker thread has nothing else to
 * do while it waits, and synchronous fs calls skip the promise and libuv
 * threadpool round trip that makes `fs.promises.lstat` several times slower.
 * Memory stays bounded whatever the file size: every read goes through one
 * reused buffer.
 *
 * The main thread sends work in batches and gets results back in typed arrays
 * (transferred, not copied), so a 100k-file tree costs about a hundred messages.
 * This module imports nothing from the project so that it loads fast and the
 * same file runs compiled (dist) or through jiti (tests run the sources).
 */
import { closeSync, constants as fsConstants, lstatSync, openSync, readSync, readlinkSync, type BigIntStats } from "node:fs";
import { createHash, hash as oneShotHash } from "node:crypto";
import { parentPort, workerData } from "node:worker_threads";

/** Mode codes shared with hash.ts (index into MODE_NAMES there). */
export const MODE_FILE = 0;
export const MODE_EXEC = 1;
export const MODE_SYMLINK = 2;
/** Marks "no cache entry" in StatBatchRequest.cachedMode. */
export const MODE_NONE = -1;

/** Per-file outcome of a stat batch. */
export const STATUS_HIT = 0;
export const STATUS_HASHED = 1;
/** Needs hashing, but too big for this batch: the main thread schedules it separately so big files spread over the workers. */
export const STATUS_DEFERRED = 2;
/** Gone between readdir and lstat (an editor's temporary file, say): left out of the tree. */
export const STATUS_VANISHED = 3;

export interface StatBatchRequest {
  kind: "stat";
  id: number;
  /** Absolute bundle root ending with "/". */
  rootPrefix: string;
  /** Relative paths joined with "\0" (one string clones much faster than an array). */
  paths: string;
  /** Cached stat per path, or null when the cache is not to be trusted at all. */
  cache: {
    /** dev, ino per path. */
    ids: BigUint64Array;
    sizes: Float64Array;
    /** mtimeNs, ctimeNs per path. */
    times: BigInt64Array;
    /** MODE_* of the entry, MODE_NONE when the path has no entry. */
    modes: Int8Array;
    /** Files stamped at or after this time are "racy" and re-read (see racyLimits in hash.ts). */
    fineRacyLimitNs: bigint;
    coarseRacyLimitNs: bigint;
  } | null;
  /** Files above this size are deferred rather than hashed inline. */
  largeFileBytes: number;
  /** Inline hashing stops (remaining files are deferred) once a batch has read this many bytes. */
  batchBudgetBytes: number;
}

export interface StatBatchResult {
  kind: "stat";
  id: number;
  status: Uint8Array;
  modes: Uint8Array;
  /** dev, ino, size per path; filled for every status except HIT and VANISHED. */
  ids: BigUint64Array;
  /** mtimeNs, ctimeNs per path; filled like ids. */
  times: BigInt64Array;
  /** Hex digests of the HASHED paths, in path order, concatenated (64 characters each). */
  hashes: string;
  error?: WorkerFileError;
}

export interface HashJobRequest {
  kind: "hash";
  id: number;
  rootPrefix: string;
  paths: string[];
}

export interface HashJobResult {
  kind: "hash";
  id: number;
  /** Hex digest per path; "" when the file vanished meanwhile. */
  hashes: string[];
  error?: WorkerFileError;
}

export interface WorkerFileError {
  path: string;
  /** "special" for sockets, FIFOs and devices; otherwise the errno code (EACCES, ...). */
  code: string;
  message: string;
}

export type WorkerRequest = StatBatchRequest | HashJobRequest;
export type WorkerResult = StatBatchResult | HashJobResult;

/** workerData that marks a thread as a hash worker (hash.ts imports this module's constants on the main thread too). */
export const HASH_WORKER_MARK = "kaos-hash-worker";

const BUFFER_BYTES = 1 << 20;
let reusedBuffer: Buffer | undefined;
// O_NONBLOCK: if a file is swapped for a FIFO after lstat, open must not hang.
// O_NOFOLLOW: nor may a file swapped for a symlink be followed out of the bundle.
const OPEN_FLAGS = fsConstants.O_RDONLY | fsConstants.O_NONBLOCK | fsConstants.O_NOFOLLOW;

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFDIR = 0o040000;
const S_IXUSR = 0o100;
const NS_PER_SECOND = 1_000_000_000n;

class FileError extends Error {
  constructor(
    readonly path: string,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function errnoOf(error: unknown): string {
  if (typeof error === "object" && error !== null && "code" in error && typeof error.code === "string") return error.code;
  return "EIO";
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Streams a regular file through the reused buffer; small files take a one-shot digest. */
export function hashRegularFile(absolutePath: string): string {
  reusedBuffer ??= Buffer.allocUnsafe(BUFFER_BYTES);
  const buffer = reusedBuffer;
  const fd = openSync(absolutePath, OPEN_FLAGS);
  try {
    let filled = 0;
    let read = 0;
    do {
      read = readSync(fd, buffer, filled, BUFFER_BYTES - filled, null);
      filled += read;
    } while (read > 0 && filled < BUFFER_BYTES);
    if (read === 0) return oneShotHash("sha256", buffer.subarray(0, filled), "hex");
    const digest = createHash("sha256");
    digest.update(buffer.subarray(0, filled));
    for (;;) {
      read = readSync(fd, buffer, 0, BUFFER_BYTES, null);
      if (read === 0) break;
      digest.update(buffer.subarray(0, read));
    }
    return digest.digest("hex");
  } finally {
    closeSync(fd);
  }
}

function hashSymlink(absolutePath: string): { hash: string; size: number } {
  const target = readlinkSync(absolutePath, { encoding: "buffer" });
  return { hash: oneShotHash("sha256", target, "hex"), size: target.length };
}

function modeCode(stats: BigIntStats, relativePath: string): number {
  const mode = Number(stats.mode);
  const type = mode & S_IFMT;
  if (type === S_IFREG) return (mode & S_IXUSR) !== 0 ? MODE_EXEC : MODE_FILE;
  if (type === S_IFLNK) return MODE_SYMLINK;
  if (type === S_IFDIR) throw new FileError(relativePath, "EISDIR", "it became a directory while the bundle was being hashed");
  throw new FileError(relativePath, "special", "it is a socket, FIFO or device file, which a bundle cannot hold");
}

function runStatBatch(request: StatBatchRequest): StatBatchResult {
  const paths = request.paths.split("\0");
  const count = paths.length;
  const status = new Uint8Array(count);
  const modes = new Uint8Array(count);
  const ids = new BigUint64Array(count * 3);
  const times = new BigInt64Array(count * 2);
  const hashes: string[] = [];
  const cache = request.cache;
  let budget = request.batchBudgetBytes;
  const result: StatBatchResult = { kind: "stat", id: request.id, status, modes, ids, times, hashes: "" };
  for (let index = 0; index < count; index++) {
    const relativePath = paths[index]!;
    const absolutePath = request.rootPrefix + relativePath;
    try {
      const stats = lstatSync(absolutePath, { bigint: true, throwIfNoEntry: false });
      if (stats === undefined) {
        status[index] = STATUS_VANISHED;
        continue;
      }
      const mode = modeCode(stats, relativePath);
      modes[index] = mode;
      if (cache !== null && cache.modes[index] === mode && isUnchanged(cache, index, stats)) {
        status[index] = STATUS_HIT;
        continue;
      }
      ids[index * 3] = stats.dev;
      ids[index * 3 + 1] = stats.ino;
      ids[index * 3 + 2] = stats.size;
      times[index * 2] = stats.mtimeNs;
      times[index * 2 + 1] = stats.ctimeNs;
      if (mode === MODE_SYMLINK) {
        const link = hashSymlink(absolutePath);
        ids[index * 3 + 2] = BigInt(link.size);
        hashes.push(link.hash);
        status[index] = STATUS_HASHED;
        continue;
      }
      const size = Number(stats.size);
      if (size > request.largeFileBytes || size > budget) {
        status[index] = STATUS_DEFERRED;
        continue;
      }
      budget -= size;
      hashes.push(hashRegularFile(absolutePath));
      status[index] = STATUS_HASHED;
    } catch (error) {
      const code = errnoOf(error);
      if (code === "ENOENT") {
        status[index] = STATUS_VANISHED;
        continue;
      }
      result.error = toFileError(error, relativePath);
      break;
    }
  }
  result.hashes = hashes.join("");
  return result;
}

function isUnchanged(cache: NonNullable<StatBatchRequest["cache"]>, index: number, stats: BigIntStats): boolean {
  if (
    cache.ids[index * 2] !== stats.dev ||
    cache.ids[index * 2 + 1] !== stats.ino ||
    cache.sizes[index] !== Number(stats.size) ||
    cache.times[index * 2] !== stats.mtimeNs ||
    cache.times[index * 2 + 1] !== stats.ctimeNs
  ) {
    return false;
  }
  // Racy rule: a file stamped too close to the moment its content was last read
  // may have been written again within the same timestamp tick, leaving the same
  // stat behind. Such files are re-read until they have aged past the window.
  const newest = stats.mtimeNs > stats.ctimeNs ? stats.mtimeNs : stats.ctimeNs;
  if (newest < cache.coarseRacyLimitNs) return true;
  const fineGrained = stats.ctimeNs % NS_PER_SECOND !== 0n;
  return fineGrained && newest < cache.fineRacyLimitNs;
}

function toFileError(error: unknown, relativePath: string): WorkerFileError {
  if (error instanceof FileError) return { path: error.path, code: error.code, message: error.message };
  return { path: relativePath, code: errnoOf(error), message: describe(error) };
}

function runHashJob(request: HashJobRequest): HashJobResult {
  const result: HashJobResult = { kind: "hash", id: request.id, hashes: [] };
  for (const relativePath of request.paths) {
    try {
      result.hashes.push(hashRegularFile(request.rootPrefix + relativePath));
    } catch (error) {
      if (errnoOf(error) === "ENOENT") {
        result.hashes.push("");
        continue;
      }
      result.error = toFileError(error, relativePath);
      break;
    }
  }
  return result;
}

function transferList(result: WorkerResult): ArrayBuffer[] {
  if (result.kind !== "stat") return [];
  return [result.status.buffer, result.modes.buffer, result.ids.buffer, result.times.buffer] as ArrayBuffer[];
}

if (parentPort !== null && workerData === HASH_WORKER_MARK) {
  const port = parentPort;
  port.on("message", (request: WorkerRequest) => {
    const result = request.kind === "stat" ? runStatBatch(request) : runHashJob(request);
    port.postMessage(result, transferList(result));
  });
}
