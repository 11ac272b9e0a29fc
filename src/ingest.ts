/**
 * The Ingest stage: brings a manifest's entries into the object store and
 * materializes them as a data directory of links.
 *
 * - An entry whose content hash is known (the manifest's `sha256`, else the
 *   lock's pin for the same URL) and already stored is only linked: a rerun
 *   with an unchanged manifest sends no request at all.
 * - Everything else is downloaded by a bounded pool (one keep-alive socket per
 *   worker), streamed into `<objects>/tmp/` while being hashed, verified, then
 *   renamed into the store. Memory does not grow with file size.
 * - Transient failures (connection errors, idle timeouts, 408, 429, 5xx) are
 *   retried with exponential backoff and jitter, honouring Retry-After. A
 *   transfer that dies mid-body keeps its partial file and resumes with
 *   `Range` (+ `If-Range` when the server gave a validator); a server that
 *   answers 200 instead starts over. Partial files with a validator survive the
 *   process, so an interrupted `kaos up` resumes too.
 * - The data directory: when it does not exist it is built beside itself and
 *   renamed into place once every entry is settled; when it exists it is
 *   reconciled in place, file by file (link under a temporary name, then
 *   rename), and files no longer in the manifest are removed. A file is only
 *   ever visible there with complete, verified content. Give each data key its
 *   own directory when jobs must never see it change.
 * - The lock (see manifest.ts) is rewritten, only when its content changes,
 *   with every entry that succeeded (and the old pins of those that failed).
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import * as path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { KaosError, describeError, errnoCode } from "./errors.js";
import {
  type ManifestEntry,
  type ManifestLock,
  type ManifestLockEntry,
  lockPathFor,
  manifestDataKey,
  pinnedHash,
  readLock,
  serializeLock,
  writeLock,
} from "./manifest.js";
import { type ObjectStore, sha256File } from "./objects.js";

export interface IngestProgress {
  filesDone: number;
  filesTotal: number;
  /** Bytes of content settled so far (a restarted transfer counts once). */
  bytesDone: number;
  /** Undefined while some transfer's length is still unknown. */
  bytesTotal: number | undefined;
  rateBytesPerSec: number;
  etaSec: number | undefined;
}

export interface IngestOptions {
  entries: ManifestEntry[];
  manifestPath: string;
  objects: ObjectStore;
  /** Where the data tree is materialized (links to objects); files appear only once verified. */
  dataDir: string;
  /** Re-check remote content (conditional requests with ETag/Last-Modified); changed content is fetched and re-pinned. */
  refresh?: boolean;
  /** Transfers at once. Default 8. */
  concurrency?: number;
  /** Retries per transfer after failures that made no progress. Default 4. */
  retries?: number;
  /** No bytes for this long fails the attempt (retryable). Default 30000. */
  timeoutMs?: number;
  /** Default 5. */
  maxRedirects?: number;
  /** First backoff step; doubles per retry, with jitter. Default 500. */
  retryBaseMs?: number;
  /** Longest wait between attempts, Retry-After included. Default 60000. */
  retryMaxWaitMs?: number;
  onProgress?: (progress: IngestProgress) => void;
  signal?: AbortSignal;
}

export interface IngestFailure {
  path: string;
  url: string;
  error: string;
}

export interface IngestResult {
  dataKey: string;
  /** Entries whose content was transferred (or copied from a file URL). */
  downloaded: number;
  /** Entries served from the object store (including refreshes answered 304). */
  reused: number;
  /** Bytes received, retries included. */
  bytesDownloaded: number;
  failures: IngestFailure[];
}

/** A failure worth another attempt. */
class RetryableError extends Error {
  readonly retryAfterMs: number | undefined;
  constructor(message: string, retryAfterMs?: number) {
    super(message);
    this.retryAfterMs = retryAfterMs;
  }
}

/** A failure that another attempt would repeat. */
class FatalError extends Error {}

const RETRYABLE_CODES = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "ERR_STREAM_PREMATURE_CLOSE",
]);

function isRetryable(error: unknown): error is Error {
  if (error instanceof RetryableError) return true;
  if (error instanceof FatalError || error instanceof KaosError) return false;
  const code = errnoCode(error);
  if (code !== undefined && (RETRYABLE_CODES.has(code) || code.startsWith("HPE_"))) return true;
  return error instanceof Error && error.message === "aborted";
}

