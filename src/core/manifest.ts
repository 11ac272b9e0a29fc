/**
 * Remote data manifests: JSON lines `{"url", "path"[, "sha256", "size"]}` read
 * from one file or from every regular file of a directory, and the lock that
 * pins what each entry's content turned out to be.
 *
 * Lock location: a manifest file `M` is pinned by `M.lock` beside it; a
 * manifest directory `D` by `D/kaos.lock` inside it (which is why reading a
 * directory skips `kaos.lock`, and a lock a crash left half-written). Either
 * way the lock travels with the manifest, so committing both pins the data for
 * everyone. It records each URL without
 * credentials (see urls.ts), and a pin holds for its entry as long as the URL
 * names the same source, credentials aside.
 *
 * Every line is checked before anything is downloaded; an error names the file
 * and line and what was expected.
 *
 * A manifest may list millions of files, so it is read as a stream, a line at a
 * time, into columns (`ManifestEntries`): paths and URLs as UTF-8 in two byte
 * heaps, content hashes as raw bytes, sizes and line numbers in typed arrays.
 * Duplicate paths are found by sorting them (which the data key needs anyway),
 * file/folder clashes by a table of the folders the paths name. One entry
 * becomes an object only when asked for.
 */
import { isUtf8 } from "node:buffer";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { KaosError, describeError, errnoCode } from "./errors.js";
import { keepYoungGenerationsSmall } from "./heap.js";
import { type FileUrlScope, fileUrlRefusal, sameSource, sourceIdentity, widenScopeHint } from "./urls.js";
import { ownerStamp } from "./process-identity.js";

export interface ManifestEntry {
  url: string;
  path: string;
  sha256?: string;
  size?: number;
  /** The manifest file this entry was read from. */
  file: string;
  /** 1-based line number in `file`. */
  line: number;
}

export interface ManifestLockEntry {
  url: string;
  sha256: string;
  size: number;
  etag?: string;
  lastModified?: string;
}

export interface ManifestLock {
  version: 1;
  entries: Record<string, ManifestLockEntry>;
}

/** Name of the lock inside a manifest directory. */
export const DIRECTORY_LOCK_NAME = "kaos.lock";
/** How a lock being written is named beside it until renamed into place; a crash can leave one behind. */
const LOCK_TMP_SUFFIX = ".tmp-";
const DIRECTORY_LOCK_TMP_PREFIX = `${DIRECTORY_LOCK_NAME}${LOCK_TMP_SUFFIX}`;
export const SUPPORTED_SCHEMES = ["http:", "https:", "file:"] as const;

const KNOWN_KEYS = new Set(["url", "path", "sha256", "size"]);
const LINE_EXAMPLE = `{"url": "https://example.com/train/a.csv", "path": "train/a.csv"}`;
const PATH_EXPECTED = `a relative path inside the data directory, such as "train/a.csv"`;
/** The longest file name (one segment of a path) that Linux file systems and APFS take, in bytes. */
const NAME_MAX_BYTES = 255;
const PLAIN_PATH = /^(?:(?!\.\.?\/)[\w.-]{1,255}\/)*(?!\.\.?$)[\w.-]{1,255}$/;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const ANY_SURROGATE = /[\ud800-\udfff]/;

const SHA256_SCRATCH = Buffer.alloc(32);

/** Whether `text` is 64 hex digits: Buffer's hex decoder stops at the first pair that is not. */
function isHex64(text: string): boolean {
  return text.length === 64 && SHA256_SCRATCH.write(text, 0, "hex") === 32;
}

function invalid(file: string, line: number, what: string, expected: string): KaosError {
  return new KaosError("MANIFEST_INVALID", `${file}:${line}: ${what} — expected ${expected}`);
}

function describeType(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  return `a ${typeof value}`;
}

/** Why `p` could land outside the data directory (or be ambiguous there), or undefined when it is safe. */
export function unsafePathReason(p: string): string | undefined {
  // Nearly every path is plain: ASCII segments that are neither "." nor "..".
  if (PLAIN_PATH.test(p)) return undefined;
  if (p.length === 0) return "is empty";
  if (p.includes("\0")) return "contains a NUL character";
  if (p.includes("\\")) return "contains a backslash";
  if (p.startsWith("/")) return "is absolute";
  if (/^[A-Za-z]:/.test(p)) return "starts with a Windows drive letter";
  // No file can be named by half a UTF-16 surrogate pair: it would land under a replacement character.
  if (LONE_SURROGATE.test(p)) return "contains an unpaired UTF-16 surrogate (not valid Unicode)";
  for (const segment of p.split("/")) {
    if (segment === "") return "has an empty segment (a leading, doubled or trailing '/')";
    if (segment === ".") return "has a '.' segment";
    if (segment === "..") return "has a '..' segment";
    const bytes = Buffer.byteLength(segment);
    // Found here, not after the download, when the file cannot be created.
    if (bytes > NAME_MAX_BYTES) return `has a segment of ${bytes} bytes, longer than the ${NAME_MAX_BYTES} a file name may have`;
  }
  // Belt and braces: whatever passed above must normalize to itself and stay inside.
  const normalized = path.posix.normalize(p);
  if (normalized !== p || path.posix.isAbsolute(normalized) || normalized.startsWith("../")) {
    return "does not normalize to itself";
  }
  return undefined;
}

function checkUrl(url: string, file: string, line: number): void {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw invalid(file, line, `"url" ${JSON.stringify(url)} is not a valid URL`, "an absolute URL such as https://example.com/a.csv");
  }
  if (!(SUPPORTED_SCHEMES as readonly string[]).includes(parsed.protocol)) {
    throw invalid(file, line, `"url" has unsupported scheme "${parsed.protocol.slice(0, -1)}"`, "http, https or file");
  }
  if (parsed.protocol === "file:" && parsed.hostname !== "" && parsed.hostname !== "localhost") {
    throw invalid(file, line, `"url" names host "${parsed.hostname}" in a file URL`, "file:///absolute/path (no host)");
  }
}

