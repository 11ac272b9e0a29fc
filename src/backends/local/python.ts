/**
 * Which Python builds a local environment: the version a Dockerfile's
 * `FROM python:X.Y` names when such an interpreter is on PATH, else python3.
 */
import { execFile } from "node:child_process";
import { accessSync, constants, existsSync, readFileSync, writeFileSync } from "node:fs";
import { delimiter, isAbsolute, join } from "node:path";
import { promisify } from "node:util";
import { KaosError } from "../../core/errors.js";

const run = promisify(execFile);

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

/** Asks `path` for its version once per process and environment (a shim's answer depends on PATH). */
function versionOf(path: string): Promise<Probe> {
  const key = `${path}|${process.env.PATH ?? ""}|${process.env.PYENV_VERSION ?? ""}`;
  let probe = probes.get(key);
  if (probe === undefined) {
    probe = askVersion(path);
    probes.set(key, probe);
  }
  return probe;
}

async function askVersion(path: string): Promise<Probe> {
  try {
    // -S skips site-packages and the version comes from sys (the same string
    // platform.python_version() parses out of it): a third of the start-up.
    const { stdout } = await run(path, ["-S", "-c", "import sys; print(sys.version.split()[0]); print(sys.executable)"], {
      timeout: 15_000,
    });
    const [version, executable] = stdout.trim().split("\n");
    return version && executable ? { version, executable } : undefined;
  } catch {
    return undefined;
  }
}

const cache = new Map<string, Promise<PythonRuntime>>();

/** Resolves the interpreter for `wanted` (X.Y from the Dockerfile), once per process. */
export function resolvePython(wanted: string | undefined): Promise<PythonRuntime> {
  const cacheKey = `${wanted ?? ""}|${process.env.PATH ?? ""}|${process.env.KAOS_PYTHON ?? ""}`;
  let found = cache.get(cacheKey);
  if (!found) {
    found = findPython(wanted);
    cache.set(cacheKey, found);
  }
  return found;
}

async function findPython(wanted: string | undefined): Promise<PythonRuntime> {
  const uv = which("uv");
  const override = process.env.KAOS_PYTHON;
  const candidates = [override, wanted ? `python${wanted}` : undefined, "python3", "python"].filter((c): c is string => c !== undefined);
  for (const candidate of candidates) {
    const path = candidate.includes("/") ? candidate : which(candidate);
    if (path === undefined) continue;
    const info = await versionOf(path);
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
 * a pyenv shim takes most of a tenth of a second to answer. Only the name of
 * the command is remembered, never its answer, so a changed interpreter is
 * still seen; a stale name costs one wasted process.
 */
const PROBE_HINT = "python-probe";

export function prefetchPython(stateDir: string): void {
  let path: string;
  try {
    path = readFileSync(join(stateDir, PROBE_HINT), "utf8").trim();
  } catch {
    return;
  }
  if (isAbsolute(path)) void versionOf(path);
}

export function rememberPythonProbe(stateDir: string, runtime: PythonRuntime): void {
  const file = join(stateDir, PROBE_HINT);
  try {
    if (!existsSync(stateDir) || (existsSync(file) && readFileSync(file, "utf8").trim() === runtime.probed)) return;
    writeFileSync(file, `${runtime.probed}\n`);
  } catch {
    // Only a hint: without it the next command asks a little later.
  }
}
