/**
 * The stat cache's storage format: one tree's entries as one columnar blob, so
 * that loading 100k entries is one row read and the hashing threads can read
 * it in place. The state store keeps the blobs; this file owns their bytes.
 */
import type { PackedStatCache, StatCacheEntry, StatCacheRows, TreeFile } from "./hash.js";
import { searchSortedRows, type PackedColumns } from "./tree-walk.js";

/*
 * One tree's stat cache is one blob, so loading 100k entries is one row read, and
 * the blob is read in place rather than turned into 100k objects up front.
 * Columnar layout, little-endian, every section 8-byte aligned so that typed
 * arrays can view it without copying:
 *
 *   header   u32 magic "KSC1", count, flags, pathBytes, hashBytes, 3 x reserved
 *   dev      u64 x count          ino     u64 x count
 *   mtimeNs  i64 x count          ctimeNs i64 x count
 *   size     f64 x count
 *   pathEnd  u32 x count   end of path i in the path section
 *   kind     u8 x count    bits 0-1 mode; bit 2/3: dev/ino were numbers, not bigints
 *   hashes   32 bytes x count when every hash is 64 lowercase hex digits (FLAG_RAW_HASHES),
 *            else the hash strings joined by NUL, hashBytes long
 *   paths    UTF-8, joined by NUL (no path holds one)
 *   tree     with FLAG_TREE_HASH: the 32-byte tree hash of exactly these entries,
 *            so that a walk that finds every file unchanged need not recompute it
 *
 * FLAG_SORTED means the paths are in strictly ascending order of their UTF-8
 * bytes, the order of the walk: the hashing threads then compare against the
 * blob in place (see `packed`).
 */
const STAT_CACHE_MAGIC = 0x3143_534b; // "KSC1" as a little-endian u32
const HEADER_BYTES = 32;
const FLAG_RAW_HASHES = 1;
const FLAG_ASCII_PATHS = 2;
/** Paths are in strictly ascending order of their UTF-8 bytes. */
const FLAG_SORTED = 4;
const FLAG_TREE_HASH = 8;
const TREE_HASH_BYTES = 32;
const MODES: readonly StatCacheEntry["mode"][] = ["file", "exec", "symlink"];
const MODE_CODES: Readonly<Record<StatCacheEntry["mode"], number>> = { file: 0, exec: 1, symlink: 2 };
const DEV_IS_NUMBER = 4;
const DEV_COLUMN = 0;
const INO_COLUMN = 1;
const MTIME_COLUMN = 2;
const CTIME_COLUMN = 3;
/** Any 64-bit value written here can be compared by its two 32-bit words. */
const scratch = new BigInt64Array(1);
const scratchWords = new Uint32Array(scratch.buffer);
const INO_IS_NUMBER = 8;

/** Where each column starts in a blob: those the hashing threads read, and the hashes, tree hash and total size. */
interface Layout extends Pick<PackedColumns, "dev" | "ino" | "mtime" | "ctime" | "size" | "pathEnd" | "kind" | "paths"> {
  hashes: number;
  /** Where the tree hash lies, if the blob holds one. */
  treeHash: number;
  total: number;
}

function align8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

function layout(count: number, hashBytes: number, pathBytes: number, withTreeHash: boolean): Layout {
  const dev = HEADER_BYTES;
  const ino = dev + 8 * count;
  const mtime = ino + 8 * count;
  const ctime = mtime + 8 * count;
  const size = ctime + 8 * count;
  const pathEnd = size + 8 * count;
  const kind = pathEnd + 4 * count;
  const hashes = align8(kind + count);
  const paths = align8(hashes + hashBytes);
  const treeHash = paths + pathBytes;
  return { dev, ino, mtime, ctime, size, pathEnd, kind, hashes, paths, treeHash, total: treeHash + (withTreeHash ? TREE_HASH_BYTES : 0) };
}

/** The typed views of a blob's columns, the blob starting `base` bytes into `buffer`. */
function columnViews(buffer: ArrayBufferLike, base: number, at: Layout, count: number) {
  return {
    devs: new BigUint64Array(buffer, base + at.dev, count),
    inos: new BigUint64Array(buffer, base + at.ino, count),
    mtimes: new BigInt64Array(buffer, base + at.mtime, count),
    ctimes: new BigInt64Array(buffer, base + at.ctime, count),
    sizes: new Float64Array(buffer, base + at.size, count),
    pathEnds: new Uint32Array(buffer, base + at.pathEnd, count),
    kinds: new Uint8Array(buffer, base + at.kind, count),
  };
}

