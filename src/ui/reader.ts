/**
 * The dashboard's view of a project: its state store opened read-only, and
 * where each job's files are. A read-only SQLite connection in WAL mode never
 * takes the write lock, and every read here is one short statement, so a
 * running `kaos up` or `kaos watch` is never held up by the dashboard.
 */
import { existsSync } from "node:fs";
import { jobPaths, stateDbOf, stateDirOf } from "../core/layout.js";
import { StateStore, type JobRecord } from "../core/state.js";

export class StoreReader {
  readonly root: string;
  readonly stateDir: string;
  private store: StateStore;
  private empty: boolean;

  constructor(root: string) {
    this.root = root;
    this.stateDir = stateDirOf(root);
    this.empty = !existsSync(stateDbOf(root));
    this.store = StateStore.open(root, { readonly: true });
  }

  /** The store; one opened before the first `kaos up` created the database is opened again once it exists. */
  get(): StateStore {
    if (this.empty && existsSync(stateDbOf(this.root))) {
      this.store.close();
      this.store = StateStore.open(this.root, { readonly: true });
      this.empty = false;
    }
    return this.store;
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
