/**
 * The walking and hashing that hash.ts runs on its worker threads
 * (hash-worker.ts is their entry point): directory listing, lstat and content
 * hashing, and the bundle rules every walker shares (what is always left out,
 * editors' files).
 *
 * Everything here is synchronous on purpose: a worker thread has nothing else to
 * do while it waits, and synchronous fs calls skip the promise and libuv
 * threadpool round trip that makes `fs.promises.lstat` several times slower.
 * Memory stays bounded whatever the file size: every read goes through one
 * reused buffer.
 *
 * Work comes in units (a directory to walk, or a run of file names in one
 * directory) and results go back in typed arrays that are transferred, not
 * copied, so a 100k-file tree costs on the order of a hundred messages. A unit
 * walks depth-first in path order until it has done `entryBudget` entries,
 * then hands the rest back as new units, in order, for any worker to take: one
 * huge directory or one deep subtree still spreads over every worker.
 *
 * This module imports nothing from the project so that the same file runs
 * compiled (dist) or through jiti (tests run the sources).
 */
import { createHash, hash as oneShotHash } from "node:crypto";
import type { BigIntStats, Dirent } from "node:fs";
import { createRequire } from "node:module";
import { runStatCheck, type StatCheckRequest, type StatCheckResult } from "./seal-stats.js";
import type { Ignore } from "ignore";

// The module itself rather than its ES module facade, whose making reads every
// export (and so loads the streams) in each thread that imports it.
const { closeSync, constants: fsConstants, lstatSync, openSync, readSync, readdirSync, readlinkSync } = process.getBuiltinModule("node:fs");

/** workerData that marks a thread as a hash worker (hash.ts imports this module's constants on the main thread too). */
export const HASH_WORKER_MARK = "kaos-hash-worker";

/** Mode codes, indexes into MODE_NAMES. */
export const MODE_FILE = 0;
export const MODE_EXEC = 1;
export const MODE_SYMLINK = 2;
export const MODE_NAMES = ["file", "exec", "symlink"] as const;

/** Per-file outcome of a walk. */
export const STATUS_STATTED = 0;
export const STATUS_HASHED = 1;
/** Needs hashing, but too big for inline work: the main thread hands it out on its own so big files spread over the workers. */
export const STATUS_DEFERRED = 2;
/** Gone between readdir and lstat (an editor's temporary file, say): left out of the tree. */
export const STATUS_VANISHED = 3;
/** Its stat cache entry still describes it: not read, and only its position in the cache comes back. */
export const STATUS_HIT = 4;

/** Skipped at any depth, whatever .kaosignore says. */
export const ALWAYS_IGNORED: ReadonlySet<string> = new Set([".git", ".kaos", "node_modules", "__pycache__"]);

/**
 * Files an editor or file manager keeps beside the files it has open: swap,
 * lock and autosave files, and folder metadata. Left out of every tree, so
 * that a bundle's key does not depend on which editor had it open. Only
 * names no dataset or program would choose; backups (`name~`) and `.tmp`
 * files stay in. Every trailing pattern ends in 'p' or '_'.
 */
const EDITOR_FILES_LEADING = [
  /^\..+\.sw[a-p]$/, // vim's swap files (.name.swp, .name.swo, ...)
  /^\.#/, // emacs lock links
  /^#.*#$/, // emacs autosave
  /^\.DS_Store$/, // macOS Finder
  /^\.~lock\..*#$/, // LibreOffice
  /^\.goutputstream-/, // GNOME
];
const EDITOR_FILES_TRAILING = [".kate-swp", "___jb_tmp___", "___jb_old___", ".crswap"]; // Kate, JetBrains, Chrome

/** On every file of every walk: two character tests rule out nearly every name before a pattern runs. */
export function isEditorFile(name: string): boolean {
  const first = name.charCodeAt(0);
  if ((first === 0x2e || first === 0x23) && EDITOR_FILES_LEADING.some((pattern) => pattern.test(name))) return true;
  const last = name.charCodeAt(name.length - 1);
  return (last === 0x70 || last === 0x5f) && EDITOR_FILES_TRAILING.some((suffix) => name.endsWith(suffix));
}