/** The tree hash's 32 bytes, when it is a hex hash that decodes back to exactly itself; else it is not kept. */
function keptTreeHash(treeHash: string | undefined): Buffer | undefined {
  if (treeHash === undefined) return undefined;
  const bytes = Buffer.from(treeHash, "hex");
  return bytes.length === TREE_HASH_BYTES && bytes.toString("hex") === treeHash ? bytes : undefined;
}

/** `treeHash`: the hex tree hash of exactly these entries, kept so that an unchanged tree need not be digested again. */
export function encodeStatCache(entries: readonly StatCacheEntry[], treeHash?: string): Buffer {
  const count = entries.length;
  const paths = new Array<string>(count);
  const hashes = new Array<string>(count);
  let hashesAre64 = true;
  for (let i = 0; i < count; i++) {
    const entry = entries[i] as StatCacheEntry;
    paths[i] = entry.path;
    hashes[i] = entry.hash;
    if (entry.hash.length !== 64) hashesAre64 = false;
  }
  const pathText = paths.join("\0");
  const pathBytes = Buffer.byteLength(pathText, "utf8");
  const asciiPaths = pathBytes === pathText.length;
  let sorted = true;
  if (asciiPaths) {
    for (let i = 1; sorted && i < count; i++) if (!((paths[i - 1] as string) < (paths[i] as string))) sorted = false;
  } else {
    let previous: Buffer | undefined;
    for (let i = 0; sorted && i < count; i++) {
      const current = Buffer.from(paths[i] as string, "utf8");
      if (previous !== undefined && Buffer.compare(previous, current) >= 0) sorted = false;
      previous = current;
    }
  }
  const treeHashBytes = keptTreeHash(treeHash);
  const withTreeHash = treeHashBytes !== undefined;

  // Raw 32-byte hashes only when decoding gives back exactly the same text: no
  // upper case (it would come back lower case) and nothing but hex digits. The
  // native round trip is several times faster than a regular expression here.
  let rawHashes: Buffer | undefined;
  if (hashesAre64) {
    const hexText = hashes.join("");
    const decoded = Buffer.from(hexText, "hex");
    if (decoded.length === 32 * count && decoded.toString("hex") === hexText) rawHashes = decoded;
  }
  const hashText = rawHashes === undefined ? hashes.join("\0") : "";
  const hashBytes = rawHashes === undefined ? Buffer.byteLength(hashText, "utf8") : 32 * count;
  const at = layout(count, hashBytes, pathBytes, withTreeHash);

  const arrayBuffer = new ArrayBuffer(at.total);
  const buffer = Buffer.from(arrayBuffer);
  const flags =
    (rawHashes === undefined ? 0 : FLAG_RAW_HASHES) |
    (asciiPaths ? FLAG_ASCII_PATHS : 0) |
    (sorted ? FLAG_SORTED : 0) |
    (withTreeHash ? FLAG_TREE_HASH : 0);
  new Uint32Array(arrayBuffer, 0, 5).set([STAT_CACHE_MAGIC, count, flags, pathBytes, hashBytes]);
  const { devs, inos, mtimes, ctimes, sizes, pathEnds, kinds } = columnViews(arrayBuffer, 0, at, count);
  let pathEnd = -1;
  for (let i = 0; i < count; i++) {
    const entry = entries[i] as StatCacheEntry;
    let kind = MODE_CODES[entry.mode];
    if (typeof entry.dev === "number") {
      kind |= DEV_IS_NUMBER;
      devs[i] = BigInt(entry.dev);
    } else {
      devs[i] = entry.dev;
    }
    if (typeof entry.ino === "number") {
      kind |= INO_IS_NUMBER;
      inos[i] = BigInt(entry.ino);
    } else {
      inos[i] = entry.ino;
    }
    mtimes[i] = entry.mtimeNs;
    ctimes[i] = entry.ctimeNs;
    sizes[i] = entry.size;
    kinds[i] = kind;
    pathEnd += 1 + (asciiPaths ? entry.path.length : Buffer.byteLength(entry.path, "utf8"));
    pathEnds[i] = pathEnd;
  }
  if (rawHashes !== undefined) buffer.set(rawHashes, at.hashes);
  else buffer.write(hashText, at.hashes, hashBytes, "utf8");
  buffer.write(pathText, at.paths, pathBytes, "utf8");
  if (treeHashBytes !== undefined) buffer.set(treeHashBytes, at.treeHash);
  return buffer;
}

