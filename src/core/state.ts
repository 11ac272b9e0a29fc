/**
 * The state store: one SQLite database at `<root>/.kaos/state.db` holding runs,
 * jobs, the stat cache, what each stack last applied, and the per-stack writer
 * lock. WAL mode lets `kaos train list` read while `kaos up` writes, and makes
 * every committed transaction survive a crash or SIGKILL.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { dirname, join, resolve } from "node:path";
import { BUSY_TIMEOUT_MS } from "./defaults.js";
import { stateDbOf, stateDirOf } from "./layout.js";
import { KaosError, describeError, errnoCode, isCorruptionError } from "./errors.js";
import type { HyperparamSet } from "./types.js";
import { checkStateLocation, explainStateOpenFailure, openReadable } from "./disk.js";
import { canonicalJson } from "./hyperparams.js";
import type { KeptTree, PackedStatCache, StatCacheEntry, StatCacheRows, StatCacheStore } from "./hash.js";
import { StatCacheColumns, StatCacheMap, encodeStatCache, encodeStatCacheRows } from "./stat-cache.js";
import { judgeProcess, originToken, processStartToken, type Liveness } from "./process-identity.js";
import { inTransaction, openDatabase, pragmaValue, type DatabaseSync, type SQLInputValue, type StatementSync } from "./sqlite.js";

export type { StatCacheEntry, StatCacheStore };

export type JobState = "queued" | "running" | "succeeded" | "failed" | "cancelled";
export type Stage = "ingest" | "build" | "train";
export type RunState = "running" | "succeeded" | "failed" | "cancelled";

export interface JobRecord {
  /** Short random id, 10 lowercase base32 characters, unique. */
  id: string;
  runId: string;
  stack: string;
  pipeline: string;
  stage: Stage;
  /** The job key (hex sha256); for build jobs the env key, for ingest the data key. */
  key: string;
  state: JobState;
  params: Record<string, unknown>;
  envKey: string | null;
  sourceKey: string | null;
  dataKey: string | null;
  paramsKey: string | null;
  /** n of N within its pipeline's sweep. */
  sweepIndex: number | null;
  sweepSize: number | null;
  /** Of the running process (process group leader). */
  pid: number | null;
  startedAt: string | null;
  finishedAt: string | null;
  exitCode: number | null;
  reason: string | null;
  outputDir: string | null;
  logFile: string | null;
  createdAt: string;
  /** When `kaos gc` removed the job's folder (outputs, log, source copy); null while it is there. */
  collectedAt: string | null;
}

/** What `kaos up` applied for one pipeline: the keys the next plan diffs against. */
export interface AppliedPipeline {
  envKey: string;
  sourceKey: string;
  dataKey: string | null;
  params: HyperparamSet[];
}

/** What `kaos up` last applied to a stack, by pipeline name. */
export type AppliedState = Record<string, AppliedPipeline>;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isScalar(value: unknown): boolean {
  return value === null || typeof value === "string" || typeof value === "number" || typeof value === "boolean";
}

/**
 * The applied record as `updateApplied` writes it, or the first thing that is
 * not. Checked by hand: a schema library would load on every command for
 * four fields.
 */
function checkApplied(value: unknown): { applied: AppliedState } | { problem: string } {
  if (!isObject(value)) return { problem: "expected an object of pipelines" };
  const applied: AppliedState = {};
  for (const [name, pipeline] of Object.entries(value)) {
    if (!isObject(pipeline)) return { problem: `${name}: expected an object` };
    const { envKey, sourceKey, dataKey, params } = pipeline;
    if (typeof envKey !== "string") return { problem: `${name}.envKey: expected a string` };
    if (typeof sourceKey !== "string") return { problem: `${name}.sourceKey: expected a string` };
    if (typeof dataKey !== "string" && dataKey !== null) return { problem: `${name}.dataKey: expected a string or null` };
    if (!Array.isArray(params) || !params.every((set) => isObject(set) && Object.values(set).every(isScalar))) {
      return { problem: `${name}.params: expected a list of objects of scalars` };
    }
    applied[name] = { envKey, sourceKey, dataKey, params: params as HyperparamSet[] };
  }
  return { applied };
}

export interface RunRecord {
  id: string;
  stack: string;
  command: string;
  startedAt: string;
  finishedAt: string | null;
  state: RunState;
  pid: number;
}

/** A run with how many of its jobs are in each state, and the pipelines they belong to. */
export interface RunSummary extends RunRecord {
  jobs: Partial<Record<JobState, number>>;
  pipelines: string[];
}

export type NewJob = Omit<
  JobRecord,
  "id" | "createdAt" | "state" | "pid" | "startedAt" | "finishedAt" | "exitCode" | "reason" | "collectedAt"
> & {
  state?: JobState;
};

export interface JobFilter {
  stack?: string;
  pipeline?: string;
  runId?: string;
  stage?: Stage;
  state?: JobState;
  limit?: number;
}

export interface WriterLock {
  release(): void;
}

export const INTERRUPTED_REASON = "interrupted: kaos exited while the job ran";