/** Credentials in a URL never reach a message. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.username === "" && parsed.password === "") return url;
    parsed.username = "***";
    parsed.password = "";
    return parsed.toString();
  } catch {
    return url;
  }
}

function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (value === undefined) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

// ---------------------------------------------------------------------------
// Progress

class ProgressTracker {
  filesDone = 0;
  received = 0;
  private readonly settled = new Map<number, number>();
  private readonly totals = new Map<number, number | undefined>();
  private readonly samples: { at: number; received: number }[] = [];
  private lastEmit = 0;

  constructor(
    readonly filesTotal: number,
    private readonly onProgress: IngestOptions["onProgress"],
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

export function formatBytes(bytes: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${unit === 0 ? value.toFixed(0) : value.toFixed(1)} ${units[unit]}`;
}

/** One line for a terminal: `412/1000 files  412.0 MB / 1.0 GB  350.2 MB/s  ETA 2s`. */
export function formatIngestProgress(p: IngestProgress): string {
  const bytes = p.bytesTotal === undefined ? formatBytes(p.bytesDone) : `${formatBytes(p.bytesDone)} / ${formatBytes(p.bytesTotal)}`;
  const eta = p.etaSec === undefined ? "" : `  ETA ${p.etaSec < 60 ? `${Math.ceil(p.etaSec)}s` : `${Math.floor(p.etaSec / 60)}m${String(Math.ceil(p.etaSec % 60)).padStart(2, "0")}s`}`;
  return `${p.filesDone}/${p.filesTotal} files  ${bytes}  ${formatBytes(p.rateBytesPerSec)}/s${eta}`;
}

// ---------------------------------------------------------------------------
// Partial files

interface Validators {
  etag?: string;
  lastModified?: string;
}

/** Transfers of the same partial file in this process wait for each other. */
const partialLocks = new Map<string, Promise<void>>();

async function withPartialLock<T>(key: string, work: () => Promise<T>): Promise<T> {
  const previous = partialLocks.get(key) ?? Promise.resolve();
  let release = (): void => {};
  const current = new Promise<void>((resolve) => {
    release = resolve;
  });
  const chained = previous.then(() => current);
  partialLocks.set(key, chained);
  await previous;
  try {
    return await work();
  } finally {
    release();
    if (partialLocks.get(key) === chained) partialLocks.delete(key);
  }
}

/** Partial files of this size or more get their validators saved as they start, so even a killed process can resume them. */
const SAVE_VALIDATORS_FROM = 16 * 1024 * 1024;

/**
 * A download in progress: the bytes on disk, the hash of exactly those bytes,
 * and what the server said identifies them (to resume with If-Range).
 *
 * Writes are synchronous, as in curl: a chunk is written to the page cache and
 * hashed before the next one is read, so offset and hash always describe the
 * disk, and no write queue sits between the socket and the file.
 */
class PartialFile {
  offset = 0;
  validators: Validators = {};
  /** Whether the content on disk was stitched from more than one response. */
  resumed = false;
  private hash = createHash("sha256");
  private closed = false;

  private constructor(
    readonly file: string,
    private readonly metaFile: string,
    private readonly url: string,
    private readonly fd: number,
  ) {}

  static async open(tmpDir: string, url: string): Promise<PartialFile> {
    const name = `dl-${createHash("sha256").update(url).digest("hex").slice(0, 40)}`;
    const file = path.join(tmpDir, `${name}.part`);
    const metaFile = path.join(tmpDir, `${name}.json`);
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
    const part = new PartialFile(file, metaFile, url, fd);
    const size = fs.fstatSync(fd).size;
    if (size === 0) return part;
    // Bytes left by an earlier process are only trusted with a validator the
    // server can check them against.
    let meta: { url?: unknown; etag?: unknown; lastModified?: unknown } | undefined;
    try {
      meta = JSON.parse(fs.readFileSync(metaFile, "utf8")) as typeof meta;
    } catch {
      meta = undefined;
    }
    if (meta?.url === url && (typeof meta.etag === "string" || typeof meta.lastModified === "string")) {
      if (typeof meta.etag === "string") part.validators.etag = meta.etag;
      if (typeof meta.lastModified === "string") part.validators.lastModified = meta.lastModified;
      part.offset = await sha256Prefix(file, size, part.hash);
      part.resumed = true;
    } else {
      fs.ftruncateSync(fd, 0);
    }
    return part;
  }

