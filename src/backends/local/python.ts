/**
 * Which Python builds a local environment: the version a Dockerfile's
 * `FROM python:X.Y` names when such an interpreter is on PATH, else python3.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  openSync,
  readFileSync,
  readSync,
  realpathSync,
  renameSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { delimiter, dirname, isAbsolute, join } from "node:path";
import { promisify } from "node:util";
import { KaosError } from "../../core/errors.js";
import { pythonVersionsOf } from "../../core/layout.js";
import { temporaryPathFor } from "../../core/process-identity.js";

export interface PythonRuntime {
  /** Absolute path of the interpreter. */
  path: string;
  /** Full version, such as 3.11.7. */
  version: string;
  /** Set when the Dockerfile asked for a version that is not installed here. */
  note: string | undefined;
  /** `uv` on PATH, used to build environments when present. */
  uv: string | undefined;
  /** The command asked for its version (a PATH entry, maybe a pyenv shim), which `prefetchPython` may start early next time. */
  probed: string;
}

export function which(command: string, path = process.env.PATH ?? ""): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, command);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

type Probe = { version: string; executable: string } | undefined;

const probes = new Map<string, Promise<Probe>>();

/**
 * Asks `path` for its version once per process and environment (a shim's
 * answer depends on PATH), and with a state folder, once per interpreter:
 * the answer is kept in `.kaos/` under what identifies the interpreter (see
 * `interpreterIdentity`), so a command that changes nothing starts no Python.
 */
function versionOf(path: string, stateDir?: string): Promise<Probe> {
  const key = `${path}|${process.env.PATH ?? ""}|${process.env.PYENV_VERSION ?? ""}`;
  let probe = probes.get(key);
  if (probe === undefined) {
    probe = probeWithCache(path, stateDir);
    probes.set(key, probe);
  }
  return probe;
}

/** The answer `.kaos/` keeps for the interpreter of `identity` (see `interpreterIdentity`) while it is still the same file, if any. */
function keptProbe(identity: string, stateDir: string): Probe {
  const hit = readVersionCache(stateDir)[identity];
  // The interpreter that answered must still be the file it was: a shim's target rebuilt in place is asked again.
  if (hit !== undefined && fileIdentity(hit.executable) === hit.executableId) {
    return { version: hit.version, executable: hit.executable };
  }
  return undefined;
}

async function probeWithCache(path: string, stateDir: string | undefined): Promise<Probe> {
  const identity = stateDir === undefined ? undefined : interpreterIdentity(path);
  if (stateDir === undefined || identity === undefined) return askVersion(path);
  const kept = keptProbe(identity, stateDir);
  if (kept !== undefined) return kept;
  const probe = await askVersion(path);
  const executableId = probe === undefined ? undefined : fileIdentity(probe.executable);
  if (probe !== undefined && executableId !== undefined) {
    pendingVersions.set(stateDir, { ...pendingVersions.get(stateDir), [identity]: { ...probe, executableId } });
  }
  return probe;
}

/** Answers asked in this process, written by `rememberPythonProbe` once the command is planning (past checking its input). */
const pendingVersions = new Map<string, Record<string, CachedVersion>>();

/** What a file is, as far as its stat can tell: a changed, replaced or rebuilt file has another identity. */
function fileIdentity(path: string): string | undefined {
  try {
    const real = realpathSync(path);
    const stat = statSync(real, { bigint: true });
    return `${real}|${stat.dev}|${stat.ino}|${stat.size}|${stat.mtimeNs}|${stat.ctimeNs}`;
  } catch {
    return undefined;
  }
}

function firstBytes(path: string, count: number): string {
  const fd = openSync(path, "r");
  try {
    const buffer = Buffer.alloc(count);
    return buffer.toString("latin1", 0, readSync(fd, buffer, 0, count, 0));
  } finally {
    closeSync(fd);
  }
}