/**
 * Ordered schema migrations; the database's `PRAGMA user_version` is the number
 * of migrations applied. Append only: never edit a migration that has shipped.
 */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    stack       TEXT NOT NULL,
    command     TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    state       TEXT NOT NULL CHECK (state IN ('running','succeeded','failed','cancelled')),
    pid         INTEGER NOT NULL,
    pid_start   TEXT,
    host        TEXT NOT NULL
  );
  CREATE INDEX runs_running ON runs(state) WHERE state = 'running';

  CREATE TABLE jobs (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    run_id      TEXT NOT NULL REFERENCES runs(id),
    stack       TEXT NOT NULL,
    pipeline    TEXT NOT NULL,
    stage       TEXT NOT NULL CHECK (stage IN ('ingest','build','train')),
    key         TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('queued','running','succeeded','failed','cancelled')),
    params      TEXT NOT NULL,
    env_key     TEXT,
    source_key  TEXT,
    data_key    TEXT,
    params_key  TEXT,
    sweep_index INTEGER,
    sweep_size  INTEGER,
    pid         INTEGER,
    started_at  TEXT,
    finished_at TEXT,
    exit_code   INTEGER,
    reason      TEXT,
    output_dir  TEXT,
    log_file    TEXT,
    created_at  TEXT NOT NULL
  );
  CREATE INDEX jobs_created ON jobs(created_at);
  CREATE INDEX jobs_stack_created ON jobs(stack, created_at);
  CREATE INDEX jobs_pipeline_created ON jobs(pipeline, created_at);
  CREATE INDEX jobs_run ON jobs(run_id, pipeline, sweep_index);
  CREATE INDEX jobs_cache ON jobs(stage, key, state);
  CREATE INDEX jobs_unfinished ON jobs(state) WHERE state IN ('queued','running');

  CREATE TABLE stat_cache (
    root       TEXT PRIMARY KEY,
    saved_at   INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    entries    INTEGER NOT NULL,
    data       BLOB NOT NULL
  );

  CREATE TABLE applied (
    stack      TEXT PRIMARY KEY,
    plan       TEXT NOT NULL,
    applied_at TEXT NOT NULL
  );

  CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  );

  CREATE TABLE writer_locks (
    stack       TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    pid_start   TEXT,
    host        TEXT NOT NULL,
    command     TEXT NOT NULL,
    acquired_at TEXT NOT NULL
  );
  `,
  // Where the process of a run or lock ran (machine, boot, pid namespace): its
  // host name alone cannot tell whether it still runs.
  `
  ALTER TABLE runs ADD COLUMN origin TEXT;
  ALTER TABLE writer_locks ADD COLUMN origin TEXT;
  `,
  // When `kaos gc` removed a job's folder: such a job is listed but never reused.
  `
  ALTER TABLE jobs ADD COLUMN collected_at TEXT;
  `,
  // `kaos train list --state failed` pages through one state's jobs, newest first, without scanning the others.
  `
  CREATE INDEX jobs_state_created ON jobs(state, created_at);
  `,
  // A stat cache's blob in pieces (its row's own data then empty): a million-entry cache is written
  // and read a piece at a time, never copied whole through SQLite.
  `
  CREATE TABLE stat_cache_chunks (
    root  TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    data  BLOB NOT NULL,
    PRIMARY KEY (root, seq)
  );
  `,
  // A count of the changes to the rows a plan reads (runs, jobs, what was applied, writer locks; not the caches),
  // kept by the database itself: an unchanged count vouches that no kaos wrote them since (core/up-to-date.ts).
  // The store's random name tells this database from one made afresh in its place.
  `
  CREATE TABLE revision (n INTEGER NOT NULL, store TEXT NOT NULL);
  INSERT INTO revision (n, store) VALUES (0, lower(hex(randomblob(16))));
  ${["runs", "jobs", "applied", "writer_locks"]
    .flatMap((table) =>
      ["INSERT", "UPDATE", "DELETE"].map(
        (event) =>
          `CREATE TRIGGER ${table}_${event.toLowerCase()}_revised AFTER ${event} ON ${table} BEGIN UPDATE revision SET n = n + 1; END;`,
      ),
    )
    .join("\n  ")}
  `,
];

/** Bytes per piece of a stored stat cache blob. */
const STAT_CACHE_CHUNK_BYTES = 4 << 20;

/** The schema version this code writes and reads. */
export const SCHEMA_VERSION = MIGRATIONS.length;

interface RunRow {
  id: string;
  stack: string;
  command: string;
  started_at: string;
  finished_at: string | null;
  state: RunState;
  pid: number;
  pid_start: string | null;
  host: string;
  origin: string | null;
}

interface LockRow {
  owner: string;
  pid: number;
  pid_start: string | null;
  host: string;
  origin: string | null;
  command: string;
  acquired_at: string;
}

/** The kaos process that holds a stack's writer lock. */
export interface LockHolder {
  stack: string;
  pid: number;
  host: string;
  command: string;
  acquiredAt: string;
  liveness: Liveness;
  /** Where it ran (see `originToken`); null in locks written before kaos kept it. */
  origin: string | null;
}

function livenessOf(row: { pid: number; pid_start: string | null; origin: string | null }): Liveness {
  return judgeProcess({ pid: row.pid, startToken: row.pid_start, origin: row.origin });
}

/** A jobs row in JOB_COLUMNS order, as a raw statement returns it. */
type JobColumns = [
  id: string,
  runId: string,
  stack: string,
  pipeline: string,
  stage: Stage,
  key: string,
  state: JobState,
  params: string,
  envKey: string | null,
  sourceKey: string | null,
  dataKey: string | null,
  paramsKey: string | null,
  sweepIndex: number | null,
  sweepSize: number | null,
  pid: number | null,
  startedAt: string | null,
  finishedAt: string | null,
  exitCode: number | null,
  reason: string | null,
  outputDir: string | null,
  logFile: string | null,
  createdAt: string,
  collectedAt: string | null,
];

const JOB_COLUMNS =
  "id, run_id, stack, pipeline, stage, key, state, params, env_key, source_key, data_key, params_key, " +
  "sweep_index, sweep_size, pid, started_at, finished_at, exit_code, reason, output_dir, log_file, created_at, collected_at";

const TERMINAL_STATES: readonly JobState[] = ["succeeded", "failed", "cancelled"];

/** The meta key, followed by the root, under which a stat cache's monitor token is kept: "GENERATION TOKEN". */
const MONITOR_TOKEN_KEY = "monitor-token:";

/**
 * The meta key, followed by the root, under which a stat cache with a monitor
 * token keeps its tree described without its rows: JSON of its generation and
 * `KeptTree` but the token.
 */
const KEPT_TREE_KEY = "monitor-tree:";
/** First files a kept tree lists: more than a plan shows as examples. */
const KEPT_HEAD_FILES = 8;

/** The token kept for a stat cache, if it was kept for exactly this generation of it. */
function monitorTokenFor(value: string | null, generation: bigint): string | undefined {
  if (value === null) return undefined;
  const space = value.indexOf(" ");
  return space > 0 && value.slice(0, space) === String(generation) ? value.slice(space + 1) : undefined;
}

export class StateStore {
  readonly path: string;
  readonly root: string;
  readonly readonly: boolean;
  /** Null only for a read-only store whose database does not exist yet: it reads as empty. */
  private readonly db: DatabaseSync | null;
  private readonly statements = new Map<string, StatementSync>();
  /**
   * The stat cache last read or written per root. Its time is the one paired
   * with its entries (read in the same query), and its generation lets an
   * unchanged save touch only the time, unless another process rewrote it since.
   */
  private readonly statCaches = new Map<
    string,
    { columns: StatCacheColumns; savedAt: bigint; generation: bigint; monitorToken: string | undefined }
  >();
  /** The generation and token of each tree last read by `keptTree`, whose rows were not loaded. */
  private readonly keptTrees = new Map<string, { generation: bigint; monitorToken: string }>();
  /** Releases of the writer locks this store holds, so that close() gives them back. */
  private readonly heldLocks = new Set<() => void>();
  /** SQLite's data_version when this connection last took a writer lock: it moves only when another connection commits. */
  private dataVersionAtLock: number | undefined;

  private constructor(root: string, path: string, db: DatabaseSync | null, readonly: boolean) {
    this.root = root;
    this.path = path;
    this.db = db;
    this.readonly = readonly;
  }

  /**
   * Opens (and for a writer, creates and migrates) the store of the project at
   * `root`, the directory holding kaos.config.ts. A read-only store never creates
   * anything and reads as empty when no database exists yet.
   */
  static open(root: string, options?: { readonly?: boolean }): StateStore {
    const absoluteRoot = resolve(root);
    const dbPath = stateDbOf(absoluteRoot);
    const readonly = options?.readonly === true;
    checkStateLocation(dbPath, !readonly);
    if (readonly) {
      if (!existsSync(dbPath)) return new StateStore(absoluteRoot, dbPath, null, true);
      refuseEmptyStore(dbPath);
      return new StateStore(absoluteRoot, dbPath, openReadable(dbPath, openReader), true);
    }
    try {
      mkdirSync(stateDirOf(absoluteRoot), { recursive: true });
    } catch (error) {
      throw new KaosError("IO", `cannot create ${stateDirOf(absoluteRoot)}: ${describeError(error)}`, {
        hint: "check that the project directory is writable",
        cause: error,
      });
    }
    refuseEmptyStore(dbPath);
    const db = openWriter(dbPath);
    try {
      verifyIntegrity(db, dbPath);
    } catch (error) {
      db.close();
      throw error;
    }
    return new StateStore(absoluteRoot, dbPath, db, false);
  }

  close(): void {
    for (const release of [...this.heldLocks]) release();
    this.statements.clear();
    this.statCaches.clear();
    this.keptTrees.clear();
    if (this.db?.isOpen !== true) return;
    this.db.close();
    if (!this.readonly) recordVerified(this.path);
  }

  transaction<T>(fn: () => T): T {
    const db = this.writer();
    try {
      return inTransaction(db, fn);
    } catch (error) {
      throw errnoCode(error)?.startsWith("SQLITE_BUSY") === true || isCorruptionError(error) ? translateOpenError(error, this.path) : error;
    }
  }

  // ---------------------------------------------------------------- stat cache

  statCache(): StatCacheStore {
    return {
      load: (root) => this.loadStatCache(root),
      loadPacked: (root) => this.loadPackedStatCache(root),
      save: (root, entries, cacheTimeNs, treeHash, monitorToken) => this.saveStatCache(root, entries, cacheTimeNs, treeHash, monitorToken),
      saveRows: (root, rows, cacheTimeNs, treeHash, monitorToken) =>
        this.saveStatCacheRows(root, rows, cacheTimeNs, treeHash, monitorToken),
      savedAt: (root) => this.statCacheSavedAt(root),
      monitorToken: (root) => this.statCaches.get(root)?.monitorToken,
      recordMonitorToken: (root, token) => this.recordMonitorToken(root, token),
      keptTree: (root) => this.keptTree(root),
    };
  }

  /**
   * All cached entries of one tree, keyed by relative path; empty when none or
   * when the saved cache is unreadable (it is only a cache). See {@link StatCacheMap}.
   */
  loadStatCache(root: string): StatCacheMap {
    if (this.db === null) return new StatCacheMap();
    // The blob this store read or wrote last is taken again while no other process has rewritten it
    // (same generation): a million-entry cache is then not read and decoded a second time.
    const known = this.statCaches.get(root);
    if (known !== undefined) {
      const head = this.stmt(
        "SELECT s.saved_at, s.generation, length(s.data) AS bytes, m.value AS token FROM stat_cache s " +
          "LEFT JOIN meta m ON m.key = ? || s.root WHERE s.root = ?",
        "bigint",
      ).get(MONITOR_TOKEN_KEY, root) as { saved_at: bigint; generation: bigint; bytes: bigint; token: string | null } | undefined;
      // The blob's stored length too: a row whose data was rewritten in place is read again.
      if (head !== undefined && head.generation === known.generation && Number(head.bytes) === 0) {
        known.savedAt = head.saved_at;
        known.monitorToken = monitorTokenFor(head.token, head.generation);
        return new StatCacheMap(known.columns);
      }
    }
    // The monitor's token is read in the same statement, so that it pairs with these entries.
    const row = this.stmt(
      "SELECT s.data, s.saved_at, s.generation, m.value AS token FROM stat_cache s " +
        "LEFT JOIN meta m ON m.key = ? || s.root WHERE s.root = ?",
      "bigint",
    ).get(MONITOR_TOKEN_KEY, root) as { data: Buffer; saved_at: bigint; generation: bigint; token: string | null } | undefined;
    // Pieces rewritten since the row was read only pair newer entries with an older time, which trusts less.
    const columns =
      row === undefined ? undefined : StatCacheColumns.decode(row.data.byteLength > 0 ? row.data : this.readStatCacheChunks(root));
    if (row === undefined || columns === undefined) {
      this.statCaches.delete(root);
      return new StatCacheMap();
    }
    this.statCaches.set(root, {
      columns,
      savedAt: row.saved_at,
      generation: row.generation,
      monitorToken: monitorTokenFor(row.token, row.generation),
    });
    return new StatCacheMap(columns);
  }

  /** A blob stored in pieces, put together in shared memory (where the hashing threads read it). */
  private readStatCacheChunks(root: string): Uint8Array {
    const sizes = this.stmt("SELECT count(*) AS pieces, coalesce(sum(length(data)), 0) AS bytes FROM stat_cache_chunks WHERE root = ?").get(
      root,
    ) as { pieces: number; bytes: number };
    const blob = Buffer.from(new SharedArrayBuffer(sizes.bytes));
    let filled = 0;
    let expected = 0;
    for (const piece of this.stmt("SELECT seq, data FROM stat_cache_chunks WHERE root = ? ORDER BY seq").iterate(root) as Iterable<{
      seq: number;
      data: Uint8Array;
    }>) {
      // A missing piece or a size that moved meanwhile: no cache rather than a wrong one.
      if (piece.seq !== expected++ || filled + piece.data.byteLength > blob.byteLength) return new Uint8Array(0);
      blob.set(piece.data, filled);
      filled += piece.data.byteLength;
    }
    return filled === blob.byteLength && expected === sizes.pieces ? blob : new Uint8Array(0);
  }

  /**
   * The cache of one tree for the hashing threads to compare against in place,
   * or undefined when there is none or it is not in walk order (then
   * `loadStatCache` serves it).
   */
  loadPackedStatCache(root: string): PackedStatCache | undefined {
    this.loadStatCache(root);
    const known = this.statCaches.get(root);
    return known?.columns.packed(known.savedAt);
  }

  saveStatCache(root: string, entries: readonly StatCacheEntry[], cacheTimeNs: bigint, treeHash?: string, monitorToken?: string): void {
    this.writer();
    const previous = this.statCaches.get(root);
    if (
      previous !== undefined &&
      (treeHash === undefined || previous.columns.treeHash === treeHash) &&
      previous.columns.count === entries.length &&
      entries.every((entry, i) => previous.columns.sameAt(i, entry)) &&
      // Nothing changed: only the cache time moves (which keeps the racy window
      // small) and megabytes are not rewritten.
      this.touchStatCache(root, previous, cacheTimeNs, monitorToken)
    ) {
      return;
    }
    this.writeStatCache(root, encodeStatCache(entries, treeHash), entries.length, cacheTimeNs, monitorToken);
  }

  /** `saveStatCache` of the rows a walk leaves: encoded by the column, compared by the byte. */
  saveStatCacheRows(root: string, rows: StatCacheRows, cacheTimeNs: bigint, treeHash?: string, monitorToken?: string): void {
    this.writer();
    const blob = encodeStatCacheRows(rows, treeHash);
    const previous = this.statCaches.get(root);
    if (previous?.columns.sameBlob(blob) && this.touchStatCache(root, previous, cacheTimeNs, monitorToken)) return;
    this.writeStatCache(root, blob, rows.count, cacheTimeNs, monitorToken);
  }

  /** The monitor token paired with the stat cache of `root` as this store last read or wrote it. */
  monitorTokenOf(root: string): string | undefined {
    return this.statCaches.get(root)?.monitorToken ?? this.keptTrees.get(root)?.monitorToken;
  }

  /** Saves a blob already encoded (see stat-cache.ts) as the cache of `root`, paired with `monitorToken` when given. */
  saveStatCacheBlob(root: string, blob: Buffer, count: number, cacheTimeNs: bigint, monitorToken?: string): void {
    this.writer();
    this.writeStatCache(root, blob, count, cacheTimeNs, monitorToken);
  }

  /** Moves only the cache time of an unchanged cache; false when another process rewrote it meanwhile. */
  private touchStatCache(
    root: string,
    previous: { savedAt: bigint; generation: bigint },
    cacheTimeNs: bigint,
    monitorToken: string | undefined,
  ): boolean {
    const updated = this.stmt("UPDATE stat_cache SET saved_at = ? WHERE root = ? AND generation = ?").run(
      cacheTimeNs,
      root,
      previous.generation,
    );
    if (updated.changes !== 1) return false;
    previous.savedAt = cacheTimeNs;
    // The same entries: a token paired with them before stays true.
    if (monitorToken !== undefined) this.recordMonitorToken(root, monitorToken);
    return true;
  }

  private writeStatCache(root: string, blob: Buffer, count: number, cacheTimeNs: bigint, monitorToken: string | undefined): void {
    const columns = StatCacheColumns.decode(blob);
    const row = this.transaction(() => {
      const saved = this.stmt(
        "INSERT INTO stat_cache (root, saved_at, generation, entries, data) VALUES (?, ?, 1, ?, X'') " +
          "ON CONFLICT(root) DO UPDATE SET saved_at = excluded.saved_at, generation = stat_cache.generation + 1, " +
          "entries = excluded.entries, data = excluded.data RETURNING generation",
        "bigint",
      ).get(root, cacheTimeNs, count) as { generation: bigint };
      this.stmt("DELETE FROM stat_cache_chunks WHERE root = ?").run(root);
      const insert = this.stmt("INSERT INTO stat_cache_chunks (root, seq, data) VALUES (?, ?, ?)");
      for (let seq = 0, at = 0; at < blob.byteLength || seq === 0; seq++, at += STAT_CACHE_CHUNK_BYTES) {
        insert.run(root, seq, blob.subarray(at, at + STAT_CACHE_CHUNK_BYTES));
      }
      if (monitorToken === undefined) this.stmt("DELETE FROM meta WHERE key IN (?, ?)").run(MONITOR_TOKEN_KEY + root, KEPT_TREE_KEY + root);
      else this.writeMonitorToken(root, saved.generation, monitorToken, columns);
      return saved;
    });
    if (columns === undefined) this.statCaches.delete(root);
    else this.statCaches.set(root, { columns, savedAt: cacheTimeNs, generation: row.generation, monitorToken });
  }

  /**
   * Pairs the monitor's `token` with the stat cache of `root` last loaded or
   * saved here, whose entries a walk or the monitor found still true. If
   * another process has rewritten that cache since, the pair names the old
   * generation and is never trusted.
   */
  recordMonitorToken(root: string, token: string): void {
    const known = this.statCaches.get(root) ?? this.keptTrees.get(root);
    if (known === undefined || known.monitorToken === token) return;
    this.writer();
    // A kept tree was read with its generation: it is written already.
    this.writeMonitorToken(root, known.generation, token, "columns" in known ? known.columns : undefined);
    known.monitorToken = token;
  }

  /**
   * Unpairs the monitor's token from the stat cache of `root`, so that the
   * next plan walks it: for a change the monitor cannot have seen, such as a
   * write through a hard link to one of its files from outside it.
   */
  forgetMonitorToken(root: string): void {
    if (this.db === null || this.readonly) return;
    this.stmt("DELETE FROM meta WHERE key IN (?, ?)").run(MONITOR_TOKEN_KEY + root, KEPT_TREE_KEY + root);
    const known = this.statCaches.get(root);
    if (known !== undefined) known.monitorToken = undefined;
    this.keptTrees.delete(root);
  }

  private writeMonitorToken(root: string, generation: bigint, token: string, columns: StatCacheColumns | undefined): void {
    const upsert = this.stmt("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value");
    upsert.run(MONITOR_TOKEN_KEY + root, `${generation} ${token}`);
    if (columns?.treeHash === undefined) return;
    const { bytes, links, head } = columns.outline(KEPT_HEAD_FILES);
    upsert.run(
      KEPT_TREE_KEY + root,
      JSON.stringify({ generation: String(generation), hash: columns.treeHash, files: columns.count, bytes, links, head }),
    );
  }

  /**
   * The tree of the stat cache of `root` as kept beside its rows for the
   * monitor, read without the rows (a million of them take a second to
   * load): the token and the tree must both name the cache's current
   * generation.
   */
  keptTree(root: string): KeptTree | undefined {
    if (this.db === null) return undefined;
    const row = this.stmt(
      "SELECT s.generation, m.value AS token, t.value AS tree FROM stat_cache s " +
        "LEFT JOIN meta m ON m.key = ? || s.root LEFT JOIN meta t ON t.key = ? || s.root WHERE s.root = ?",
      "bigint",
    ).get(MONITOR_TOKEN_KEY, KEPT_TREE_KEY, root) as { generation: bigint; token: string | null; tree: string | null } | undefined;
    this.keptTrees.delete(root);
    const monitorToken = row === undefined ? undefined : monitorTokenFor(row.token, row.generation);
    if (row === undefined || monitorToken === undefined || row.tree === null) return undefined;
    let tree: Omit<KeptTree, "monitorToken"> & { generation: string };
    try {
      tree = JSON.parse(row.tree) as typeof tree;
    } catch {
      return undefined;
    }
    if (tree.generation !== String(row.generation) || typeof tree.hash !== "string" || !Array.isArray(tree.head)) return undefined;
    // Rows loaded here before are of an older generation: a token recorded now pairs with this one.
    if (this.statCaches.get(root)?.generation !== row.generation) this.statCaches.delete(root);
    this.keptTrees.set(root, { generation: row.generation, monitorToken });
    return { monitorToken, hash: tree.hash, files: tree.files, bytes: tree.bytes, links: tree.links, head: tree.head };
  }

  /**
   * When the cache of `root` was saved (the walk start time). After a load, the
   * time saved together with the entries loaded, even if another process has
   * saved since: pairing new time with old entries could trust a racy file.
   */
  statCacheSavedAt(root: string): bigint | undefined {
    const known = this.statCaches.get(root);
    if (known !== undefined) return known.savedAt;
    if (this.db === null) return undefined;
    const row = this.stmt("SELECT saved_at FROM stat_cache WHERE root = ?", "bigint").get(root) as { saved_at: bigint } | undefined;
    return row?.saved_at;
  }

  // ---------------------------------------------------------------- runs

  beginRun(stack: string, command: string): RunRecord {
    this.writer();
    const startedAt = nowIso();
    const id = this.insertRun({ stack, command, startedAt, finishedAt: null, state: "running" });
    return { id, stack, command, startedAt, finishedAt: null, state: "running", pid: process.pid };
  }

  /** A run of this process, under a fresh id (returned). */
  private insertRun(run: { stack: string; command: string; startedAt: string; finishedAt: string | null; state: RunState }): string {
    return this.insertWithFreshId((id) =>
      this.stmt(
        "INSERT INTO runs (id, stack, command, started_at, finished_at, state, pid, pid_start, host, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
      ).run(
        id,
        run.stack,
        run.command,
        run.startedAt,
        run.finishedAt,
        run.state,
        process.pid,
        processStartToken(process.pid),
        hostname(),
        originToken(),
      ),
    );
  }

  finishRun(runId: string, state: RunState): void {
    this.writer();
    const result = this.stmt("UPDATE runs SET state = ?, finished_at = ? WHERE id = ?").run(state, nowIso(), runId);
    if (result.changes === 0) throw new KaosError("JOB_NOT_FOUND", `no run has id '${runId}' in ${this.path}`);
  }

  getRun(id: string): RunRecord | undefined {
    if (this.db === null) return undefined;
    const row = this.stmt("SELECT * FROM runs WHERE id = ?").get(id) as RunRow | undefined;
    return row === undefined ? undefined : runFromRow(row);
  }

  /** Whether the kaos process running `runId` is still alive; false once the run is finished or its process gone. */
  runOwnerAlive(runId: string): boolean {
    return this.runOwnerLiveness(runId) !== "dead";
  }

  /** Where the kaos process running `runId` stands: `dead` once the run is finished or its process gone. */
  runOwnerLiveness(runId: string): Liveness {
    if (this.db === null) return "dead";
    const row = this.stmt("SELECT * FROM runs WHERE id = ?").get(runId) as RunRow | undefined;
    return row !== undefined && row.state === "running" ? livenessOf(row) : "dead";
  }

  // ---------------------------------------------------------------- jobs

  createJob(job: NewJob): JobRecord {
    this.writer();
    const createdAt = nowIso();
    const state = job.state ?? "queued";
    const params = canonicalJson(job.params);
    const id = this.insertWithFreshId((jobId) =>
      this.stmt(
        `INSERT INTO jobs (${JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, ?, ?, ?, NULL)`,
      ).run(
        jobId,
        job.runId,
        job.stack,
        job.pipeline,
        job.stage,
        job.key,
        state,
        params,
        job.envKey,
        job.sourceKey,
        job.dataKey,
        job.paramsKey,
        job.sweepIndex,
        job.sweepSize,
        job.outputDir,
        job.logFile,
        createdAt,
      ),
    );
    return {
      ...job,
      id,
      state,
      params: JSON.parse(params) as Record<string, unknown>,
      pid: null,
      startedAt: null,
      finishedAt: null,
      exitCode: null,
      reason: null,
      createdAt,
      collectedAt: null,
    };
  }

  /**
   * Records a job as running in process `pid`. Returns false when the job has
   * ended already: `kaos train kill` may cancel a job before it starts.
   */
  markRunning(jobId: string, pid: number | null): boolean {
    return this.recordRunning(jobId, pid).changed;
  }

  /** `markRunning`, which also gives back the job as it is recorded now (as it ended, when it had). */
  recordRunning(jobId: string, pid: number | null): { changed: boolean; job: JobRecord } {
    this.writer();
    const rows = this.stmt(
      `UPDATE jobs SET state = 'running', pid = ?, started_at = ? WHERE id = ? AND state IN ('queued','running') RETURNING ${JOB_COLUMNS}`,
      "raw",
    ).all(pid, nowIso(), jobId) as unknown as JobColumns[];
    return this.changedJob(jobId, rows);
  }

  /** Records the data key an ingest job's download gave (unknown when the job was created). */
  recordDataKey(jobId: string, dataKey: string): void {
    this.writer();
    this.stmt("UPDATE jobs SET data_key = ? WHERE id = ?").run(dataKey, jobId);
  }

  /**
   * Records how a job ended. A job that has already ended keeps its first result,
   * so a cancellation recorded by `kaos train kill` is not overwritten by the
   * exit status that follows the signal. Returns whether this call recorded it.
   */
  finishJob(
    jobId: string,
    result: { state: "succeeded" | "failed" | "cancelled"; exitCode: number | null; reason?: string | null },
  ): boolean {
    return this.recordFinished(jobId, result).changed;
  }

  /** `finishJob`, which also gives back the job as it is recorded now (with the first result, when another came first). */
  recordFinished(
    jobId: string,
    result: { state: "succeeded" | "failed" | "cancelled"; exitCode: number | null; reason?: string | null },
  ): { changed: boolean; job: JobRecord } {
    this.writer();
    const rows = this.stmt(
      `UPDATE jobs SET state = ?, exit_code = ?, reason = ?, finished_at = ? WHERE id = ? AND state IN ('queued','running') RETURNING ${JOB_COLUMNS}`,
      "raw",
    ).all(result.state, result.exitCode, result.reason ?? null, nowIso(), jobId) as unknown as JobColumns[];
    return this.changedJob(jobId, rows);
  }

  /** What an update of one job returned: the job as changed, or, when it did not change, as it is (it must exist). */
  private changedJob(jobId: string, rows: JobColumns[]): { changed: boolean; job: JobRecord } {
    const [row] = rows;
    if (row !== undefined) return { changed: true, job: jobFromColumns(row) };
    const job = this.getJob(jobId);
    if (job === undefined) throw jobNotFound(jobId);
    return { changed: false, job };
  }

  /**
   * Records as failed, for `reason`, those of `jobIds` that succeeded: their
   * results turned out not to be trustworthy after they were recorded (the data
   * they read was found changed). Returns how many it changed.
   */
  revokeSucceeded(jobIds: readonly string[], reason: string): number {
    this.writer();
    const revoke = this.stmt("UPDATE jobs SET state = 'failed', reason = ? WHERE id = ? AND state = 'succeeded'");
    return this.transaction(() => jobIds.reduce((count, id) => count + Number(revoke.run(reason, id).changes), 0));
  }

  getJob(id: string): JobRecord | undefined {
    if (this.db === null) return undefined;
    return this.selectJobs("WHERE id = ?", id)[0];
  }

  /** A job by its id or a unique prefix of it, as typed on the command line. */
  resolveJob(idOrPrefix: string): JobRecord {
    const prefix = idOrPrefix.trim().toLowerCase();
    if (prefix.length === 0) {
      throw new KaosError("USAGE", "a job id is empty", { hint: "pass a job id (or its first characters) from `kaos train list`" });
    }
    if (this.db === null || !/^[0-9a-z]+$/.test(prefix)) throw jobNotFound(idOrPrefix);
    // A range scan on the unique index; '~' sorts after every id character.
    const rows = this.selectJobs("WHERE id >= ? AND id < ? ORDER BY id LIMIT 6", prefix, `${prefix}~`);
    const exact = rows.find((row) => row.id === prefix);
    if (exact !== undefined) return exact;
    const [first] = rows;
    if (first === undefined) throw jobNotFound(idOrPrefix);
    if (rows.length === 1) return first;
    const total = (this.stmt("SELECT count(*) AS n FROM jobs WHERE id >= ? AND id < ?").get(prefix, `${prefix}~`) as { n: number }).n;
    const shown = rows.slice(0, 5).map((row) => `  ${row.id}  ${row.pipeline} ${row.stage} ${row.state} ${row.createdAt}`);
    const more = total > shown.length ? `\n  ... and ${total - shown.length} more` : "";
    throw new KaosError("JOB_AMBIGUOUS", `'${idOrPrefix}' matches ${total} jobs:\n${shown.join("\n")}${more}`, {
      hint: "type more characters of the job id",
    });
  }

  /** Newest first; `limit` is applied by SQLite, which walks an index and stops there. */
  listJobs(filter: JobFilter = {}): JobRecord[] {
    if (this.db === null) return [];
    const { where, values } = jobConditions(filter);
    let limit = "";
    if (filter.limit !== undefined) {
      limit = " LIMIT ?";
      values.push(Math.max(0, Math.floor(filter.limit)));
    }
    return this.selectJobs(`${where} ORDER BY created_at DESC, seq DESC${limit}`, ...values);
  }

  /** How many jobs match `filter` (its `limit` aside). */
  countJobs(filter: JobFilter = {}): number {
    if (this.db === null) return 0;
    const { where, values } = jobConditions(filter);
    return Number((this.stmt(`SELECT count(*) AS n FROM jobs${where}`).get(...values) as { n: number }).n);
  }

  /** The cache: the most recent success of this job key whose outputs were not collected, to be reused. */
  latestSucceeded(stage: Stage, key: string): JobRecord | undefined {
    if (this.db === null) return undefined;
    return this.selectJobs(
      "WHERE stage = ? AND key = ? AND state = 'succeeded' AND collected_at IS NULL ORDER BY finished_at DESC, seq DESC LIMIT 1",
      stage,
      key,
    )[0];
  }

  lastFailed(stage: Stage, key: string): JobRecord | undefined {
    return this.latestInState(stage, key, "failed");
  }

  lastCancelled(stage: Stage, key: string): JobRecord | undefined {
    return this.latestInState(stage, key, "cancelled");
  }

  /**
   * For each key, its latest job queued or running now in a run whose kaos has
   * not gone (here, or where this one cannot look): one query, and one look at
   * each run's kaos, however many jobs a plan asks about.
   */
  unfinishedJobsByKey(stage: Stage): Map<string, JobRecord> {
    const unfinished = new Map<string, JobRecord>();
    if (this.db === null) return unfinished;
    const ownerAlive = new Map<string, boolean>();
    for (const job of this.selectJobs("WHERE stage = ? AND state IN ('queued','running') ORDER BY seq DESC", stage)) {
      if (unfinished.has(job.key)) continue;
      const alive = ownerAlive.get(job.runId) ?? this.runOwnerAlive(job.runId);
      ownerAlive.set(job.runId, alive);
      if (alive) unfinished.set(job.key, job);
    }
    return unfinished;
  }

  /**
   * The job recorded last (whichever run, whatever its state) for each of
   * `keys` that has one, by key: what the grid's combinations stand at now.
   */
  latestJobsByKey(stage: Stage, keys: readonly string[]): Map<string, JobRecord> {
    const latest = new Map<string, JobRecord>();
    if (this.db === null || keys.length === 0) return latest;
    const jobs = this.selectJobs(
      "WHERE seq IN (SELECT max(seq) FROM jobs WHERE stage = ? AND key IN (SELECT value FROM json_each(?)) GROUP BY key)",
      stage,
      JSON.stringify(keys),
    );
    for (const job of jobs) latest.set(job.key, job);
    return latest;
  }

  /** The train jobs of one pipeline's sweep in one run, by sweep index. */
  sweepMembers(runId: string, pipeline: string): JobRecord[] {
    if (this.db === null) return [];
    return this.selectJobs("WHERE run_id = ? AND pipeline = ? AND stage = 'train' ORDER BY sweep_index, seq", runId, pipeline);
  }

  /**
   * Jobs left `running`/`queued` by a kaos process that no longer exists (crash,
   * SIGKILL): marks them failed with reason {@link INTERRUPTED_REASON} and their
   * runs failed. Returns the jobs recovered, and the jobs of those runs that
   * were cancelled: `kaos train kill` of a job whose kaos had died ends it as
   * cancelled, yet it ran unwatched until then as an interrupted one did. Jobs
   * that finished before the crash keep their result, so they are not rerun.
   */
  recoverInterrupted(isAlive?: (pid: number) => boolean): { interrupted: JobRecord[]; cancelled: JobRecord[] } {
    this.writer();
    return this.transaction(() => {
      const runningRuns = this.stmt("SELECT * FROM runs WHERE state = 'running'").all() as unknown as RunRow[];
      // A run whose kaos cannot be judged (another machine or container) is left alone: `kaos unlock` settles it.
      const ownerAlive = (run: RunRow): boolean => (isAlive !== undefined ? isAlive(run.pid) : livenessOf(run) !== "dead");
      const deadRuns = new Set(runningRuns.filter((run) => !ownerAlive(run)).map((run) => run.id));
      const liveRuns = new Set(runningRuns.map((run) => run.id).filter((id) => !deadRuns.has(id)));
      const unfinished = this.selectJobs("WHERE state IN ('queued','running') ORDER BY seq");
      // A job whose run already ended is as orphaned as one whose owner died.
      const orphaned = unfinished.filter((job) => !liveRuns.has(job.runId));
      const finishedAt = nowIso();
      const markJob = this.stmt(
        "UPDATE jobs SET state = 'failed', reason = ?, finished_at = ? WHERE id = ? AND state IN ('queued','running')",
      );
      for (const job of orphaned) markJob.run(INTERRUPTED_REASON, finishedAt, job.id);
      const markRun = this.stmt("UPDATE runs SET state = 'failed', finished_at = ? WHERE id = ? AND state = 'running'");
      const cancelled: JobRecord[] = [];
      for (const runId of deadRuns) {
        cancelled.push(...this.cancelledJobs(runId));
        markRun.run(finishedAt, runId);
      }
      return {
        interrupted: orphaned.map((job): JobRecord => ({ ...job, state: "failed", reason: INTERRUPTED_REASON, finishedAt })),
        cancelled,
      };
    });
  }

  /**
   * Records that the folders of `jobIds` are being removed, before a byte of
   * them is: a removal cut short then leaves jobs that are never reused and
   * whose leftovers the next `kaos gc` removes. Returns the time recorded.
   */
  markCollected(jobIds: readonly string[]): string {
    this.writer();
    const collectedAt = nowIso();
    const mark = this.stmt("UPDATE jobs SET collected_at = ? WHERE id = ? AND collected_at IS NULL");
    this.transaction(() => {
      for (const id of jobIds) mark.run(collectedAt, id);
    });
    return collectedAt;
  }

  /** The ids of the `count` most recent runs, newest first. */
  recentRuns(count: number): string[] {
    if (this.db === null || count <= 0) return [];
    const rows = this.stmt("SELECT id FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?").all(count) as { id: string }[];
    return rows.map((row) => row.id);
  }

  /**
   * The ids of the `count` most recent runs that recorded a job of their own
   * (built, trained or ingested something, or tried to): a run that found
   * everything up to date, as most CI steps and watch events do, made nothing to keep.
   */
  recentRunsWithJobs(count: number): string[] {
    if (this.db === null || count <= 0) return [];
    const rows = this.stmt(
      "SELECT id FROM runs WHERE EXISTS (SELECT 1 FROM jobs WHERE jobs.run_id = runs.id) ORDER BY started_at DESC, rowid DESC LIMIT ?",
    ).all(count) as { id: string }[];
    return rows.map((row) => row.id);
  }

  /** Every stack this store has heard of: applied, run, or locked. */
  knownStacks(): string[] {
    if (this.db === null) return [];
    const rows = this.stmt(
      "SELECT stack FROM applied UNION SELECT stack FROM runs UNION SELECT stack FROM writer_locks ORDER BY stack",
    ).all() as { stack: string }[];
    return rows.map((row) => row.stack);
  }

  // ---------------------------------------------------------------- pages (kaos ui)

  /**
   * One page of jobs, newest first, and the cursor of the next page (null on
   * the last). Keyset paging on the (created_at, seq) order of `listJobs`, so
   * a page costs the same at any depth and rows inserted meanwhile do not
   * shift the pages after it.
   */
  pageJobs(filter: Omit<JobFilter, "limit">, page: { limit: number; cursor?: string }): { jobs: JobRecord[]; next: string | null } {
    if (this.db === null) return { jobs: [], next: null };
    const { where: matching, values } = jobConditions(filter);
    let where = matching;
    const after = page.cursor === undefined ? undefined : decodeCursor(page.cursor);
    if (after !== undefined) {
      where += `${matching === "" ? " WHERE" : " AND"} (created_at < ? OR (created_at = ? AND seq < ?))`;
      values.push(after.at, after.at, after.seq);
    }
    const limit = Math.max(1, Math.floor(page.limit));
    const rows = this.stmt(`SELECT seq, ${JOB_COLUMNS} FROM jobs${where} ORDER BY created_at DESC, seq DESC LIMIT ?`, "raw").all(
      ...values,
      limit + 1,
    ) as unknown as [number, ...JobColumns][];
    const shown = rows.slice(0, limit);
    const last = shown[shown.length - 1];
    return {
      jobs: shown.map(([, ...columns]) => jobFromColumns(columns)),
      next: rows.length > limit && last !== undefined ? encodeCursor(last[22], last[0]) : null,
    };
  }

  /** One page of runs, newest first, each with how many of its jobs are in each state. */
  pageRuns(page: { limit: number; cursor?: string }): { runs: RunSummary[]; next: string | null } {
    if (this.db === null) return { runs: [], next: null };
    const after = page.cursor === undefined ? undefined : decodeCursor(page.cursor);
    const limit = Math.max(1, Math.floor(page.limit));
    const rows = (after === undefined
      ? this.stmt("SELECT rowid AS seq, * FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?").all(limit + 1)
      : this.stmt(
          "SELECT rowid AS seq, * FROM runs WHERE started_at < ? OR (started_at = ? AND rowid < ?) ORDER BY started_at DESC, rowid DESC LIMIT ?",
        ).all(after.at, after.at, after.seq, limit + 1)) as unknown as (RunRow & { seq: number })[];
    const shown = rows.slice(0, limit);
    const count = this.stmt("SELECT pipeline, state, count(*) AS n FROM jobs WHERE run_id = ? GROUP BY pipeline, state");
    const runs = shown.map((row): RunSummary => {
      const jobs: Partial<Record<JobState, number>> = {};
      const pipelines = new Set<string>();
      for (const { pipeline, state, n } of count.all(row.id) as { pipeline: string; state: JobState; n: number }[]) {
        jobs[state] = (jobs[state] ?? 0) + n;
        pipelines.add(pipeline);
      }
      return { ...runFromRow(row), jobs, pipelines: [...pipelines].sort() };
    });
    const last = shown[shown.length - 1];
    return { runs, next: rows.length > limit && last !== undefined ? encodeCursor(last.started_at, last.seq) : null };
  }

  /** How many jobs each pipeline has, by stage and state. */
  pipelineCounts(): { pipeline: string; stage: Stage; state: JobState; count: number }[] {
    if (this.db === null) return [];
    return this.stmt(
      "SELECT pipeline, stage, state, count(*) AS count FROM jobs GROUP BY pipeline, stage, state ORDER BY pipeline",
    ).all() as {
      pipeline: string;
      stage: Stage;
      state: JobState;
      count: number;
    }[];
  }

  /**
   * The jobs added after `afterSeq` and the current rows of `ids` (the
   * unfinished ones a reader follows), read by index: what a reader polling
   * for changes reads once {@link dataVersion} has moved.
   */
  changesSince(afterSeq: number, ids: readonly string[]): { lastSeq: number; jobs: JobRecord[] } {
    if (this.db === null) return { lastSeq: afterSeq, jobs: [] };
    const added = this.stmt(`SELECT seq, ${JOB_COLUMNS} FROM jobs WHERE seq > ? ORDER BY seq`, "raw").all(afterSeq) as unknown as [
      number,
      ...JobColumns,
    ][];
    const jobs = added.map(([, ...columns]) => jobFromColumns(columns));
    const seen = new Set(jobs.map((job) => job.id));
    for (const id of ids) {
      if (seen.has(id)) continue;
      const job = this.getJob(id);
      if (job !== undefined) jobs.push(job);
    }
    return { lastSeq: added[added.length - 1]?.[0] ?? afterSeq, jobs };
  }

  /** SQLite's data_version: it changes when any other connection commits to the database. */
  dataVersion(): number {
    return this.db === null ? 0 : Number(pragmaValue(this.db, "data_version"));
  }

  /** The highest job sequence number so far. */
  lastJobSeq(): number {
    if (this.db === null) return 0;
    return (this.stmt("SELECT coalesce(max(seq), 0) AS seq FROM jobs").get() as { seq: number }).seq;
  }

  // ---------------------------------------------------------------- applied plans, meta

  /** What `kaos up` last applied to `stack`, by pipeline; empty before the first up. */
  getApplied(stack: string): AppliedState {
    if (this.db === null) return {};
    const row = this.stmt("SELECT plan FROM applied WHERE stack = ?").get(stack) as { plan: string } | undefined;
    if (row === undefined) return {};
    let parsed: unknown;
    try {
      parsed = JSON.parse(row.plan);
    } catch (error) {
      throw corruptStoreError(this.path, `the applied record of stack '${stack}' is not JSON: ${describeError(error)}`, error);
    }
    const checked = checkApplied(parsed);
    if ("problem" in checked) {
      throw corruptStoreError(this.path, `the applied record of stack '${stack}' is not what kaos writes: ${checked.problem}`);
    }
    return checked.applied;
  }

  /** Changes what is recorded as applied to `stack`, read and written in one transaction. */
  updateApplied(stack: string, change: (applied: AppliedState) => void): void {
    this.transaction(() => {
      const applied = this.getApplied(stack);
      change(applied);
      this.stmt(
        "INSERT INTO applied (stack, plan, applied_at) VALUES (?, ?, ?) " +
          "ON CONFLICT(stack) DO UPDATE SET plan = excluded.plan, applied_at = excluded.applied_at",
      ).run(stack, canonicalJson(applied), nowIso());
    });
  }

  getMeta(key: string): string | undefined {
    if (this.db === null) return undefined;
    const row = this.stmt("SELECT value FROM meta WHERE key = ?").get(key) as { value: string } | undefined;
    return row?.value;
  }

  setMeta(key: string, value: string): void {
    this.writer();
    this.stmt("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value").run(key, value);
  }

  // ---------------------------------------------------------------- writer lock

  /**
   * One writer per stack. The lock is a row, taken inside BEGIN IMMEDIATE so two
   * processes cannot both see it free. A row whose process is gone (or whose pid
   * now belongs to a different process) is taken over. Readers never look at it.
   */
  acquireWriter(stack: string, command: string): WriterLock {
    this.writer();
    const owner = randomBytes(16).toString("hex");
    const host = hostname();
    this.transaction(() => {
      const holder = this.stmt("SELECT * FROM writer_locks WHERE stack = ?").get(stack) as LockRow | undefined;
      const liveness = holder === undefined ? "dead" : livenessOf(holder);
      if (holder !== undefined && liveness !== "dead") {
        const where = holder.host === host ? "" : ` on host ${holder.host}`;
        const who = `another kaos (pid ${holder.pid}${where}, \`${holder.command}\`, started at ${holder.acquired_at})`;
        throw liveness === "alive"
          ? new KaosError(
              "STATE_LOCKED",
              `${who} is applying stack '${stack}' in ${this.root}; wait for it to finish or stop it (kill ${holder.pid})`,
            )
          : new KaosError(
              "STATE_LOCKED",
              `${who} holds the lock of stack '${stack}' in ${this.root}, and it ran on another machine or in another container, so this kaos cannot tell whether it still runs`,
              {
                hint: `if it has stopped, break its lock with \`kaos unlock${stack === "local" ? "" : ` --stack ${stack}`}\`: its unfinished jobs are marked interrupted and run again on the next up`,
              },
            );
      }
      this.writeLockRow(stack, owner, command);
      this.dataVersionAtLock = Number(pragmaValue(this.writer(), "data_version"));
    });
    return this.heldLock(stack, owner);
  }

  // ---------------------------------------------------------------- revision

  /**
   * `STORE/N`: this database's name and how many times its runs, jobs,
   * applied plans and writer locks have changed, by any process.
   */
  revision(): string {
    if (this.db === null) return "";
    const row = this.stmt("SELECT n, store FROM revision").get() as { n: number; store: string } | undefined;
    return row === undefined ? "" : `${row.store}/${row.n}`;
  }

  /**
   * The revision, when this process is the only one that wrote since it took
   * its last writer lock (so what it planned under that lock still holds), and
   * nothing is under way: no lock held, no run or job unfinished. Otherwise
   * undefined.
   */
  settledRevision(): string | undefined {
    const atLock = this.dataVersionAtLock;
    if (atLock === undefined || this.readonly) return undefined;
    return this.transaction(() => {
      if (Number(pragmaValue(this.writer(), "data_version")) !== atLock) return undefined;
      const busy = this.stmt(
        "SELECT EXISTS (SELECT 1 FROM writer_locks) OR EXISTS (SELECT 1 FROM runs WHERE state = 'running') " +
          "OR EXISTS (SELECT 1 FROM jobs WHERE state IN ('queued','running')) AS busy",
      ).get() as { busy: number };
      return busy.busy === 0 ? this.revision() : undefined;
    });
  }

  /**
   * Records a run of `command` that found nothing to do, finished as it
   * starts, provided the store is still at `revision` (see `settledRevision`):
   * then the run's id and the revision after it, else undefined and nothing written.
   */
  recordSettledRun(stack: string, command: string, revision: string): { runId: string; revision: string } | undefined {
    this.writer();
    return this.transaction(() => {
      if (this.revision() !== revision) return undefined;
      const now = nowIso();
      const runId = this.insertRun({ stack, command, startedAt: now, finishedAt: now, state: "succeeded" });
      return { runId, revision: this.revision() };
    });
  }

  private writeLockRow(stack: string, owner: string, command: string): void {
    this.stmt(
      "INSERT INTO writer_locks (stack, owner, pid, pid_start, host, origin, command, acquired_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) " +
        "ON CONFLICT(stack) DO UPDATE SET owner = excluded.owner, pid = excluded.pid, pid_start = excluded.pid_start, " +
        "host = excluded.host, origin = excluded.origin, command = excluded.command, acquired_at = excluded.acquired_at",
    ).run(stack, owner, process.pid, processStartToken(process.pid), hostname(), originToken(), command, nowIso());
  }

  private heldLock(stack: string, owner: string): WriterLock {
    const release = (): void => {
      if (!this.heldLocks.delete(release) || this.db?.isOpen !== true) return;
      // Only our own row: a takeover after we were presumed dead must not be undone.
      this.stmt("DELETE FROM writer_locks WHERE stack = ? AND owner = ?").run(stack, owner);
    };
    this.heldLocks.add(release);
    return { release };
  }

  /** The stacks whose writer lock a kaos of this origin (see `originToken`) holds. */
  stacksLockedFrom(origin: string): string[] {
    if (this.db === null) return [];
    const rows = this.stmt("SELECT stack FROM writer_locks WHERE origin = ? ORDER BY stack").all(origin) as { stack: string }[];
    return rows.map((row) => row.stack);
  }

  /** Who holds the writer lock of `stack`, if anyone. */
  lockHolder(stack: string): LockHolder | undefined {
    if (this.db === null) return undefined;
    const row = this.stmt("SELECT * FROM writer_locks WHERE stack = ?").get(stack) as LockRow | undefined;
    if (row === undefined) return undefined;
    return {
      stack,
      pid: row.pid,
      host: row.host,
      command: row.command,
      acquiredAt: row.acquired_at,
      liveness: livenessOf(row),
      origin: row.origin,
    };
  }

  /**
   * Breaks the writer lock of `stack` held by a kaos that this process cannot
   * judge (or that is gone), and settles what it left: its runs failed, their
   * unfinished jobs failed as interrupted, so the next up runs them again.
   * Refuses while the holder visibly runs here. The lock passes to this process
   * (held as `command`), so that no other kaos starts on the stack before what
   * the holder left running is cleared away.
   */
  breakLock(
    stack: string,
    command: string,
  ): { holder: LockHolder | undefined; interrupted: JobRecord[]; cancelled: JobRecord[]; lock: WriterLock } {
    this.writer();
    const owner = randomBytes(16).toString("hex");
    const broken = this.transaction(() => {
      const holder = this.lockHolder(stack);
      if (holder?.liveness === "alive") {
        throw new KaosError(
          "STATE_LOCKED",
          `the kaos holding stack '${stack}' (pid ${holder.pid}, \`${holder.command}\`) is still running on this machine; stop it (kill ${holder.pid}) instead of breaking its lock`,
        );
      }
      const row = this.stmt("SELECT * FROM writer_locks WHERE stack = ?").get(stack) as LockRow | undefined;
      this.stmt("DELETE FROM writer_locks WHERE stack = ?").run(stack);
      // The holder's runs: the same process (pid and start token) running this stack.
      const runs = (this.stmt("SELECT * FROM runs WHERE state = 'running' AND stack = ?").all(stack) as unknown as RunRow[]).filter(
        (run) =>
          row === undefined ? livenessOf(run) !== "alive" : run.pid === row.pid && run.pid_start === row.pid_start && run.host === row.host,
      );
      const finishedAt = nowIso();
      const interrupted: JobRecord[] = [];
      const cancelled: JobRecord[] = [];
      const markJob = this.stmt(
        "UPDATE jobs SET state = 'failed', reason = ?, finished_at = ? WHERE id = ? AND state IN ('queued','running')",
      );
      const markRun = this.stmt("UPDATE runs SET state = 'failed', finished_at = ? WHERE id = ? AND state = 'running'");
      for (const run of runs) {
        for (const job of this.selectJobs("WHERE run_id = ? AND state IN ('queued','running') ORDER BY seq", run.id)) {
          markJob.run(INTERRUPTED_REASON, finishedAt, job.id);
          interrupted.push({ ...job, state: "failed", reason: INTERRUPTED_REASON, finishedAt });
        }
        cancelled.push(...this.cancelledJobs(run.id));
        markRun.run(finishedAt, run.id);
      }
      this.writeLockRow(stack, owner, command);
      return { holder, interrupted, cancelled };
    });
    return { ...broken, lock: this.heldLock(stack, owner) };
  }

  // ---------------------------------------------------------------- internals

  /** The cancelled jobs of a run whose kaos is gone: what the run ended unwatched is checked as an interrupted job's is. */
  private cancelledJobs(runId: string): JobRecord[] {
    return this.selectJobs("WHERE run_id = ? AND state = 'cancelled' ORDER BY seq", runId);
  }

  private writer(): DatabaseSync {
    if (this.readonly || this.db === null) {
      throw new Error(`the state store ${this.path} was opened read-only`);
    }
    return this.db;
  }

  /** A cached prepared statement; `bigint` reads integers as bigints, `raw` gives rows as arrays. */
  private stmt(sql: string, mode: "plain" | "bigint" | "raw" = "plain"): StatementSync {
    const cacheKey = `${mode}:${sql}`;
    let statement = this.statements.get(cacheKey);
    if (statement === undefined) {
      if (this.db === null) throw new Error(`the state store ${this.path} does not exist yet`);
      statement = this.db.prepare(sql);
      if (mode === "bigint") statement.setReadBigInts(true);
      if (mode === "raw") statement.setReturnArrays(true);
      this.statements.set(cacheKey, statement);
    }
    return statement;
  }

  /** Jobs by a WHERE/ORDER BY tail; rows come as arrays, several times faster to make than objects. */
  private selectJobs(tail: string, ...values: SQLInputValue[]): JobRecord[] {
    if (this.db === null) return [];
    const rows = this.stmt(`SELECT ${JOB_COLUMNS} FROM jobs ${tail}`, "raw").all(...values) as unknown as JobColumns[];
    return rows.map(jobFromColumns);
  }

  /** Ids are random; on the rare collision draw again. */
  private insertWithFreshId(insert: (id: string) => void): string {
    for (let attempt = 0; ; attempt++) {
      const id = randomId();
      try {
        insert(id);
        return id;
      } catch (error) {
        if (attempt < 8 && isUniqueViolation(error)) continue;
        throw error;
      }
    }
  }

  private latestInState(stage: Stage, key: string, state: JobState): JobRecord | undefined {
    if (this.db === null) return undefined;
    return this.selectJobs("WHERE stage = ? AND key = ? AND state = ? ORDER BY finished_at DESC, seq DESC LIMIT 1", stage, key, state)[0];
  }
}