const NON_ASCII = /[^\x00-\x7f]/;

/** Whether `left` sorts before `right` in the byte order of their UTF-8 (for ASCII, that of JS `<`). */
function pathsInOrder(left: string, right: string, ascii: boolean): boolean {
  return ascii ? left < right : Buffer.compare(Buffer.from(left, "utf8"), Buffer.from(right, "utf8")) < 0;
}

/** Fresh paths joined a window at a time: a million of them are never one string. */
const PATH_WINDOW = 1 << 15;

function* freshWindows(fresh: StatCacheRows["fresh"], run: { first: number; count: number }): Generator<string[]> {
  for (let start = run.first; start < run.first + run.count; start += PATH_WINDOW) {
    yield fresh.paths.slice(start, Math.min(start + PATH_WINDOW, run.first + run.count));
  }
}

/**
 * `encodeStatCache` of the rows a walk leaves, without an object per row:
 * runs of rows from the packed cache are copied column by column, fresh rows
 * written from their columns. Falls back to the entries when a hash is not
 * 64 hex digits (the blob then keeps them as text).
 */
export function encodeStatCacheRows(rows: StatCacheRows, treeHash?: string): Buffer {
  const { packed, fresh, runs, count } = rows;
  const usesPacked = runs.some((run) => run.fromPacked);
  if (fresh.odd.size > 0 || (usesPacked && packed?.rawHashes === undefined)) return encodeStatCache(rows.entries(), treeHash);
  // The path section: packed runs are slices of the old one, fresh runs are joined here.
  // Per run: a packed run's path bytes, or the byte length of a fresh run's (written later, a window at a time).
  const chunks: (Uint8Array | number)[] = [];
  let asciiPaths = true;
  let sorted = true;
  let previousPath: string | undefined;
  for (const run of runs) {
    if (run.fromPacked) {
      const source = packed!;
      if (!source.asciiPaths) asciiPaths = false;
      const ends = new Uint32Array(source.bytes.buffer, source.bytes.byteOffset + source.pathEnd, source.count);
      const start = run.first === 0 ? 0 : (ends[run.first - 1] as number) + 1;
      const end = ends[run.first + run.count - 1] as number;
      chunks.push(source.bytes.subarray(source.paths + start, source.paths + end));
      const firstPath = source.pathAt(run.first);
      if (previousPath !== undefined && sorted && !pathsInOrder(previousPath, firstPath, false)) sorted = false;
      previousPath = source.pathAt(run.first + run.count - 1);
      continue;
    }
    let runBytes = -1;
    for (const window of freshWindows(fresh, run)) {
      for (const path of window) {
        if (
          sorted &&
          previousPath !== undefined &&
          !pathsInOrder(previousPath, path, !NON_ASCII.test(previousPath) && !NON_ASCII.test(path))
        )
          sorted = false;
        previousPath = path;
      }
      const text = window.join("\0");
      const bytes = Buffer.byteLength(text, "utf8");
      if (bytes !== text.length) asciiPaths = false;
      runBytes += 1 + bytes;
    }
    chunks.push(Math.max(runBytes, 0));
  }
  let pathBytes = chunks.length === 0 ? 0 : chunks.length - 1;
  for (const chunk of chunks) pathBytes += typeof chunk === "number" ? chunk : chunk.length;
  const treeHashBytes = keptTreeHash(treeHash);
  const withTreeHash = treeHashBytes !== undefined;
  const hashBytes = 32 * count;
  const at = layout(count, hashBytes, pathBytes, withTreeHash);
  // Shared from the start: the state store keeps these bytes as the cache the hashing threads read, without a copy.
  const arrayBuffer = new SharedArrayBuffer(at.total);
  const buffer = Buffer.from(arrayBuffer);
  const flags = FLAG_RAW_HASHES | (asciiPaths ? FLAG_ASCII_PATHS : 0) | (sorted ? FLAG_SORTED : 0) | (withTreeHash ? FLAG_TREE_HASH : 0);
  new Uint32Array(arrayBuffer, 0, 5).set([STAT_CACHE_MAGIC, count, flags, pathBytes, hashBytes]);
  const wordColumns = [at.dev, at.ino, at.mtime, at.ctime, at.size];
  const { devs, inos, mtimes, ctimes, sizes, pathEnds, kinds } = columnViews(arrayBuffer, 0, at, count);
  let out = 0;
  let pathOffset = 0;
  let chunk = 0;
  for (const run of runs) {
    const pathsChunk = chunks[chunk++] as Uint8Array | number;
    if (typeof pathsChunk !== "number") {
      buffer.set(pathsChunk, at.paths + pathOffset);
    } else {
      // The buffer starts zeroed: skipping a byte between windows leaves their separator.
      let offset = at.paths + pathOffset;
      for (const window of freshWindows(fresh, run)) offset += buffer.write(window.join("\0"), offset, "utf8") + 1;
    }
    if (run.fromPacked) {
      const source = packed!;
      const from = source.bytes;
      const columns = [source.dev, source.ino, source.mtime, source.ctime, source.size];
      for (let c = 0; c < columns.length; c++) {
        const start = (columns[c] as number) + 8 * run.first;
        buffer.set(from.subarray(start, start + 8 * run.count), (wordColumns[c] as number) + 8 * out);
      }
      buffer.set(from.subarray(source.kind + run.first, source.kind + run.first + run.count), at.kind + out);
      const hashStart = (source.rawHashes as number) + 32 * run.first;
      buffer.set(from.subarray(hashStart, hashStart + 32 * run.count), at.hashes + 32 * out);
      const ends = new Uint32Array(from.buffer, from.byteOffset + source.pathEnd, source.count);
      const base = run.first === 0 ? 0 : (ends[run.first - 1] as number) + 1;
      for (let i = 0; i < run.count; i++) pathEnds[out + i] = (ends[run.first + i] as number) - base + pathOffset;
    } else {
      let end = pathOffset - 1;
      for (let i = 0; i < run.count; i++) {
        const row = run.first + i;
        const path = fresh.paths[row] as string;
        end += 1 + (asciiPaths ? path.length : Buffer.byteLength(path, "utf8"));
        pathEnds[out + i] = end;
        const numberBits = fresh.numberBits(row);
        kinds[out + i] =
          (fresh.modes[row] as number) | ((numberBits & 1) !== 0 ? DEV_IS_NUMBER : 0) | ((numberBits & 2) !== 0 ? INO_IS_NUMBER : 0);
        devs[out + i] = fresh.ids[2 * row] as bigint;
        inos[out + i] = fresh.ids[2 * row + 1] as bigint;
        mtimes[out + i] = fresh.times[2 * row] as bigint;
        ctimes[out + i] = fresh.times[2 * row + 1] as bigint;
        sizes[out + i] = fresh.sizes[row] as number;
      }
      fresh.hashes.copy(buffer, at.hashes + 32 * out, 32 * run.first, 32 * (run.first + run.count));
    }
    pathOffset += (typeof pathsChunk === "number" ? pathsChunk : pathsChunk.length) + 1;
    out += run.count;
  }
  if (treeHashBytes !== undefined) buffer.set(treeHashBytes, at.treeHash);
  return buffer;
}