export interface WalkUnit {
  /** Directory relative to the root: "" or ending with "/". */
  prefix: string;
  /** Null: walk the directory. Otherwise these names ("\0"-joined, sorted) in it, files or symlinks only. */
  names: string | null;
}

/**
 * A stat cache laid out for the workers to compare against in place: columns
 * in one buffer shared by every thread, one row per file, rows sorted by the
 * UTF-8 bytes of their paths (the order of the walk). Offsets are byte
 * offsets into `bytes`, each a multiple of 8.
 */
export interface PackedColumns {
  /** On a SharedArrayBuffer, so that sending it to a worker copies nothing. */
  bytes: Uint8Array;
  count: number;
  /** u64 per row: dev, ino (the bits of the unsigned value); i64: mtimeNs, ctimeNs. */
  dev: number;
  ino: number;
  mtime: number;
  ctime: number;
  /** f64 per row. */
  size: number;
  /** u32 per row: where path i ends in the path section; it starts one byte after path i - 1 ends (paths are NUL-joined). */
  pathEnd: number;
  /** u8 per row, bits 0-1: MODE_*. */
  kind: number;
  /** UTF-8 paths joined by NUL. */
  paths: number;
  /** When the walk that saved the cache started; with the windows below, the racy rule's limits. */
  savedAt: bigint;
}

/** The racy windows of hash.ts, here so the workers apply the same rule. */
export const RACY_WINDOW_FINE_NS = 1_000_000_000n;
export const RACY_WINDOW_COARSE_NS = 3_000_000_000n;
const NS_PER_SECOND = 1_000_000_000n;

export interface WalkRequest {
  kind: "walk";
  id: number;
  /** Absolute bundle root ending with "/". */
  rootPrefix: string;
  units: WalkUnit[];
  /** Gitignore patterns (.kaosignore text and extra patterns), or null. */
  ignoreRules: string[] | null;
  /** Every file and symlink, ignoring nothing; sockets, FIFOs and devices are left out instead of refused. */
  everyFile: boolean;
  /** Hash while walking (there is no trusted stat cache to spare the reads). */
  hashInline: boolean;
  /** Compare every file with this cache; `cacheId` names it, so that a worker decodes it once. */
  cache: PackedColumns | null;
  cacheId: number;
  entryBudget: number;
  largeFileBytes: number;
  /** Inline hashing stops (later files are deferred) once a unit has read this many bytes. */
  byteBudget: number;
}

export interface UnitResult {
  /** Relative paths, "\0"-joined, in path order. */
  paths: string;
  status: Uint8Array;
  modes: Uint8Array;
  /** dev, ino, size per path (size of a symlink: its target's byte length). */
  ids: BigUint64Array;
  /** mtimeNs, ctimeNs per path. */
  times: BigInt64Array;
  /** Hex digests of the HASHED paths, in order, concatenated (64 characters each). */
  hashes: string;
  /** Per path, its row in the stat cache when it is a HIT, else -1. */
  cacheRows: Int32Array;
  /**
   * Every path is a HIT, at consecutive rows from `firstRow` (`paths` is then
   * left empty: nobody needs it). Vacuously true for a unit of no paths.
   */
  allHits: boolean;
  firstRow: number;
  /** The rest of the unit, in path order: everything here sorts after `paths`. */
  children: WalkUnit[];
  /** The folders this unit listed, relative ("" for the root), "\0"-joined in path order. */
  folders: string;
  /** dev, ino, mtimeNs, ctimeNs per folder, each stat'ed just before it was listed (dev and ino as their bits). */
  folderStats: BigInt64Array;
  /** A folder listed here held what the tree leaves out (ignored, editors' or special files), or nothing; or a file vanished. */
  inexact: boolean;
}

export interface WalkResult {
  kind: "walk";
  id: number;
  units: UnitResult[];
  error?: WorkerFileError;
}

export interface HashJobRequest {
  kind: "hash";
  id: number;
  rootPrefix: string;
  paths: string[];
  /** MODE_* per path: symlinks hash their target string. */
  modes: number[];
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
  /** "special" for sockets, FIFOs and devices, "badname" for a name that is not UTF-8; otherwise the errno code (EACCES, ...). */
  code: string;
  directory: boolean;
  message: string;
}