function jobNotFound(idOrPrefix: string): KaosError {
  return new KaosError("JOB_NOT_FOUND", `no job matches '${idOrPrefix}'`, { hint: "`kaos train list` shows the job ids" });
}

// ------------------------------------------------------------------ opening

function openWriter(dbPath: string): DatabaseSync {
  let db: DatabaseSync | undefined;
  try {
    db = openDatabase(dbPath, { busyTimeoutMs: BUSY_TIMEOUT_MS });
    enableWal(db);
    db.exec("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON");
    migrate(db, dbPath);
    return db;
  } catch (error) {
    db?.close();
    throw translateOpenError(error, dbPath);
  }
}

/**
 * How many files the largest stat cache of the project at `root` lists, read
 * without opening the store (no migration, no check), so that the hashing
 * threads a big tree needs can start before the store opens. Undefined when
 * there is no store, or it cannot be read.
 */
export function largestStatCache(root: string): number | undefined {
  const dbPath = stateDbOf(root);
  if (!existsSync(dbPath)) return undefined;
  let db: DatabaseSync | undefined;
  try {
    db = openDatabase(dbPath, { readOnly: true, busyTimeoutMs: 0 });
    const row = db.prepare("SELECT max(entries) AS files FROM stat_cache").get() as { files: number | null } | undefined;
    return row?.files ?? undefined;
  } catch {
    // Only a hint: the store, when it opens, says what is wrong with it.
    return undefined;
  } finally {
    db?.close();
  }
}