function parseLine(text: string, file: string, line: number): ManifestEntry {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw invalid(file, line, `invalid JSON (${describeError(error)})`, `one JSON object per line, like ${LINE_EXAMPLE}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw invalid(file, line, `line is ${describeType(value)}`, `a JSON object like ${LINE_EXAMPLE}`);
  }
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (!KNOWN_KEYS.has(key)) {
      throw invalid(file, line, `unknown key "${key}"`, `only "url", "path", "sha256" and "size"`);
    }
  }

  const url = record["url"];
  const urlExpected = "a string URL with scheme http, https or file";
  if (url === undefined) throw invalid(file, line, `missing "url"`, urlExpected);
  if (typeof url !== "string") throw invalid(file, line, `"url" is ${describeType(url)}`, urlExpected);
  // Most URLs are plainly http(s): parsing one without building a URL object is half the cost.
  if (!((url.startsWith("https://") || url.startsWith("http://")) && URL.canParse(url))) checkUrl(url, file, line);

  const entryPath = record["path"];
  if (entryPath === undefined) throw invalid(file, line, `missing "path"`, PATH_EXPECTED);
  if (typeof entryPath !== "string") throw invalid(file, line, `"path" is ${describeType(entryPath)}`, PATH_EXPECTED);
  const unsafe = unsafePathReason(entryPath);
  if (unsafe !== undefined) throw invalid(file, line, `unsafe path ${JSON.stringify(entryPath)} (${unsafe})`, PATH_EXPECTED);

  const entry: ManifestEntry = { url, path: entryPath, file, line };
  const sha256 = record["sha256"];
  if (sha256 !== undefined) {
    if (typeof sha256 !== "string" || !isHex64(sha256)) {
      throw invalid(file, line, `"sha256" ${JSON.stringify(sha256)} is not 64 hex digits`, "the SHA-256 of the file's content in hex");
    }
    entry.sha256 = sha256.toLowerCase();
  }
  const size = record["size"];
  if (size !== undefined) {
    if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
      throw invalid(file, line, `"size" ${JSON.stringify(size)} is not a non-negative integer`, "the file's length in bytes");
    }
    entry.size = size;
  }
  return entry;
}

function manifestFiles(pathOrDir: string): string[] {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(pathOrDir);
  } catch (error) {
    const what = errnoCode(error) === "ENOENT" ? "does not exist" : `cannot be read (${describeError(error)})`;
    throw new KaosError("MANIFEST_INVALID", `${pathOrDir}: manifest ${what} — expected a file or a directory of JSON-lines files`);
  }
  if (!stat.isDirectory()) return [pathOrDir];
  // Subdirectories are not read: a manifest directory is flat.
  return fs
    .readdirSync(pathOrDir)
    .filter((name) => !name.startsWith(".") && name !== DIRECTORY_LOCK_NAME && !name.startsWith(DIRECTORY_LOCK_TMP_PREFIX))
    .sort()
    .map((name) => path.join(pathOrDir, name))
    .filter(isManifestFile);
}

/** Whether an entry of a manifest directory is a file to read: a link to nothing is a mistake to report, not to skip. */
function isManifestFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch (error) {
    const what = errnoCode(error) === "ENOENT" ? "is a symbolic link to nothing" : `cannot be read (${describeError(error)})`;
    throw new KaosError(
      "MANIFEST_INVALID",
      `${file}: ${what} — expected a JSON-lines manifest file in the manifest directory; remove it or point it at one`,
    );
  }
}

/** Entries of a manifest, each one an object: for tests and small manifests (see `scanManifest`). */
export function readManifest(pathOrDir: string): ManifestEntry[] {
  return scanManifest(pathOrDir).list();
}

/**
 * Reads and checks a manifest file or directory line by line, in memory
 * proportional to its entries' bytes, not to a million objects.
 */
export function scanManifest(pathOrDir: string): ManifestEntries {
  keepYoungGenerationsSmall();
  const builder = new EntriesBuilder(pathOrDir);
  try {
    for (const file of manifestFiles(pathOrDir)) builder.readFile(file);
  } catch (error) {
    // Errors are reported in line order: a duplicate among the lines read comes before this one's error.
    builder.checkDuplicates();
    throw error;
  }
  return builder.finish();
}

const DATA_KEY_HEADER = "kaos manifest data v1\n";
const READ_CHUNK_BYTES = 1 << 22;
const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;
const SLASH = 0x2f;
/** Lead bytes of UTF-8 sequences from U+D000 up: paths holding one may not sort the same as UTF-16 strings. */
const HIGH_LEAD_BYTE = 0xed;
/** The line gave a `sha256`. */
const HAS_SHA256 = 1;
/** The entry's data-key row is its path and URL bytes as they are: neither needs JSON escaping, the URL carries no credentials. */
const PLAIN_ROW = 2;
const HEX_DIGITS = Buffer.from("0123456789abcdef");

type Column = Uint8Array | Uint32Array | Float64Array;

/** A new column of `array`'s kind (a Buffer for a Buffer) with room for `length` elements, holding `array`'s. */
function copiedInto<A extends Column>(array: A, length: number): A {
  const next = (Buffer.isBuffer(array) ? Buffer.allocUnsafe(length) : new (array.constructor as new (length: number) => A)(length)) as A;
  next.set(array);
  return next;
}

/** `array` with room for exactly `length` elements when it has less. */
function exactly<A extends Column>(array: A, length: number): A {
  return length <= array.length ? array : copiedInto(array, length);
}

/** `array` with room for `needed` elements when it has less, doubled so that appending one at a time copies little. */
function grown<A extends Column>(array: A, needed: number): A {
  return needed <= array.length ? array : copiedInto(array, Math.max(needed, array.length * 2));
}

/** A byte that a JSON string must escape ('"', '\\', control characters). */
function needsJsonEscape(byte: number): boolean {
  return byte < 0x20 || byte === 0x22 || byte === 0x5c;
}

/**
 * The entries of a manifest, in manifest order, as columns. Entry `i` is
 * described by its path and URL (UTF-8 ranges of two heaps), its `sha256`
 * (32 raw bytes, when the line gave one), its `size` (NaN when not given), and
 * the file and line it was read from.
 */
export class ManifestEntries {
  constructor(
    readonly source: string,
    readonly count: number,
    private readonly columns: EntryColumns,
  ) {}

  private digested: string | undefined;

  /** A SHA-256 of every entry as read (path, URL, hash and size): it changes whenever an entry does. */
  digest(): string {
    if (this.digested === undefined) {
      const { paths, pathEnds, urls, urlEnds, oddUrls, flags, sha256s, sizes } = this.columns;
      const last = this.count - 1;
      const hash = createHash("sha256")
        .update(new Uint8Array(pathEnds.buffer, 0, this.count * 4))
        .update(paths.subarray(0, pathEnds[last]))
        .update(new Uint8Array(urlEnds.buffer, 0, this.count * 4))
        .update(urls.subarray(0, urlEnds[last]))
        .update(JSON.stringify([...oddUrls]))
        .update(flags.subarray(0, this.count))
        .update(sha256s.subarray(0, this.count * 32))
        .update(new Uint8Array(sizes.buffer, 0, this.count * 8));
      this.digested = hash.digest("hex");
    }
    return this.digested;
  }

  private start(heapEnds: Uint32Array, index: number): number {
    return index === 0 ? 0 : heapEnds[index - 1]!;
  }

  path(index: number): string {
    const { paths, pathEnds } = this.columns;
    return paths.toString("utf8", this.start(pathEnds, index), pathEnds[index]!);
  }

  url(index: number): string {
    const { urls, urlEnds, oddUrls } = this.columns;
    return oddUrls.get(index) ?? urls.toString("utf8", this.start(urlEnds, index), urlEnds[index]!);
  }

  sha256(index: number): string | undefined {
    const { flags, sha256s } = this.columns;
    return (flags[index]! & HAS_SHA256) === 0 ? undefined : sha256s.toString("hex", index * 32, index * 32 + 32);
  }

  fileOf(index: number): string {
    return fileOfEntry(this.columns, index);
  }

  entry(index: number): ManifestEntry {
    const entry: ManifestEntry = {
      url: this.url(index),
      path: this.path(index),
      file: this.fileOf(index),
      line: this.columns.lines[index]!,
    };
    const sha256 = this.sha256(index);
    if (sha256 !== undefined) entry.sha256 = sha256;
    const size = this.columns.sizes[index]!;
    if (!Number.isNaN(size)) entry.size = size;
    return entry;
  }

  /** Every entry as an object: what ingest works through. */
  list(): ManifestEntry[] {
    const entries: ManifestEntry[] = new Array(this.count);
    for (let i = 0; i < this.count; i++) entries[i] = this.entry(i);
    return entries;
  }

  /** The entries whose URL is a `file:` URL, for `checkFileUrls`. */
  fileUrls(): ManifestEntry[] {
    return this.columns.fileUrlEntries.map((index) => this.entry(index));
  }

  /** `pinnedHash` of entry `index`. */
  pinnedHash(index: number, lock: ManifestLock | undefined): string | undefined {
    return this.sha256(index) ?? pinnedHash(this.entry(index), lock);
  }

  /**
   * The entries that have no pinned hash or one that `stored` does not hold
   * (undefined: a store that holds nothing), and how many bytes they come to.
   * `stored` is asked in order of the hashes' first byte, the folder they are
   * kept in (`ObjectStore.hasEach`).
   */
  countMissing(lock: ManifestLock | undefined, stored: ((hash: string) => boolean) | undefined): MissingEntries {
    const { flags, sha256s } = this.columns;
    const missing: MissingEntries = { entries: 0, bytes: 0, unsized: 0 };
    const miss = (index: number, hash: string | undefined): void => {
      missing.entries += 1;
      const size = this.knownSize(index, lock, hash);
      if (size === undefined) missing.unsized += 1;
      else missing.bytes += size;
    };
    if (stored === undefined) {
      // The hash only matters to find a size in the lock: most lines give theirs.
      const { sizes } = this.columns;
      for (let index = 0; index < this.count; index++) {
        miss(index, Number.isNaN(sizes[index]!) && lock !== undefined ? this.pinnedHash(index, lock) : undefined);
      }
      return missing;
    }
    // Entries by their hash's first byte (a counting sort), the lock's pins kept aside.
    const pins = new Map<number, string>();
    const firstByte = new Uint8Array(this.count);
    const counts = new Uint32Array(257);
    for (let index = 0; index < this.count; index++) {
      if ((flags[index]! & HAS_SHA256) !== 0) firstByte[index] = sha256s[index * 32]!;
      else {
        const pinned = this.pinnedHash(index, lock);
        if (pinned === undefined) {
          miss(index, undefined);
          continue;
        }
        pins.set(index, pinned);
        firstByte[index] = Number.parseInt(pinned.slice(0, 2), 16);
      }
      counts[firstByte[index]! + 1]! += 1;
    }
    for (let byte = 1; byte < 257; byte++) counts[byte]! += counts[byte - 1]!;
    const order = new Uint32Array(this.count - missing.entries);
    for (let index = 0; index < this.count; index++) {
      if ((flags[index]! & HAS_SHA256) !== 0 || pins.has(index)) order[counts[firstByte[index]!]!++] = index;
    }
    for (const index of order) {
      const hash = pins.get(index) ?? sha256s.toString("hex", index * 32, index * 32 + 32);
      if (!stored(hash)) miss(index, hash);
    }
    return missing;
  }

  /** The size of entry `index` as its line states it, else as the lock records it for the same content. */
  private knownSize(index: number, lock: ManifestLock | undefined, hash: string | undefined): number | undefined {
    const size = this.columns.sizes[index]!;
    if (!Number.isNaN(size)) return size;
    const locked = hash === undefined ? undefined : lock?.entries[this.path(index)];
    return locked !== undefined && locked.sha256 === hash ? locked.size : undefined;
  }

  /**
   * `manifestDataKey` of these entries, hashed row by row as bytes: the JSON of
   * a plain row is its path and URL bytes as they are, so nothing is decoded.
   */
  dataKey(lock: ManifestLock | undefined): string | undefined {
    const { paths, pathEnds, urls, urlEnds, flags, sha256s } = this.columns;
    const order = this.columns.order;
    const hash = createHash("sha256").update(DATA_KEY_HEADER);
    let out: Buffer = Buffer.allocUnsafe(1 << 20);
    let at = 0;
    out[at++] = 0x5b; // [
    for (let k = 0; k < this.count; k++) {
      const index = order === undefined ? k : order[k]!;
      const pathStart = this.start(pathEnds, index);
      const urlStart = this.start(urlEnds, index);
      const room = pathEnds[index]! - pathStart + urlEnds[index]! - urlStart + 128;
      if (at + room > out.length) {
        hash.update(out.subarray(0, at));
        at = 0;
        out = grown(out, room);
      }
      if (k > 0) out[at++] = 0x2c; // ,
      if ((flags[index]! & (HAS_SHA256 | PLAIN_ROW)) === (HAS_SHA256 | PLAIN_ROW)) {
        // The brackets, quotes and commas byte by byte: a Buffer#write per field costs more than the row.
        out[at++] = 0x5b; // [
        out[at++] = QUOTE;
        at += paths.copy(out, at, pathStart, pathEnds[index]!);
        out[at++] = QUOTE;
        out[at++] = COMMA;
        out[at++] = QUOTE;
        at += urls.copy(out, at, urlStart, urlEnds[index]!);
        out[at++] = QUOTE;
        out[at++] = COMMA;
        out[at++] = QUOTE;
        for (let i = index * 32; i < index * 32 + 32; i++) {
          const byte = sha256s[i]!;
          out[at++] = HEX_DIGITS[byte >> 4]!;
          out[at++] = HEX_DIGITS[byte & 15]!;
        }
        out[at++] = QUOTE;
        out[at++] = 0x5d; // ]
      } else {
        const pinned = this.pinnedHash(index, lock);
        if (pinned === undefined) return undefined;
        const row = Buffer.from(JSON.stringify([this.path(index), sourceIdentity(this.url(index)), pinned]));
        if (at + row.length + 1 > out.length) {
          hash.update(out.subarray(0, at));
          at = 0;
          out = grown(out, row.length + 1);
        }
        at += row.copy(out, at);
      }
    }
    out[at++] = 0x5d; // ]
    return hash.update(out.subarray(0, at)).digest("hex");
  }
}

/** What a manifest's entries lack in the object store (see `ManifestEntries.countMissing`). */
export interface MissingEntries {
  entries: number;
  /** The bytes of those whose size the manifest or the lock states. */
  bytes: number;
  /** Those whose size neither states. */
  unsized: number;
}

/** Indices of the first `count` entries by path in UTF-16 order, as `manifestDataKey` sorts its rows. */
function pathOrder(columns: EntryColumns, count: number): Uint32Array {
  const { paths, pathEnds, exotic } = columns;
  const order = new Uint32Array(count);
  for (let i = 0; i < count; i++) order[i] = i;
  if (exotic) {
    const strings: string[] = new Array(count);
    for (let i = 0; i < count; i++) strings[i] = paths.toString("utf8", i === 0 ? 0 : pathEnds[i - 1]!, pathEnds[i]!);
    return order.sort((a, b) => (strings[a]! < strings[b]! ? -1 : strings[a]! > strings[b]! ? 1 : 0));
  }
  // Below U+D000, UTF-16 order is the order of the UTF-8 bytes.
  sortByBytes(order, paths, pathEnds);
  return order;
}

/** Ranges at most this long are sorted by insertion rather than by radix. */
const INSERTION_SORT_MAX = 24;

/**
 * Sorts entry indices by the bytes of their paths: an MSD radix sort over
 * the path heap, with no string made and no comparison function called per
 * pair (a million paths sort in a tenth of the time Array#sort takes).
 */
function sortByBytes(order: Uint32Array, heap: Buffer, ends: Uint32Array): void {
  const startOf = (index: number): number => (index === 0 ? 0 : ends[index - 1]!);
  /** Byte `depth` of the path of `index` plus one, or 0 past its end. */
  const keyAt = (index: number, depth: number): number => {
    const at = startOf(index) + depth;
    return at < ends[index]! ? heap[at]! + 1 : 0;
  };
  const scratch = new Uint32Array(order.length);
  const counts = new Uint32Array(257);
  const bucketStarts = new Uint32Array(258);
  const next = new Uint32Array(257);
  const stack: number[] = [0, order.length, 0];
  while (stack.length > 0) {
    const depth = stack.pop()!;
    const high = stack.pop()!;
    const low = stack.pop()!;
    if (high - low <= INSERTION_SORT_MAX) {
      for (let i = low + 1; i < high; i++) {
        const index = order[i]!;
        const start = startOf(index) + depth;
        let j = i;
        for (; j > low; j--) {
          const other = order[j - 1]!;
          // The earlier path first: when it is not greater, the place is found.
          if (compareBytes(heap, startOf(other) + depth, ends[other]!, heap, start, ends[index]!) <= 0) break;
          order[j] = other;
        }
        order[j] = index;
      }
      continue;
    }
    counts.fill(0);
    for (let i = low; i < high; i++) counts[keyAt(order[i]!, depth)]! += 1;
    let sum = low;
    for (let key = 0; key < 257; key++) {
      bucketStarts[key] = sum;
      sum += counts[key]!;
    }
    bucketStarts[257] = sum;
    // A byte every path of the range shares (a common prefix) sorts nothing: the next one is looked at without moving any.
    const shared = keyAt(order[low]!, depth);
    if (counts[shared] === high - low) {
      if (shared !== 0) stack.push(low, high, depth + 1);
      continue;
    }
    next.set(bucketStarts.subarray(0, 257));
    for (let i = low; i < high; i++) {
      const index = order[i]!;
      scratch[next[keyAt(index, depth)]!++] = index;
    }
    order.set(scratch.subarray(low, high), low);
    // Bucket 0 holds the paths that end here, all equal.
    for (let key = 1; key < 257; key++) {
      if (bucketStarts[key + 1]! - bucketStarts[key]! > 1) stack.push(bucketStarts[key]!, bucketStarts[key + 1]!, depth + 1);
    }
  }
}

/** What a `ManifestEntries` is made of (see there). */
interface EntryColumns {
  files: string[];
  /** Index of the first entry of each file of `files`. */
  fileStarts: number[];
  lines: Uint32Array;
  paths: Buffer;
  pathEnds: Uint32Array;
  pathHashes: Uint32Array;
  urls: Buffer;
  urlEnds: Uint32Array;
  /** URLs whose UTF-16 text UTF-8 cannot carry (unpaired surrogates), by entry. */
  oddUrls: Map<number, string>;
  flags: Uint8Array;
  sha256s: Buffer;
  sizes: Float64Array;
  /** The paths are in UTF-16 order already, as the data key lists them. */
  sorted: boolean;
  /** Entry indices in path order, when the entries are not in it (see `sorted`). */
  order: Uint32Array | undefined;
  /** Some path holds a character from U+D000 up. */
  exotic: boolean;
  fileUrlEntries: number[];
}

function fileOfEntry(columns: EntryColumns, index: number): string {
  const { fileStarts, files } = columns;
  let low = 0;
  let high = fileStarts.length - 1;
  while (low < high) {
    const middle = (low + high + 1) >> 1;
    if (fileStarts[middle]! <= index) low = middle;
    else high = middle - 1;
  }
  return files[low]!;
}

/** Where `EntriesBuilder.parsePlainLine` found a line's values, as offsets in the line's buffer. */
interface PlainLine {
  urlStart: number;
  urlEnd: number;
  /** The URL has no '@' or '?', which may carry credentials: its data-key row is its bytes. */
  urlPlain: boolean;
  pathStart: number;
  pathEnd: number;
  hasSha256: boolean;
  sha256Start: number;
  /** NaN when not given. */
  size: number;
}

const NEWLINE = 0x0a;
const QUOTE = 0x22;
const COMMA = 0x2c;
const DOT = 0x2e;
const COLON = 0x3a;
const BACKSLASH = 0x5c;
const CLOSE_BRACE = 0x7d;
const URL_KEY = 1;
const PATH_KEY = 2;
const SHA256_KEY = 4;
const SIZE_KEY = 8;
/** The keys of a line, each with its closing quote. */
const PLAIN_KEYS = {
  url: { bit: URL_KEY, bytes: Buffer.from('url"') },
  path: { bit: PATH_KEY, bytes: Buffer.from('path"') },
  sha256: { bit: SHA256_KEY, bytes: Buffer.from('sha256"') },
  size: { bit: SIZE_KEY, bytes: Buffer.from('size"') },
};
/** Scheme-and-authority answers kept while reading a manifest of many hosts. */
const ORIGINS_KEPT = 4096;

/** Bytes of a plain path segment, as PLAIN_PATH's `[\w.-]`. */
const PATH_BYTES = new Uint8Array(256);
for (const byte of Buffer.from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")) PATH_BYTES[byte] = 1;
/** The value of each hex digit, -1 for any other byte. */
const HEX_VALUES = new Int8Array(256).fill(-1);
for (const [value, digit] of [..."0123456789abcdef"].entries()) {
  HEX_VALUES[digit.charCodeAt(0)] = value;
  HEX_VALUES[digit.toUpperCase().charCodeAt(0)] = value;
}

/** The index of the first byte from `at` that is not JSON whitespace (a line holds no newline). */
function skipJsonSpace(b: Buffer, at: number): number {
  let i = at;
  for (let byte = b[i]; byte === 0x20 || byte === 0x09 || byte === 0x0d; byte = b[++i]);
  return i;
}

/** The key whose name and closing quote start at `at`, if it is one of a manifest's. */
function plainKeyAt(b: Buffer, at: number): (typeof PLAIN_KEYS)[keyof typeof PLAIN_KEYS] | undefined {
  let key: (typeof PLAIN_KEYS)[keyof typeof PLAIN_KEYS];
  switch (b[at]) {
    case 0x75: // u
      key = PLAIN_KEYS.url;
      break;
    case 0x70: // p
      key = PLAIN_KEYS.path;
      break;
    case 0x73: // s
      key = b[at + 1] === 0x68 ? PLAIN_KEYS.sha256 : PLAIN_KEYS.size;
      break;
    default:
      return undefined;
  }
  const bytes = key.bytes;
  for (let i = 1; i < bytes.length; i++) if (b[at + i] !== bytes[i]) return undefined;
  return key;
}

/**
 * The index of the quote that ends the plain path starting at `at` (PLAIN_PATH:
 * segments of `[\w.-]` that are neither "." nor ".."), or -1.
 */
function plainPathEnd(b: Buffer, at: number): number {
  let segmentStart = at;
  for (let i = at; ; i++) {
    const byte = b[i];
    if (byte === SLASH || byte === QUOTE) {
      const length = i - segmentStart;
      if (
        length === 0 ||
        length > NAME_MAX_BYTES ||
        (b[segmentStart] === DOT && (length === 1 || (length === 2 && b[segmentStart + 1] === DOT)))
      )
        return -1;
      if (byte === QUOTE) return i;
      segmentStart = i + 1;
    } else if (byte === undefined || PATH_BYTES[byte] !== 1) return -1;
  }
}

/**
 * The index of the byte that ends the http(s) URL starting at `at` (printable
 * ASCII but '"' and backslash), or -1 when the URL has another scheme. Notes in
 * `plain` whether the URL holds '@' or '?'.
 */
function plainUrlEnd(b: Buffer, at: number, plain: PlainLine): number {
  if (b[at] !== 0x68 || b[at + 1] !== 0x74 || b[at + 2] !== 0x74 || b[at + 3] !== 0x70) return -1;
  const colon = b[at + 4] === 0x73 ? at + 5 : at + 4;
  if (b[colon] !== COLON || b[colon + 1] !== SLASH || b[colon + 2] !== SLASH) return -1;
  let urlPlain = true;
  let i = colon + 3;
  for (let byte = b[i]!; byte > 0x20 && byte < 0x7f && byte !== QUOTE && byte !== BACKSLASH; byte = b[++i]!) {
    if (byte === 0x40 || byte === 0x3f) urlPlain = false;
  }
  plain.urlPlain = urlPlain;
  return i;
}

/** The index after the 64 hex digits starting at `at`, or -1. */
function hex64End(b: Buffer, at: number): number {
  for (let i = at; i < at + 64; i++) if (!(HEX_VALUES[b[i]!]! >= 0)) return -1;
  return at + 64;
}

/** Where an http(s) URL's authority ends: its path, query or fragment. */
function isAuthorityEnd(byte: number): boolean {
  return byte === SLASH || byte === 0x3f || byte === 0x23;
}

/**
 * Bytes `aStart` to `aEnd` of `a` against bytes `bStart` to `bEnd` of `b`:
 * negative, zero or positive as for Buffer#compare, whose call costs more than
 * comparing a short path by hand.
 */
function compareBytes(a: Uint8Array, aStart: number, aEnd: number, b: Uint8Array, bStart: number, bEnd: number): number {
  const length = Math.min(aEnd - aStart, bEnd - bStart);
  for (let i = 0; i < length; i++) {
    const difference = a[aStart + i]! - b[bStart + i]!;
    if (difference !== 0) return difference;
  }
  return aEnd - aStart - (bEnd - bStart);
}

/**
 * The folders of the paths read so far, each once, as ranges of the path heap
 * (the first path that named it), by their FNV-1a hash.
 */
class FolderSet {
  private table = new Uint32Array(1 << 10);
  private hashes = new Uint32Array(512);
  private starts = new Uint32Array(512);
  private ends = new Uint32Array(512);
  private count = 0;

  constructor(private readonly columns: EntryColumns) {}

  /** Whether bytes `start` to `end` of the path heap are a folder already listed. */
  has(hash: number, start: number, end: number): boolean {
    return this.slotOf(hash, start, end) < 0;
  }

  /** Adds the folder at bytes `start` to `end` of the path heap: true when it is new. */
  add(hash: number, start: number, end: number): boolean {
    const slot = this.slotOf(hash, start, end);
    if (slot < 0) return false;
    const index = this.count++;
    if (index === this.hashes.length) {
      this.hashes = grown(this.hashes, index + 1);
      this.starts = grown(this.starts, index + 1);
      this.ends = grown(this.ends, index + 1);
    }
    this.hashes[index] = hash;
    this.starts[index] = start;
    this.ends[index] = end;
    if (this.count * 2 > this.table.length) {
      this.table = new Uint32Array(this.table.length * 2);
      const mask = this.table.length - 1;
      for (let i = 0; i < this.count; i++) {
        let free = this.hashes[i]! & mask;
        while (this.table[free] !== 0) free = (free + 1) & mask;
        this.table[free] = i + 1;
      }
    } else this.table[slot] = index + 1;
    return true;
  }

  /** The free slot for the folder, or -1 when it is listed. */
  private slotOf(hash: number, start: number, end: number): number {
    const { table, hashes, starts, ends } = this;
    const paths = this.columns.paths;
    const mask = table.length - 1;
    for (let slot = hash & mask; ; slot = (slot + 1) & mask) {
      const held = table[slot]!;
      if (held === 0) return slot;
      const index = held - 1;
      if (hashes[index] === hash && compareBytes(paths, start, end, paths, starts[index]!, ends[index]!) === 0) return -1;
    }
  }
}

/** Reads manifest lines into the columns of a `ManifestEntries`, checking each as it comes. */
class EntriesBuilder {
  private count = 0;
  private readonly columns: EntryColumns = {
    files: [],
    fileStarts: [],
    lines: new Uint32Array(1024),
    paths: Buffer.allocUnsafe(1 << 16),
    pathEnds: new Uint32Array(1024),
    pathHashes: new Uint32Array(1024),
    urls: Buffer.allocUnsafe(1 << 16),
    urlEnds: new Uint32Array(1024),
    oddUrls: new Map(),
    flags: new Uint8Array(1024),
    sha256s: Buffer.alloc(1024 * 32),
    sizes: new Float64Array(1024),
    sorted: true,
    order: undefined,
    exotic: false,
    fileUrlEntries: [],
  };

  /** Where the values of the line `parsePlainLine` read last are. */
  private readonly plain: PlainLine = {
    urlStart: 0,
    urlEnd: 0,
    urlPlain: true,
    pathStart: 0,
    pathEnd: 0,
    hasSha256: false,
    sha256Start: 0,
    size: Number.NaN,
  };
  /** The scheme and authority of the last plain URL that parsed. */
  private lastOrigin: Buffer = Buffer.alloc(0);
  /** Whether a plain URL with this scheme and authority parses. */
  private readonly origins = new Map<string, boolean>();
  private readonly folders = new FolderSet(this.columns);

  constructor(private readonly source: string) {}

  readFile(file: string): void {
    let fd: number;
    const cannotRead = (error: unknown) => new KaosError("MANIFEST_INVALID", `${file}: cannot read the manifest (${describeError(error)})`);
    try {
      fd = fs.openSync(file, "r");
    } catch (error) {
      throw cannotRead(error);
    }
    this.columns.files.push(file);
    this.columns.fileStarts.push(this.count);
    // Lines are split on the bytes: UTF-8 never puts 0x0a inside a character,
    // so decoding a line on its own gives what decoding the whole file would.
    let buffer = Buffer.allocUnsafe(READ_CHUNK_BYTES);
    let carried = 0;
    let line = 0;
    let atStart = true;
    let reserved = false;
    const firstEntry = this.count;
    try {
      for (;;) {
        // A line longer than the buffer: make room for more of it.
        if (carried === buffer.length) buffer = copiedInto(buffer, buffer.length * 2);
        let read: number;
        try {
          read = fs.readSync(fd, buffer, carried, buffer.length - carried, null);
        } catch (error) {
          throw cannotRead(error);
        }
        if (read === 0) break;
        const bytes = buffer.subarray(0, carried + read);
        let start = 0;
        if (atStart) {
          atStart = false;
          if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) start = 3;
        }
        // The carried bytes hold no newline: the search starts after them.
        for (let newline = bytes.indexOf(NEWLINE, carried); newline !== -1; newline = bytes.indexOf(NEWLINE, start)) {
          line += 1;
          this.addLineBytes(bytes, start, newline, file, line);
          start = newline + 1;
        }
        carried = bytes.length - start;
        buffer.copyWithin(0, start, bytes.length);
        if (!reserved) {
          reserved = true;
          this.reserveLike(fs.fstatSync(fd).size / read, firstEntry);
        }
      }
      this.addLineBytes(buffer.subarray(0, carried), 0, carried, file, line + 1);
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Adds the line held by bytes `start` to `end` of `bytes` (where `bytes[end]`
   * is a newline or past the end). A line of the usual shape is read from its
   * bytes as they are; anything else is decoded and read by `JSON.parse`, which
   * gives the same entry, or the error naming what is wrong.
   */
  private addLineBytes(bytes: Buffer, start: number, end: number, file: string, line: number): void {
    if (bytes[start] === 0x7b && this.parsePlainLine(bytes, start, end)) this.addPlainLine(bytes, line);
    else {
      // Decoding would turn a byte that is not UTF-8 into U+FFFD: a file would land under another name than written.
      if (!isUtf8(bytes.subarray(start, end))) {
        throw invalid(file, line, "the line holds bytes that are not UTF-8", "UTF-8 text (convert a file saved as UTF-16 or Latin-1)");
      }
      this.addLine(bytes.toString("utf8", start, end), file, line);
    }
  }

  /**
   * Whether bytes `start` to `end` are a line of the usual shape, noting where
   * its values are: one JSON object of "url" (http or https), "path" (a plain
   * path: see PLAIN_PATH), an optional "sha256" (64 hex digits) and an optional
   * "size" (an integer of at most 15 digits), each at most once and in any
   * order, with every string printable ASCII without escapes, and JSON
   * whitespace anywhere. Such a line is one that `parseLine` accepts, and it
   * gives the same entry.
   */
  private parsePlainLine(b: Buffer, start: number, end: number): boolean {
    const plain = this.plain;
    let seen = 0;
    let at = skipJsonSpace(b, start + 1);
    for (;;) {
      if (b[at] !== QUOTE) return false;
      const key = plainKeyAt(b, at + 1);
      if (key === undefined || (seen & key.bit) !== 0) return false;
      seen |= key.bit;
      at = skipJsonSpace(b, at + key.bytes.length + 1);
      if (b[at] !== COLON) return false;
      at = skipJsonSpace(b, at + 1);
      if (key.bit === SIZE_KEY) {
        at = this.parsePlainSize(b, at);
      } else {
        if (b[at] !== QUOTE) return false;
        const valueStart = at + 1;
        at =
          key.bit === PATH_KEY
            ? plainPathEnd(b, valueStart)
            : key.bit === URL_KEY
              ? plainUrlEnd(b, valueStart, plain)
              : hex64End(b, valueStart);
        if (at === -1 || b[at] !== QUOTE) return false;
        if (key.bit === PATH_KEY) {
          plain.pathStart = valueStart;
          plain.pathEnd = at;
        } else if (key.bit === URL_KEY) {
          plain.urlStart = valueStart;
          plain.urlEnd = at;
        } else plain.sha256Start = valueStart;
        at += 1;
      }
      if (at === -1) return false;
      at = skipJsonSpace(b, at);
      if (b[at] === COMMA) at = skipJsonSpace(b, at + 1);
      else if (b[at] === CLOSE_BRACE) break;
      else return false;
    }
    if (skipJsonSpace(b, at + 1) !== end || (seen & (URL_KEY | PATH_KEY)) !== (URL_KEY | PATH_KEY)) return false;
    plain.hasSha256 = (seen & SHA256_KEY) !== 0;
    if ((seen & SIZE_KEY) === 0) plain.size = Number.NaN;
    return this.plainUrlParses(b);
  }

  /** Reads the integer at `at` into the plain line's size; the index past it, or -1 when it is not a plain integer. */
  private parsePlainSize(b: Buffer, at: number): number {
    let value = 0;
    let i = at;
    for (; i < at + 16; i++) {
      const digit = b[i]! - 0x30;
      if (!(digit >= 0 && digit <= 9)) break;
      value = value * 10 + digit;
    }
    const digits = i - at;
    // JSON allows no leading zero; fractions, exponents, signs and longer numbers go through JSON.parse.
    if (digits === 0 || digits > 15 || (b[at] === 0x30 && digits > 1)) return -1;
    const next = b[i];
    if (next === 0x2e || next === 0x65 || next === 0x45) return -1;
    this.plain.size = value;
    return i;
  }

  /**
   * Whether the plain line's http(s) URL parses. Only the scheme and the
   * authority can make such a URL fail to parse (no path, query or fragment
   * does), so the answer is kept by what the URL holds up to its path, and a
   * manifest of a million URLs on one host parses one.
   */
  private plainUrlParses(b: Buffer): boolean {
    const { urlStart, urlEnd } = this.plain;
    const schemeEnd = urlStart + (b[urlStart + 4] === 0x73 ? 8 : 7);
    let originEnd = schemeEnd;
    while (originEnd < urlEnd && !isAuthorityEnd(b[originEnd]!)) originEnd++;
    // "https:///x" names host x: an empty authority is left to the parser.
    if (originEnd === schemeEnd) return URL.canParse(b.toString("latin1", urlStart, urlEnd));
    const last = this.lastOrigin;
    const length = originEnd - urlStart;
    if (length === last.length && compareBytes(b, urlStart, originEnd, last, 0, length) === 0) return true;
    const origin = b.toString("latin1", urlStart, originEnd);
    let parses = this.origins.get(origin);
    if (parses === undefined) {
      parses = URL.canParse(b.toString("latin1", urlStart, urlEnd));
      if (this.origins.size >= ORIGINS_KEPT) this.origins.clear();
      this.origins.set(origin, parses);
    }
    // A copy: the read buffer is reused.
    if (parses) this.lastOrigin = Buffer.from(b.subarray(urlStart, originEnd));
    return parses;
  }

  /**
   * Makes room at once for `times` as many entries as were read since entry
   * `since`, and their bytes: a column grown by doubling can hold twice what it
   * needs, and each step leaves a copy behind.
   */
  private reserveLike(times: number, since: number): void {
    const c = this.columns;
    const entries = this.count - since;
    if (entries === 0 || times <= 1.5) return;
    const scale = times * 1.02;
    const ends = (heapEnds: Uint32Array) => {
      const start = since === 0 ? 0 : heapEnds[since - 1]!;
      return start + Math.ceil(((this.count === 0 ? 0 : heapEnds[this.count - 1]!) - start) * scale);
    };
    const room = since + Math.ceil(entries * scale);
    c.paths = exactly(c.paths, ends(c.pathEnds));
    c.urls = exactly(c.urls, ends(c.urlEnds));
    if (room > c.lines.length) this.resizeRows(room, exactly);
  }

  private ensureRoom(entries: number): void {
    if (entries > this.columns.lines.length) this.resizeRows(entries, grown);
  }

  /** Every column with one element (or hash) per entry, resized by `resize` to hold `entries`. */
  private resizeRows(entries: number, resize: <A extends Column>(array: A, length: number) => A): void {
    const c = this.columns;
    c.lines = resize(c.lines, entries);
    c.pathEnds = resize(c.pathEnds, entries);
    c.pathHashes = resize(c.pathHashes, entries);
    c.urlEnds = resize(c.urlEnds, entries);
    c.flags = resize(c.flags, entries);
    c.sizes = resize(c.sizes, entries);
    c.sha256s = resize(c.sha256s, entries * 32);
  }

  /** Adds a line `parsePlainLine` has just read. */
  private addPlainLine(b: Buffer, line: number): void {
    const c = this.columns;
    const plain = this.plain;
    const index = this.count;
    this.ensureRoom(index + 1);
    const pathStart = index === 0 ? 0 : c.pathEnds[index - 1]!;
    c.paths = grown(c.paths, pathStart + plain.pathEnd - plain.pathStart);
    const pathEnd = pathStart + b.copy(c.paths, pathStart, plain.pathStart, plain.pathEnd);
    const urlStart = index === 0 ? 0 : c.urlEnds[index - 1]!;
    c.urls = grown(c.urls, urlStart + plain.urlEnd - plain.urlStart);
    const urlEnd = urlStart + b.copy(c.urls, urlStart, plain.urlStart, plain.urlEnd);
    let flags = plain.urlPlain ? PLAIN_ROW : 0;
    if (plain.hasSha256) {
      const sha256s = c.sha256s;
      for (let i = 0, from = plain.sha256Start; i < 32; i++, from += 2) {
        sha256s[index * 32 + i] = (HEX_VALUES[b[from]!]! << 4) | HEX_VALUES[b[from + 1]!]!;
      }
      flags |= HAS_SHA256;
    }
    this.commit(line, pathEnd, urlEnd, flags, plain.size);
  }

  /** Adds a line of any shape, decoded: what `parseLine` accepts, or its error. */
  private addLine(raw: string, file: string, line: number): void {
    if (raw.charCodeAt(0) !== 0x7b && raw.trim() === "") return;
    const entry = parseLine(raw, file, line);
    const c = this.columns;
    const index = this.count;
    this.ensureRoom(index + 1);

    const pathStart = index === 0 ? 0 : c.pathEnds[index - 1]!;
    c.paths = grown(c.paths, pathStart + entry.path.length * 3);
    const pathEnd = pathStart + c.paths.write(entry.path, pathStart, "utf8");

    const url = entry.url;
    const urlStart = index === 0 ? 0 : c.urlEnds[index - 1]!;
    c.urls = grown(c.urls, urlStart + url.length * 3);
    const urlEnd = urlStart + c.urls.write(url, urlStart, "utf8");
    let plain = true;
    const urls = c.urls;
    for (let i = urlStart; i < urlEnd && plain; i++) {
      const byte = urls[i]!;
      // '@' or '?' may carry credentials, which the data key leaves out (sourceIdentity).
      if (needsJsonEscape(byte) || byte === 0x40 || byte === 0x3f) plain = false;
    }
    if (ANY_SURROGATE.test(url) && LONE_SURROGATE.test(url)) {
      c.oddUrls.set(index, url);
      plain = false;
    }
    if (url.startsWith("file:")) c.fileUrlEntries.push(index);
    let flags = plain ? PLAIN_ROW : 0;
    if (entry.sha256 !== undefined) {
      // parseLine decoded it last, checking it.
      c.sha256s.set(SHA256_SCRATCH, index * 32);
      flags |= HAS_SHA256;
    }
    this.commit(line, pathEnd, urlEnd, flags, entry.size ?? Number.NaN);
  }

  /**
   * Makes the entry whose path and URL were just written to the heaps (up to
   * `pathEnd` and `urlEnd`) and whose hash is in place the next one, noting
   * its folders and whether the paths are still in order.
   */
  private commit(line: number, pathEnd: number, urlEnd: number, urlFlags: number, size: number): void {
    const c = this.columns;
    const index = this.count;
    const pathStart = index === 0 ? 0 : c.pathEnds[index - 1]!;
    let hash = FNV_OFFSET;
    let exotic = false;
    let plain = true;
    const paths = c.paths;
    for (let i = pathStart; i < pathEnd; i++) {
      const byte = paths[i]!;
      if (byte >= HIGH_LEAD_BYTE) exotic = true;
      if (needsJsonEscape(byte)) plain = false;
      // The path so far is a folder of this entry's.
      if (byte === SLASH) this.folders.add(hash >>> 0, pathStart, i);
      hash = Math.imul(hash ^ byte, FNV_PRIME);
    }
    hash >>>= 0;
    if (exotic) c.exotic = true;
    if (c.sorted && index > 0) {
      const previousStart = index === 1 ? 0 : c.pathEnds[index - 2]!;
      // Byte order is UTF-16 order below U+D000, and the data key sorts by UTF-16.
      if (exotic || compareBytes(paths, pathStart, pathEnd, paths, previousStart, pathStart) <= 0) c.sorted = false;
    }
    c.pathEnds[index] = pathEnd;
    c.lines[index] = line;
    c.pathHashes[index] = hash;
    c.urlEnds[index] = urlEnd;
    c.flags[index] = plain ? urlFlags : urlFlags & ~PLAIN_ROW;
    c.sizes[index] = size;
    this.count = index + 1;
  }

  finish(): ManifestEntries {
    if (this.count === 0) {
      throw new KaosError(
        "MANIFEST_INVALID",
        `${this.source}: the manifest has no entries — expected at least one line like ${LINE_EXAMPLE}`,
      );
    }
    this.checkDuplicates();
    this.checkFileFolderClashes();
    return new ManifestEntries(this.source, this.count, this.columns);
  }

  /**
   * Throws for the first line (in manifest order) whose path an earlier line
   * gave, naming that line. The entries sorted by path, for the data key,
   * put equal paths side by side.
   */
  checkDuplicates(): void {
    const c = this.columns;
    if (c.sorted || this.count === 0) return;
    const order = c.order?.length === this.count ? c.order : pathOrder(c, this.count);
    c.order = order;
    const startOf = (index: number) => (index === 0 ? 0 : c.pathEnds[index - 1]!);
    const same = (a: number, b: number) => compareBytes(c.paths, startOf(a), c.pathEnds[a]!, c.paths, startOf(b), c.pathEnds[b]!) === 0;
    let found: { first: number; again: number } | undefined;
    for (let k = 1; k < order.length; k++) {
      if (!same(order[k - 1]!, order[k]!)) continue;
      // A run of equal paths: its line that repeats an earlier one first is its second smallest.
      let first = Math.min(order[k - 1]!, order[k]!);
      let again = Math.max(order[k - 1]!, order[k]!);
      for (; k + 1 < order.length && same(order[k]!, order[k + 1]!); k++) {
        const next = order[k + 1]!;
        if (next < first) [first, again] = [next, first];
        else if (next < again) again = next;
      }
      if (found === undefined || again < found.again) found = { first, again };
    }
    if (found === undefined) return;
    const { first, again } = found;
    throw invalid(
      fileOfEntry(c, again),
      c.lines[again]!,
      `duplicate path ${JSON.stringify(c.paths.toString("utf8", startOf(again), c.pathEnds[again]!))} (first at ${fileOfEntry(c, first)}:${c.lines[first]})`,
      "each path once",
    );
  }

  /**
   * `a` and `a/b` cannot both be files: one of them would have to be a folder.
   * The first entry (in manifest order) with a clash is named, with the other
   * side of it.
   */
  private checkFileFolderClashes(): void {
    const c = this.columns;
    const startOf = (index: number) => (index === 0 ? 0 : c.pathEnds[index - 1]!);
    // Nearly always none: the paths that are also folders, by path.
    const asFolders = new Map<string, number>();
    for (let index = 0; index < this.count; index++) {
      if (this.folders.has(c.pathHashes[index]!, startOf(index), c.pathEnds[index]!)) {
        asFolders.set(c.paths.toString("latin1", startOf(index), c.pathEnds[index]!), index);
      }
    }
    if (asFolders.size === 0) return;
    const expected = "each path to be either a file or a folder, not both";
    for (let index = 0; index < this.count; index++) {
      const start = startOf(index);
      const end = c.pathEnds[index]!;
      for (let i = start; i < end; i++) {
        if (c.paths[i] !== SLASH) continue;
        const parent = asFolders.get(c.paths.toString("latin1", start, i));
        if (parent === undefined) continue;
        const [file, line] = [fileOfEntry(c, index), c.lines[index]!];
        const [parentFile, parentLine] = [fileOfEntry(c, parent), c.lines[parent]!];
        const parentPath = c.paths.toString("utf8", start, i);
        const entryPath = c.paths.toString("utf8", start, end);
        if (parent < index) {
          throw invalid(
            file,
            line,
            `path ${JSON.stringify(entryPath)} puts a file inside ${JSON.stringify(parentPath)}, which ${parentFile}:${parentLine} lists as a file`,
            expected,
          );
        }
        throw invalid(
          parentFile,
          parentLine,
          `path ${JSON.stringify(parentPath)} is a file, but ${file}:${line} puts ${JSON.stringify(entryPath)} inside it`,
          expected,
        );
      }
    }
  }
}

export function lockPathFor(manifestPath: string): string {
  let isDirectory = false;
  try {
    isDirectory = fs.statSync(manifestPath).isDirectory();
  } catch {
    // A manifest that does not exist yet is treated as a file.
  }
  return isDirectory ? path.join(manifestPath, DIRECTORY_LOCK_NAME) : `${manifestPath}.lock`;
}

const LOCK_ENTRY_KEYS = new Set(["url", "sha256", "size", "etag", "lastModified"]);

function describeKind(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "array" : typeof value;
}

/**
 * The first problem of a lock that is not as `serializeLock` writes it, with
 * the key path where it is; undefined when it is. Checked by hand: a schema
 * library would load on every command, manifests or not.
 */
function lockProblem(value: unknown): { path: string[]; message: string } | undefined {
  const isObject = (item: unknown): item is Record<string, unknown> => typeof item === "object" && item !== null && !Array.isArray(item);
  const expected = (path: string[], what: string, found: unknown) => ({
    path,
    message: `Invalid input: expected ${what}, received ${describeKind(found)}`,
  });
  const unknownKey = (path: string[], keys: string[]) => ({
    path,
    message: `Unrecognized key${keys.length > 1 ? "s" : ""}: ${keys.map((key) => `"${key}"`).join(", ")}`,
  });
  if (!isObject(value)) return expected([], "object", value);
  if (value["version"] !== 1) return { path: ["version"], message: "Invalid input: expected 1" };
  const entries = value["entries"];
  if (!isObject(entries)) return expected(["entries"], "record", entries);
  const extra = Object.keys(value).filter((key) => key !== "version" && key !== "entries");
  for (const [key, entry] of Object.entries(entries)) {
    const at = ["entries", key];
    if (!isObject(entry)) return expected(at, "object", entry);
    if (typeof entry["url"] !== "string") return expected([...at, "url"], "string", entry["url"]);
    const sha256 = entry["sha256"];
    if (typeof sha256 !== "string") return expected([...at, "sha256"], "string", sha256);
    if (!/^[0-9a-f]{64}$/.test(sha256)) return { path: [...at, "sha256"], message: "expected 64 lowercase hex digits" };
    const size = entry["size"];
    if (typeof size !== "number") return expected([...at, "size"], "number", size);
    if (!Number.isSafeInteger(size)) return expected([...at, "size"], "int", size);
    if (size < 0) return { path: [...at, "size"], message: "Too small: expected number to be >=0" };
    for (const optional of ["etag", "lastModified"]) {
      if (entry[optional] !== undefined && typeof entry[optional] !== "string")
        return expected([...at, optional], "string", entry[optional]);
    }
    const unknown = Object.keys(entry).filter((name) => !LOCK_ENTRY_KEYS.has(name));
    if (unknown.length > 0) return unknownKey(at, unknown);
  }
  return extra.length > 0 ? unknownKey([], extra) : undefined;
}

export function readLock(manifestPath: string): ManifestLock | undefined {
  const lockPath = lockPathFor(manifestPath);
  let text: string;
  try {
    text = fs.readFileSync(lockPath, "utf8");
  } catch (error) {
    if (errnoCode(error) === "ENOENT") return undefined;
    throw new KaosError("MANIFEST_INVALID", `${lockPath}: cannot read the lock (${describeError(error)})`);
  }
  const fix = `Delete ${lockPath} and run again: the manifest's content is then fetched and pinned afresh.`;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new KaosError("MANIFEST_INVALID", `${lockPath}: the lock is not valid JSON (${describeError(error)})`, { hint: fix });
  }
  const problem = lockProblem(value);
  if (problem !== undefined) {
    const where = problem.path.length === 0 ? "" : ` at ${problem.path.join(".")}`;
    throw new KaosError("MANIFEST_INVALID", `${lockPath}: the lock is invalid${where}: ${problem.message}`, { hint: fix });
  }
  const lock = value as { entries: Record<string, ManifestLockEntry> };
  const entries: Record<string, ManifestLockEntry> = {};
  for (const [key, entry] of Object.entries(lock.entries)) {
    const clean: ManifestLockEntry = { url: entry.url, sha256: entry.sha256, size: entry.size };
    if (entry.etag !== undefined) clean.etag = entry.etag;
    if (entry.lastModified !== undefined) clean.lastModified = entry.lastModified;
    entries[key] = clean;
  }
  return { version: 1, entries };
}