  append(chunk: Buffer): void {
    let written = 0;
    while (written < chunk.length) {
      written += fs.writeSync(this.fd, chunk, written, chunk.length - written, this.offset + written);
    }
    this.hash.update(chunk);
    const before = this.offset;
    this.offset += chunk.length;
    if (before < SAVE_VALIDATORS_FROM && this.offset >= SAVE_VALIDATORS_FROM) this.saveMeta();
  }

  restart(): void {
    fs.ftruncateSync(this.fd, 0);
    this.offset = 0;
    this.hash = createHash("sha256");
    this.resumed = false;
    this.validators = {};
    fs.rmSync(this.metaFile, { force: true });
  }

  setValidators(validators: Validators): void {
    this.validators = validators;
    if (this.offset >= SAVE_VALIDATORS_FROM) this.saveMeta();
  }

  private saveMeta(): void {
    if (this.validators.etag === undefined && this.validators.lastModified === undefined) return;
    fs.writeFileSync(this.metaFile, JSON.stringify({ url: this.url, ...this.validators }));
  }

  digest(): { hash: string; size: number } {
    return { hash: this.hash.digest("hex"), size: this.offset };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
  }

  /** Keeps the bytes for a later process only when it could validate them. */
  closeAfterFailure(keep: boolean): void {
    this.close();
    if (keep && this.offset > 0 && (this.validators.etag !== undefined || this.validators.lastModified !== undefined)) {
      this.saveMeta();
    } else {
      this.discard();
    }
  }

  discard(): void {
    fs.rmSync(this.file, { force: true });
    fs.rmSync(this.metaFile, { force: true });
  }

  /** The partial file has become an object: its sidecar is obsolete. */
  adopted(): void {
    if (this.offset >= SAVE_VALIDATORS_FROM || this.resumed) fs.rmSync(this.metaFile, { force: true });
  }
}

async function sha256Prefix(file: string, size: number, hash: ReturnType<typeof createHash>): Promise<number> {
  let done = 0;
  for await (const chunk of fs.createReadStream(file, { start: 0, end: size - 1, highWaterMark: 1 << 20 })) {
    const buffer = chunk as Buffer;
    hash.update(buffer);
    done += buffer.length;
  }
  return done;
}

/**
 * Streams a response body into `part`. When the response breaks, the bytes
 * already written stay (a retry resumes after them) and the error is reported.
 */
function receiveBody(
  response: http.IncomingMessage,
  part: PartialFile,
  limit: { bytes: number; what: string } | undefined,
  onBytes: (bytes: number) => void,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (error: Error): void => {
      if (settled) return;
      settled = true;
      response.destroy();
      reject(error);
    };
    response.on("data", (chunk: Buffer) => {
      if (settled) return;
      if (limit !== undefined && part.offset + chunk.length > limit.bytes) {
        fail(new FatalError(`the server sent more than ${limit.bytes} bytes, the ${limit.what}`));
        return;
      }
      try {
        part.append(chunk);
      } catch (error) {
        fail(new FatalError(`cannot write ${part.file}: ${describeError(error)}`));
        return;
      }
      onBytes(chunk.length);
    });
    response.on("end", () => {
      if (settled) return;
      settled = true;
      resolve();
    });
    response.on("error", fail);
    response.on("close", () => fail(Object.assign(new Error("premature close"), { code: "ERR_STREAM_PREMATURE_CLOSE" })));
  });
}

// ---------------------------------------------------------------------------
// Transfers

interface FetchJob {
  id: number;
  url: string;
  entries: ManifestEntry[];
  /** The hash the content must have, and where that requirement comes from. */
  expected: { hash: string; from: "manifest" | "lock" } | undefined;
  /** Size from the manifest, checked against what the server announces. */
  size: number | undefined;
  /** Refreshing a pinned entry: ask whether it changed. */
  conditional: (Validators & { pinned: ManifestLockEntry }) | undefined;
}

interface FetchOutcome {
  hash: string;
  size: number;
  validators: Validators;
  /** True when a conditional request said the pinned content still holds. */
  notModified: boolean;
}