function openReader(dbPath: string): DatabaseSync {
  let db: DatabaseSync | undefined;
  try {
    db = openDatabase(dbPath, { readOnly: true, busyTimeoutMs: BUSY_TIMEOUT_MS });
    const version = userVersion(db);
    if (version > SCHEMA_VERSION) throw newerSchemaError(dbPath, version);
    if (version < SCHEMA_VERSION) {
      // Written by an older kaos (or created and never migrated): bring it up to
      // date through a short-lived writer, then read.
      db.close();
      openWriter(dbPath).close();
      db = openDatabase(dbPath, { readOnly: true, busyTimeoutMs: BUSY_TIMEOUT_MS });
    }
    return db;
  } catch (error) {
    db?.close();
    throw translateOpenError(error, dbPath);
  }
}

/**
 * Switching a new database to WAL needs the file to itself, and SQLite answers
 * SQLITE_BUSY at once rather than waiting when another process is opening it
 * too, so the wait is done here.
 */
function enableWal(db: DatabaseSync): void {
  const deadline = Date.now() + BUSY_TIMEOUT_MS;
  for (let pause = 5; ; pause = Math.min(pause * 2, 100)) {
    try {
      db.exec("PRAGMA journal_mode = WAL");
      return;
    } catch (error) {
      if (errnoCode(error)?.startsWith("SQLITE_BUSY") !== true || Date.now() + pause > deadline) throw error;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, pause);
    }
  }
}