/**
 * A decoded view of one stat cache blob. Entries are made when asked for; a
 * lookup in saved order (the next walk usually visits files in the order the
 * last one saved them) costs one comparison against the bytes, and otherwise a
 * binary search or, for unsorted or non-ASCII paths, a path index built once.
 */
export class StatCacheColumns {
  readonly count: number;
  private readonly bytes: Buffer;
  private readonly devs: BigUint64Array;
  private readonly devWords: Uint32Array;
  /** dev, ino, mtimeNs and ctimeNs columns as 32-bit words. */
  private readonly words: Uint32Array;
  private readonly inos: BigUint64Array;
  private readonly mtimes: BigInt64Array;
  private readonly ctimes: BigInt64Array;
  private readonly sizes: Float64Array;
  private readonly pathEnds: Uint32Array;
  private readonly kinds: Uint8Array;
  private readonly rawHashes: boolean;
  private readonly asciiPaths: boolean;
  private readonly sorted: boolean;
  /** Sorted in UTF-8 byte order, whatever the paths hold. */
  private readonly inWalkOrder: boolean;
  private readonly at: Layout;
  /** The hex tree hash of exactly these entries, when the blob keeps it. */
  readonly treeHash: string | undefined;
  private readonly hashStart: number;
  private readonly hashBytes: number;
  private readonly pathStart: number;
  private readonly made: (StatCacheEntry | undefined)[];
  private cursor = 0;
  private index: Map<string, number> | undefined;
  private hashText: string | undefined;
  private pathText: string | undefined;
  private hashList: string[] | undefined;
  private lastDev: { low: number; high: number; value: bigint } | undefined;