interface Context {
  objects: ObjectStore;
  lockFile: string;
  retries: number;
  timeoutMs: number;
  maxRedirects: number;
  retryBaseMs: number;
  retryMaxWaitMs: number;
  agents: { "http:": http.Agent; "https:": https.Agent };
  progress: ProgressTracker;
  signal: AbortSignal | undefined;
}

function mismatchMessage(job: FetchJob, actual: string, lockFile: string): string {
  const expected = job.expected;
  if (expected === undefined) return "";
  const first = job.entries[0];
  if (expected.from === "manifest") {
    const where = first === undefined ? "the manifest" : `${first.file}:${first.line}`;
    return `sha256 mismatch: the content hashes to ${actual}, ${where} says ${expected.hash} — fix "sha256" there or the URL`;
  }
  return `the content changed since it was pinned in ${lockFile}: it hashes to ${actual}, the pin is ${expected.hash} — run kaos up --refresh to accept the new content`;
}

async function fetchFile(job: FetchJob, ctx: Context): Promise<FetchOutcome> {
  let source: string;
  try {
    source = fileURLToPath(job.url);
  } catch (error) {
    throw new FatalError(`cannot use this file URL: ${describeError(error)}`);
  }
  let stat: fs.Stats;
  try {
    stat = fs.statSync(source);
  } catch (error) {
    throw new FatalError(errnoCode(error) === "ENOENT" ? `file not found: ${source}` : `cannot read ${source}: ${describeError(error)}`);
  }
  if (!stat.isFile()) throw new FatalError(`${source} is not a regular file`);
  if (job.size !== undefined && stat.size !== job.size) {
    throw new FatalError(`size mismatch: ${source} has ${stat.size} bytes, the manifest says ${job.size}`);
  }
  ctx.progress.setTotal(job.id, stat.size);
  const tmp = ctx.objects.tmpPath("file");
  try {
    fs.copyFileSync(source, tmp, fs.constants.COPYFILE_FICLONE);
    const { hash, size } = await sha256File(tmp);
    ctx.progress.setDone(job.id, size);
    ctx.progress.addReceived(size);
    if (job.expected !== undefined && hash !== job.expected.hash) throw new FatalError(mismatchMessage(job, hash, ctx.lockFile));
    if (job.size !== undefined && size !== job.size) {
      throw new FatalError(`size mismatch: ${source} has ${size} bytes, the manifest says ${job.size}`);
    }
    ctx.objects.adopt(tmp, hash);
    return { hash, size, validators: {}, notModified: false };
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/**
 * Sends a GET and resolves with the response head. The idle timeout and the
 * abort hook stay armed until the response is closed (body consumed or
 * destroyed), so a stalled body never holds a pooled socket forever.
 */
function sendRequest(url: URL, headers: Record<string, string>, ctx: Context): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const protocol = url.protocol === "https:" ? "https:" : "http:";
    const send = protocol === "https:" ? https.request : http.request;
    const request = send(url, { headers, agent: ctx.agents[protocol] });
    let response: http.IncomingMessage | undefined;
    let finished = false;
    const fail = (error: Error): void => {
      if (finished) return;
      request.destroy(error);
      response?.destroy(error);
    };
    const onAbort = (): void => fail(abortReason(ctx.signal));
    const finish = (): void => {
      finished = true;
      ctx.signal?.removeEventListener("abort", onAbort);
    };
    request.setTimeout(ctx.timeoutMs, () => fail(new RetryableError(`no data for ${ctx.timeoutMs} ms (timed out)`)));
    ctx.signal?.addEventListener("abort", onAbort, { once: true });
    request.on("response", (incoming) => {
      response = incoming;
      incoming.on("close", finish);
      resolve(incoming);
    });
    request.on("error", (error) => {
      finish();
      reject(error);
    });
    request.end();
  });
}

/** A function, so that TypeScript does not carry a narrowed `aborted` across awaits. */
function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true;
}

function abortReason(signal: AbortSignal | undefined): Error {
  const reason: unknown = signal?.reason;
  return reason instanceof Error ? reason : new Error("ingest aborted");
}

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

