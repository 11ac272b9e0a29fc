/**
 * The Pulumi CLI behind an injected `PulumiExec`, for tests: it does what
 * the SDK's own PulumiCommand does when the SDK runs a command (adds
 * `--non-interactive`, marks the environment as Automation API, puts the
 * CLI's directory first on PATH so its bundled plugins are found), and fails
 * with the SDK's error classes, so `createOrSelectStack` and locking behave
 * as with the SDK's runner. Production drives the PulumiCommand that
 * `PulumiCommand.get` returns.
 *
 * The SDK calls `run` on the command it is given; `run` and the error
 * classes' constructors are marked internal in the SDK, so
 * test/pulumi-sdk.test.ts checks they are still there as used here.
 */
import { spawn } from "node:child_process";
import { delimiter, dirname, isAbsolute } from "node:path";
import {
  CommandError,
  ConcurrentUpdateError,
  type PulumiCommand,
  StackAlreadyExistsError,
  StackNotFoundError,
} from "@pulumi/pulumi/automation/index.js";

/** Starts the Pulumi CLI once and answers how it ended (never throws for a non-zero exit). */
export type PulumiExec = (
  command: string,
  args: readonly string[],
  options: {
    cwd: string;
    /** Added to kaos's own environment. */
    env: Record<string, string>;
    onOutput?: ((data: string) => void) | undefined;
    onError?: ((data: string) => void) | undefined;
    signal?: AbortSignal | undefined;
  },
) => Promise<{ stdout: string; stderr: string; code: number }>;

/** A Pulumi CLI started through an injected `exec` (tests): where it is, its version, and how to start it. */
export interface PulumiCli {
  command: string;
  version: string;
  exec: PulumiExec;
}

/** What a finished command answers; worded as the SDK words it in its errors' messages. */
class Outcome {
  constructor(
    readonly stdout: string,
    readonly stderr: string,
    readonly code: number,
    readonly err?: Error,
  ) {}

  toString(): string {
    return `code: ${this.code}\n stdout: ${this.stdout}\n stderr: ${this.stderr}\n err?: ${this.err?.toString() ?? ""}\n`;
  }
}

type ErrorClass = new (result: Outcome) => Error;

/** The SDK's error for a failed command, told apart by its stderr as the SDK does. */
export function sdkCommandError(result: Outcome): Error {
  const stderr = result.stderr;
  const type: unknown = /no stack named.*found/.test(stderr)
    ? StackNotFoundError
    : /stack.*already exists/.test(stderr)
      ? StackAlreadyExistsError
      : stderr.includes("[409] Conflict: Another update is currently in progress.") || stderr.includes("the stack is currently locked by")
        ? ConcurrentUpdateError
        : CommandError;
  // The constructors take the command's outcome; their types do not say so.
  return new (type as ErrorClass)(result);
}

export class InjectedPulumiRunner {
  readonly command: string;
  readonly version: { toString(): string };
  readonly #exec: PulumiExec;

  constructor(cli: PulumiCli) {
    this.command = cli.command;
    this.version = { toString: () => cli.version.replace(/^v/, "") };
    this.#exec = cli.exec;
  }

  /** The SDK takes it where it takes a PulumiCommand: it reads `command` and `version` and calls `run`. */
  asPulumiCommand(): PulumiCommand {
    return this as unknown as PulumiCommand;
  }

  async run(
    args: string[],
    cwd: string,
    additionalEnv: { [key: string]: string },
    onOutput?: (data: string) => void,
    onError?: (data: string) => void,
    signal?: AbortSignal,
  ): Promise<Outcome> {
    // Commands fail rather than prompt (and hang) without a terminal.
    const fullArgs = args.includes("--non-interactive") ? [...args] : [...args, "--non-interactive"];
    const env: Record<string, string> = { ...additionalEnv, PULUMI_AUTOMATION_API: "true" };
    if (isAbsolute(this.command)) {
      env["PATH"] = `${dirname(this.command)}${delimiter}${additionalEnv["PATH"] ?? process.env["PATH"] ?? ""}`;
    }
    let result: { stdout: string; stderr: string; code: number };
    try {
      result = await this.#exec(this.command, fullArgs, { cwd, env, onOutput, onError, signal });
    } catch (error) {
      const cause = error instanceof Error ? error : new Error(String(error));
      throw sdkCommandError(new Outcome("", cause.message, -2, cause));
    }
    const outcome = new Outcome(result.stdout, result.stderr, result.code);
    if (result.code !== 0) throw sdkCommandError(outcome);
    return outcome;
  }
}

/** A PulumiExec that starts the CLI as a child process with this process's environment plus `env`. */
export const spawnPulumi: PulumiExec = (command, args, options) =>
  new Promise((resolve, reject) => {
    const child = spawn(command, [...args], {
      cwd: options.cwd,
      env: { ...process.env, ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (data: string) => {
      stdout += data;
      options.onOutput?.(data);
    });
    child.stderr.setEncoding("utf8").on("data", (data: string) => {
      stderr += data;
      options.onError?.(data);
    });
    const abort = (): void => {
      child.kill("SIGINT");
    };
    options.signal?.addEventListener("abort", abort, { once: true });
    child.on("error", (error) => {
      options.signal?.removeEventListener("abort", abort);
      reject(error);
    });
    child.on("close", (code, signal) => {
      options.signal?.removeEventListener("abort", abort);
      resolve({ stdout, stderr, code: code ?? (signal ? 128 : 1) });
    });
  });
