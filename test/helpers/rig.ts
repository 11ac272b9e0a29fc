/**
 * The test rig: a temporary project made from a map of files, the built CLI
 * run as a real process inside it, and helpers that wait for its output.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, watch, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { expect } from "vitest";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const CLI = join(REPO_ROOT, "dist", "cli.js");

/** A file's content, or content with a mode, or a symlink. */
export type FileSpec = string | { content: string; mode?: number } | { symlink: string };
export type FileMap = Record<string, FileSpec>;

export interface Project {
  dir: string;
  path(...parts: string[]): string;
  write(files: FileMap): void;
  remove(): void;
}

export function writeFiles(dir: string, files: FileMap): void {
  for (const [relative, spec] of Object.entries(files)) {
    const target = join(dir, relative);
    mkdirSync(dirname(target), { recursive: true });
    if (typeof spec === "string") {
      writeFileSync(target, spec);
    } else if ("symlink" in spec) {
      rmSync(target, { force: true });
      symlinkSync(spec.symlink, target);
    } else {
      writeFileSync(target, spec.content);
      if (spec.mode !== undefined) chmodSync(target, spec.mode);
    }
  }
}

export function makeProject(files: FileMap = {}, prefix = "kaos-test-"): Project {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  writeFiles(dir, files);
  return {
    dir,
    path: (...parts) => join(dir, ...parts),
    write: (more) => writeFiles(dir, more),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  cwd: string;
  env?: Record<string, string | undefined>;
  timeoutMs?: number;
  input?: string;
  /** A command that runs kaos, such as `unshare --uts`: the node binary and the CLI follow it as arguments. */
  launcher?: string[];
  /** Another built CLI to run, such as an installed copy of the package. */
  cli?: string;
}

function childEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: "1", FORCE_COLOR: undefined, CI: "true", ...extra };
  for (const [key, value] of Object.entries(env)) if (value === undefined) delete env[key];
  return env;
}

/** Runs the built CLI to completion; it is killed and the test fails after `timeoutMs`. */
/** `runKaos`, asserting that the command exits 0 (the failure shows the command and its stderr). */
export async function runKaosOk(args: string[], options: RunOptions): Promise<RunResult> {
  const result = await runKaos(args, options);
  expect(result.code, `kaos ${args.join(" ")}\n${result.stderr}`).toBe(0);
  return result;
}

export async function runKaos(args: string[], options: RunOptions): Promise<RunResult> {
  const live = startKaos(args, options);
  live.child.stdin?.end(options.input ?? "");
  const timeoutMs = options.timeoutMs ?? 120_000;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      live.child.kill("SIGKILL");
      reject(new Error(`kaos ${args.join(" ")} timed out after ${timeoutMs} ms\nstdout:\n${live.stdout()}\nstderr:\n${live.stderr()}`));
    }, timeoutMs);
  });
  try {
    return await Promise.race([live.exited, timedOut]);
  } finally {
    clearTimeout(timer);
  }
}

/** A running CLI process whose output can be awaited. */
export interface LiveKaos {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves when stdout+stderr match `pattern`; rejects on timeout or exit. */
  waitFor(pattern: RegExp | string, timeoutMs?: number): Promise<string>;
  exited: Promise<RunResult>;
  stop(signal?: NodeJS.Signals): Promise<RunResult>;
}

export function startKaos(args: string[], options: RunOptions): LiveKaos {
  const [command = process.execPath, ...prefix] = options.launcher ?? [];
  const child = spawn(command, [...prefix, ...(options.launcher === undefined ? [] : [process.execPath]), options.cli ?? CLI, ...args], {
    cwd: options.cwd,
    env: childEnv(options.env),
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  const waiters = new Set<() => void>();
  const notify = () =>
    waiters.forEach((waiter) => {
      waiter();
    });
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
    notify();
  });
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
    notify();
  });
  const exited = new Promise<RunResult>((resolvePromise) => {
    child.on("close", (code, signal) => {
      resolvePromise({ code, signal, stdout, stderr });
      notify();
    });
  });
  let done = false;
  exited.then(() => (done = true));
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    exited,
    waitFor(pattern, timeoutMs = 60_000) {
      return new Promise((resolvePromise, reject) => {
        const check = () => {
          const text = stdout + stderr;
          const match = typeof pattern === "string" ? text.includes(pattern) : pattern.test(text);
          if (match) {
            cleanup();
            resolvePromise(text);
          } else if (done) {
            cleanup();
            reject(new Error(`kaos exited before printing ${String(pattern)}\nstdout:\n${stdout}\nstderr:\n${stderr}`));
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`timed out waiting for ${String(pattern)}\nstdout:\n${stdout}\nstderr:\n${stderr}`));
        }, timeoutMs);
        const cleanup = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    async stop(signal = "SIGINT") {
      if (!done) child.kill(signal);
      return exited;
    },
  };
}

/** A source bundle with empty requirements whose train script is the given shell or Python code. */
export function trivialSourceBundle(train: string, options: { requirements?: string; dockerfile?: string } = {}): FileMap {
  return {
    Dockerfile: options.dockerfile ?? "FROM python:3.11-slim\nCOPY model /model\n",
    "model/requirements.txt": options.requirements ?? "",
    "model/train": { content: train, mode: 0o755 },
  };
}

/**
 * A local stack named after how it lays out data views (`stacks/<kind>.ts`,
 * picked with `--stack <kind>`): `link` makes them hardlinks (to the bundle's
 * own files on its device, to objects across devices), `copy` copies kaos owns.
 */
export function dataViewsStack(kind: "link" | "copy"): FileMap {
  return {
    [`stacks/${kind}.ts`]: `import { defineStack } from "kaos-ml";\nexport default defineStack({ backend: "local", dataViews: "${kind}" });\n`,
  };
}

/** Prefixes every path of a file map with a directory. */
export function under(prefix: string, files: FileMap): FileMap {
  return Object.fromEntries(Object.entries(files).map(([path, spec]) => [`${prefix}/${path}`, spec]));
}

/**
 * The content of a file that a process writes (a pid, a mark), as soon as it
 * is there: the directory is watched, nothing sleeps. Rejects after `timeoutMs`.
 */
export function fileContent(file: string, timeoutMs = 30_000): Promise<string> {
  const read = (): string | undefined => {
    try {
      const text = readFileSync(file, "utf8");
      return text.trim() === "" ? undefined : text;
    } catch {
      return undefined;
    }
  };
  const now = read();
  if (now !== undefined) return Promise.resolve(now);
  return new Promise((resolvePromise, reject) => {
    const watcher = watch(dirname(file), () => {
      const text = read();
      if (text === undefined) return;
      finish();
      resolvePromise(text);
    });
    const timer = setTimeout(() => {
      finish();
      reject(new Error(`timed out waiting for ${file}`));
    }, timeoutMs);
    const finish = () => {
      clearTimeout(timer);
      watcher.close();
    };
    // Written between the first read and the watch starting.
    const late = read();
    if (late !== undefined) {
      finish();
      resolvePromise(late);
    }
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolvePromise) => setTimeout(resolvePromise, ms));
}

/** True while the process exists and is not a zombie waiting to be reaped. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return false;
  }
}
