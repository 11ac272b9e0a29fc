/**
 * The Ingest stage: brings a manifest's entries into the object store and
 * materializes them as a data directory of links.
 *
 * - An entry whose content hash is known (the manifest's `sha256`, else the
 *   lock's pin for the same URL) and already stored is only linked: a rerun
 *   with an unchanged manifest sends no request at all.
 * - Everything else is downloaded by a bounded pool (keep-alive sockets,
 *   `concurrency` transfers at once), streamed into `<objects>/tmp/` while
 *   being hashed, verified, then renamed into the store. Memory does not grow
 *   with file size. Entries with the same URL and expectations share one
 *   transfer; identical content from different URLs is stored once.
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
 *   Content fetched again for a pinned entry (its object was deleted, or a
 *   fresh clone) must match the pin; accepting new content takes `refresh`.
 * - `refresh` asks the server whether each pinned entry changed: a
 *   conditional GET (If-None-Match / If-Modified-Since) when the pin recorded
 *   an ETag or Last-Modified, else a full download that is hashed and
 *   compared; file:// URLs are read again. Entries whose `sha256` is written
 *   in the manifest are fixed by it and not re-checked.
 *
 * Transfers run in worker threads that load only Node's built-ins and the
 * object store. Besides keeping the caller's event loop free, that matters
 * for speed: V8 counts the socket buffers a transfer churns through against
 * the old generation's limit, and in an isolate that has loaded a large
 * module graph (the CLI, zod, ...) that limit is reached every few dozen
 * megabytes, so full garbage collections ate a third of the CPU time. A lean
 * isolate reclaims the same buffers with cheap young-generation collections.
 * This module is therefore also the worker's entry point, and loads
 * manifest.js only when ingest() runs.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import * as path from "node:path";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { KaosError, describeError, errnoCode } from "../../core/errors.js";
import type { ManifestEntry, ManifestLock, ManifestLockEntry } from "../../core/manifest.js";
import { HashingPassThrough, ObjectStore } from "../../core/objects.js";
import {
  FileUrlRefused,
  type FileUrlScope,
  isCredentialParam,
  openWithinScope,
  queryParamName,
  sameSource,
  sourceIdentity,
  widenScopeHint,
} from "../../core/urls.js";

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
  /** Where `file:` URLs may read (see urls.ts): a URL outside it fails its entry, naming its manifest line. */
  fileScope: FileUrlScope;
  /** Re-check remote content (conditional requests with ETag/Last-Modified); changed content is fetched and re-pinned. */
  refresh?: boolean;
  /** Transfers at once (spread over up to four threads, one per four transfers and per core). Default 8. */
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
  /** Something worth telling while transfers run, such as a server asking kaos to wait before it retries. */
  onNotice?: (message: string) => void;
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

