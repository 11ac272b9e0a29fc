/** Raw access to a project's state.db, for tests that inspect or damage it behind kaos's back. */
import { openDatabase, pragmaValue, type DatabaseSync } from "../../src/core/sqlite.js";

export type { DatabaseSync };

export function openRaw(file: string, options: { readOnly?: boolean } = {}): DatabaseSync {
  return openDatabase(file, { readOnly: options.readOnly === true, busyTimeoutMs: 10_000 });
}

export { pragmaValue };