/** What a worker thread posts once, when its start-up is over and it takes requests. */
export const WORKER_READY = "ready";

export type WorkerRequest = WalkRequest | HashJobRequest | StatCheckRequest;
export type WorkerResult = WalkResult | HashJobResult | StatCheckResult;

/** What a thread does with `request`. */
export function runRequest(request: WorkerRequest): WorkerResult {
  return request.kind === "walk" ? runWalk(request) : request.kind === "hash" ? runHashJob(request) : runStatCheck(request);
}

const BUFFER_BYTES = 1 << 20;
let reusedBuffer: Buffer | undefined;
// O_NONBLOCK: if a file is swapped for a FIFO after lstat, open must not hang.
// O_NOFOLLOW: nor may a file swapped for a symlink be followed out of the bundle.
const OPEN_FLAGS = fsConstants.O_RDONLY | fsConstants.O_NONBLOCK | fsConstants.O_NOFOLLOW;
/** Names per deferred run of files. */
const NAMES_PER_UNIT = 1024;
/** What listing a directory costs against the entry budget, in files. */
const DIRECTORY_COST = 8;

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFDIR = 0o040000;
const S_IXUSR = 0o100;

class FileError extends Error {
  constructor(
    readonly path: string,
    readonly code: string,
    readonly directory: boolean,
    message: string,
  ) {
    super(message);
  }
}

function errnoOf(error: unknown): string {
  if (typeof error === "object" && error !== null && "code" in error && typeof error.code === "string") return error.code;
  return "EIO";
}

