/**
 * The commands behind the CLI: each one loads what it needs and hands over
 * to the shared flow.
 */
import type { DeployCliOptions } from "./cli.js";
import { KaosError } from "./errors.js";

interface Common {
  config?: string;
}

function pending(command: string): never {
  throw new KaosError("NOT_SUPPORTED", `\`kaos ${command}\` is not available in this build`);
}

export async function upCommand(_options: Common & { stack?: string; force?: boolean; refresh?: boolean; json?: boolean }): Promise<number> {
  return pending("up");
}
export async function planCommand(_options: Common & { stack?: string; refresh?: boolean; json?: boolean; detailedExitcode?: boolean }): Promise<number> {
  return pending("plan");
}
export async function watchCommand(_options: Common & { stack?: string }): Promise<number> {
  return pending("watch");
}
export async function deployCommand(_options: Common & DeployCliOptions): Promise<number> {
  return pending("train deploy");
}
export async function listCommand(_options: Common & { stack?: string; json?: boolean; limit?: number }): Promise<number> {
  return pending("train list");
}
export async function logsCommand(_options: Common & { job: string; follow?: boolean }): Promise<number> {
  return pending("train logs");
}
export async function infoCommand(_options: Common & { job: string; sort?: string; json?: boolean }): Promise<number> {
  return pending("train info");
}
export async function getCommand(_options: Common & { job: string; out?: string }): Promise<number> {
  return pending("train get");
}
export async function killCommand(_options: Common & { job: string }): Promise<number> {
  return pending("train kill");
}
export async function renderCommand(_options: Common & { stack: string; out: string }): Promise<number> {
  return pending("render");
}
