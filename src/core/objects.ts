/**
 * Content-addressed object store.
 *
 * Layout: `<dir>/sha256/<first 2 hex>/<remaining 62 hex>` holds the bytes whose
 * SHA-256 is the hex name, and `<dir>/tmp/` holds files being written. Objects
 * are always read-only (0o444, or fewer read bits: an object is never more
 * readable than the file it was made from, so a 0o600 file gives a 0o400
 * object, and every view linked to it shares that) and carry no other metadata: the mode a file
 * should have in a tree (plain or executable) is recorded by whoever records the
 * tree, and `link(hash, dest, "exec")` materializes an executable as a 0o755
 * copy, because changing the mode of a hardlink would change the shared object.
 *
 * Every object appears by an atomic rename from `tmp/` (same directory tree, so
 * the same filesystem), so a reader never sees a partial object and a crash at
 * any moment leaves at worst a stray file in `tmp/`. Objects are not fsynced:
 * a killed process never corrupts the store, a power loss may.
 */
import { createHash, randomUUID } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import * as fs from "node:fs";
import * as path from "node:path";
import { Transform, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import { KaosError, describeError, errnoCode } from "./errors.js";
import { ownerStamp } from "./process-identity.js";

const HASH_PATTERN = /^[0-9a-f]{64}$/;
const OBJECT_MODE = 0o444;

/** An object's mode: read-only, with no read bit its source lacked (the owner always reads). */
function objectModeFor(sourceMode: number | undefined): number {
  return sourceMode === undefined ? OBJECT_MODE : (OBJECT_MODE & sourceMode) | 0o400;
}

/** A writable copy of an object for whoever may read it: 0o644 from 0o444, 0o600 from 0o400 (0o755 and 0o700 when executable). */
export function copyModeFor(objectMode: number, executable: boolean): number {
  const read = objectMode & 0o444;
  return read | 0o200 | (executable ? read >> 2 : 0);
}

export function isSha256Hex(value: string): boolean {
  return HASH_PATTERN.test(value);
}

function assertHash(hash: string): void {
  if (!HASH_PATTERN.test(hash)) {
    throw new KaosError("IO", `"${hash}" is not a SHA-256 object name — expected 64 lowercase hex digits`);
  }
}

/** Hashes a file's content by streaming it (constant memory). */
export async function sha256File(file: string): Promise<{ hash: string; size: number }> {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
    const buffer = chunk as Buffer;
    hash.update(buffer);
    size += buffer.length;
  }
  return { hash: hash.digest("hex"), size };
}