/**
 * The lock as written: keys sorted, fields in a fixed order, two-space indent,
 * trailing newline, and each URL without its credentials (a lock is committed).
 */
export function serializeLock(lock: ManifestLock): string {
  const entries: Record<string, ManifestLockEntry> = {};
  for (const key of Object.keys(lock.entries).sort()) {
    const entry = lock.entries[key];
    if (entry === undefined) continue;
    const ordered: ManifestLockEntry = { url: sourceIdentity(entry.url), sha256: entry.sha256, size: entry.size };
    if (entry.etag !== undefined) ordered.etag = entry.etag;
    if (entry.lastModified !== undefined) ordered.lastModified = entry.lastModified;
    entries[key] = ordered;
  }
  return `${JSON.stringify({ version: 1, entries }, null, 2)}\n`;
}

export function writeLock(manifestPath: string, lock: ManifestLock): void {
  const lockPath = lockPathFor(manifestPath);
  const text = serializeLock(lock);
  const tmp = `${lockPath}${LOCK_TMP_SUFFIX}${ownerStamp()}`;
  try {
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, lockPath);
  } catch (error) {
    fs.rmSync(tmp, { force: true });
    throw new KaosError("IO", `cannot write the manifest lock ${lockPath}: ${describeError(error)}`, { cause: error });
  }
}

