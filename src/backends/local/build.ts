/**
 * The Build stage on this machine: a Python virtual environment per env key
 * under `.kaos/envs/`, made in a temporary directory and renamed into place
 * only when complete, so a failed or killed build never leaves an environment
 * that a later run trusts. Each environment records what it holds, `pip
 * freeze` in `freeze.txt` inside it (it arrives with the rename, so it is
 * there exactly when the environment is). A bundle with a
 * `requirements.lock` is installed from the lock alone, with `--no-deps`:
 * the lock is the whole environment, so nothing is resolved again and the
 * same versions come back on every machine.
 */
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readRequirementsLock } from "../../core/bundle.js";
import { KaosError } from "../../core/errors.js";
import type { PythonRuntime } from "./python.js";
import { spawnLogged, type RunningProcess } from "./process.js";
import { OWNER_STAMP, ownerStamp } from "../../core/process-identity.js";
import { type AbandonedTemporaries, removeAbandonedTemporaries } from "../../core/snapshot.js";

const COMPLETE_MARKER = ".kaos-complete";
/** The packages of an environment, one `name==version` a line, as `pip freeze` lists them. */
export const FREEZE_FILE = "freeze.txt";

export function environmentPath(envsDir: string, envKey: string): string {
  return join(envsDir, envKey);
}

/** The file whose presence says the environment of `envKey` is built and usable. */
export function environmentMarkerPath(envsDir: string, envKey: string): string {
  return join(environmentPath(envsDir, envKey), COMPLETE_MARKER);
}

export function environmentReady(envsDir: string, envKey: string): boolean {
  return existsSync(environmentMarkerPath(envsDir, envKey));
}

/** Where an environment's package list is. */
export function freezePath(envsDir: string, envKey: string): string {
  return join(environmentPath(envsDir, envKey), FREEZE_FILE);
}

/** The packages recorded for an environment, or undefined when it is gone or was built before they were recorded. */
export function environmentPackages(envsDir: string, envKey: string): string[] | undefined {
  try {
    return readFileSync(freezePath(envsDir, envKey), "utf8")
      .split("\n")
      .map((line) => line.trim())
      .filter((line) => line !== "" && !line.startsWith("#"));
  } catch {
    return undefined;
  }
}

/** Runs a command and gives its standard output (a `pip freeze`). */
function capture(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd, env, maxBuffer: 64 << 20, timeout: 120_000 }, (error, stdout, stderr) => {
      if (error === null) resolve(stdout);
      else reject(new KaosError("BUILD_FAILED", `\`${[command, ...args].join(" ")}\` failed: ${stderr.trim() || error.message}`));
    });
  });
}

/** Removes half-built environments whose builder is gone (crash, SIGKILL). */
export function removeAbandonedBuilds(
  envsDir: string,
  options: { isStale?: (tag: string) => boolean; dryRun?: boolean } = {},
): AbandonedTemporaries {
  return removeAbandonedTemporaries([envsDir], { ...options, names: ABANDONED_BUILD_NAMES });
}

/** What a build names the environment it is making (see `buildEnvironment`). */
const ABANDONED_BUILD_NAMES = [new RegExp(`^\\.building-(${OWNER_STAMP})-`)];

/**
 * Virtual environments write their own path into scripts and activation
 * files; after the rename they must name the final place.
 */
function relocate(binDir: string, from: string, to: string): void {
  for (const entry of readdirSync(binDir)) {
    const file = join(binDir, entry);
    try {
      const stat = statSync(file);
      if (!stat.isFile() || stat.size > 1 << 20) continue;
      const text = readFileSync(file);
      if (text.includes(0)) continue;
      const content = text.toString("utf8");
      if (content.includes(from)) writeFileSync(file, content.split(from).join(to));
    } catch {
      // a dangling link or unreadable file is left as it is
    }
  }
}

function hasPip(python: string): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(python, ["-m", "pip", "--version"], { timeout: 30_000 }, (error) => resolve(error === null));
  });
}

export interface BuildOptions {
  envsDir: string;
  envKey: string;
  python: PythonRuntime;
  /** The model/ directory of the source snapshot: requirements.txt and its relative references. */
  modelDir: string;
  logFile: string;
  env: NodeJS.ProcessEnv;
  /** The build job: its processes carry it, so that they can be found and stopped (see spawnLogged). */
  jobId?: string;
  /** Called with each step's process, so that a cancel can stop it. */
  onProcess?: (process: RunningProcess | undefined) => void;
  isCancelled?: () => boolean;
}

