/**
 * What a seal (snapshot.ts) keeps of each entry of a tree: its type, inode,
 * size and modification and inode change times, as columns. Apart from the
 * rest of the seal so that a hashing thread can check a share of a big
 * seal's rows (`differingRows`) without loading what seals are made with.
 */
import type { BigIntStats } from "node:fs";
import { lstatOrUndefined } from "./disk.js";

/** A signature without its inode change time. */
function withoutChangeTime(signature: string): string {
  const bar = signature.indexOf("|");
  return bar < 0 ? signature : signature.slice(0, bar);
}

/** The inode, size and modification time a file's seal signature holds, or undefined when it is not a file's. */
export function sealedFileStat(signature: string | undefined): { ino: bigint; size: bigint; mtimeNs: bigint } | undefined {
  if (signature === undefined || !signature.startsWith("f:")) return undefined;
  const [, ino, size, mtimeNs] = withoutChangeTime(signature).split(":");
  return { ino: BigInt(ino!), size: BigInt(size!), mtimeNs: BigInt(mtimeNs!) };
}

/** Entry types by code in `SealStats`; the last one stands for an entry that could not be stat'ed. */
const SEAL_TYPES = ["d", "f", "l", "o", "missing"] as const;
const SEAL_DIRECTORY = 0;
const SEAL_FILE = 1;
const SEAL_MISSING = 4;

function sealTypeOf(stat: BigIntStats | undefined): number {
  if (stat === undefined) return SEAL_MISSING;
  return stat.isDirectory() ? SEAL_DIRECTORY : stat.isFile() ? SEAL_FILE : stat.isSymbolicLink() ? 2 : 3;
}

/** How an entry's stat compares with what was sealed. */
export type SealComparison = "same" | "changeTimeOnly" | "changed";

/**
 * The signatures of a sealed tree (see `signatureAt`) by path, kept as
 * columns: a million-entry view costs its paths and a few typed arrays, not
 * a string per stat. Signatures are made only when asked for. Lookups in
 * the seal's order (which is the tree's path order) take one comparison;
 * others build an index once.
 */
export class SealStats implements Iterable<[string, string]> {
  private readonly paths: string[] = [];
  private types = new Uint8Array(1024);
  /** ino, size per row. */
  private sizes = new BigUint64Array(2048);
  /** mtimeNs, ctimeNs per row. */
  private times = new BigInt64Array(2048);
  private index: Map<string, number> | undefined;
  private cursor = 0;

  get size(): number {
    return this.paths.length;
  }

  /** Appends an entry as `stat` (undefined: it could not be stat'ed). */
  add(path: string, stat: BigIntStats | undefined): void {
    this.record(this.append(path), stat);
  }

  /** Appends a regular file's entry as stat'ed earlier: its inode, size, modification and inode change time. */
  addFile(path: string, ino: bigint, size: bigint, mtimeNs: bigint, ctimeNs: bigint): void {
    const row = this.append(path);
    this.types[row] = SEAL_FILE;
    this.sizes[2 * row] = ino;
    this.sizes[2 * row + 1] = size;
    this.times[2 * row] = mtimeNs;
    this.times[2 * row + 1] = ctimeNs;
  }

  /** Appends a directory's entry as stat'ed earlier: its inode, modification and inode change time. */
  addDirectory(path: string, ino: bigint, mtimeNs: bigint, ctimeNs: bigint): void {
    const row = this.append(path);
    this.types[row] = SEAL_DIRECTORY;
    this.sizes[2 * row] = ino;
    this.sizes[2 * row + 1] = 0n;
    this.times[2 * row] = mtimeNs;
    this.times[2 * row + 1] = ctimeNs;
  }

  private append(path: string): number {
    const row = this.paths.length;
    if (row === this.types.length) this.grow();
    this.paths.push(path);
    this.index?.set(path, row);
    return row;
  }

  pathAt(row: number): string {
    return this.paths[row]!;
  }

  isDirectoryAt(row: number): boolean {
    return this.types[row] === SEAL_DIRECTORY;
  }

  /** Seals row `row` again as `stat`. */
  record(row: number, stat: BigIntStats | undefined): void {
    this.types[row] = sealTypeOf(stat);
    this.sizes[2 * row] = stat?.ino ?? 0n;
    this.sizes[2 * row + 1] = stat?.size ?? 0n;
    this.times[2 * row] = stat?.mtimeNs ?? 0n;
    this.times[2 * row + 1] = stat?.ctimeNs ?? 0n;
  }

  /** `stat` against row `row`, as comparing their signatures would tell. */
  compare(row: number, stat: BigIntStats | undefined): SealComparison {
    return compareRow(this.types, this.sizes, this.times, row, stat);
  }