function toFileError(error: unknown, path: string, directory: boolean): WorkerFileError {
  if (error instanceof FileError) return { path: error.path, code: error.code, directory: error.directory, message: error.message };
  return { path, code: errnoOf(error), directory, message: error instanceof Error ? error.message : String(error) };
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

function readLink(absolutePath: string): Buffer {
  return readlinkSync(absolutePath, { encoding: "buffer" });
}

/** How a tree hashes a symlink: the SHA-256 of its target's bytes. */
export function hashLinkTarget(absolutePath: string): string {
  return oneShotHash("sha256", readLink(absolutePath), "hex");
}

// ---------------------------------------------------------------------------
// Sorting and ignore rules.

/**
 * Sorting directory names with '/' appended makes a depth-first walk emit
 * paths in the byte order of the whole path ("a-b" < "a/c" because '-' < '/').
 * Plain string comparison is UTF-16 order, which differs from UTF-8 byte
 * order only for characters outside the BMP; names holding those are sorted
 * by code point instead.
 */
export function sortKeys(keys: string[]): void {
  keys.sort();
  if (keys.some((key) => /[\uD800-\uDFFF]/.test(key))) keys.sort(compareCodePoints);
}

/** Paths in the order of their UTF-8 bytes (that of JS `<` unless one holds a surrogate pair): the order of walks and stat caches. */
export function comparePaths(left: string, right: string): number {
  if (/[\uD800-\uDFFF]/.test(left) || /[\uD800-\uDFFF]/.test(right)) {
    return Buffer.compare(Buffer.from(left, "utf8"), Buffer.from(right, "utf8"));
  }
  return left < right ? -1 : left > right ? 1 : 0;
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

let rulesSource: string[] | null = null;
let rules: Ignore | undefined;

/** The gitignore matcher of these patterns (the last one made is kept), or undefined for none. */
export function rulesFor(patterns: string[] | null): Ignore | undefined {
  if (patterns === null) return undefined;
  if (rulesSource === null || rulesSource.length !== patterns.length || rulesSource.some((rule, index) => rule !== patterns[index])) {
    // Loaded on first need: most bundles have no .kaosignore, and every module
    // a worker loads delays its start.
    const ignore = createRequire(import.meta.url)("ignore") as typeof import("ignore");
    rulesSource = patterns;
    rules = ignore().add(patterns);
  }
  return rules;
}

/**
 * Paths are UTF-8 strings everywhere (the tree encoding, the listing, the
 * stat cache). A name that is not valid UTF-8 reads back with U+FFFD in it
 * and could not be opened under that name: refuse it by name instead of
 * silently leaving the file out.
 */
function checkNameEncoding(directory: string, prefix: string, name: string): void {
  const encoded = Buffer.from(name, "utf8");
  const lossy = readdirSync(directory, { encoding: "buffer" }).some((raw) => raw.toString("utf8") === name && !encoded.equals(raw));
  if (lossy) {
    throw new FileError(prefix + name, "badname", false, "its name is not valid UTF-8");
  }
}

/** Names of a listing that belong to the tree, directories with '/' appended, in walk order. */
function entryKeys(entries: Dirent[], directory: string, prefix: string, ignored: Ignore | undefined, everyFile: boolean): string[] {
  const keys: string[] = [];
  for (const entry of entries) {
    const name = entry.name;
    if (name.includes("\uFFFD")) checkNameEncoding(directory, prefix, name);
    if (!everyFile && ALWAYS_IGNORED.has(name)) continue;
    if (entry.isDirectory()) {
      if (ignored?.ignores(`${prefix}${name}/`)) continue;
      keys.push(`${name}/`);
      continue;
    }
    if (!everyFile && (isEditorFile(name) || ignored?.ignores(prefix + name))) continue;
    if (!entry.isFile() && !entry.isSymbolicLink()) {
      if (everyFile) continue;
      throw new FileError(prefix + name, "special", false, "it is a socket, FIFO or device file");
    }
    keys.push(name);
  }
  sortKeys(keys);
  return keys;
}

// ---------------------------------------------------------------------------
// Comparing with the stat cache.

/** 64-bit values are compared by their two 32-bit words: reading them as bigints would allocate one per read. */
const scratch = new BigInt64Array(1);
const scratchWords = new Int32Array(scratch.buffer);

/**
 * Binary search over `count` rows in sorted order; `compare(row)` orders the
 * row against the sought key. Gives the row found (or -1) and the row after
 * it (or where the key would go), where an in-order caller looks next.
 */
export function searchSortedRows(count: number, compare: (row: number) => number): { row: number; next: number } {
  let low = 0;
  let high = count - 1;
  while (low <= high) {
    const middle = (low + high) >>> 1;
    const order = compare(middle);
    if (order === 0) return { row: middle, next: middle + 1 };
    if (order < 0) low = middle + 1;
    else high = middle - 1;
  }
  return { row: -1, next: low };
}

/**
 * One worker's reading of a packed stat cache. Units arrive in path order
 * within themselves, so after one binary search per unit each file finds its
 * row with one comparison against the bytes, allocating nothing.
 */
class CacheView {
  private readonly words: Int32Array;
  private readonly sizes: Float64Array;
  private readonly pathEnds: Uint32Array;
  private readonly kinds: Uint8Array;
  private readonly paths: Uint8Array;
  private readonly count: number;
  private readonly fineLimit: bigint;
  private readonly coarseLimit: bigint;
  /** Where the next lookup looks first. */
  private cursor = 0;

  constructor(
    readonly id: number,
    columns: PackedColumns,
  ) {
    const { bytes, count } = columns;
    const at = (offset: number): number => bytes.byteOffset + offset;
    this.count = count;
    // dev, ino, mtime and ctime are adjacent columns of `count` 64-bit values.
    this.words = new Int32Array(bytes.buffer, at(columns.dev), 8 * count);
    this.sizes = new Float64Array(bytes.buffer, at(columns.size), count);
    this.pathEnds = new Uint32Array(bytes.buffer, at(columns.pathEnd), count);
    this.kinds = new Uint8Array(bytes.buffer, at(columns.kind), count);
    this.paths = new Uint8Array(bytes.buffer, at(columns.paths), bytes.byteLength - columns.paths);
    this.fineLimit = columns.savedAt - RACY_WINDOW_FINE_NS;
    this.coarseLimit = columns.savedAt - RACY_WINDOW_COARSE_NS;
  }

  /** The row of `path`, or -1. */
  find(path: string): number {
    if (this.cursor < this.count && this.compare(this.cursor, path) === 0) return this.cursor++;
    const found = searchSortedRows(this.count, (row) => this.compare(row, path));
    this.cursor = found.next;
    return found.row;
  }

  /** The stored path of `row` against `path`, in UTF-8 byte order. */
  private compare(row: number, path: string): number {
    const start = row === 0 ? 0 : this.pathEnds[row - 1]! + 1;
    const length = this.pathEnds[row]! - start;
    const paths = this.paths;
    const shared = Math.min(length, path.length);
    for (let index = 0; index < shared; index++) {
      const code = path.charCodeAt(index);
      // ASCII code units are their own UTF-8 bytes; past the first other one, compare the encoding.
      if (code >= 0x80) return this.compareEncoded(start, length, path);
      const order = paths[start + index]! - code;
      if (order !== 0) return order;
    }
    // One is a prefix of the other (in bytes, as far as it is ASCII).
    return length - path.length;
  }

  private compareEncoded(start: number, length: number, path: string): number {
    return Buffer.compare(this.paths.subarray(start, start + length), Buffer.from(path, "utf8"));
  }

  /** Whether `row` still describes a file with these stats and mode, outside the racy window. */
  unchanged(row: number, stats: BigIntStats, modeCode: number): boolean {
    if ((this.kinds[row]! & 3) !== modeCode || this.sizes[row] !== Number(stats.size)) return false;
    const words = this.words;
    const column = 2 * this.count;
    const at = 2 * row;
    scratch[0] = stats.mtimeNs;
    if (scratchWords[0] !== words[2 * column + at] || scratchWords[1] !== words[2 * column + at + 1]) return false;
    scratch[0] = stats.ctimeNs;
    if (scratchWords[0] !== words[3 * column + at] || scratchWords[1] !== words[3 * column + at + 1]) return false;
    scratch[0] = stats.ino;
    if (scratchWords[0] !== words[column + at] || scratchWords[1] !== words[column + at + 1]) return false;
    scratch[0] = stats.dev;
    if (scratchWords[0] !== words[at] || scratchWords[1] !== words[at + 1]) return false;
    return isOutsideRacyWindow(stats.mtimeNs, stats.ctimeNs, this.fineLimit, this.coarseLimit);
  }
}

/**
 * Racy rule (see the top of hash.ts): a file stamped too close to the moment
 * its content was last read may have been written again within the same
 * timestamp tick, leaving the same stat behind; it is read again until it has
 * aged past the window.
 */
export function isOutsideRacyWindow(mtimeNs: bigint, ctimeNs: bigint, fineLimit: bigint, coarseLimit: bigint): boolean {
  const newest = mtimeNs > ctimeNs ? mtimeNs : ctimeNs;
  if (newest < coarseLimit) return true;
  return ctimeNs % NS_PER_SECOND !== 0n && newest < fineLimit;
}

let cacheView: CacheView | undefined;

function cacheViewFor(request: WalkRequest): CacheView | undefined {
  if (request.cache === null) return undefined;
  if (cacheView?.id !== request.cacheId) cacheView = new CacheView(request.cacheId, request.cache);
  return cacheView;
}

// ---------------------------------------------------------------------------
// Walking.

class UnitCollector {
  private capacity = 256;
  count = 0;
  private readonly paths: string[] = [];
  private status = new Uint8Array(this.capacity);
  private modes = new Uint8Array(this.capacity);
  private ids = new BigUint64Array(this.capacity * 3);
  private times = new BigInt64Array(this.capacity * 2);
  private cacheRows = new Int32Array(this.capacity);
  private readonly hashes: string[] = [];
  /** Every file so far is a HIT at consecutive rows. */
  private allHits = true;
  readonly children: WalkUnit[] = [];
  private readonly folders: string[] = [];
  private readonly folderStats: bigint[] = [];
  private inexact = false;
  bytesLeft: number;
  entriesLeft: number;

  constructor(
    private readonly request: WalkRequest,
    private readonly ignored: Ignore | undefined,
    private readonly cache: CacheView | undefined,
  ) {
    this.bytesLeft = request.byteBudget;
    this.entriesLeft = request.entryBudget;
  }

  private grow(): void {
    this.capacity *= 2;
    const status = new Uint8Array(this.capacity);
    status.set(this.status);
    this.status = status;
    const modes = new Uint8Array(this.capacity);
    modes.set(this.modes);
    this.modes = modes;
    const ids = new BigUint64Array(this.capacity * 3);
    ids.set(this.ids);
    this.ids = ids;
    const times = new BigInt64Array(this.capacity * 2);
    times.set(this.times);
    this.times = times;
    const cacheRows = new Int32Array(this.capacity);
    cacheRows.set(this.cacheRows);
    this.cacheRows = cacheRows;
  }

  visitDirectory(prefix: string): void {
    let entries: Dirent[];
    // Stat'ed before it is listed: an entry added or removed after the listing moves its inode change time.
    let folder: BigIntStats | undefined;
    try {
      folder = lstatSync(this.request.rootPrefix + prefix, { bigint: true, throwIfNoEntry: false });
      entries = readdirSync(this.request.rootPrefix + prefix, { withFileTypes: true });
    } catch (error) {
      const code = errnoOf(error);
      // Removed or replaced while we walked: it is simply not part of this tree.
      if (code === "ENOENT" || code === "ENOTDIR") {
        this.inexact = true;
        return;
      }
      throw new FileError(prefix === "" ? "." : prefix.slice(0, -1), code, true, error instanceof Error ? error.message : String(error));
    }
    this.entriesLeft -= DIRECTORY_COST;
    const keys = entryKeys(entries, this.request.rootPrefix + prefix, prefix, this.ignored, this.request.everyFile);
    if (folder === undefined || keys.length !== entries.length || entries.length === 0) this.inexact = true;
    if (folder !== undefined) {
      this.folders.push(prefix === "" ? "" : prefix.slice(0, -1));
      this.folderStats.push(BigInt.asIntN(64, folder.dev), BigInt.asIntN(64, folder.ino), folder.mtimeNs, folder.ctimeNs);
    }
    for (let index = 0; index < keys.length; index++) {
      if (this.entriesLeft <= 0) {
        this.deferRest(prefix, keys, index);
        return;
      }
      const key = keys[index]!;
      if (key.endsWith("/")) this.visitDirectory(prefix + key);
      else this.visitFile(prefix + key);
    }
  }

  private deferRest(prefix: string, keys: string[], from: number): void {
    let names: string[] = [];
    const flush = (): void => {
      if (names.length > 0) this.children.push({ prefix, names: names.join("\0") });
      names = [];
    };
    for (let index = from; index < keys.length; index++) {
      const key = keys[index]!;
      if (key.endsWith("/")) {
        flush();
        this.children.push({ prefix: prefix + key, names: null });
      } else {
        names.push(key);
        if (names.length === NAMES_PER_UNIT) flush();
      }
    }
    flush();
  }

  visitNames(prefix: string, names: string): void {
    const list = names.split("\0");
    for (let index = 0; index < list.length; index++) {
      if (this.entriesLeft <= 0) {
        this.deferRest(prefix, list, index);
        return;
      }
      this.visitFile(prefix + list[index]!);
    }
  }

  visitFile(path: string): void {
    this.entriesLeft--;
    const absolutePath = this.request.rootPrefix + path;
    let stats: BigIntStats | undefined;
    try {
      stats = lstatSync(absolutePath, { bigint: true, throwIfNoEntry: false });
    } catch (error) {
      throw new FileError(path, errnoOf(error), false, error instanceof Error ? error.message : String(error));
    }
    if (this.count === this.capacity) this.grow();
    const index = this.count++;
    this.paths.push(path);
    this.cacheRows[index] = -1;
    if (stats === undefined || (this.request.everyFile && !stats.isFile() && !stats.isSymbolicLink() && !stats.isDirectory())) {
      this.status[index] = STATUS_VANISHED;
      this.allHits = false;
      this.inexact = true;
      return;
    }
    const mode = Number(stats.mode);
    const type = mode & S_IFMT;
    let modeCode: number;
    if (type === S_IFREG) modeCode = (mode & S_IXUSR) !== 0 ? MODE_EXEC : MODE_FILE;
    else if (type === S_IFLNK) modeCode = MODE_SYMLINK;
    else if (type === S_IFDIR) throw new FileError(path, "EISDIR", false, "it became a directory while the bundle was being hashed");
    else throw new FileError(path, "special", false, "it is a socket, FIFO or device file");
    this.modes[index] = modeCode;
    const cache = this.cache;
    if (cache !== undefined) {
      const row = cache.find(path);
      if (row >= 0 && cache.unchanged(row, stats, modeCode)) {
        this.status[index] = STATUS_HIT;
        this.cacheRows[index] = row;
        if (index > 0 && this.cacheRows[index - 1] !== row - 1) this.allHits = false;
        return;
      }
    }
    this.allHits = false;
    this.ids[index * 3] = stats.dev;
    this.ids[index * 3 + 1] = stats.ino;
    this.ids[index * 3 + 2] = stats.size;
    this.times[index * 2] = stats.mtimeNs;
    this.times[index * 2 + 1] = stats.ctimeNs;
    if (!this.request.hashInline) {
      this.status[index] = STATUS_STATTED;
      return;
    }
    try {
      if (modeCode === MODE_SYMLINK) {
        const target = readLink(absolutePath);
        this.ids[index * 3 + 2] = BigInt(target.length);
        this.hashes.push(oneShotHash("sha256", target, "hex"));
        this.status[index] = STATUS_HASHED;
        return;
      }
      const size = Number(stats.size);
      if (size > this.request.largeFileBytes || size > this.bytesLeft) {
        this.status[index] = STATUS_DEFERRED;
        return;
      }
      this.bytesLeft -= size;
      this.hashes.push(hashRegularFile(absolutePath));
      this.status[index] = STATUS_HASHED;
    } catch (error) {
      if (errnoOf(error) !== "ENOENT")
        throw new FileError(path, errnoOf(error), false, error instanceof Error ? error.message : String(error));
      this.status[index] = STATUS_VANISHED;
      this.inexact = true;
    }
  }

  finish(): UnitResult {
    return {
      paths: this.allHits ? "" : this.paths.join("\0"),
      status: this.status.slice(0, this.count),
      modes: this.modes.slice(0, this.count),
      ids: this.ids.slice(0, this.count * 3),
      times: this.times.slice(0, this.count * 2),
      hashes: this.hashes.join(""),
      cacheRows: this.cacheRows.slice(0, this.count),
      allHits: this.allHits,
      firstRow: this.count === 0 ? -1 : this.cacheRows[0]!,
      children: this.children,
      folders: this.folders.join("\0"),
      folderStats: BigInt64Array.from(this.folderStats),
      inexact: this.inexact,
    };
  }
}

export function runWalk(request: WalkRequest): WalkResult {
  const result: WalkResult = { kind: "walk", id: request.id, units: [] };
  const ignored = rulesFor(request.ignoreRules);
  const cache = cacheViewFor(request);
  for (const unit of request.units) {
    const collector = new UnitCollector(request, ignored, cache);
    try {
      if (unit.names === null) collector.visitDirectory(unit.prefix);
      else collector.visitNames(unit.prefix, unit.names);
    } catch (error) {
      result.error = toFileError(error, unit.prefix, unit.names === null);
      return result;
    }
    result.units.push(collector.finish());
  }
  return result;
}

export function runHashJob(request: HashJobRequest): HashJobResult {
  const result: HashJobResult = { kind: "hash", id: request.id, hashes: [] };
  for (let index = 0; index < request.paths.length; index++) {
    const path = request.paths[index]!;
    const absolutePath = request.rootPrefix + path;
    try {
      if (request.modes[index] === MODE_SYMLINK) result.hashes.push(hashLinkTarget(absolutePath));
      else result.hashes.push(hashRegularFile(absolutePath));
    } catch (error) {
      if (errnoOf(error) === "ENOENT") {
        result.hashes.push("");
        continue;
      }
      result.error = toFileError(error, path, false);
      break;
    }
  }
  return result;
}