/** A lock's entries by the source their URL names (see `pinFor`), made once per lock read. */
const pinsBySource = new WeakMap<ManifestLock, Map<string, ManifestLockEntry>>();

/**
 * The lock entry that pins what `entry`'s URL serves: the one of its path when
 * it is for the same URL, else one of another path with the same URL (the
 * file moved in the manifest: what its URL served is pinned all the same).
 */
export function pinFor(entry: ManifestEntry, lock: ManifestLock | undefined): ManifestLockEntry | undefined {
  if (lock === undefined) return undefined;
  const locked = lock.entries[entry.path];
  if (locked !== undefined && sameSource(locked.url, entry.url)) return locked;
  let bySource = pinsBySource.get(lock);
  if (bySource === undefined) {
    bySource = new Map();
    for (const pin of Object.values(lock.entries)) {
      // A lock as kaos writes it holds no credentials: only a URL that may carry some is parsed.
      const source = pin.url.includes("@") || pin.url.includes("?") ? sourceIdentity(pin.url) : pin.url;
      if (!bySource.has(source)) bySource.set(source, pin);
    }
    pinsBySource.set(lock, bySource);
  }
  return bySource.get(sourceIdentity(entry.url));
}

/**
 * The content hash an entry is pinned to: the manifest's own `sha256` first,
 * else the lock's for the same URL (`pinFor`), as long as it agrees with the
 * manifest's `size` when one is given.
 */
