/**
 * The transfer threads of an ingest: downloads run off the main thread, a few
 * at a time per thread, with their progress reported back. The compiled module
 * is its own worker entry.
 */
import * as http from "node:http";
import * as https from "node:https";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { describeError } from "../../core/errors.js";
import { ObjectStore } from "../../core/objects.js";
import {
  FatalError,
  fetchFile,
  fetchHttp,
  type Context,
  type FetchOutcome,
  type TransferJob,
  type TransferProgress,
  type TransferSettings,
} from "./fetch.js";
import type { IngestProgress } from "../../core/events.js";

// ---------------------------------------------------------------------------
// Progress

export class ProgressTracker implements TransferProgress {
  filesDone = 0;
  received = 0;
  private readonly settled = new Map<number, number>();
  private readonly totals = new Map<number, number | undefined>();
  private readonly samples: { at: number; received: number }[] = [];
  private lastEmit = 0;

  constructor(
    readonly filesTotal: number,
    private readonly onProgress: ((progress: IngestProgress) => void) | undefined,
  ) {}

  setTotal(job: number, total: number | undefined): void {
    this.totals.set(job, total);
  }

  /** Current length of a job's content on disk. */
  setDone(job: number, bytes: number): void {
    this.settled.set(job, bytes);
  }

  addReceived(bytes: number): void {
    this.received += bytes;
    this.emit(false);
  }

  emit(force: boolean): void {
    if (this.onProgress === undefined) return;
    const now = Date.now();
    if (!force && now - this.lastEmit < 100) return;
    this.lastEmit = now;
    this.samples.push({ at: now, received: this.received });
    while (this.samples.length > 2 && now - (this.samples[0]?.at ?? now) > 5000) this.samples.shift();
    const first = this.samples[0];
    const seconds = first === undefined ? 0 : (now - first.at) / 1000;
    const rate = seconds > 0 && first !== undefined ? (this.received - first.received) / seconds : 0;
    let bytesDone = 0;
    for (const bytes of this.settled.values()) bytesDone += bytes;
    let bytesTotal: number | undefined = 0;
    for (const total of this.totals.values()) {
      if (total === undefined) {
        bytesTotal = undefined;
        break;
      }
      bytesTotal += total;
    }
    const etaSec = bytesTotal !== undefined && rate > 0 ? Math.max(0, (bytesTotal - bytesDone) / rate) : undefined;
    this.onProgress({ filesDone: this.filesDone, filesTotal: this.filesTotal, bytesDone, bytesTotal, rateBytesPerSec: rate, etaSec });
  }
}

// ---------------------------------------------------------------------------
// The transfer thread

const WORKER_MARK = "kaos-ingest-transfers";

type ToWorker = { type: "fetch"; job: TransferJob } | { type: "abort" };

/** What a thread's transfers did since its last report: its bytes so far, and the jobs whose done or total changed. */
interface ProgressReport {
  received: number;
  jobs: [id: number, done: number, total: number | null][];
}

/** An answer carries the progress before it, so one message per finished transfer does. */
type FromWorker =
  | { type: "progress"; report: ProgressReport }
  | { type: "notice"; message: string }
  | { type: "done"; id: number; outcome: FetchOutcome; report: ProgressReport | undefined }
  | { type: "failed"; id: number; error: string; report: ProgressReport | undefined };

function fetchEntry(job: TransferJob, ctx: Context): Promise<FetchOutcome> {
  return job.url.startsWith("file:") ? fetchFile(job, ctx) : fetchHttp(job, ctx);
}

/**
 * The worker side: runs the transfers it is sent, at most `activeLimit` at
 * once, queueing the rest, and reports back. The caller sends a few more than
 * that, so a finished transfer is followed at once by the next, without
 * waiting for the calling thread (busy or descheduled) to answer.
 */