/** Credentials in a URL never reach a message: its userinfo and credential query parameters (see urls.ts) show as ***. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    let changed = false;
    if (parsed.username !== "" || parsed.password !== "") {
      parsed.username = "***";
      parsed.password = "";
      changed = true;
    }
    if (parsed.search.length > 1) {
      const segments = parsed.search.slice(1).split("&");
      const masked = segments.map((segment) =>
        isCredentialParam(queryParamName(segment)) ? `${segment.split("=", 1)[0] ?? ""}=***` : segment,
      );
      if (masked.some((segment, index) => segment !== segments[index])) {
        parsed.search = `?${masked.join("&")}`;
        changed = true;
      }
    }
    return changed ? parsed.toString() : url;
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

class ProgressTracker implements TransferProgress {
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

  /** `url` is a source identity (see urls.ts): no credential is written beside the bytes. */
  static async open(tmpDir: string, url: string): Promise<PartialFile> {
    const name = `dl-${createHash("sha256").update(url).digest("hex").slice(0, 40)}`;
    const file = path.join(tmpDir, `${name}.part`);
    const metaFile = path.join(tmpDir, `${name}.json`);
    const flags = fs.constants.O_RDWR | fs.constants.O_CREAT;
    let fd: number;
    try {
      fd = fs.openSync(file, flags, 0o644);
    } catch (error) {
      // Created on demand rather than checked before every transfer.
      if (errnoCode(error) !== "ENOENT") throw error;
      fs.mkdirSync(tmpDir, { recursive: true });
      fd = fs.openSync(file, flags, 0o644);
    }
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

/** One transfer, as sent to the worker thread. */
interface TransferJob {
  id: number;
  url: string;
  /** The manifest line (file:line) of the first entry this transfer serves, for messages. */
  where: string;
  /**
   * The hash the content must have, and where that requirement comes from:
   * the manifest (`where` is its file:line) or the lock (`where` is its path).
   */
  expected: { hash: string; from: "manifest" | "lock"; where: string } | undefined;
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

interface TransferSettings {
  objectsDir: string;
  fileScope: FileUrlScope;
  retries: number;
  timeoutMs: number;
  maxRedirects: number;
  retryBaseMs: number;
  retryMaxWaitMs: number;
  concurrency: number;
}

/** Where a transfer reports its bytes. */
interface TransferProgress {
  setTotal(job: number, total: number | undefined): void;
  /** Current length of a job's content on disk. */
  setDone(job: number, bytes: number): void;
  addReceived(bytes: number): void;
}

interface Context extends TransferSettings {
  objects: ObjectStore;
  agents: { "http:": http.Agent; "https:": https.Agent };
  progress: TransferProgress;
  /** Tells the user something while the transfer goes on. */
  notice(message: string): void;
  signal: AbortSignal | undefined;
}

function mismatchMessage(expected: NonNullable<TransferJob["expected"]>, actual: string): string {
  if (expected.from === "manifest") {
    return `sha256 mismatch: the content hashes to ${actual}, ${expected.where} says ${expected.hash} — fix "sha256" there or the URL`;
  }
  return `the content changed since it was pinned in ${expected.where}: it hashes to ${actual}, the pin is ${expected.hash} — run kaos up --refresh to accept the new content`;
}

async function fetchFile(job: TransferJob, ctx: Context): Promise<FetchOutcome> {
  let source: string;
  try {
    source = fileURLToPath(job.url);
  } catch (error) {
    throw new FatalError(`cannot use this file URL: ${describeError(error)}`);
  }
  let fd: number;
  try {
    fd = openWithinScope(source, ctx.fileScope);
  } catch (error) {
    if (error instanceof FileUrlRefused)
      throw new FatalError(`${job.where}: may not be read: ${error.message}; ${widenScopeHint(ctx.fileScope)}`);
    throw new FatalError(errnoCode(error) === "ENOENT" ? `file not found: ${source}` : `cannot read ${source}: ${describeError(error)}`);
  }
  const tmp = ctx.objects.tmpPath("file");
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw new FatalError(`${source} is not a regular file`);
    if (job.size !== undefined && stat.size !== job.size) {
      throw new FatalError(`size mismatch: ${source} has ${stat.size} bytes, the manifest says ${job.size}`);
    }
    ctx.progress.setTotal(job.id, stat.size);
    // Copied from the descriptor that was checked, never by its name again.
    const hasher = new HashingPassThrough();
    await pipeline(
      fs.createReadStream("", { fd, autoClose: false, highWaterMark: 1 << 20 }),
      hasher,
      fs.createWriteStream(tmp, { flags: "wx", mode: 0o600 }),
    );
    const hash = hasher.digest();
    const size = hasher.size;
    ctx.progress.setDone(job.id, size);
    ctx.progress.addReceived(size);
    if (job.expected !== undefined && hash !== job.expected.hash) throw new FatalError(mismatchMessage(job.expected, hash));
    if (job.size !== undefined && size !== job.size) {
      throw new FatalError(`size mismatch: ${source} has ${size} bytes, the manifest says ${job.size}`);
    }
    // No more readable in the store than the file it came from.
    ctx.objects.adopt(tmp, hash, stat.mode);
    return { hash, size, validators: {}, notModified: false };
  } finally {
    fs.closeSync(fd);
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
async function attemptHttp(job: TransferJob, part: PartialFile, ctx: Context): Promise<"complete" | "notModified"> {
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
      const encoding = headerValue(response.headers["content-encoding"])?.trim().toLowerCase();
      if ((status === 200 || status === 206) && encoding !== undefined && encoding !== "" && encoding !== "identity") {
        // Stored as sent, the bytes would be the compressed body, not the file the URL names.
        response.resume();
        throw new FatalError(
          `the server sent the body with Content-Encoding: ${encoding} although kaos asked for it unencoded (Accept-Encoding: identity) (${job.where}) — serve the file without a Content-Encoding (a .gz file as application/gzip)`,
        );
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
        job.size !== undefined
          ? { bytes: job.size, what: "size the manifest states" }
          : total !== undefined
            ? { bytes: total, what: "length it announced" }
            : undefined;
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

function seconds(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

function backoffMs(failures: number, ctx: Context, retryAfterMs: number | undefined): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, ctx.retryMaxWaitMs);
  const step = Math.min(ctx.retryMaxWaitMs, ctx.retryBaseMs * 2 ** Math.max(0, failures - 1));
  return step / 2 + Math.random() * (step / 2);
}

async function fetchHttp(job: TransferJob, ctx: Context): Promise<FetchOutcome> {
  const part = await PartialFile.open(path.join(ctx.objects.dir, "tmp"), sourceIdentity(job.url));
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
        const retryAfterMs = error instanceof RetryableError ? error.retryAfterMs : undefined;
        if (retryAfterMs !== undefined && retryAfterMs > ctx.retryMaxWaitMs) {
          // Waiting hours in silence looks like a hang; the user can run again later.
          throw new FatalError(
            `${describeError(error)}: the server asks kaos to wait ${seconds(retryAfterMs)} before retrying (Retry-After), longer than the ${seconds(ctx.retryMaxWaitMs)} kaos waits at most (${job.where}) — run kaos up again later`,
          );
        }
        const waitMs = backoffMs(failuresWithoutProgress, ctx, retryAfterMs);
        if (retryAfterMs !== undefined) {
          ctx.notice(
            `${redactUrl(job.url)} (${job.where}): ${describeError(error)}; the server asks kaos to wait ${seconds(retryAfterMs)} (Retry-After), retrying in ${seconds(waitMs)}`,
          );
        }
        await sleep(waitMs, undefined, {
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
        throw new FatalError(mismatchMessage(expected, hash));
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
  /** Folders known to exist in a fresh tree, so each is created once. */
  private readonly folders = new Set<string>();

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
    if (this.inPlace) {
      objects.link(hash, dest);
      return;
    }
    // Nobody sees a fresh tree before commit(), so a plain link will do.
    const folder = path.dirname(dest);
    if (!this.folders.has(folder)) {
      fs.mkdirSync(folder, { recursive: true });
      this.folders.add(folder);
    }
    try {
      fs.linkSync(objects.pathOf(hash), dest);
    } catch {
      // Another device, a link limit, a file already there: the careful way.
      objects.link(hash, dest);
    }
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
class TransferPool {
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
function transferThreadsFor(concurrency: number): number {
  return Math.max(1, Math.min(4, availableParallelism(), Math.ceil(concurrency / 4)));
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

/** Entries that share one transfer: the same URL with the same expectations. */
interface PlannedTransfer {
  job: TransferJob;
  entries: ManifestEntry[];
}

export async function ingest(options: IngestOptions): Promise<IngestResult> {
  const { entries, manifestPath, objects, signal } = options;
  const { lockPathFor, manifestDataKey, pinnedHash, readLock, serializeLock, writeLock } = await import("../../core/manifest.js");
  const refresh = options.refresh === true;
  const concurrency = Math.max(1, Math.floor(options.concurrency ?? 8));
  const oldLock = readLock(manifestPath);
  const lockFile = lockPathFor(manifestPath);
  const newEntries: Record<string, ManifestLockEntry> = {};
  const progress = new ProgressTracker(entries.length, options.onProgress);

  // Decide, entry by entry, between linking what is stored and fetching.
  const reusedEntries: { entry: ManifestEntry; hash: string }[] = [];
  const planned = new Map<string, PlannedTransfer>();
  for (const entry of entries) {
    const locked = oldLock?.entries[entry.path];
    const sameUrlPin = locked !== undefined && sameSource(locked.url, entry.url) ? locked : undefined;
    const known = pinnedHash(entry, oldLock);
    let expected: TransferJob["expected"];
    let conditional: TransferJob["conditional"];
    if (!refresh || entry.sha256 !== undefined) {
      if (known !== undefined && objects.has(known)) {
        reusedEntries.push({ entry, hash: known });
        continue;
      }
      if (known !== undefined) {
        expected =
          entry.sha256 !== undefined
            ? { hash: known, from: "manifest", where: `${entry.file}:${entry.line}` }
            : { hash: known, from: "lock", where: lockFile };
      }
    } else if (
      sameUrlPin !== undefined &&
      known !== undefined &&
      objects.has(known) &&
      (sameUrlPin.etag !== undefined || sameUrlPin.lastModified !== undefined)
    ) {
      conditional = { ...pickValidators(sameUrlPin), pinned: sameUrlPin };
    }
    const key = `${entry.url}\0${expected?.hash ?? ""}\0${entry.size ?? ""}\0${conditional === undefined ? "" : "c"}`;
    const existing = planned.get(key);
    if (existing !== undefined) {
      existing.entries.push(entry);
      continue;
    }
    const id = planned.size;
    planned.set(key, {
      job: { id, url: entry.url, where: `${entry.file}:${entry.line}`, expected, size: entry.size, conditional },
      entries: [entry],
    });
    progress.setTotal(id, entry.size ?? sameUrlPin?.size);
    progress.setDone(id, 0);
  }
  const transfers = [...planned.values()];

  const tree = DataTree.prepare(options.dataDir, new Set(entries.map((entry) => entry.path)));
  const thread =
    transfers.length === 0
      ? undefined
      : new TransferPool(
          {
            objectsDir: objects.dir,
            fileScope: options.fileScope,
            retries: Math.max(0, Math.floor(options.retries ?? 4)),
            timeoutMs: options.timeoutMs ?? 30_000,
            maxRedirects: options.maxRedirects ?? 5,
            retryBaseMs: options.retryBaseMs ?? 500,
            retryMaxWaitMs: options.retryMaxWaitMs ?? 60_000,
            concurrency,
          },
          progress,
          transferThreadsFor(Math.min(concurrency, transfers.length)),
          options.onNotice,
        );
  const onAbort = (): void => thread?.abort();
  signal?.addEventListener("abort", onAbort, { once: true });

  const failures: IngestFailure[] = [];
  let downloaded = 0;
  let reused = 0;
  let committed = false;
  try {
    for (const { entry, hash } of reusedEntries) {
      tree.place(objects, hash, entry.path);
      const locked = oldLock?.entries[entry.path];
      newEntries[entry.path] =
        locked !== undefined && sameSource(locked.url, entry.url) && locked.sha256 === hash
          ? locked
          : lockEntryFor(entry.url, hash, fs.statSync(objects.pathOf(hash)).size, {});
      reused++;
      progress.filesDone++;
    }
    progress.emit(true);

    await runPool(transfers, thread?.capacity ?? 1, async ({ job, entries: sharing }) => {
      if (isAborted(signal) || thread === undefined) return;
      try {
        const outcome = await withPartialLock(sourceIdentity(job.url), () => thread.run(job));
        for (const entry of sharing) {
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
        for (const entry of sharing) {
          failures.push({ path: entry.path, url: redactUrl(entry.url), error: message });
          // A failed refresh leaves the pinned content in place; anything else leaves no file.
          const locked = oldLock?.entries[entry.path];
          if (locked !== undefined && sameSource(locked.url, entry.url) && objects.has(locked.sha256))
            tree.place(objects, locked.sha256, entry.path);
          else tree.remove(entry.path);
        }
      } finally {
        progress.filesDone += sharing.length;
        progress.emit(true);
      }
    });

    // Entries that failed or never ran keep their old pin while the URL is unchanged.
    for (const entry of entries) {
      const locked = oldLock?.entries[entry.path];
      if (newEntries[entry.path] === undefined && locked !== undefined && sameSource(locked.url, entry.url))
        newEntries[entry.path] = locked;
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
    signal?.removeEventListener("abort", onAbort);
    if (!committed) tree.abandon();
    await thread?.close();
  }
}