  private constructor(bytes: Buffer, count: number, flags: number, hashBytes: number, at: Layout) {
    const arrayBuffer = bytes.buffer;
    const base = bytes.byteOffset;
    this.bytes = bytes;
    this.count = count;
    ({
      devs: this.devs,
      inos: this.inos,
      mtimes: this.mtimes,
      ctimes: this.ctimes,
      sizes: this.sizes,
      pathEnds: this.pathEnds,
      kinds: this.kinds,
    } = columnViews(arrayBuffer, base, at, count));
    this.devWords = new Uint32Array(arrayBuffer, base + at.dev, 2 * count);
    this.words = new Uint32Array(arrayBuffer, base + at.dev, 8 * count);
    this.rawHashes = (flags & FLAG_RAW_HASHES) !== 0;
    this.asciiPaths = (flags & FLAG_ASCII_PATHS) !== 0;
    this.sorted = (flags & FLAG_SORTED) !== 0 && this.asciiPaths;
    this.inWalkOrder = (flags & FLAG_SORTED) !== 0;
    this.at = at;
    this.treeHash = (flags & FLAG_TREE_HASH) !== 0 ? bytes.toString("hex", at.treeHash, at.treeHash + TREE_HASH_BYTES) : undefined;
    this.hashStart = at.hashes;
    this.hashBytes = hashBytes;
    this.pathStart = at.paths;
    this.made = new Array<StatCacheEntry | undefined>(count);
  }

  /**
   * Undefined when the blob is not in this format (written by another version,
   * or damaged). The columns live in a SharedArrayBuffer (a copy, unless the
   * blob already is one), so that the hashing threads can read them in place.
   */
  static decode(blob: Uint8Array): StatCacheColumns | undefined {
    if (blob.byteLength < HEADER_BYTES) return undefined;
    let bytes: Buffer;
    if (blob.buffer instanceof SharedArrayBuffer && blob.byteOffset % 8 === 0) {
      bytes = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
    } else {
      bytes = Buffer.from(new SharedArrayBuffer(blob.byteLength));
      bytes.set(blob);
    }
    if (bytes.readUInt32LE(0) !== STAT_CACHE_MAGIC) return undefined;
    const count = bytes.readUInt32LE(4);
    const flags = bytes.readUInt32LE(8);
    const pathBytes = bytes.readUInt32LE(12);
    const hashBytes = bytes.readUInt32LE(16);
    if ((flags & FLAG_RAW_HASHES) !== 0 && hashBytes !== 32 * count) return undefined;
    const at = layout(count, hashBytes, pathBytes, (flags & FLAG_TREE_HASH) !== 0);
    if (at.total !== bytes.byteLength) return undefined;
    const columns = new StatCacheColumns(bytes, count, flags, hashBytes, at);
    if (count > 0 && columns.pathEnds[count - 1] !== pathBytes) return undefined;
    return columns;
  }

  /**
   * These columns as the hashing threads read them, with the entries and the
   * time they were saved at; undefined unless the paths are in walk order.
   */
  packed(savedAt: bigint): PackedStatCache | undefined {
    if (!this.inWalkOrder) return undefined;
    const at = this.at;
    const kinds = this.kinds;
    return {
      bytes: this.bytes,
      count: this.count,
      dev: at.dev,
      ino: at.ino,
      mtime: at.mtime,
      ctime: at.ctime,
      size: at.size,
      pathEnd: at.pathEnd,
      kind: at.kind,
      paths: at.paths,
      savedAt,
      treeHash: this.treeHash,
      rawHashes: this.rawHashes ? at.hashes : undefined,
      asciiPaths: this.asciiPaths,
      entryAt: (i) => this.entryAt(i),
      fileAt: (i) => this.fileAt(i),
      pathAt: (i) => this.pathAt(i),
      modeAt: (i) => MODES[(kinds[i] as number) & 3] ?? "file",
    };
  }

  /** The position of `path`, or -1. */
  find(path: string): number {
    const cursor = this.cursor;
    if (cursor < this.count && this.pathIs(cursor, path)) {
      this.cursor = cursor + 1;
      return cursor;
    }
    if (this.sorted) {
      const found = searchSortedRows(this.count, (row) => this.compareAsciiPath(row, path));
      this.cursor = found.next;
      return found.row;
    }
    if (this.index === undefined) {
      this.index = new Map();
      for (let i = 0; i < this.count; i++) this.index.set(this.pathAt(i), i);
    }
    const found = this.index.get(path);
    if (found === undefined) return -1;
    this.cursor = found + 1;
    return found;
  }

