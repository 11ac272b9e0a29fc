/**
 * Remote data manifests: JSON lines `{"url", "path"[, "sha256", "size"]}` read
 * from one file or from every regular file of a directory, and the lock that
 * pins what each entry's content turned out to be.
 *
 * Lock location: a manifest file `M` is pinned by `M.lock` beside it; a
 * manifest directory `D` by `D/kaos.lock` inside it (which is why reading a
 * directory skips `kaos.lock`). Either way the lock travels with the manifest,
 * so committing both pins the data for everyone. It records each URL without
 * credentials (see urls.ts), and a pin holds for its entry as long as the URL
 * names the same source, credentials aside.
 *
 * Every line is checked before anything is downloaded; an error names the file
 * and line and what was expected.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import * as z from "zod";
import { KaosError, describeError, errnoCode } from "./errors.js";
import { type FileUrlScope, fileUrlRefusal, sameSource, sourceIdentity, widenScopeHint } from "./urls.js";

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
export const SUPPORTED_SCHEMES = ["http:", "https:", "file:"] as const;

const KNOWN_KEYS = new Set(["url", "path", "sha256", "size"]);
const LINE_EXAMPLE = `{"url": "https://example.com/train/a.csv", "path": "train/a.csv"}`;
const PATH_EXPECTED = `a relative path inside the data directory, such as "train/a.csv"`;

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
  if (p.length === 0) return "is empty";
  if (p.includes("\0")) return "contains a NUL character";
  if (p.includes("\\")) return "contains a backslash";
  if (p.startsWith("/")) return "is absolute";
  if (/^[A-Za-z]:/.test(p)) return "starts with a Windows drive letter";
  for (const segment of p.split("/")) {
    if (segment === "") return "has an empty segment (a leading, doubled or trailing '/')";
    if (segment === ".") return "has a '.' segment";
    if (segment === "..") return "has a '..' segment";
  }
  // Belt and braces: whatever passed above must normalize to itself and stay inside.
  const normalized = path.posix.normalize(p);
  if (normalized !== p || path.posix.isAbsolute(normalized) || normalized.startsWith("../")) {
    return "does not normalize to itself";
  }
  return undefined;
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

  const entryPath = record["path"];
  if (entryPath === undefined) throw invalid(file, line, `missing "path"`, PATH_EXPECTED);
  if (typeof entryPath !== "string") throw invalid(file, line, `"path" is ${describeType(entryPath)}`, PATH_EXPECTED);
  const unsafe = unsafePathReason(entryPath);
  if (unsafe !== undefined) throw invalid(file, line, `unsafe path ${JSON.stringify(entryPath)} (${unsafe})`, PATH_EXPECTED);

  const entry: ManifestEntry = { url, path: entryPath, file, line };
  const sha256 = record["sha256"];
  if (sha256 !== undefined) {
    if (typeof sha256 !== "string" || !/^[0-9a-fA-F]{64}$/.test(sha256)) {
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
    .filter((name) => !name.startsWith(".") && name !== DIRECTORY_LOCK_NAME)
    .sort()
    .map((name) => path.join(pathOrDir, name))
    .filter((file) => fs.statSync(file).isFile());
}

export function readManifest(pathOrDir: string): ManifestEntry[] {
  const entries: ManifestEntry[] = [];
  const byPath = new Map<string, ManifestEntry>();
  for (const file of manifestFiles(pathOrDir)) {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (error) {
      throw new KaosError("MANIFEST_INVALID", `${file}: cannot read the manifest (${describeError(error)})`);
    }
    if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    const lines = text.split("\n");
    for (let index = 0; index < lines.length; index++) {
      const raw = lines[index] ?? "";
      if (raw.trim() === "") continue;
      const entry = parseLine(raw, file, index + 1);
      const first = byPath.get(entry.path);
      if (first !== undefined) {
        throw invalid(
          file,
          entry.line,
          `duplicate path ${JSON.stringify(entry.path)} (first at ${first.file}:${first.line})`,
          "each path once",
        );
      }
      byPath.set(entry.path, entry);
      entries.push(entry);
    }
  }
  if (entries.length === 0) {
    throw new KaosError("MANIFEST_INVALID", `${pathOrDir}: the manifest has no entries — expected at least one line like ${LINE_EXAMPLE}`);
  }
  checkFileFolderClashes(entries, byPath);
  return entries;
}

/** `a` and `a/b` cannot both be files: one of them would have to be a folder. */
function checkFileFolderClashes(entries: ManifestEntry[], byPath: Map<string, ManifestEntry>): void {
  for (const entry of entries) {
    let slash = entry.path.indexOf("/");
    while (slash !== -1) {
      const parent = byPath.get(entry.path.slice(0, slash));
      if (parent !== undefined) {
        const parentFirst = parent.file < entry.file || (parent.file === entry.file && parent.line < entry.line);
        const expected = "each path to be either a file or a folder, not both";
        if (parentFirst) {
          throw invalid(
            entry.file,
            entry.line,
            `path ${JSON.stringify(entry.path)} puts a file inside ${JSON.stringify(parent.path)}, which ${parent.file}:${parent.line} lists as a file`,
            expected,
          );
        }
        throw invalid(
          parent.file,
          parent.line,
          `path ${JSON.stringify(parent.path)} is a file, but ${entry.file}:${entry.line} puts ${JSON.stringify(entry.path)} inside it`,
          expected,
        );
      }
      slash = entry.path.indexOf("/", slash + 1);
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

const lockSchema = z.strictObject({
  version: z.literal(1),
  entries: z.record(
    z.string(),
    z.strictObject({
      url: z.string(),
      sha256: z.string().regex(/^[0-9a-f]{64}$/, "expected 64 lowercase hex digits"),
      size: z.number().int().nonnegative(),
      etag: z.string().optional(),
      lastModified: z.string().optional(),
    }),
  ),
});

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
  const result = lockSchema.safeParse(value);
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue === undefined || issue.path.length === 0 ? "" : ` at ${issue.path.map(String).join(".")}`;
    throw new KaosError("MANIFEST_INVALID", `${lockPath}: the lock is invalid${where}: ${issue?.message ?? "unknown problem"}`, {
      hint: fix,
    });
  }
  const entries: Record<string, ManifestLockEntry> = {};
  for (const [key, entry] of Object.entries(result.data.entries)) {
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
  const tmp = `${lockPath}.tmp-${process.pid}`;
  try {
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, lockPath);
  } catch (error) {
    fs.rmSync(tmp, { force: true });
    throw new KaosError("IO", `cannot write the manifest lock ${lockPath}: ${describeError(error)}`, { cause: error });
  }
}

/**
 * The content hash an entry is pinned to: the manifest's own `sha256` first,
 * else the lock's, as long as the lock entry is for the same URL (and agrees
 * with the manifest's `size` when one is given).
 */
export function pinnedHash(entry: ManifestEntry, lock: ManifestLock | undefined): string | undefined {
  if (entry.sha256 !== undefined) return entry.sha256;
  const locked = lock?.entries[entry.path];
  if (locked === undefined || !sameSource(locked.url, entry.url)) return undefined;
  if (entry.size !== undefined && locked.size !== entry.size) return undefined;
  return locked.sha256;
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
  return createHash("sha256").update("kaos manifest data v1\n").update(JSON.stringify(rows)).digest("hex");
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