/** The line of a pyenv shim that hands over to pyenv, and the PYENV_ROOT it exports. */
const PYENV_EXEC = /^exec "(.+)\/libexec\/pyenv" exec /m;
const PYENV_ROOT_EXPORT = /^export PYENV_ROOT="([^"\n]+)"$/m;

/**
 * The key of an interpreter's version answer, or undefined when the answer
 * may not be kept. A binary is known by its file. A script chooses its
 * interpreter itself, from anything: its answer is never kept, except for
 * pyenv's shims, whose choice is known (pyenv's documented order:
 * PYENV_VERSION, the nearest `.python-version` from PYENV_DIR or the working
 * directory up, the global version file; `system` and prefixes also depend on
 * PATH and on what is installed under versions/).
 */
function interpreterIdentity(path: string): string | undefined {
  const file = fileIdentity(path);
  if (file === undefined) return undefined;
  let script: string;
  try {
    if (firstBytes(path, 2) !== "#!") return digest([file]);
    script = firstBytes(path, 4096);
  } catch {
    return undefined;
  }
  const exec = PYENV_EXEC.exec(script);
  if (exec === null) return undefined;
  const root = PYENV_ROOT_EXPORT.exec(script)?.[1] ?? process.env.PYENV_ROOT;
  if (root === undefined) return undefined;
  const env = process.env;
  const versionFile = nearestVersionFile(env.PYENV_DIR ?? process.cwd()) ?? join(root, "version");
  return digest([
    file,
    root,
    env.PYENV_VERSION ?? "",
    env.PATH ?? "",
    versionFile,
    contentOf(versionFile),
    fileIdentity(join(root, "versions")) ?? "",
  ]);
}