  /** The entry at `i`; the same object on every call, as a Map would give. */
  entryAt(i: number, knownPath?: string): StatCacheEntry {
    const made = this.made[i];
    if (made !== undefined) return made;
    const entry = this.newEntry(i, knownPath ?? this.pathAt(i), this.hashAt(i));
    this.made[i] = entry;
    return entry;
  }

  /** The entry at `i`, made afresh and not kept: for one pass over every entry, which must not hold them all. */
  peekAt(i: number): StatCacheEntry {
    const made = this.made[i];
    if (made !== undefined) return made;
    // Not through hashAt, which keeps the hex of every hash for later calls.
    const hash = this.rawHashes ? this.bytes.toString("hex", this.hashStart + 32 * i, this.hashStart + 32 * i + 32) : this.hashAt(i);
    return this.newEntry(i, this.pathAt(i), hash);
  }

  /** Entry `i`'s device, inode, size, times and mode, without its path or hash: for a pass that needs no more. */
  statAt(i: number): { dev: bigint; ino: bigint; size: number; mtimeNs: bigint; ctimeNs: bigint; mode: StatCacheEntry["mode"] } {
    return {
      dev: this.devAt(i),
      ino: this.inos[i] as bigint,
      size: this.sizes[i] as number,
      mtimeNs: this.mtimes[i] as bigint,
      ctimeNs: this.ctimes[i] as bigint,
      mode: MODES[(this.kinds[i] as number) & 3] ?? "file",
    };
  }

  private newEntry(i: number, path: string, hash: string): StatCacheEntry {
    const kind = this.kinds[i] as number;
    const ino = this.inos[i] as bigint;
    return {
      path,
      dev: (kind & DEV_IS_NUMBER) !== 0 ? Number(this.devAt(i)) : this.devAt(i),
      ino: (kind & INO_IS_NUMBER) !== 0 ? Number(ino) : ino,
      size: this.sizes[i] as number,
      mtimeNs: this.mtimes[i] as bigint,
      ctimeNs: this.ctimes[i] as bigint,
      mode: MODES[kind & 3] ?? "file",
      hash,
    };
  }

  /** The size of the blob these columns were read from. */
  get byteLength(): number {
    return this.bytes.byteLength;
  }

  /** Whether the paths are in walk order (UTF-8 byte order), the order of a tree's files. */
  get inPathOrder(): boolean {
    return this.inWalkOrder;
  }

  /**
   * A copy of this blob with the inode change time of every entry replaced by
   * `changeTimeAt(i)`, without an object per entry; the tree hash is kept only
   * when `keepTreeHash` (the entries are still exactly the tree's).
   */
  withChangeTimes(changeTimeAt: (i: number) => bigint, keepTreeHash: boolean): Buffer {
    const dropTreeHash = this.treeHash !== undefined && !keepTreeHash;
    const total = this.at.total - (dropTreeHash ? TREE_HASH_BYTES : 0);
    const copy = Buffer.from(new SharedArrayBuffer(total));
    this.bytes.copy(copy, 0, 0, total);
    if (dropTreeHash) copy.writeUInt32LE(copy.readUInt32LE(8) & ~FLAG_TREE_HASH, 8);
    const ctimes = new BigInt64Array(copy.buffer, this.at.ctime, this.count);
    for (let i = 0; i < this.count; i++) ctimes[i] = changeTimeAt(i);
    return copy;
  }

  /**
   * Sets the inode change time of every entry in place (a copy of a million
   * entries' blob is the largest thing a sweep would hold) and returns the
   * blob; `undo` puts the old times back, for when it could not be saved.
   */
  setChangeTimes(changeTimes: BigInt64Array): { blob: Buffer; undo: () => void } {
    const old = this.ctimes.slice();
    this.ctimes.set(changeTimes);
    this.made.fill(undefined);
    return {
      blob: this.bytes,
      undo: () => {
        this.ctimes.set(old);
        this.made.fill(undefined);
      },
    };
  }