/** One attempt: request (following redirects) and stream the body into `part`. */
async function attemptHttp(job: FetchJob, part: PartialFile, ctx: Context): Promise<"complete" | "notModified"> {
  let url = new URL(job.url);
  const headers: Record<string, string> = { "user-agent": "kaos", "accept-encoding": "identity" };
  const ranged = part.offset > 0;
  if (ranged) {
    headers["range"] = `bytes=${part.offset}-`;
    const { etag, lastModified } = part.validators;
    if (etag !== undefined && !etag.startsWith("W/")) headers["if-range"] = etag;
    else if (lastModified !== undefined) headers["if-range"] = lastModified;
  } else if (job.conditional !== undefined) {
    if (job.conditional.etag !== undefined) headers["if-none-match"] = job.conditional.etag;
    if (job.conditional.lastModified !== undefined) headers["if-modified-since"] = job.conditional.lastModified;
  }

  for (let redirects = 0; ; redirects++) {
    const response = await sendRequest(url, headers, ctx);
    {
      const status = response.statusCode ?? 0;
      if (REDIRECT_STATUSES.has(status) && response.headers.location !== undefined) {
        response.resume();
        if (redirects >= ctx.maxRedirects) {
          throw new FatalError(`too many redirects (more than ${ctx.maxRedirects}) starting at ${redactUrl(job.url)}`);
        }
        const next = new URL(response.headers.location, url);
        if (next.protocol !== "http:" && next.protocol !== "https:") {
          throw new FatalError(`redirected to unsupported scheme "${next.protocol.slice(0, -1)}" (${redactUrl(next.toString())})`);
        }
        url = next;
        continue;
      }
      if (status === 304 && !ranged && job.conditional !== undefined) {
        response.resume();
        const etag = headerValue(response.headers.etag);
        const lastModified = headerValue(response.headers["last-modified"]);
        if (etag !== undefined) part.validators.etag = etag;
        if (lastModified !== undefined) part.validators.lastModified = lastModified;
        return "notModified";
      }
      if (status === 416 && ranged) {
        response.resume();
        part.restart();
        throw new RetryableError("the server could not resume the partial transfer (416); starting over");
      }
      if (status === 429 || status === 408 || (status >= 500 && status <= 599)) {
        response.resume();
        const retryAfter = parseRetryAfter(headerValue(response.headers["retry-after"]));
        throw new RetryableError(`HTTP ${status} ${response.statusMessage ?? ""}`.trimEnd(), retryAfter);
      }
      let total: number | undefined;
      const contentLength = headerValue(response.headers["content-length"]);
      const validators: Validators = {};
      const etag = headerValue(response.headers.etag);
      const lastModified = headerValue(response.headers["last-modified"]);
      if (etag !== undefined) validators.etag = etag;
      if (lastModified !== undefined) validators.lastModified = lastModified;
      if (status === 200) {
        if (part.offset > 0) part.restart();
        total = contentLength === undefined ? undefined : Number(contentLength);
        part.setValidators(validators);
      } else if (status === 206 && ranged) {
        const match = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(headerValue(response.headers["content-range"]) ?? "");
        if (match === null || Number(match[1]) !== part.offset) {
          response.resume();
          part.restart();
          throw new RetryableError("the server resumed at another offset than asked; starting over");
        }
        total = match[3] === "*" ? Number(match[2]) + 1 : Number(match[3]);
        part.resumed = true;
        if (validators.etag !== undefined || validators.lastModified !== undefined) part.setValidators(validators);
      } else {
        response.resume();
        throw new FatalError(`HTTP ${status} ${response.statusMessage ?? ""}`.trimEnd());
      }
      if (total !== undefined && job.size !== undefined && total !== job.size) {
        response.resume();
        throw new FatalError(`size mismatch: the server announces ${total} bytes, the manifest says ${job.size}`);
      }
      ctx.progress.setTotal(job.id, total ?? job.size ?? job.conditional?.pinned.size);
      const limit =
        job.size !== undefined ? { bytes: job.size, what: "size the manifest states" } : total !== undefined ? { bytes: total, what: "length it announced" } : undefined;
      const onBytes = (bytes: number): void => {
        ctx.progress.setDone(job.id, part.offset);
        ctx.progress.addReceived(bytes);
      };
      try {
        await receiveBody(response, part, limit, onBytes);
      } catch (error) {
        if (error instanceof RetryableError || !isRetryable(error)) throw error;
        const of = total === undefined ? "" : ` of ${total}`;
        throw new RetryableError(`the connection closed after ${part.offset}${of} bytes (${describeError(error)})`);
      }
      if (total !== undefined && part.offset !== total) {
        throw new RetryableError(`the connection closed after ${part.offset} of ${total} bytes`);
      }
      return "complete";
    }
  }
}

