/**
 * The validated value of a config or stack file, kept in
 * `.kaos/config-cache.json`, so that a command whose files did not change
 * loads neither the TypeScript loader (jiti) nor the validator (zod).
 *
 * A config is code, so its value is kept only when the code's text decides
 * it, and under the content of every file that text is: the module and each
 * module it imports, found by reading their import statements. Any doubt
 * means no keeping, and the file is evaluated as before:
 *
 * - an import or a CommonJS `require` of anything but a relative path or
 *   `kaos-ml` (a package, a Node built-in), or an `import(...)` or a
 *   `require` of something else than a string (`require.resolve`, too);
 * - a word through which code reads the world beyond its files: the clock,
 *   randomness, globals, `import.meta`, the network (looked for
 *   in the whole text, comments included, so it errs only towards evaluating);
 * - a value JSON cannot carry exactly.
 *
 * Values are written when the command opens the state store to write
 * (`saveConfigCache`). Code that names `process` is kept under the whole environment, the working
 * directory and the arguments as well. kaos's own version and build
 * (`kaosBuild`) are part of every key: another kaos evaluates again.
 *
 * The same reading of import statements tells `kaos watch` which of the
 * project's files a config imports (`importedModules`), and the up-to-date
 * record which paths a kept value depends on (`moduleInputs`).
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { configCacheOf, isFile, kaosBuild } from "./layout.js";
import { temporaryPathFor } from "./process-identity.js";

const FORMAT = 1;

/** Reads of the world beyond a module's files; see the module comment. */
const UNKEPT_WORDS =
  /\b(?:globalThis|global|Date|Math\s*\.\s*random|eval|Function|fetch|crypto|performance|Deno|Bun|import\s*\.\s*meta|__dirname|__filename|setTimeout|setInterval|queueMicrotask|WebAssembly|Intl)\b/;
const PROCESS_WORD = /\bprocess\b/;
const FROM_SPECIFIER = /\b(?:from|import)\s*["']([^"'\n]*)["']/g;
const DYNAMIC_IMPORT = /\bimport\s*\(/g;
const LITERAL_DYNAMIC_IMPORT = /^import\s*\(\s*["']([^"'\n]*)["']\s*\)/;
const REQUIRE = /\brequire\b/g;
const LITERAL_REQUIRE = /^require\s*\(\s*["']([^"'\n]*)["']\s*\)/;

/** The extensions a relative import may leave out, and index files, roughly in the order a TypeScript loader tries them. */
const EXTENSIONS = [".ts", ".mts", ".cts", ".js", ".mjs", ".cjs", ".json", ".tsx", ".jsx"];

/**
 * The files an import of `specifier` from `from` may load: every one is read
 * into the key, whether it exists or not, so a new file that would be
 * loaded instead is a new key.
 */
function candidates(from: string, specifier: string): string[] {
  const base = resolve(dirname(from), specifier);
  const twins = /\.[cm]?js$/.test(base) ? [".ts", ".mts", ".cts", ".tsx"].map((ext) => base.replace(/\.[cm]?js$/, ext)) : [];
  return [base, ...twins, ...EXTENSIONS.map((ext) => base + ext), ...EXTENSIONS.map((ext) => join(base, `index${ext}`))];
}

/** The specifiers a module's text imports or requires, and whether every one could be read off the text. */
function literalImportsOf(text: string): { specifiers: string[]; complete: boolean } {
  const specifiers = [...text.matchAll(FROM_SPECIFIER)].map((match) => match[1] ?? "");
  let complete = true;
  for (const [calls, literal] of [
    [DYNAMIC_IMPORT, LITERAL_DYNAMIC_IMPORT],
    [REQUIRE, LITERAL_REQUIRE],
  ] as const) {
    for (const match of text.matchAll(calls)) {
      const found = literal.exec(text.slice(match.index));
      if (found === null) complete = false;
      else specifiers.push(found[1] ?? "");
    }
  }
  return { specifiers, complete };
}

/** The specifiers a module's text imports or requires, or undefined when one cannot be read off the text. */
function importsOf(text: string): string[] | undefined {
  const { specifiers, complete } = literalImportsOf(text);
  return complete ? specifiers : undefined;
}

function isRelative(specifier: string): boolean {
  return specifier.startsWith("./") || specifier.startsWith("../") || specifier === "." || specifier === "..";
}

interface Fingerprint {
  /** Every file looked at, with its content's hash, or "-" for none. */
  files: [string, string][];
  readsProcess: boolean;
}

/** What `file`'s value depends on, or undefined when it may not be kept. */
function fingerprint(file: string): Fingerprint | undefined {
  const files: [string, string][] = [];
  const seen = new Set<string>();
  let readsProcess = false;
  const visit = (path: string, mustExist: boolean): boolean => {
    if (seen.has(path)) return true;
    seen.add(path);
    let content: Buffer;
    try {
      if (!statSync(path).isFile()) {
        files.push([path, "-"]);
        return !mustExist;
      }
      content = readFileSync(path);
    } catch {
      files.push([path, "-"]);
      return !mustExist;
    }
    files.push([path, createHash("sha256").update(content).digest("hex")]);
    if (path.endsWith(".json")) return true;
    const text = content.toString("utf8");
    if (UNKEPT_WORDS.test(text)) return false;
    if (PROCESS_WORD.test(text)) readsProcess = true;
    const specifiers = importsOf(text);
    if (specifiers === undefined) return false;
    for (const specifier of specifiers) {
      if (specifier === "kaos-ml") continue;
      if (!isRelative(specifier)) return false;
      const found = candidates(path, specifier);
      if (!found.some(isFile)) return false;
      for (const candidate of found) if (!visit(candidate, false)) return false;
    }
    return true;
  };
  return visit(file, true) ? { files, readsProcess } : undefined;
}

/**
 * Every path the value of module `file` depends on, existing or not (see
 * `fingerprint`), or undefined when its value depends on more than its files
 * and the process's environment, working directory and arguments.
 */
export function moduleInputs(file: string): string[] | undefined {
  return fingerprint(file)?.files.map(([path]) => path);
}

/**
 * The files of the project's own that module `file` imports, at any depth, as
 * far as their texts name them: each relative import or literal `require`,
 * as the files it may load that exist. Packages are left out, and so is what
 * an `import(...)` or a `require` of a computed name loads.
 */
export function importedModules(file: string): string[] {
  const found: string[] = [];
  const seen = new Set<string>([file]);
  const visit = (path: string): void => {
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch {
      return;
    }
    for (const specifier of literalImportsOf(text).specifiers) {
      if (!isRelative(specifier)) continue;
      for (const candidate of candidates(path, specifier)) {
        if (seen.has(candidate) || !isFile(candidate)) continue;
        seen.add(candidate);
        found.push(candidate);
        if (!candidate.endsWith(".json")) visit(candidate);
      }
    }
  };
  visit(file);
  return found;
}

/** Plain data only: what JSON gives back exactly as it was. A value that contains itself is not. */
export function isPlainData(value: unknown, within: readonly object[] = []): boolean {
  if (value === null || typeof value === "string" || typeof value === "boolean") return true;
  if (typeof value === "number") return Number.isFinite(value) && !Object.is(value, -0);
  if (typeof value !== "object" || within.includes(value)) return false;
  const path = [...within, value];
  if (Array.isArray(value)) return value.every((item, index) => index in value && isPlainData(item, path));
  const prototype = Object.getPrototypeOf(value);
  if (prototype !== Object.prototype && prototype !== null) return false;
  return Object.values(value).every((item) => isPlainData(item, path));
}

interface CacheFile {
  format: number;
  kaos: string;
  entries: Record<string, { key: string; value: unknown }>;
}

function readCache(stateDir: string): CacheFile["entries"] {
  try {
    const cache = JSON.parse(readFileSync(configCacheOf(stateDir), "utf8")) as Partial<CacheFile>;
    if (cache.format !== FORMAT || cache.kaos !== kaosBuild() || typeof cache.entries !== "object" || cache.entries === null) return {};
    return cache.entries;
  } catch {
    return {};
  }
}

/** The key `file`'s value is kept under, or undefined when it may not be kept. */
function keyOf(kind: string, file: string): string | undefined {
  const found = fingerprint(file);
  if (found === undefined) return undefined;
  const world = found.readsProcess
    ? [Object.entries(process.env).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)), process.cwd(), process.argv]
    : [];
  return createHash("sha256")
    .update(JSON.stringify([kind, file, kaosBuild(), found.files, world]))
    .digest("hex");
}