export function pinnedHash(entry: ManifestEntry, lock: ManifestLock | undefined): string | undefined {
  return entry.sha256 ?? pinnedHashOf(entry, pinFor(entry, lock));
}

/** `pinnedHash` for a caller that has looked up the entry's `pinFor` already. */
export function pinnedHashOf(entry: ManifestEntry, pin: ManifestLockEntry | undefined): string | undefined {
  if (entry.sha256 !== undefined) return entry.sha256;
  if (pin === undefined) return undefined;
  if (entry.size !== undefined && pin.size !== entry.size) return undefined;
  return pin.sha256;
}

export function manifestDataKey(entries: ManifestEntry[], lock: ManifestLock | undefined): string | undefined {
  const rows: [string, string, string][] = [];
  for (const entry of entries) {
    const hash = pinnedHash(entry, lock);
    if (hash === undefined) return undefined;
    // Credentials are not part of what names the data: a rotated token keeps the key.
    rows.push([entry.path, sourceIdentity(entry.url), hash]);
  }
  rows.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return createHash("sha256").update(DATA_KEY_HEADER).update(JSON.stringify(rows)).digest("hex");
}

/**
 * Refuses, naming its manifest line, the first entry whose `file:` URL reads
 * outside `scope` (see urls.ts), before anything is read or fetched.
 */
export function checkFileUrls(entries: readonly ManifestEntry[], scope: FileUrlScope): void {
  for (const entry of entries) {
    if (!entry.url.startsWith("file:")) continue;
    const refusal = fileUrlRefusal(fileURLToPath(entry.url), scope);
    if (refusal !== undefined) {
      throw new KaosError("MANIFEST_INVALID", `${entry.file}:${entry.line}: "url" ${entry.url} may not be read: ${refusal}`, {
        hint: widenScopeHint(scope),
      });
    }
  }
}