function backoffMs(failures: number, ctx: Context, retryAfterMs: number | undefined): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, ctx.retryMaxWaitMs);
  const step = Math.min(ctx.retryMaxWaitMs, ctx.retryBaseMs * 2 ** Math.max(0, failures - 1));
  return step / 2 + Math.random() * (step / 2);
}

async function fetchHttp(job: FetchJob, ctx: Context): Promise<FetchOutcome> {
  const part = await PartialFile.open(ctx.objects.tmpDir(), job.url);
  let keepPartial = true;
  try {
    let failuresWithoutProgress = 0;
    let furthest = part.offset;
    let restartedAfterMismatch = false;
    for (;;) {
      if (isAborted(ctx.signal)) throw abortReason(ctx.signal);
      let outcome: "complete" | "notModified";
      try {
        outcome = await attemptHttp(job, part, ctx);
      } catch (error) {
        if (isAborted(ctx.signal)) throw abortReason(ctx.signal);
        if (!isRetryable(error)) {
          keepPartial = false;
          throw error;
        }
        if (part.offset > furthest) {
          furthest = part.offset;
          failuresWithoutProgress = 0;
        }
        failuresWithoutProgress++;
        if (failuresWithoutProgress > ctx.retries) {
          throw new FatalError(`${describeError(error)} (gave up after ${ctx.retries} retries)`);
        }
        await sleep(backoffMs(failuresWithoutProgress, ctx, error instanceof RetryableError ? error.retryAfterMs : undefined), undefined, {
          signal: ctx.signal,
        }).catch(() => {
          throw abortReason(ctx.signal);
        });
        continue;
      }
      if (outcome === "notModified") {
        const pinned = job.conditional?.pinned;
        if (pinned === undefined) throw new FatalError("the server answered 304 to an unconditional request");
        part.close();
        part.discard();
        keepPartial = true;
        return { hash: pinned.sha256, size: pinned.size, validators: { ...pickValidators(pinned), ...part.validators }, notModified: true };
      }
      const resumed = part.resumed;
      const { hash, size } = part.digest();
      const expected = job.expected;
      if (expected !== undefined && hash !== expected.hash) {
        if (resumed && !restartedAfterMismatch) {
          // Pieces of two versions may have been stitched together: one clean try.
          restartedAfterMismatch = true;
          part.restart();
          continue;
        }
        keepPartial = false;
        throw new FatalError(mismatchMessage(job, hash, ctx.lockFile));
      }
      if (job.size !== undefined && size !== job.size) {
        keepPartial = false;
        throw new FatalError(`size mismatch: received ${size} bytes, the manifest says ${job.size}`);
      }
      part.close();
      ctx.objects.adopt(part.file, hash);
      part.adopted();
      return { hash, size, validators: { ...part.validators }, notModified: false };
    }
  } catch (error) {
    part.closeAfterFailure(keepPartial);
    throw error;
  }
}

function pickValidators(entry: ManifestLockEntry): Validators {
  const validators: Validators = {};
  if (entry.etag !== undefined) validators.etag = entry.etag;
  if (entry.lastModified !== undefined) validators.lastModified = entry.lastModified;
  return validators;
}

// ---------------------------------------------------------------------------
// The data directory

class DataTree {
  private constructor(
    readonly finalDir: string,
    readonly workDir: string,
    readonly inPlace: boolean,
  ) {}

  static prepare(dataDir: string, wanted: Set<string>): DataTree {
    const finalDir = path.resolve(dataDir);
    let exists = false;
    try {
      exists = fs.statSync(finalDir).isDirectory();
    } catch {
      exists = false;
    }
    if (exists) {
      removeUnwanted(finalDir, "", wanted);
      return new DataTree(finalDir, finalDir, true);
    }
    fs.mkdirSync(path.dirname(finalDir), { recursive: true });
    const workDir = `${finalDir}.tmp-${process.pid}-${Date.now().toString(36)}`;
    fs.mkdirSync(workDir);
    return new DataTree(finalDir, workDir, false);
  }