function serveTransfers(settings: TransferSettings, activeLimit: number): void {
  const port = parentPort;
  if (port === null) return;
  const abort = new AbortController();
  let received = 0;
  const jobs = new Map<number, [done: number, total: number | null]>();
  let dirty = false;
  const takeReport = (): ProgressReport | undefined => {
    if (!dirty) return undefined;
    dirty = false;
    const report: ProgressReport = { received, jobs: [...jobs].map(([id, [done, total]]) => [id, done, total]) };
    jobs.clear();
    return report;
  };
  const flush = (): void => {
    const report = takeReport();
    if (report !== undefined) port.postMessage({ type: "progress", report } satisfies FromWorker);
  };
  const timer = setInterval(flush, 100);
  timer.unref();
  const progress: TransferProgress = {
    setTotal(id, total) {
      jobs.set(id, [jobs.get(id)?.[0] ?? 0, total ?? null]);
      dirty = true;
    },
    setDone(id, bytes) {
      const entry = jobs.get(id);
      if (entry === undefined) jobs.set(id, [bytes, null]);
      else entry[0] = bytes;
      dirty = true;
    },
    addReceived(bytes) {
      received += bytes;
      dirty = true;
    },
  };
  const ctx: Context = {
    ...settings,
    objects: new ObjectStore(settings.objectsDir),
    agents: {
      "http:": new http.Agent({ keepAlive: true, maxSockets: settings.concurrency }),
      "https:": new https.Agent({ keepAlive: true, maxSockets: settings.concurrency }),
    },
    progress,
    notice: (message) => port.postMessage({ type: "notice", message } satisfies FromWorker),
    signal: abort.signal,
  };
  const queue: TransferJob[] = [];
  let active = 0;
  const startQueued = (): void => {
    for (let job = queue.shift(); job !== undefined; job = active < activeLimit ? queue.shift() : undefined) {
      const id = job.id;
      if (abort.signal.aborted) {
        port.postMessage({ type: "failed", id, error: "ingest aborted", report: takeReport() } satisfies FromWorker);
        continue;
      }
      active++;
      fetchEntry(job, ctx)
        .then(
          (outcome) => port.postMessage({ type: "done", id, outcome, report: takeReport() } satisfies FromWorker),
          (error: unknown) =>
            port.postMessage({ type: "failed", id, error: describeError(error), report: takeReport() } satisfies FromWorker),
        )
        .finally(() => {
          active--;
          startQueued();
        });
    }
  };
  port.on("message", (message: ToWorker) => {
    if (message.type === "abort") {
      abort.abort(new Error("ingest aborted"));
      return;
    }
    queue.push(message.job);
    if (active < activeLimit) startQueued();
  });
}

if (!isMainThread && (workerData as { mark?: unknown } | null)?.mark === WORKER_MARK) {
  const data = workerData as { settings: TransferSettings; activeLimit: number };
  serveTransfers(data.settings, data.activeLimit);
}

/**
 * The compiled module is its own worker entry. When the sources run directly
 * (tests run src/*.ts), the worker's TypeScript goes through jiti.
 */
function spawnTransferWorker(settings: TransferSettings, activeLimit: number): Worker {
  const data = { mark: WORKER_MARK, settings, activeLimit };
  const self = new URL(import.meta.url);
  if (!self.pathname.endsWith(".ts")) return new Worker(self, { workerData: data });
  const source = fileURLToPath(self);
  const jiti = pathToFileURL(createRequire(import.meta.url).resolve("jiti")).href;
  const bootstrap = `import(${JSON.stringify(jiti)}).then((jiti) => jiti.createJiti(${JSON.stringify(source)}).import(${JSON.stringify(source)}));`;
  return new Worker(bootstrap, { eval: true, workerData: data });
}