function migrate(db: DatabaseSync, dbPath: string): void {
  const initial = userVersion(db);
  if (initial > SCHEMA_VERSION) throw newerSchemaError(dbPath, initial);
  if (initial === SCHEMA_VERSION) return;
  inTransaction(db, () => {
    // Read again under the write lock: another process may have migrated meanwhile.
    const current = userVersion(db);
    if (current > SCHEMA_VERSION) throw newerSchemaError(dbPath, current);
    for (let version = current; version < SCHEMA_VERSION; version++) {
      const migration = MIGRATIONS[version];
      if (migration !== undefined) db.exec(migration);
    }
    db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
  });
}

function userVersion(db: DatabaseSync): number {
  return Number(pragmaValue(db, "user_version"));
}

function newerSchemaError(dbPath: string, version: number): KaosError {
  return new KaosError(
    "STATE_CORRUPT",
    `${dbPath} has state schema version ${version}, newer than this kaos understands (${SCHEMA_VERSION}); upgrade kaos to use it`,
    { hint: "a newer kaos wrote this state; install that version (npm install kaos-ml@latest) rather than downgrading" },
  );
}

function corruptStoreError(dbPath: string, detail: string, cause?: unknown): KaosError {
  return new KaosError(
    "STATE_CORRUPT",
    `${dbPath} is not a readable kaos state database (${detail}); move it away (mv ${dbPath} ${dbPath}.broken) and run kaos again`,
    { hint: "kaos then starts with fresh state: the history of runs and jobs in the old file is not carried over", cause },
  );
}