function nearestVersionFile(from: string): string | undefined {
  let dir = from;
  for (;;) {
    const candidate = join(dir, ".python-version");
    if (existsSync(candidate)) return candidate;
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

function contentOf(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

function digest(parts: string[]): string {
  return createHash("sha256").update(JSON.stringify(parts)).digest("hex");
}

interface CachedVersion {
  version: string;
  executable: string;
  executableId: string;
}

/** At most this many answers are kept: one per interpreter a project was planned with. */
const VERSION_CACHE_ENTRIES = 16;

function readVersionCache(stateDir: string): Record<string, CachedVersion> {
  try {
    const value: unknown = JSON.parse(readFileSync(pythonVersionsOf(stateDir), "utf8"));
    if (typeof value !== "object" || value === null || Array.isArray(value)) return {};
    const entries: Record<string, CachedVersion> = {};
    for (const [key, entry] of Object.entries(value)) {
      if (typeof entry !== "object" || entry === null) continue;
      const { version, executable, executableId } = entry as Record<string, unknown>;
      if (typeof version === "string" && typeof executable === "string" && typeof executableId === "string") {
        entries[key] = { version, executable, executableId };
      }
    }
    return entries;
  } catch {
    return {};
  }
}

function writeVersionCache(stateDir: string, entries: Record<string, CachedVersion>): void {
  if (!existsSync(stateDir)) return;
  const file = pythonVersionsOf(stateDir);
  const temporary = temporaryPathFor(file);
  try {
    writeFileSync(temporary, JSON.stringify(Object.fromEntries(Object.entries(entries).slice(-VERSION_CACHE_ENTRIES))));
    renameSync(temporary, file);
  } catch {
    // Only a cache: without it the next command asks the interpreter again.
  }
}

async function askVersion(path: string): Promise<Probe> {
  try {
    // -S skips site-packages and the version comes from sys (the same string
    // platform.python_version() parses out of it): a third of the start-up.
    // Promisified here, not when the module loads: a start with its probe cached never loads child_process.
    const { stdout } = await promisify(execFile)(path, ["-S", "-c", "import sys; print(sys.version.split()[0]); print(sys.executable)"], {
      timeout: 15_000,
    });
    const [version, executable] = stdout.trim().split("\n");
    return version && executable ? { version, executable } : undefined;
  } catch {
    return undefined;
  }
}

const cache = new Map<string, Promise<PythonRuntime>>();

/**
 * Resolves the interpreter for `wanted` (X.Y from the Dockerfile), once per
 * process; with `stateDir`, versions are kept there (see `versionOf`).
 */
export function resolvePython(wanted: string | undefined, stateDir?: string): Promise<PythonRuntime> {
  const cacheKey = `${wanted ?? ""}|${process.env.PATH ?? ""}|${process.env.KAOS_PYTHON ?? ""}`;
  let found = cache.get(cacheKey);
  if (!found) {
    found = findPython(wanted, stateDir);
    cache.set(cacheKey, found);
  }
  return found;
}

/** The interpreters looked for, in order: KAOS_PYTHON, the Dockerfile's version, python3, python; each as found on PATH unless a path. */
function* candidatePaths(wanted: string | undefined): Generator<string> {
  const override = process.env.KAOS_PYTHON;
  for (const candidate of [override, wanted ? `python${wanted}` : undefined, "python3", "python"]) {
    if (candidate === undefined) continue;
    const path = candidate.includes("/") ? candidate : which(candidate);
    if (path !== undefined) yield path;
  }
}

/** What builds a local environment, as its env key names it: `local python 3.11.7 linux-x64`. */
export function runtimeName(version: string): string {
  return `local python ${version} ${process.platform}-${process.arch}`;
}

/**
 * The `runtimeName` that `resolvePython` would give, told only from what
 * `.kaos/` keeps; undefined when telling would mean asking an interpreter.
 */
export function knownRuntime(wanted: string | undefined, stateDir: string): string | undefined {
  // Only the first interpreter found: `findPython` goes on past one that does not answer, which only asking tells.
  const first = candidatePaths(wanted).next();
  if (first.done === true) return undefined;
  const identity = interpreterIdentity(first.value);
  const probe = identity === undefined ? undefined : keptProbe(identity, stateDir);
  return probe === undefined ? undefined : runtimeName(probe.version);
}

async function findPython(wanted: string | undefined, stateDir: string | undefined): Promise<PythonRuntime> {
  const uv = which("uv");
  for (const path of candidatePaths(wanted)) {
    const info = await versionOf(path, stateDir);
    if (info === undefined) continue;
    const matches = wanted === undefined || info.version === wanted || info.version.startsWith(`${wanted}.`);
    return {
      path: info.executable,
      version: info.version,
      note: matches
        ? undefined
        : `the Dockerfile asks for Python ${wanted}, which is not installed here; using Python ${info.version} (${path})`,
      uv,
      probed: path,
    };
  }
  throw new KaosError("BUILD_FAILED", "no Python interpreter found on PATH (looked for python3 and python)", {
    hint: "install Python 3, or point KAOS_PYTHON at an interpreter",
  });
}

/**
 * The interpreter a project used last time is asked for its version as soon
 * as a command starts, while the CLI and the config load, instead of after:
 * a pyenv shim takes most of a tenth of a second to answer. The hint is only
 * the name of the command; its answer is taken from the version cache when
 * the interpreter is one it may keep, else asked again, so a changed
 * interpreter is still seen. A stale name costs one wasted process.
 */
const PROBE_HINT = "python-probe";

export function prefetchPython(stateDir: string): void {
  let path: string;
  try {
    path = readFileSync(join(stateDir, PROBE_HINT), "utf8").trim();
  } catch {
    return;
  }
  if (isAbsolute(path)) void versionOf(path, stateDir);
}

export function rememberPythonProbe(stateDir: string, runtime: PythonRuntime): void {
  const answers = pendingVersions.get(stateDir);
  if (answers !== undefined) {
    pendingVersions.delete(stateDir);
    writeVersionCache(stateDir, { ...readVersionCache(stateDir), ...answers });
  }
  const file = join(stateDir, PROBE_HINT);
  try {
    if (!existsSync(stateDir) || (existsSync(file) && readFileSync(file, "utf8").trim() === runtime.probed)) return;
    writeFileSync(file, `${runtime.probed}\n`);
  } catch {
    // Only a hint: without it the next command asks a little later.
  }
}