  /** The file at `i`, made afresh and not kept. */
  fileAt(i: number): TreeFile {
    const made = this.made[i];
    if (made !== undefined) return { path: made.path, mode: made.mode, size: made.size, hash: made.hash };
    return {
      path: this.pathAt(i),
      mode: MODES[(this.kinds[i] as number) & 3] ?? "file",
      size: this.sizes[i] as number,
      hash: this.hashAt(i),
    };
  }

  /**
   * The total size of the files, how many are symlinks, and the first `head`
   * files: what describes an unchanged tree without its rows.
   */
  outline(head: number): { bytes: number; links: number; head: TreeFile[] } {
    let bytes = 0;
    let links = 0;
    for (let i = 0; i < this.count; i++) {
      bytes += this.sizes[i] as number;
      if (((this.kinds[i] as number) & 3) === MODE_CODES.symlink) links++;
    }
    const first: TreeFile[] = [];
    for (let i = 0; i < Math.min(head, this.count); i++) {
      // One path and hash each: pathAt and hashAt would turn all of them into text first.
      const path = this.bytes.toString("utf8", this.pathStart + this.pathStartOf(i), this.pathStart + (this.pathEnds[i] as number));
      const hash = this.rawHashes ? this.bytes.toString("hex", this.hashStart + 32 * i, this.hashStart + 32 * i + 32) : this.hashAt(i);
      first.push({ path, mode: MODES[(this.kinds[i] as number) & 3] ?? "file", size: this.sizes[i] as number, hash });
    }
    return { bytes, links, head: first };
  }

  /** Whether `blob` is byte for byte the blob these columns were read from. */
  sameBlob(blob: Uint8Array): boolean {
    return this.bytes.equals(blob);
  }

  /** Whether `entry` holds exactly what position `i` holds, value and type. */
  sameAt(i: number, entry: StatCacheEntry): boolean {
    const kind = this.kinds[i] as number;
    if (
      entry.size !== this.sizes[i] ||
      MODE_CODES[entry.mode] !== (kind & 3) ||
      (typeof entry.dev === "number") !== ((kind & DEV_IS_NUMBER) !== 0) ||
      (typeof entry.ino === "number") !== ((kind & INO_IS_NUMBER) !== 0) ||
      !this.sameBits(MTIME_COLUMN, i, entry.mtimeNs) ||
      !this.sameBits(CTIME_COLUMN, i, entry.ctimeNs) ||
      !this.sameBits(INO_COLUMN, i, typeof entry.ino === "number" ? BigInt(entry.ino) : entry.ino) ||
      !this.sameBits(DEV_COLUMN, i, typeof entry.dev === "number" ? BigInt(entry.dev) : entry.dev)
    ) {
      return false;
    }
    if (entry.hash !== this.hashAt(i)) return false;
    return this.pathIs(i, entry.path);
  }

  /** Compares a 64-bit column by its bits, without making a bigint per read. */
  private sameBits(column: number, i: number, value: bigint): boolean {
    scratch[0] = value;
    const at = 2 * (column * this.count + i);
    return scratchWords[0] === this.words[at] && scratchWords[1] === this.words[at + 1];
  }

  /** Where path `i` lies in the path section. */
  private pathStartOf(i: number): number {
    return i === 0 ? 0 : (this.pathEnds[i - 1] as number) + 1;
  }

  pathAt(i: number): string {
    const start = this.pathStartOf(i);
    const end = this.pathEnds[i] as number;
    if (this.asciiPaths) return this.asciiPathText().slice(start, end);
    return this.bytes.toString("utf8", this.pathStart + start, this.pathStart + end);
  }

  /** ASCII paths as one string, decoded once: slicing it is far cheaper than decoding per path. */
  private asciiPathText(): string {
    this.pathText ??= this.bytes.toString("latin1", this.pathStart, this.bytes.byteLength);
    return this.pathText;
  }

  private pathIs(i: number, path: string): boolean {
    if (!this.asciiPaths) return this.pathAt(i) === path;
    const start = this.pathStartOf(i);
    const end = this.pathEnds[i] as number;
    return end - start === path.length && this.asciiPathText().slice(start, end) === path;
  }

  /** Stored path at `i` against `path`, in the order of JS `<` (which for ASCII is byte order). */
  private compareAsciiPath(i: number, path: string): number {
    const stored = this.pathAt(i);
    return stored < path ? -1 : stored > path ? 1 : 0;
  }