/**
 * An empty state.db is never one kaos left (it writes the schema as it creates
 * the file): the record of the runs whose job folders remain was lost. Starting
 * afresh would rerun everything and orphan those folders, so it is the user's call.
 */
function refuseEmptyStore(dbPath: string): void {
  let size: number;
  try {
    size = statSync(dbPath).size;
  } catch {
    return;
  }
  if (size !== 0) return;
  const jobsDir = join(dirname(dbPath), "jobs");
  const jobFolders = existsSync(jobsDir) ? readdirSync(jobsDir).length : 0;
  if (jobFolders === 0) return;
  throw new KaosError(
    "STATE_CORRUPT",
    `${dbPath} is empty (0 bytes): the record of earlier runs is lost, while ${jobsDir} still holds ${jobFolders} job folder${jobFolders === 1 ? "" : "s"} it described`,
    {
      hint: `kaos does not start afresh on its own. To do so, move the file away (mv ${dbPath} ${dbPath}.empty) and run kaos again: every job then runs again, and the old job folders are no longer listed`,
    },
  );
}

/** Where the writer that closed last records what state.db looked like, so the next one need not check it again. */
function verifiedStampPath(dbPath: string): string {
  return `${dbPath}.verified`;
}

function fileStamp(path: string): string | undefined {
  try {
    const stats = statSync(path, { bigint: true });
    return `${stats.ino}:${stats.size}:${stats.mtimeNs}`;
  } catch {
    return undefined;
  }
}