  /** Rows `from` to `to` (excluded), as a thread checks them (`differingRows`). */
  rows(from: number, to: number): SealRows {
    return {
      paths: this.paths.slice(from, to),
      types: this.types.slice(from, to),
      sizes: this.sizes.slice(2 * from, 2 * to),
      times: this.times.slice(2 * from, 2 * to),
    };
  }

  /** The signature of `path`, or undefined when the seal has no such entry. */
  get(path: string): string | undefined {
    const row = this.rowOf(path);
    return row < 0 ? undefined : this.signatureAt(row);
  }

  /**
   * `type:ino:size:mtime` (no size for a directory), and for a file `|ctime`
   * after it: the inode change time moves on every write, even one whose
   * modification time is set back, but also when the file is linked elsewhere
   * or its mode changes, so a change of it alone counts only where the caller
   * can confirm the content (`checkSeal`).
   */
  signatureAt(row: number): string {
    const type = this.types[row]!;
    if (type === SEAL_MISSING) return "missing";
    const signature = `${SEAL_TYPES[type]}:${this.sizes[2 * row]}:${type === SEAL_DIRECTORY ? "" : this.sizes[2 * row + 1]}:${this.times[2 * row]}`;
    return type === SEAL_FILE ? `${signature}|${this.times[2 * row + 1]}` : signature;
  }

  *[Symbol.iterator](): Iterator<[string, string]> {
    for (let row = 0; row < this.paths.length; row++) yield [this.paths[row]!, this.signatureAt(row)];
  }

  private rowOf(path: string): number {
    // Asked in path order, the next entry is the one (past the directories, which trees do not list).
    let row = this.cursor;
    while (row < this.paths.length && this.types[row] === SEAL_DIRECTORY && this.paths[row] !== path) row++;
    if (row < this.paths.length && this.paths[row] === path) {
      this.cursor = row + 1;
      return row;
    }
    if (this.index === undefined) {
      this.index = new Map();
      for (let at = 0; at < this.paths.length; at++) this.index.set(this.paths[at]!, at);
    }
    const found = this.index.get(path);
    if (found === undefined) return -1;
    this.cursor = found + 1;
    return found;
  }

  private grow(): void {
    const capacity = this.types.length * 2;
    const types = new Uint8Array(capacity);
    types.set(this.types);
    this.types = types;
    const sizes = new BigUint64Array(2 * capacity);
    sizes.set(this.sizes);
    this.sizes = sizes;
    const times = new BigInt64Array(2 * capacity);
    times.set(this.times);
    this.times = times;
  }
}

/** `stat` against row `row` of the columns, as comparing their signatures would tell. */
function compareRow(
  types: Uint8Array,
  sizes: BigUint64Array,
  times: BigInt64Array,
  row: number,
  stat: BigIntStats | undefined,
): SealComparison {
  const type = sealTypeOf(stat);
  // A root missing when sealed never matches, as its signature "missing" matched no stat.
  if (type !== types[row] || stat === undefined) return "changed";
  if (stat.ino !== sizes[2 * row] || (type !== SEAL_DIRECTORY && stat.size !== sizes[2 * row + 1]) || stat.mtimeNs !== times[2 * row]) {
    return "changed";
  }
  // A folder's modification time can be set back after an entry is added (cp -a, rsync -a, tar restore it); its change time cannot.
  if (type === SEAL_DIRECTORY && stat.ctimeNs !== times[2 * row + 1]) return "changed";
  return type === SEAL_FILE && stat.ctimeNs !== times[2 * row + 1] ? "changeTimeOnly" : "same";
}

/** A run of a seal's rows, as sent to a thread. */
export interface SealRows {
  paths: string[];
  types: Uint8Array;
  sizes: BigUint64Array;
  times: BigInt64Array;
}

/** Rows of a seal for a hashing thread to stat again (see `checkSealEveryStat` in snapshot.ts). */
export interface StatCheckRequest extends SealRows {
  kind: "stat";
  id: number;
  /** The sealed tree's root. */
  root: string;
}

export interface StatCheckResult {
  kind: "stat";
  id: number;
  /** The rows, counted from the first sent, whose entry is not as sealed now. */
  differing: number[];
}

/** The rows of `rows` whose entry under `root` is not now as sealed: one lstat each. */
export function differingRows(root: string, rows: SealRows): number[] {
  const differing: number[] = [];
  // Concatenated, not joined: the paths are already normal, and path.join cost
  // more than the lstat itself over a data view of many files.
  const prefix = root.endsWith("/") ? root : `${root}/`;
  for (let row = 0; row < rows.paths.length; row++) {
    const path = rows.paths[row]!;
    const now = lstatOrUndefined(path === "" ? root : prefix + path, { bigint: true });
    if (compareRow(rows.types, rows.sizes, rows.times, row, now) !== "same") differing.push(row);
  }
  return differing;
}

export function runStatCheck(request: StatCheckRequest): StatCheckResult {
  return { kind: "stat", id: request.id, differing: differingRows(request.root, request) };
}