/** Builds the environment of `envKey` unless it exists; returns its path. */
export async function buildEnvironment(options: BuildOptions): Promise<string> {
  const final = environmentPath(options.envsDir, options.envKey);
  if (environmentReady(options.envsDir, options.envKey)) return final;
  mkdirSync(options.envsDir, { recursive: true });
  removeAbandonedBuilds(options.envsDir);
  const building = join(
    options.envsDir,
    `.building-${ownerStamp()}-${options.envKey.slice(0, 12)}-${Date.now()}-${randomUUID().slice(0, 8)}`,
  );
  const lock = join(options.modelDir, "requirements.lock");
  const locked = existsSync(lock);
  const requirements = join(options.modelDir, "requirements.txt");
  const needsInstall = locked
    ? readRequirementsLock(lock).pins.length > 0
    : readFileSync(requirements, "utf8")
        .split("\n")
        .some((line) => line.trim() !== "" && !line.trim().startsWith("#"));
  // A lock lists every package: installing it without dependencies installs exactly it.
  const install = locked ? ["--no-deps", "-r", lock] : ["-r", requirements];
  const log = (line: string) => writeFileSync(options.logFile, `${new Date().toISOString()} kaos   | ${line}\n`, { flag: "a" });

  const step = async (command: string, args: string[]) => {
    if (options.isCancelled?.()) throw new KaosError("BUILD_FAILED", "build cancelled");
    log(`$ ${[command, ...args].join(" ")}`);
    const running = spawnLogged({ command, args, cwd: options.modelDir, env: options.env, logFile: options.logFile, jobId: options.jobId });
    options.onProcess?.(running);
    const result = await running.done;
    options.onProcess?.(undefined);
    if (result.exitCode !== 0) {
      throw new KaosError(
        "BUILD_FAILED",
        `${result.reason ?? `\`${[command, ...args].join(" ")}\` exited with ${result.exitCode ?? result.signal}`}`,
        { hint: `see the build log: ${options.logFile}` },
      );
    }
  };

  try {
    const python = options.python;
    if (python.note) log(python.note);
    log(`building environment ${options.envKey.slice(0, 12)} with Python ${python.version} (${python.path})${python.uv ? " and uv" : ""}`);
    if (python.uv) {
      await step(python.uv, ["venv", "--quiet", "--python", python.path, building]);
      if (needsInstall) await step(python.uv, ["pip", "install", "--python", join(building, "bin", "python"), ...install]);
    } else if (needsInstall && !(await hasPip(python.path))) {
      // No pip beside the interpreter (Debian's python3 without python3-pip): let venv bring its own.
      await step(python.path, ["-m", "venv", building]);
      await step(join(building, "bin", "python"), ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", ...install]);
    } else {
      // Without pip inside the environment the venv is made in a fraction of the time;
      // the interpreter's own pip installs into it.
      await step(python.path, ["-m", "venv", "--without-pip", building]);
      if (needsInstall) {
        await step(python.path, [
          "-m",
          "pip",
          "--python",
          join(building, "bin", "python"),
          "install",
          "--disable-pip-version-check",
          "--no-input",
          ...install,
        ]);
      }
    }
    if (locked) log(`installed from ${lock} (--no-deps: the lock is the whole environment)`);
    const venvPython = join(building, "bin", "python");
    let frozen = "";
    if (needsInstall) {
      const freeze: [string, string[]] = python.uv
        ? [python.uv, ["pip", "freeze", "--python", venvPython]]
        : existsSync(join(building, "bin", "pip"))
          ? [venvPython, ["-m", "pip", "freeze", "--disable-pip-version-check"]]
          : [python.path, ["-m", "pip", "--python", venvPython, "freeze", "--disable-pip-version-check"]];
      log(`$ ${[freeze[0], ...freeze[1]].join(" ")} > ${FREEZE_FILE}`);
      frozen = await capture(freeze[0], freeze[1], options.modelDir, options.env);
    }
    writeFileSync(join(building, FREEZE_FILE), frozen);
    relocate(join(building, "bin"), building, final);
    writeFileSync(join(building, COMPLETE_MARKER), `${new Date().toISOString()}\n`);
    // Another run (another stack) may have finished the same environment meanwhile,
    // and its jobs may be using it: keep theirs rather than replacing it under them.
    if (!environmentReady(options.envsDir, options.envKey)) {
      rmSync(final, { recursive: true, force: true });
      try {
        renameSync(building, final);
      } catch (error) {
        if (!environmentReady(options.envsDir, options.envKey)) throw error;
      }
    }
    rmSync(building, { recursive: true, force: true });
    log(`environment ready: ${final}`);
    return final;
  } catch (error) {
    rmSync(building, { recursive: true, force: true });
    throw error;
  }
}