/**
 * Damage anywhere in the file, not only in its header, stops kaos before it
 * writes: unless the file is exactly as the last kaos writer left it, SQLite's
 * quick_check reads every page once (some 5 ms per MB). A kaos that crashed,
 * or an outside write such as a bad disk or a stray `dd`, triggers it.
 */
function verifyIntegrity(db: DatabaseSync, dbPath: string): void {
  const stamp = fileStamp(dbPath);
  let recorded: string | undefined;
  try {
    recorded = readFileSync(verifiedStampPath(dbPath), "utf8");
  } catch {
    recorded = undefined;
  }
  if (stamp !== undefined && stamp === recorded) return;
  let verdict: unknown;
  try {
    verdict = pragmaValue(db, "quick_check(1)");
  } catch (error) {
    throw isCorruptionError(error) ? corruptStoreError(dbPath, describeError(error), error) : error;
  }
  if (verdict !== "ok") throw corruptStoreError(dbPath, `damaged: ${String(verdict)}`);
}

function recordVerified(dbPath: string): void {
  const stamp = fileStamp(dbPath);
  if (stamp === undefined) return;
  try {
    // Written in place: a torn or mixed write only fails to match, and costs the next writer one check.
    writeFileSync(verifiedStampPath(dbPath), stamp);
  } catch {
    // Only a shortcut: without it the next writer checks the file again.
  }
}