/** The caller's side of the transfer thread. */
class TransferThread {
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (outcome: FetchOutcome) => void; reject: (error: Error) => void }>();
  private broken: Error | undefined;
  private received = 0;

  /** `activeLimit` transfers run at once; `capacity` (a few more) may be sent, the rest wait in the thread. */
  constructor(
    settings: TransferSettings,
    progress: ProgressTracker,
    activeLimit: number,
    readonly capacity: number,
    onNotice: ((message: string) => void) | undefined,
  ) {
    this.worker = spawnTransferWorker(settings, activeLimit);
    this.worker.on("message", (message: FromWorker) => {
      if (message.type === "notice") {
        onNotice?.(message.message);
        return;
      }
      const { report } = message;
      if (report !== undefined) {
        for (const [id, done, total] of report.jobs) {
          progress.setDone(id, done);
          if (total !== null) progress.setTotal(id, total);
        }
        // Each thread counts its own bytes.
        progress.addReceived(report.received - this.received);
        this.received = report.received;
      }
      if (message.type === "progress") return;
      const waiter = this.pending.get(message.id);
      this.pending.delete(message.id);
      if (message.type === "done") waiter?.resolve(message.outcome);
      else waiter?.reject(new FatalError(message.error));
    });
    const fail = (error: Error): void => {
      this.broken ??= error;
      for (const waiter of this.pending.values()) waiter.reject(error);
      this.pending.clear();
    };
    this.worker.on("error", (error) => fail(new FatalError(`the transfer thread failed: ${describeError(error)}`)));
    this.worker.on("exit", (code) => fail(new FatalError(`the transfer thread exited (code ${code})`)));
  }

  /** Transfers sent and not yet answered; a broken thread takes no more. */
  get load(): number {
    return this.broken === undefined ? this.pending.size : Number.POSITIVE_INFINITY;
  }

  run(job: TransferJob): Promise<FetchOutcome> {
    if (this.broken !== undefined) return Promise.reject(this.broken);
    return new Promise((resolve, reject) => {
      this.pending.set(job.id, { resolve, reject });
      this.worker.postMessage({ type: "fetch", job } satisfies ToWorker);
    });
  }

  abort(): void {
    this.worker.postMessage({ type: "abort" } satisfies ToWorker);
  }

  async close(): Promise<void> {
    this.broken ??= new FatalError("the transfer thread is closed");
    await this.worker.terminate();
  }
}

/** Transfers each thread holds queued beyond those it runs. */
const QUEUED_PER_THREAD = 2;

/**
 * Transfers spread over a few threads, each taking the next job when it has
 * the most room: hashing and writing a fast stream keeps one thread busy, so
 * parallel transfers want more than one core. The threads' limits add up to
 * `concurrency`; the pool may be sent `capacity` jobs at once.
 */
export class TransferPool {
  private readonly threads: TransferThread[] = [];
  readonly capacity: number;

  constructor(
    private readonly settings: TransferSettings,
    private readonly progress: ProgressTracker,
    private readonly size: number,
    private readonly onNotice: ((message: string) => void) | undefined,
  ) {
    this.capacity = settings.concurrency + QUEUED_PER_THREAD * size;
  }

  run(job: TransferJob): Promise<FetchOutcome> {
    const room = (thread: TransferThread): number => thread.capacity - thread.load;
    let thread = this.threads.reduce<TransferThread | undefined>(
      (best, candidate) => (best === undefined || room(candidate) > room(best) ? candidate : best),
      undefined,
    );
    // Threads start on demand, so a handful of transfers costs one thread.
    if (this.threads.length < this.size && (thread === undefined || this.threads.every((candidate) => candidate.load > 0))) {
      const index = this.threads.length;
      const { concurrency } = this.settings;
      const activeLimit = Math.floor(concurrency / this.size) + (index < concurrency % this.size ? 1 : 0);
      thread = new TransferThread(this.settings, this.progress, activeLimit, activeLimit + QUEUED_PER_THREAD, this.onNotice);
      this.threads.push(thread);
    }
    if (thread === undefined) throw new Error("unreachable: a transfer pool without threads");
    return thread.run(job);
  }

  abort(): void {
    for (const thread of this.threads) thread.abort();
  }

  async close(): Promise<void> {
    await Promise.all(this.threads.map((thread) => thread.close()));
  }
}

/**
 * One thread per four transfers at once, at most one per core and at most
 * four. The calling thread only coordinates while transfers run, so on a
 * two-core machine both cores take transfers: one thread would be the
 * bottleneck (it receives, hashes and writes every byte).
 */
export function transferThreadsFor(concurrency: number): number {
  return Math.max(1, Math.min(4, availableParallelism(), Math.ceil(concurrency / 4)));
}
