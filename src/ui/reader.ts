/**
 * The dashboard's view of a project: its state store opened read-only, and
 * where each job's files are. A read-only SQLite connection in WAL mode never
 * takes the write lock, and every read here is one short statement, so a
 * running `kaos up` or `kaos watch` is never held up by the dashboard.
 */
import { statSync } from "node:fs";
import { jobPaths, stateDbOf, stateDirOf } from "../core/layout.js";
import { StateStore, type JobRecord } from "../core/state.js";

/** Which file is at `path` now (device and inode), or "" when none is. */
function fileIdentity(path: string): string {
  const stats = statSync(path, { throwIfNoEntry: false });
  return stats === undefined ? "" : `${stats.dev}:${stats.ino}`;
}

export class StoreReader {
  readonly root: string;
  readonly stateDir: string;
  private readonly dbPath: string;
  private store: StateStore;
  private identity: string;
  /** Counts the stores opened: it moves when the database was created, removed or replaced under the dashboard. */
  private opened = 0;

  constructor(root: string) {
    this.root = root;
    this.stateDir = stateDirOf(root);
    this.dbPath = stateDbOf(root);
    this.identity = fileIdentity(this.dbPath);
    this.store = StateStore.open(root, { readonly: true });
  }

  /**
   * The store as the project has it now. An open connection keeps reading a
   * database file that was removed (`rm -rf .kaos`, then a new `kaos up`), so
   * when another file, or none, is at the store's path, it is opened again.
   */
  get(): StateStore {
    const identity = fileIdentity(this.dbPath);
    if (identity !== this.identity) {
      const fresh = StateStore.open(this.root, { readonly: true });
      this.store.close();
      this.store = fresh;
      this.identity = identity;
      this.opened += 1;
    }
    return this.store;
  }

  /** Changes whenever {@link get} turned to another database: what was read before no longer holds. */
  generation(): number {
    this.get();
    return this.opened;
  }

  outDirOf(job: JobRecord): string {
    return job.outputDir ?? jobPaths(this.stateDir, job.id).out;
  }

  logFileOf(job: JobRecord): string {
    return job.logFile ?? jobPaths(this.stateDir, job.id).log;
  }

  close(): void {
    this.store.close();
  }
}
