/**
 * Where kaos keeps things in `.kaos/` beside the config. One place, so that
 * the backend that writes and the commands that read agree.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { basename, dirname, extname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The root of the kaos-ml package (where its package.json is), from wherever
 * this module runs: the flat dist/ of an install, or src/ in this repository.
 */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
  return dir;
}

/** Written in by the build (scripts/build.mjs); absent when running from src/. */
declare const KAOS_PACKAGE_VERSION: string | undefined;

let packageVersion: string | undefined;

/** The version of the kaos-ml package that runs, without reading its package.json when the build wrote it in. */
export function kaosVersion(): string {
  if (typeof KAOS_PACKAGE_VERSION === "string") return KAOS_PACKAGE_VERSION;
  packageVersion ??= (JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version: string }).version;
  return packageVersion;
}

let buildIdentity: string | undefined;

/**
 * This kaos: its version and the build of this module, as its file stands (a
 * rebuilt checkout keeps its version). What kaos keeps from one command for
 * the next (the config cache, the up-to-date record) is keyed on it.
 */
export function kaosBuild(): string {
  if (buildIdentity === undefined) {
    const self = statSync(fileURLToPath(import.meta.url), { bigint: true });
    buildIdentity = `${kaosVersion()}|${self.ino}|${self.size}|${self.mtimeNs}`;
  }
  return buildIdentity;
}

/**
 * The module kinds a config or a stack file may be, in the order they are
 * looked for: vitest's, TypeScript first, then JavaScript, each as the
 * package decides, as an ES module, as CommonJS.
 */
export const MODULE_EXTENSIONS = ["ts", "mts", "cts", "js", "mjs", "cjs"] as const;

export const CONFIG_FILE_NAMES = MODULE_EXTENSIONS.map((ext) => `kaos.config.${ext}`);

/** The config's names, for messages: `kaos.config.ts (or .mts, .cts, .js, .mjs, .cjs)`. */
export const CONFIG_NAMES_TEXT = `kaos.config.ts (or ${MODULE_EXTENSIONS.slice(1)
  .map((ext) => `.${ext}`)
  .join(", ")})`;

/** A TypeScript declaration file, which a folder of modules may hold beside them and which is no module itself. */
const DECLARATION_FILE = /\.d\.[cm]?ts$/;

/** Where kaos keeps a project's state, beside its config. */
export const STATE_DIR_NAME = ".kaos";

/** The stack files of a project: `stacks/NAME.ts` (or another module extension). */
export function stacksDirOf(root: string): string {
  return join(root, "stacks");
}

/** The names of the stack files in a project's `stacks/`, sorted; none when it has no such folder. */
export function stackNames(root: string): string[] {
  let files: string[];
  try {
    files = readdirSync(stacksDirOf(root));
  } catch {
    return [];
  }
  const names = files
    .filter((file) => (MODULE_EXTENSIONS as readonly string[]).includes(extname(file).slice(1)) && !DECLARATION_FILE.test(file))
    .map((file) => basename(file, extname(file)));
  return [...new Set(names)].sort();
}

/** The files of stack `name` that exist, in the order they are looked for: more than one is a mistake to report. */
export function stackFilesOf(root: string, name: string): string[] {
  return MODULE_EXTENSIONS.map((ext) => join(stacksDirOf(root), `${name}.${ext}`)).filter(isFile);
}

/** Whether a regular file is at `path`, following a symlink; false when nothing can be seen there. */
export function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** The state database of a project. */
export function stateDbOf(root: string): string {
  return join(stateDirOf(root), "state.db");
}

/** The config file in `cwd` or its nearest parent; the first by `CONFIG_FILE_NAMES` where one folder has several. */
export function findConfig(cwd: string): string | undefined {
  return findConfigs(cwd)[0];
}

/**
 * The config files of the nearest folder, from `cwd` up, that has any, in the
 * order of `CONFIG_FILE_NAMES`; none when no folder has one. Loading a config
 * refuses a folder with several, since which one was meant cannot be told.
 */
export function findConfigs(cwd: string): string[] {
  let dir = resolve(cwd);
  for (;;) {
    const found = CONFIG_FILE_NAMES.map((name) => join(dir, name)).filter((candidate) => existsSync(candidate));
    if (found.length > 0) return found;
    const parent = dirname(dir);
    if (parent === dir) return [];
    dir = parent;
  }
}

/**
 * The config of the project whose state a command that only reads it means,
 * when none is named: the nearest above `cwd`, unless `cwd` itself holds the
 * `.kaos/` of a `kaos train deploy` project, which has no config and is nearer.
 * Undefined when the project is such a deploy project, or there is none.
 */
export function findConfigOfState(cwd: string): string | undefined {
  const config = findConfig(cwd);
  if (config !== undefined && dirname(config) !== resolve(cwd) && existsSync(stateDirOf(cwd))) return undefined;
  return config;
}

export function stateDirOf(root: string): string {
  return join(root, STATE_DIR_NAME);
}

/**
 * What kaos itself keeps at the top of `.kaos/`: the state database and its
 * SQLite companions, the object store, environments, laid-out data, tree
 * listings, job directories, Pulumi's state, the interpreter hint and the
 * file system monitor's socket and cookies. Any
 * other name there was put by someone else.
 */
export const STATE_DIR_NAMES: ReadonlySet<string> = new Set([
  "state.db",
  "state.db-wal",
  "state.db-shm",
  "state.db-journal",
  "state.db.verified",
  "objects",
  "envs",
  "snapshots",
  "data",
  "trees",
  "jobs",
  "pulumi",
  "python-probe",
  "python-versions.json",
  "config-cache.json",
  "up-to-date.json",
  "monitor.sock",
  "monitor.cookies",
]);

/** The Python versions interpreters answered, by what identifies each interpreter (backends/local/python.ts). */
export function pythonVersionsOf(stateDir: string): string {
  return join(stateDir, "python-versions.json");
}

/** The validated values of the config and stack files, by their content (core/config-cache.ts). */
export function configCacheOf(stateDir: string): string {
  return join(stateDir, "config-cache.json");
}

/** What the last `kaos up` that found nothing to do vouches for (core/up-to-date.ts). */
export function upToDateOf(stateDir: string): string {
  return join(stateDir, "up-to-date.json");
}

/** The socket the file system monitor (`kaos watch`, `kaos monitor`) answers on; see core/monitor.ts. */
export function monitorSocketOf(stateDir: string): string {
  return join(stateDir, "monitor.sock");
}

/** Where the monitor writes the cookie files that tell it every earlier event has arrived. */
export function monitorCookiesOf(stateDir: string): string {
  return join(stateDir, "monitor.cookies");
}

/** A job's files: outputs, timestamped log, params, and its copy of the source. */
export function jobPaths(stateDir: string, jobId: string) {
  const dir = join(stateDir, "jobs", jobId);
  return {
    dir,
    out: join(dir, "out"),
    log: join(dir, "log"),
    params: join(dir, "params.json"),
    source: join(dir, "source"),
    /** The seal of its results, written when it ended (see backends/local/results.ts). */
    seal: join(dir, "seal.json"),
  };
}