  place(objects: ObjectStore, hash: string, relative: string): void {
    const dest = path.join(this.workDir, relative);
    if (this.inPlace) {
      try {
        const current = fs.lstatSync(dest);
        const object = fs.statSync(objects.pathOf(hash));
        if (current.isFile() && current.ino === object.ino && current.dev === object.dev) return;
      } catch {
        // Missing or unreadable: link it below.
      }
    }
    objects.link(hash, dest);
  }

  remove(relative: string): void {
    fs.rmSync(path.join(this.workDir, relative), { force: true, recursive: true });
  }

  commit(): void {
    if (this.inPlace) return;
    try {
      fs.renameSync(this.workDir, this.finalDir);
    } catch (error) {
      const code = errnoCode(error);
      if (code !== "ENOTEMPTY" && code !== "EEXIST" && code !== "ENOTDIR") throw error;
      // Someone created it meanwhile: ours is complete, so it wins.
      fs.rmSync(this.finalDir, { recursive: true, force: true });
      fs.renameSync(this.workDir, this.finalDir);
    }
  }

  abandon(): void {
    if (!this.inPlace) fs.rmSync(this.workDir, { recursive: true, force: true });
  }
}

/** Removes every file that is not wanted and every folder left empty. Returns whether `dir` is now empty. */
function removeUnwanted(root: string, relative: string, wanted: Set<string>): boolean {
  const dir = relative === "" ? root : path.join(root, relative);
  let remaining = 0;
  for (const dirent of fs.readdirSync(dir, { withFileTypes: true })) {
    const child = relative === "" ? dirent.name : `${relative}/${dirent.name}`;
    if (dirent.isDirectory()) {
      if (removeUnwanted(root, child, wanted)) fs.rmdirSync(path.join(root, child));
      else remaining++;
    } else if (wanted.has(child)) {
      remaining++;
    } else {
      fs.rmSync(path.join(root, child), { force: true });
    }
  }
  return remaining === 0;
}

// ---------------------------------------------------------------------------
// Ingest

async function runPool<T>(items: T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++];
      if (item !== undefined) await work(item);
    }
  });
  await Promise.all(workers);
}

function lockEntryFor(url: string, hash: string, size: number, validators: Validators): ManifestLockEntry {
  const entry: ManifestLockEntry = { url, sha256: hash, size };
  if (validators.etag !== undefined) entry.etag = validators.etag;
  if (validators.lastModified !== undefined) entry.lastModified = validators.lastModified;
  return entry;
}

