/**
 * Expected failures carry a stable code so that scripts and tests can match on
 * them, and the CLI turns every one of them into a message and an exit status in
 * a single place (see program.ts).
 */
import { sqliteCode } from "./sqlite.js";

export type ErrorCode =
  | "CONFIG_NOT_FOUND"
  | "CONFIG_LOAD"
  | "CONFIG_INVALID"
  /** Two config files in one folder, or two files of one stack. */
  | "CONFIG_AMBIGUOUS"
  | "STACK_NOT_FOUND"
  | "STACK_INVALID"
  | "BUNDLE_INVALID"
  | "HYPERPARAMS_INVALID"
  | "MANIFEST_INVALID"
  | "INGEST_FAILED"
  | "STATE_LOCKED"
  | "STATE_CORRUPT"
  | "JOB_NOT_FOUND"
  | "JOB_AMBIGUOUS"
  | "RESOURCES_UNSATISFIABLE"
  | "BUILD_FAILED"
  | "JOBS_FAILED"
  | "RESULTS_CHANGED"
  | "USAGE"
  | "TEMPLATE_NOT_FOUND"
  | "PULUMI_MISSING"
  | "PULUMI_SDK_MISSING"
  | "PULUMI_FAILED"
  | "PACHD_FAILED"
  | "PACHD_UNREACHABLE"
  | "CLUSTER_UNREACHABLE"
  | "PASSPHRASE_INVALID"
  | "IO"
  | "NOT_SUPPORTED";

export class KaosError extends Error {
  readonly code: ErrorCode;
  /** Extra lines printed under the message, such as the fix. */
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, options?: { hint?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "KaosError";
    this.code = code;
    this.hint = options?.hint;
  }
}

export function isKaosError(error: unknown): error is KaosError {
  return error instanceof KaosError;
}

/** Narrows an unknown thrown value to a message without losing Node's error codes. */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}

/** Node's error code (`ENOENT`...), or for a `node:sqlite` error SQLite's own (`SQLITE_BUSY`...). */
export function errnoCode(error: unknown): string | undefined {
  const sqlite = sqliteCode(error);
  if (sqlite !== undefined) return sqlite;
  if (typeof error === "object" && error !== null && "code" in error) {
    const code = (error as { code: unknown }).code;
    return typeof code === "string" ? code : undefined;
  }
  return undefined;
}

/** Whether an error from SQLite says the file is damaged or not a database at all. */
export function isCorruptionError(error: unknown): boolean {
  const code = errnoCode(error) ?? "";
  return code === "SQLITE_NOTADB" || code.startsWith("SQLITE_CORRUPT");
}