  /** Files of one tree nearly always share a device: share one bigint for it. */
  private devAt(i: number): bigint {
    const low = this.devWords[2 * i] as number;
    const high = this.devWords[2 * i + 1] as number;
    const last = this.lastDev;
    if (last !== undefined && last.low === low && last.high === high) return last.value;
    const value = this.devs[i] as bigint;
    this.lastDev = { low, high, value };
    return value;
  }

  private hashAt(i: number): string {
    if (this.rawHashes) {
      this.hashText ??= this.bytes.toString("hex", this.hashStart, this.hashStart + this.hashBytes);
      return this.hashText.slice(64 * i, 64 * i + 64);
    }
    this.hashList ??= this.bytes.toString("utf8", this.hashStart, this.hashStart + this.hashBytes).split("\0");
    return this.hashList[i] ?? "";
  }
}

const lazyCount = Symbol("lazyCount");

/**
 * What `statCache().load()` returns: a Map whose entries stay in the loaded blob
 * until asked for, so that loading a 100k-file cache costs one row read. `get`
 * and `has` look up in place; anything else (iteration, `set`, `delete`) first
 * turns it into an ordinary Map. Structured cloning (`postMessage` to a worker)
 * sees only entries already turned into an ordinary Map: call `materialize()`
 * before cloning, or send the saved blob itself.
 */
export class StatCacheMap extends Map<string, StatCacheEntry> {
  #columns: StatCacheColumns | undefined;

  constructor(columns?: StatCacheColumns) {
    super();
    this.#columns = columns !== undefined && columns.count > 0 ? columns : undefined;
  }

  override get(path: string): StatCacheEntry | undefined {
    const columns = this.#columns;
    if (columns === undefined) return super.get(path);
    const i = columns.find(path);
    return i < 0 ? undefined : columns.entryAt(i, path);
  }

  override has(path: string): boolean {
    const columns = this.#columns;
    return columns === undefined ? super.has(path) : columns.find(path) >= 0;
  }

  override set(path: string, entry: StatCacheEntry): this {
    this.materialize();
    return super.set(path, entry);
  }

  override delete(path: string): boolean {
    this.materialize();
    return super.delete(path);
  }

  override clear(): void {
    this.#columns = undefined;
    super.clear();
  }

  override forEach(callback: (entry: StatCacheEntry, path: string, map: Map<string, StatCacheEntry>) => void, thisArg?: unknown): void {
    this.materialize();
    super.forEach(callback, thisArg);
  }

  override keys(): MapIterator<string> {
    this.materialize();
    return super.keys();
  }

  override values(): MapIterator<StatCacheEntry> {
    this.materialize();
    return super.values();
  }

  override entries(): MapIterator<[string, StatCacheEntry]> {
    this.materialize();
    return super.entries();
  }

  override [Symbol.iterator](): MapIterator<[string, StatCacheEntry]> {
    return this.entries();
  }

  /** `get` without keeping the entry: for one pass over every path, which must not hold an object per file. */
  peek(path: string): StatCacheEntry | undefined {
    const columns = this.#columns;
    if (columns === undefined) return super.get(path);
    const i = columns.find(path);
    return i < 0 ? undefined : columns.peekAt(i);
  }

  /** The blob's columns, while this is still a view of them (nothing set or deleted since it was loaded). */
  columns(): StatCacheColumns | undefined {
    return this.#columns;
  }

  /** Turns this into an ordinary Map holding every entry (idempotent). */
  materialize(): this {
    const columns = this.#columns;
    if (columns === undefined) return this;
    this.#columns = undefined;
    for (let i = 0; i < columns.count; i++) {
      const entry = columns.entryAt(i);
      super.set(entry.path, entry);
    }
    return this;
  }

  /** The count without turning the view into a Map. */
  [lazyCount](): number | undefined {
    return this.#columns?.count;
  }
}

// `size` is a data property in lib.d.ts, so TypeScript forbids overriding it with
// an accessor in the class body; it is an accessor on Map.prototype at run time.
const mapSize = Object.getOwnPropertyDescriptor(Map.prototype, "size")?.get;
Object.defineProperty(StatCacheMap.prototype, "size", {
  configurable: true,
  get(this: StatCacheMap): number {
    return this[lazyCount]() ?? (mapSize?.call(this) as number);
  },
});

/** Decodes a whole blob into an ordinary Map; undefined when it is not in this format. */
export function decodeStatCache(blob: Uint8Array): Map<string, StatCacheEntry> | undefined {
  const columns = StatCacheColumns.decode(blob);
  return columns === undefined ? undefined : new StatCacheMap(columns).materialize();
}