function translateOpenError(error: unknown, dbPath: string): unknown {
  if (error instanceof KaosError) return error;
  const storage = explainStateOpenFailure(error, dbPath);
  if (storage !== undefined) return storage;
  const code = errnoCode(error) ?? "";
  if (isCorruptionError(error)) return corruptStoreError(dbPath, describeError(error), error);
  if (code === "SQLITE_BUSY" || code.startsWith("SQLITE_BUSY")) {
    return new KaosError(
      "STATE_LOCKED",
      `${dbPath} stayed locked by another kaos process for ${BUSY_TIMEOUT_MS / 1000}s; wait for it to finish or stop it`,
      { cause: error },
    );
  }
  if (code.startsWith("SQLITE_CANTOPEN") || code.startsWith("SQLITE_READONLY") || code.startsWith("SQLITE_IOERR")) {
    return new KaosError("IO", `cannot open ${dbPath}: ${describeError(error)}`, {
      hint: "check that the file and its directory exist and are readable and writable",
      cause: error,
    });
  }
  return error;
}

function isUniqueViolation(error: unknown): boolean {
  const code = errnoCode(error);
  return code === "SQLITE_CONSTRAINT_PRIMARYKEY" || code === "SQLITE_CONSTRAINT_UNIQUE";
}

// ------------------------------------------------------------------ rows

function jobConditions(filter: JobFilter): { where: string; values: (string | number)[] } {
  const conditions: string[] = [];
  const values: (string | number)[] = [];
  const add = (column: string, value: string | undefined): void => {
    if (value === undefined) return;
    conditions.push(`${column} = ?`);
    values.push(value);
  };
  add("stack", filter.stack);
  add("pipeline", filter.pipeline);
  add("run_id", filter.runId);
  add("stage", filter.stage);
  add("state", filter.state);
  return { where: conditions.length === 0 ? "" : ` WHERE ${conditions.join(" AND ")}`, values };
}

function jobFromColumns(row: JobColumns): JobRecord {
  return {
    id: row[0],
    runId: row[1],
    stack: row[2],
    pipeline: row[3],
    stage: row[4],
    key: row[5],
    state: row[6],
    params: JSON.parse(row[7]) as Record<string, unknown>,
    envKey: row[8],
    sourceKey: row[9],
    dataKey: row[10],
    paramsKey: row[11],
    sweepIndex: row[12],
    sweepSize: row[13],
    pid: row[14],
    startedAt: row[15],
    finishedAt: row[16],
    exitCode: row[17],
    reason: row[18],
    outputDir: row[19],
    logFile: row[20],
    createdAt: row[21],
    collectedAt: row[22],
  };
}

function runFromRow(row: RunRow): RunRecord {
  return {
    id: row.id,
    stack: row.stack,
    command: row.command,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    state: row.state,
    pid: row.pid,
  };
}

/** A page cursor: the sort time and sequence number of the last row shown, opaque to the reader. */
function encodeCursor(at: string, seq: number): string {
  return Buffer.from(`${at}|${seq}`).toString("base64url");
}

function decodeCursor(cursor: string): { at: string; seq: number } {
  const text = Buffer.from(cursor, "base64url").toString("utf8");
  const bar = text.lastIndexOf("|");
  const seq = Number(text.slice(bar + 1));
  if (bar <= 0 || !Number.isSafeInteger(seq)) {
    throw new KaosError("USAGE", `the page cursor '${cursor}' is not one kaos gave out`, { hint: "start again from the first page" });
  }
  return { at: text.slice(0, bar), seq };
}

export function isTerminalJobState(state: JobState): boolean {
  return TERMINAL_STATES.includes(state);
}

// ------------------------------------------------------------------ helpers

const ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"; // Crockford base32: no i, l, o, u
const ID_LENGTH = 10;

function randomId(): string {
  const bytes = randomBytes(ID_LENGTH);
  let id = "";
  for (const byte of bytes) id += ID_ALPHABET[byte & 31];
  return id;
}

function nowIso(): string {
  return new Date().toISOString();
}