export class ObjectStore {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = path.resolve(dir);
  }

  has(hash: string): boolean {
    return fs.existsSync(this.pathOf(hash));
  }

  pathOf(hash: string): string {
    assertHash(hash);
    return path.join(this.folderOf(hash.slice(0, 2)), hash.slice(2));
  }

  /** The folder of the objects whose hash starts with these two hex digits. */
  private folderOf(prefix: string): string {
    return path.join(this.dir, "sha256", prefix);
  }

  /**
   * `has` for many hashes: a listing of each folder of the store instead of a
   * stat per hash. Only the last folder's names are kept, so hashes asked in
   * order of their first byte list each folder once.
   */
  hasEach(): (hash: string) => boolean {
    let prefix = "";
    let names = new Set<string>();
    return (hash) => {
      assertHash(hash);
      const first = hash.slice(0, 2);
      if (first !== prefix) {
        prefix = first;
        try {
          names = new Set(fs.readdirSync(this.folderOf(prefix)));
        } catch {
          // As for `has`: a folder that cannot be read holds nothing this store can use.
          names = new Set();
        }
      }
      return names.has(hash.slice(2));
    };
  }

  tmpDir(): string {
    // Created every time rather than once: the store may be deleted under a long-lived process.
    const dir = path.join(this.dir, "tmp");
    fs.mkdirSync(dir, { recursive: true });
    return dir;
  }

  /** A fresh name in tmpDir(); nothing is created. */
  tmpPath(label = "put"): string {
    return path.join(this.tmpDir(), `${label}-${ownerStamp()}-${randomUUID()}`);
  }

  async putFile(src: string, expectedHash?: string): Promise<string> {
    if (expectedHash !== undefined) assertHash(expectedHash);
    const tmp = this.tmpPath();
    try {
      // The copy is what gets hashed and stored, so a source edited meanwhile
      // cannot leave an object whose name does not match its bytes.
      // The copy takes the source's mode bits with its bytes.
      fs.copyFileSync(src, tmp, fs.constants.COPYFILE_FICLONE);
      const { hash } = await sha256File(tmp);
      if (expectedHash !== undefined && hash !== expectedHash) {
        throw new KaosError("IO", `${src}: sha256 is ${hash} — expected ${expectedHash}`);
      }
      this.adopt(tmp, hash, fs.statSync(tmp).mode);
      return hash;
    } catch (error) {
      fs.rmSync(tmp, { force: true });
      if (error instanceof KaosError) throw error;
      throw new KaosError("IO", `cannot store ${src} in ${this.dir}: ${describeError(error)}`, { cause: error });
    }
  }

  async putStream(stream: NodeJS.ReadableStream, expectedHash?: string): Promise<{ hash: string; size: number }> {
    if (expectedHash !== undefined) assertHash(expectedHash);
    const tmp = this.tmpPath();
    const hasher = new HashingPassThrough();
    try {
      await pipeline(stream, hasher, createWriteStream(tmp, { flags: "wx", highWaterMark: 1 << 20 }));
      const hash = hasher.digest();
      if (expectedHash !== undefined && hash !== expectedHash) {
        throw new KaosError("IO", `stream content has sha256 ${hash} — expected ${expectedHash}`);
      }
      this.adopt(tmp, hash);
      return { hash, size: hasher.size };
    } catch (error) {
      fs.rmSync(tmp, { force: true });
      if (error instanceof KaosError) throw error;
      throw new KaosError("IO", `cannot store a stream in ${this.dir}: ${describeError(error)}`, { cause: error });
    }
  }

  /** Moves a finished file into the store under its hash; `sourceMode` is the mode of the file it was made from, when there was one. */
  adopt(tmpPath: string, hash: string, sourceMode?: number): string {
    const dest = this.pathOf(hash);
    const mode = objectModeFor(sourceMode);
    if (fs.existsSync(dest)) {
      // Same name means same bytes: keep the existing inode so the links
      // already pointing at it stay the one copy, readable by no more than this source allows.
      fs.rmSync(tmpPath, { force: true });
      const current = fs.statSync(dest).mode & 0o777;
      if ((current & ~mode) !== 0) fs.chmodSync(dest, current & mode);
      return dest;
    }
    fs.chmodSync(tmpPath, mode);
    try {
      fs.renameSync(tmpPath, dest);
    } catch (error) {
      // The shard folder is created the first time it is needed.
      if (errnoCode(error) !== "ENOENT" || !fs.existsSync(tmpPath)) throw error;
      fs.mkdirSync(path.dirname(dest), { recursive: true });
      fs.renameSync(tmpPath, dest);
    }
    return dest;
  }

  /**
   * Removes an object that nothing links to (a hardlinked view holds a second
   * link), such as the part of a snapshot that could not be completed.
   * Returns whether it was removed.
   */
  discardUnlinked(hash: string): boolean {
    const object = this.pathOf(hash);
    try {
      if (fs.statSync(object).nlink > 1) return false;
      fs.rmSync(object, { force: true });
      return true;
    } catch {
      return false;
    }
  }

  /**
   * A writable copy of an object at `dest`, executable or not, for a tree
   * laid out under a name of its own that is renamed into place once whole
   * (see `materializeTree`): nobody else writes there, so the copy needs no
   * staging name of its own, and its directory exists already.
   */
  copyTo(hash: string, dest: string, executable: boolean): void {
    const object = this.pathOf(hash);
    try {
      fs.copyFileSync(object, dest, fs.constants.COPYFILE_FICLONE);
      fs.chmodSync(dest, copyModeFor(fs.statSync(object).mode, executable));
    } catch (error) {
      if (errnoCode(error) === "ENOENT" && !fs.existsSync(object)) {
        throw new KaosError("IO", `object ${hash} is missing from ${this.dir}`, { cause: error });
      }
      throw new KaosError("IO", `cannot place object ${hash} at ${dest}: ${describeError(error)}`, { cause: error });
    }
  }

  link(hash: string, dest: string, mode: "file" | "exec" = "file"): void {
    const object = this.pathOf(hash);
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    // Link or copy under a temporary name, then rename over `dest`: the
    // destination holds either its old content or the whole object, never a mix.
    const staging = `${dest}.kaos-${ownerStamp()}-${randomUUID().slice(0, 8)}`;
    try {
      if (mode === "exec") {
        fs.copyFileSync(object, staging, fs.constants.COPYFILE_FICLONE);
        fs.chmodSync(staging, copyModeFor(fs.statSync(object).mode, true));
      } else {
        try {
          fs.linkSync(object, staging);
        } catch (error) {
          const code = errnoCode(error);
          // Another filesystem, too many links to one inode, or a filesystem
          // without hardlinks: fall back to a (reflinked when possible) copy.
          if (code !== "EXDEV" && code !== "EMLINK" && code !== "EPERM" && code !== "ENOTSUP") throw error;
          fs.copyFileSync(object, staging, fs.constants.COPYFILE_FICLONE);
          fs.chmodSync(staging, fs.statSync(object).mode & 0o777);
        }
      }
      fs.renameSync(staging, dest);
    } catch (error) {
      fs.rmSync(staging, { force: true });
      if (errnoCode(error) === "ENOENT" && !fs.existsSync(object)) {
        throw new KaosError("IO", `object ${hash} is missing from ${this.dir}`, { cause: error });
      }
      throw new KaosError("IO", `cannot place object ${hash} at ${dest}: ${describeError(error)}`, { cause: error });
    }
  }
}

/** Passes bytes through unchanged while hashing them and counting their length. */
export class HashingPassThrough extends Transform {
  private readonly hash = createHash("sha256");
  size = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    this.size += chunk.length;
    callback(null, chunk);
  }

  digest(): string {
    return this.hash.digest("hex");
  }
}