/**
 * The value of `file` (a config or stack module of `kind`) as `evaluate`
 * returns it, from the cache in `stateDir` when its key matches. `evaluate`
 * loads and validates the module; what it throws is not kept.
 */
export async function cachedModuleValue<T>(kind: string, file: string, stateDir: string, evaluate: () => Promise<T>): Promise<T> {
  const key = keyOf(kind, file);
  if (key === undefined) return evaluate();
  const entry = readCache(stateDir)[`${kind}:${file}`];
  if (entry !== undefined && entry.key === key) return entry.value as T;
  const value = await evaluate();
  // A file edited while it was evaluated: its value may belong to either text, so it is not kept.
  if (isPlainData(value) && keyOf(kind, file) === key) {
    const waiting = pending.get(stateDir) ?? {};
    waiting[`${kind}:${file}`] = { key, value };
    pending.set(stateDir, waiting);
  }
  return value;
}

/** Values evaluated in this process, written only once the command is past checking its input. */
const pending = new Map<string, CacheFile["entries"]>();

/**
 * Writes the values evaluated in this process into the cache in `stateDir`.
 * Called when a command opens the state store to write: bad input is
 * reported before `.kaos/` is touched, and a command that records nothing
 * leaves it as it was.
 */
export function saveConfigCache(stateDir: string): void {
  const waiting = pending.get(stateDir);
  if (waiting === undefined || !existsSync(stateDir)) return;
  pending.delete(stateDir);
  const entries = { ...readCache(stateDir), ...waiting };
  const target = configCacheOf(stateDir);
  const temporary = temporaryPathFor(target);
  try {
    writeFileSync(temporary, JSON.stringify({ format: FORMAT, kaos: kaosBuild(), entries } satisfies CacheFile));
    renameSync(temporary, target);
  } catch {
    // Only a cache: the next command evaluates the file again.
  }
}