export async function ingest(options: IngestOptions): Promise<IngestResult> {
  const { entries, manifestPath, objects, signal } = options;
  const refresh = options.refresh === true;
  const concurrency = Math.max(1, Math.floor(options.concurrency ?? 8));
  const oldLock = readLock(manifestPath);
  const lockFile = lockPathFor(manifestPath);
  const newEntries: Record<string, ManifestLockEntry> = {};
  const progress = new ProgressTracker(entries.length, options.onProgress);

  // Decide, entry by entry, between linking what is stored and fetching.
  const reusedEntries: { entry: ManifestEntry; hash: string }[] = [];
  const jobsByKey = new Map<string, FetchJob>();
  for (const entry of entries) {
    const locked = oldLock?.entries[entry.path];
    const sameUrlPin = locked !== undefined && locked.url === entry.url ? locked : undefined;
    const known = pinnedHash(entry, oldLock);
    let expected: FetchJob["expected"];
    let conditional: FetchJob["conditional"];
    if (!refresh || entry.sha256 !== undefined) {
      if (known !== undefined && objects.has(known)) {
        reusedEntries.push({ entry, hash: known });
        continue;
      }
      if (known !== undefined) expected = { hash: known, from: entry.sha256 !== undefined ? "manifest" : "lock" };
    } else if (sameUrlPin !== undefined && known !== undefined && objects.has(known) && (sameUrlPin.etag !== undefined || sameUrlPin.lastModified !== undefined)) {
      conditional = { ...pickValidators(sameUrlPin), pinned: sameUrlPin };
    }
    const key = `${entry.url}\0${expected?.hash ?? ""}\0${entry.size ?? ""}\0${conditional === undefined ? "" : "c"}`;
    const job = jobsByKey.get(key);
    if (job !== undefined) {
      job.entries.push(entry);
      continue;
    }
    const id = jobsByKey.size;
    jobsByKey.set(key, { id, url: entry.url, entries: [entry], expected, size: entry.size, conditional });
    progress.setTotal(id, entry.size ?? sameUrlPin?.size);
    progress.setDone(id, 0);
  }
  const jobs = [...jobsByKey.values()];

  const tree = DataTree.prepare(options.dataDir, new Set(entries.map((entry) => entry.path)));
  const agents = {
    "http:": new http.Agent({ keepAlive: true, maxSockets: concurrency }),
    "https:": new https.Agent({ keepAlive: true, maxSockets: concurrency }),
  };
  const ctx: Context = {
    objects,
    lockFile,
    retries: Math.max(0, Math.floor(options.retries ?? 4)),
    timeoutMs: options.timeoutMs ?? 30_000,
    maxRedirects: options.maxRedirects ?? 5,
    retryBaseMs: options.retryBaseMs ?? 500,
    retryMaxWaitMs: options.retryMaxWaitMs ?? 60_000,
    agents,
    progress,
    signal,
  };

  const failures: IngestFailure[] = [];
  let downloaded = 0;
  let reused = 0;
  let committed = false;
  try {
    for (const { entry, hash } of reusedEntries) {
      tree.place(objects, hash, entry.path);
      const locked = oldLock?.entries[entry.path];
      newEntries[entry.path] =
        locked !== undefined && locked.url === entry.url && locked.sha256 === hash
          ? locked
          : lockEntryFor(entry.url, hash, fs.statSync(objects.pathOf(hash)).size, {});
      reused++;
      progress.filesDone++;
    }
    progress.emit(true);

    await runPool(jobs, concurrency, async (job) => {
      if (isAborted(signal)) return;
      try {
        const outcome = await withPartialLock(job.url, () => (job.url.startsWith("file:") ? fetchFile(job, ctx) : fetchHttp(job, ctx)));
        for (const entry of job.entries) {
          tree.place(objects, outcome.hash, entry.path);
          newEntries[entry.path] = lockEntryFor(entry.url, outcome.hash, outcome.size, outcome.validators);
          if (outcome.notModified) reused++;
          else downloaded++;
        }
        progress.setDone(job.id, outcome.notModified ? 0 : outcome.size);
        if (outcome.notModified) progress.setTotal(job.id, 0);
      } catch (error) {
        if (isAborted(signal)) return;
        const message = describeError(error);
        for (const entry of job.entries) {
          failures.push({ path: entry.path, url: redactUrl(entry.url), error: message });
          // A failed refresh leaves the pinned content in place; anything else leaves no file.
          const locked = oldLock?.entries[entry.path];
          if (locked !== undefined && locked.url === entry.url && objects.has(locked.sha256)) tree.place(objects, locked.sha256, entry.path);
          else tree.remove(entry.path);
        }
      } finally {
        progress.filesDone += job.entries.length;
        progress.emit(true);
      }
    });

    // Entries that failed or never ran keep their old pin while the URL is unchanged.
    for (const entry of entries) {
      const locked = oldLock?.entries[entry.path];
      if (newEntries[entry.path] === undefined && locked !== undefined && locked.url === entry.url) newEntries[entry.path] = locked;
    }
    const lock: ManifestLock = { version: 1, entries: newEntries };
    let previous: string | undefined;
    try {
      previous = fs.readFileSync(lockFile, "utf8");
    } catch {
      previous = undefined;
    }
    if (previous !== serializeLock(lock)) writeLock(manifestPath, lock);

    if (isAborted(signal)) throw abortReason(signal);
    tree.commit();
    committed = true;

    if (failures.length > 0) {
      failures.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
      const lines = failures.map((failure) => `  ${failure.path} (${failure.url}): ${failure.error}`);
      throw new KaosError(
        "INGEST_FAILED",
        `${failures.length} of ${entries.length} manifest entries of ${manifestPath} failed:\n${lines.join("\n")}`,
        { hint: "The other entries are stored and pinned; fix or retry these and run again — only they are fetched." },
      );
    }
    const dataKey = manifestDataKey(entries, lock);
    if (dataKey === undefined) throw new KaosError("INGEST_FAILED", `${manifestPath}: some entries have no content hash after ingest`);
    return { dataKey, downloaded, reused, bytesDownloaded: progress.received, failures };
  } finally {
    if (!committed) tree.abandon();
    agents["http:"].destroy();
    agents["https:"].destroy();
  }
}
