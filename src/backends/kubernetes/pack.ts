/**
 * Deterministic bundle archives: the same tree gives the same bytes on any
 * machine, in any directory, at any time, so an archive's SHA-256 names its
 * content and an unchanged bundle never looks new to whatever stores it.
 *
 * What varies between two copies of a tree is normalised away: entries are
 * sorted by the UTF-8 bytes of their path, every mtime is 2000-01-01, owners
 * are left out (uid/gid 0, no user or group names), modes become 0644 or 0755,
 * directories are implied by the files under them, and the gzip header
 * carries no time, no file name and an "unknown" operating system.
 */
import { createHash } from "node:crypto";
import { type Dirent, createWriteStream } from "node:fs";
import { lstat, mkdir, readdir, rename, rm } from "node:fs/promises";
import { dirname, join, posix } from "node:path";
import { Transform, type Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { create as createTar } from "tar";
import { KaosError, describeError, errnoCode } from "../../core/errors.js";
import { ALWAYS_IGNORED, isEditorFile } from "../../core/tree-walk.js";
import { temporaryPathFor } from "../../core/process-identity.js";

export type BundleFileMode = "file" | "exec" | "symlink";

export interface BundleFile {
  /** Relative POSIX path inside the bundle. */
  path: string;
  mode: BundleFileMode;
}

export interface PackResult {
  /** Hex SHA-256 of the archive bytes. */
  sha256: string;
  /** Archive size in bytes. */
  size: number;
}

export interface PackOptions {
  /** Gzip the tar stream. Default true. */
  gzip?: boolean;
}

/** Every entry's mtime: a fixed instant, so the clock never reaches the archive. */
export const PACK_MTIME = new Date(Date.UTC(2000, 0, 1));

/** The directories every bundle leaves out, as hashing does. */
export const PACK_SKIPPED_DIRS: ReadonlySet<string> = ALWAYS_IGNORED;

/**
 * Packs `dir` into a tar (gzipped unless told otherwise) written to `out`: a
 * file path (written to a temporary name beside it, then renamed, so a reader
 * never sees half an archive) or a stream (left open for the caller to end).
 * `files` lists what to pack with the mode to record; without it the
 * directory is walked (skipping .git, .kaos, node_modules, __pycache__ and
 * editors' swap and lock files).
 */
export async function packBundle(
  dir: string,
  files: readonly BundleFile[] | undefined,
  out: string | Writable,
  options: PackOptions = {},
): Promise<PackResult> {
  const entries = sortBundleFiles(files ?? (await walkBundle(dir)));
  for (const entry of entries) checkBundlePath(entry.path, dir);
  if (files !== undefined) await checkListedFilesExist(dir, entries);
  const modes = new Map(entries.map((entry) => [entry.path, entry.mode]));
  const gzip = options.gzip ?? true;

  const archive = createTar(
    {
      cwd: dir,
      portable: true,
      strict: true,
      follow: false,
      noDirRecurse: true,
      mtime: PACK_MTIME,
      gzip: gzip ? { level: 9 } : false,
      onWriteEntry(entry) {
        // The listed mode wins over the disk's, so a checkout with a lost
        // executable bit (or a umask of 0002) still packs to the same bytes.
        if (entry.mode === undefined) return;
        const wanted = modes.get(entry.path);
        const executable = wanted === undefined ? (entry.mode & 0o111) !== 0 : wanted === "exec";
        const mode = entry.type === "SymbolicLink" ? 0o777 : executable ? 0o755 : 0o644;
        entry.mode = (entry.mode & ~0o7777) | mode;
      },
    },
    entries.map((entry) => entry.path),
  );

  const hash = createHash("sha256");
  let size = 0;
  const measure = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      size += chunk.length;
      callback(null, chunk);
    },
  });

  try {
    if (typeof out === "string") {
      await mkdir(dirname(out), { recursive: true });
      const partial = temporaryPathFor(out);
      try {
        await pipeline(archive, measure, createWriteStream(partial));
        await rename(partial, out);
      } catch (error) {
        await rm(partial, { force: true });
        throw error;
      }
    } else {
      await pipeline(archive, measure, out, { end: false });
    }
  } catch (error) {
    if (error instanceof KaosError) throw error;
    throw new KaosError("IO", `could not pack ${dir}: ${describeError(error)}`, {
      hint: errnoCode(error) === "ENOENT" ? "a file of the bundle disappeared while it was packed; rerun" : undefined,
      cause: error,
    });
  }
  return { sha256: hash.digest("hex"), size };
}

/** Sorts by the UTF-8 bytes of the path, the order every tree hash in kaos uses. */
export function sortBundleFiles(files: readonly BundleFile[]): BundleFile[] {
  return [...files].sort((a, b) => Buffer.compare(Buffer.from(a.path), Buffer.from(b.path)));
}

/** Lists a directory's files with their modes, as `packBundle` packs them. */
export async function walkBundle(dir: string): Promise<BundleFile[]> {
  const found: BundleFile[] = [];
  async function visit(relative: string): Promise<void> {
    const absolute = relative === "" ? dir : join(dir, relative);
    let entries: Dirent[];
    try {
      entries = await readdir(absolute, { withFileTypes: true });
    } catch (error) {
      throw new KaosError("IO", `could not read directory ${absolute}: ${describeError(error)}`, { cause: error });
    }
    for (const entry of entries) {
      const name = entry.name;
      // Before any stat: an editor's file may be gone by then.
      if (!entry.isDirectory() && isEditorFile(name)) continue;
      const path = relative === "" ? name : posix.join(relative, name);
      const stat = await lstat(join(dir, path));
      if (stat.isDirectory()) {
        if (!PACK_SKIPPED_DIRS.has(name)) await visit(path);
      } else if (stat.isSymbolicLink()) {
        found.push({ path, mode: "symlink" });
      } else if (stat.isFile()) {
        found.push({ path, mode: stat.mode & 0o111 ? "exec" : "file" });
      }
      // Sockets, FIFOs and devices have no meaning in a bundle.
    }
  }
  await visit("");
  return found;
}

async function checkListedFilesExist(dir: string, entries: readonly BundleFile[]): Promise<void> {
  for (const entry of entries) {
    try {
      await lstat(join(dir, entry.path));
    } catch (error) {
      throw new KaosError("IO", `could not pack ${dir}: ${entry.path} is listed but cannot be read (${describeError(error)})`, {
        hint: errnoCode(error) === "ENOENT" ? "a file of the bundle disappeared before it was packed; rerun" : undefined,
        cause: error,
      });
    }
  }
}

function checkBundlePath(path: string, dir: string): void {
  const normal = posix.normalize(path);
  if (path === "" || path.startsWith("/") || normal !== path || normal === ".." || normal.startsWith("../")) {
    throw new KaosError("BUNDLE_INVALID", `bundle ${dir} lists '${path}', which is not a plain relative path`, {
      hint: "list paths relative to the bundle directory, without '.', '..' or a leading '/'",
    });
  }
}
