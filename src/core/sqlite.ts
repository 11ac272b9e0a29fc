/**
 * The SQLite driver: Node's built-in `node:sqlite`, so installing kaos compiles
 * nothing. Everything that differs from a plain `DatabaseSync` lives here: the
 * one-time experimental warning kept off the user's terminal, transactions, and
 * SQLite's result codes by name.
 */
import { createRequire } from "node:module";
import type { DatabaseSync, SQLInputValue, StatementSync } from "node:sqlite";

export type { DatabaseSync, SQLInputValue, StatementSync };

type SqliteModule = typeof import("node:sqlite");

let loaded: SqliteModule | undefined;

/**
 * Node 22 and 24 announce `node:sqlite` as experimental on first load. The
 * warning says nothing a kaos user can act on, so that one warning is dropped;
 * every other warning still reaches the terminal.
 */
function sqlite(): SqliteModule {
  if (loaded !== undefined) return loaded;
  const emitWarning = process.emitWarning;
  process.emitWarning = function filtered(this: unknown, warning: string | Error, ...rest: unknown[]): void {
    const text = typeof warning === "string" ? warning : warning.message;
    const type = typeof rest[0] === "string" ? rest[0] : (rest[0] as { type?: unknown } | undefined)?.type;
    const isSqliteNotice =
      (type === "ExperimentalWarning" || (warning instanceof Error && warning.name === "ExperimentalWarning")) && /SQLite/.test(text);
    if (!isSqliteNotice) (emitWarning as (...args: unknown[]) => void).call(process, warning, ...rest);
  } as typeof process.emitWarning;
  try {
    // Required, not imported, so that the filter above is in place when the module announces itself.
    loaded = createRequire(import.meta.url)("node:sqlite") as SqliteModule;
  } finally {
    process.emitWarning = emitWarning;
  }
  return loaded;
}

export interface OpenOptions {
  readOnly?: boolean;
  /** How long a statement waits for another connection's lock before SQLITE_BUSY, in ms. */
  busyTimeoutMs: number;
}

export function openDatabase(path: string, options: OpenOptions): DatabaseSync {
  const { DatabaseSync } = sqlite();
  return new DatabaseSync(path, { readOnly: options.readOnly === true, timeout: options.busyTimeoutMs });
}

/**
 * Runs `fn` in a transaction. The outermost one is `BEGIN IMMEDIATE`, which takes
 * the write lock up front, so a read later upgraded to a write cannot fail with
 * SQLITE_BUSY halfway through; nested calls become savepoints.
 */
export function inTransaction<T>(db: DatabaseSync, fn: () => T): T {
  const nested = db.isTransaction;
  const savepoint = "kaos_nested";
  db.exec(nested ? `SAVEPOINT ${savepoint}` : "BEGIN IMMEDIATE");
  let result: T;
  try {
    result = fn();
  } catch (error) {
    // A failed COMMIT or an error SQLite already rolled back leaves no transaction to undo.
    if (db.isTransaction) db.exec(nested ? `ROLLBACK TO ${savepoint}; RELEASE ${savepoint}` : "ROLLBACK");
    throw error;
  }
  db.exec(nested ? `RELEASE ${savepoint}` : "COMMIT");
  return result;
}

/** Reads a PRAGMA that answers with one value, such as `user_version` or `journal_mode`. */
export function pragmaValue(db: DatabaseSync, name: string): unknown {
  const row = db.prepare(`PRAGMA ${name}`).get() as Record<string, unknown> | undefined;
  return row === undefined ? undefined : Object.values(row)[0];
}

/** SQLite's primary result codes, by number (https://sqlite.org/rescode.html). */
const PRIMARY_CODES: Readonly<Record<number, string>> = {
  1: "SQLITE_ERROR",
  2: "SQLITE_INTERNAL",
  3: "SQLITE_PERM",
  4: "SQLITE_ABORT",
  5: "SQLITE_BUSY",
  6: "SQLITE_LOCKED",
  7: "SQLITE_NOMEM",
  8: "SQLITE_READONLY",
  9: "SQLITE_INTERRUPT",
  10: "SQLITE_IOERR",
  11: "SQLITE_CORRUPT",
  12: "SQLITE_NOTFOUND",
  13: "SQLITE_FULL",
  14: "SQLITE_CANTOPEN",
  15: "SQLITE_PROTOCOL",
  17: "SQLITE_SCHEMA",
  18: "SQLITE_TOOBIG",
  19: "SQLITE_CONSTRAINT",
  20: "SQLITE_MISMATCH",
  21: "SQLITE_MISUSE",
  23: "SQLITE_AUTH",
  26: "SQLITE_NOTADB",
};

/** The extended codes kaos tells apart from their primary code. */
const EXTENDED_CODES: Readonly<Record<number, string>> = {
  1555: "SQLITE_CONSTRAINT_PRIMARYKEY",
  2067: "SQLITE_CONSTRAINT_UNIQUE",
  517: "SQLITE_BUSY_SNAPSHOT",
  261: "SQLITE_BUSY_RECOVERY",
};

/**
 * The result code of an error thrown by `node:sqlite` as SQLite names it
 * (`SQLITE_BUSY`, `SQLITE_CONSTRAINT_UNIQUE`...), or undefined for any other error.
 */
export function sqliteCode(error: unknown): string | undefined {
  if (typeof error !== "object" || error === null) return undefined;
  const { code, errcode } = error as { code?: unknown; errcode?: unknown };
  if (code !== "ERR_SQLITE_ERROR" || typeof errcode !== "number") return undefined;
  return EXTENDED_CODES[errcode] ?? PRIMARY_CODES[errcode & 0xff] ?? `SQLITE_${errcode}`;
}
