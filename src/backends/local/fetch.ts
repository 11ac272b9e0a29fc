/**
 * One manifest entry fetched into the object store: over HTTP(S) with retries,
 * redirects and resumable partial downloads, or from a file: URL inside the
 * allowed scope. Runs on the transfer threads (transfers.ts).
 */
import { createHash, randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import * as path from "node:path";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { isNoSpace, noSpaceError } from "../../core/disk.js";
import { KaosError, describeError, errnoCode } from "../../core/errors.js";
import type { ManifestLockEntry } from "../../core/manifest.js";
import { HashingPassThrough, type ObjectStore } from "../../core/objects.js";
import { judgeProcess, originTag, originToken, ownerStamp, processStartToken, type RecordedProcess } from "../../core/process-identity.js";
import type { AbandonedTemporaries } from "../../core/snapshot.js";
import { FileUrlRefused, type FileUrlScope, openWithinScope, redactUrl, sourceIdentity, widenScopeHint } from "../../core/urls.js";

class RetryableError extends Error {
  readonly retryAfterMs: number | undefined;
  constructor(message: string, retryAfterMs?: number) {
    super(message);
    this.retryAfterMs = retryAfterMs;
  }
}

/** A failure that another attempt would repeat. */
export class FatalError extends Error {}

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
// Partial files

export interface Validators {
  etag?: string;
  lastModified?: string;
}

/**
 * Whether a later request can ask the server to resume only if the content is
 * still the one these bytes came from (If-Range): a weak ETag cannot be used
 * there (RFC 9110), so bytes vouched for by one alone may be another version's.
 */
function canValidateResume(validators: Validators): boolean {
  return (validators.etag !== undefined && !validators.etag.startsWith("W/")) || validators.lastModified !== undefined;
}

/** Transfers of the same partial file in this process wait for each other. */
const partialLocks = new Map<string, Promise<void>>();

export async function withPartialLock<T>(key: string, work: () => Promise<T>): Promise<T> {
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
    /** Where a later process finds the validators; undefined for a private file, which no later process resumes. */
    private readonly metaFile: string | undefined,
    /** The claim on the shared partial file of the URL, undefined for a private file. */
    private readonly ownerFile: string | undefined,
    private readonly url: string,
    private readonly fd: number,
  ) {}

  /** `url` is a source identity (see urls.ts): no credential is written beside the bytes. */
  static async open(tmpDir: string, url: string): Promise<PartialFile> {
    const name = `dl-${createHash("sha256").update(url).digest("hex").slice(0, 40)}`;
    const ownerFile = path.join(tmpDir, `${name}.owner`);
    if (!claimPartial(tmpDir, ownerFile)) {
      // Another kaos (another stack's up) is downloading the same URL into this
      // store: sharing its partial file would mix the two transfers' bytes.
      const file = path.join(tmpDir, `${name}-${ownerStamp()}-${randomUUID()}.part`);
      return new PartialFile(file, undefined, undefined, url, fs.openSync(file, "wx", 0o644));
    }
    const file = path.join(tmpDir, `${name}.part`);
    const metaFile = path.join(tmpDir, `${name}.json`);
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
    const part = new PartialFile(file, metaFile, ownerFile, url, fd);
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
    if (typeof meta?.etag === "string") part.validators.etag = meta.etag;
    if (typeof meta?.lastModified === "string") part.validators.lastModified = meta.lastModified;
    if (meta?.url === url && canValidateResume(part.validators)) {
      part.offset = await sha256Prefix(file, size, part.hash);
      part.resumed = true;
    } else {
      part.validators = {};
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
    if (this.metaFile !== undefined) fs.rmSync(this.metaFile, { force: true });
  }

  setValidators(validators: Validators): void {
    this.validators = validators;
    if (this.offset >= SAVE_VALIDATORS_FROM) this.saveMeta();
  }

  private saveMeta(): void {
    if (this.metaFile === undefined || !canValidateResume(this.validators)) return;
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
    if (keep && this.offset > 0 && this.metaFile !== undefined && canValidateResume(this.validators)) {
      this.saveMeta();
      this.release();
    } else {
      this.discard();
    }
  }

  discard(): void {
    fs.rmSync(this.file, { force: true });
    if (this.metaFile !== undefined) fs.rmSync(this.metaFile, { force: true });
    this.release();
  }

  /** The partial file has become an object: its sidecar is obsolete. */
  adopted(): void {
    if (this.metaFile !== undefined && (this.offset >= SAVE_VALIDATORS_FROM || this.resumed)) fs.rmSync(this.metaFile, { force: true });
    this.release();
  }

  /** Lets another transfer of the URL take the shared partial file: only once it is renamed away, removed or complete on disk. */
  private release(): void {
    if (this.ownerFile !== undefined) fs.rmSync(this.ownerFile, { force: true });
  }
}

/** What `claimPartial` writes: the same for every transfer of this process. */
let ownClaim: string | undefined;

/**
 * Claims the shared partial file of a URL for this process, in `ownerFile`
 * beside it (pid and start token). False while another live process holds
 * it; a claim left by a process that ended, or by this one (a transfer thread
 * stopped mid-transfer), is taken over. Transfers of one URL in this process
 * are already one at a time (`withPartialLock`).
 */
function claimPartial(tmpDir: string, ownerFile: string): boolean {
  ownClaim ??= JSON.stringify({ pid: process.pid, startToken: processStartToken(process.pid), origin: originToken() });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      fs.writeFileSync(ownerFile, ownClaim, { flag: "wx" });
      return true;
    } catch (error) {
      // Created on demand rather than checked before every transfer.
      if (errnoCode(error) === "ENOENT") {
        fs.mkdirSync(tmpDir, { recursive: true });
        continue;
      }
      if (errnoCode(error) !== "EEXIST") throw error;
    }
    let owner: RecordedProcess | null;
    try {
      owner = readClaim(ownerFile);
    } catch (error) {
      // Released since: claim it again. Otherwise its owner is writing it this instant.
      if (errnoCode(error) === "ENOENT") continue;
      return false;
    }
    if (!isStaleClaim(owner)) return false;
    fs.rmSync(ownerFile, { force: true });
  }
  return false;
}

/**
 * The process a claim file names, or null when it names none; throws as
 * reading or parsing the file does (ENOENT once the claim is released).
 */
function readClaim(ownerFile: string): RecordedProcess | null {
  const owner = JSON.parse(fs.readFileSync(ownerFile, "utf8")) as { pid?: unknown; startToken?: unknown; origin?: unknown } | null;
  if (typeof owner?.pid !== "number") return null;
  return {
    pid: owner.pid,
    startToken: typeof owner.startToken === "string" ? owner.startToken : null,
    origin: typeof owner.origin === "string" ? owner.origin : null,
  };
}

/**
 * Whether a claim's owner is gone or is this process. A claim made on another
 * machine sharing the store is never taken over from here: `kaos unlock` and
 * `kaos gc` remove it once that machine's kaos is known to have stopped.
 */
function isStaleClaim(owner: RecordedProcess | null): boolean {
  if (owner === null) return true;
  // Claims written before they carried an origin were made on one machine: the pid alone was theirs.
  if (owner.pid === process.pid && (owner.origin === null || owner.origin === originToken())) return true;
  return judgeProcess(owner) === "dead";
}

/**
 * Removes the claims on shared partial downloads (among `entries`, the names
 * in the object store's temporary folder `tmpDir`) whose owner ran on another
 * machine and has stopped by `isStale`'s word. A claim of a kaos on this machine needs no
 * removing: the next transfer of its URL takes it over once its owner is gone.
 */
export function removeStaleClaims(
  tmpDir: string,
  entries: readonly string[],
  isStale?: (tag: string) => boolean,
  dryRun = false,
): AbandonedTemporaries {
  const result: AbandonedTemporaries = { removed: [], removedElsewhere: [], keptElsewhere: [] };
  for (const entry of entries) {
    if (!entry.endsWith(".owner")) continue;
    const file = path.join(tmpDir, entry);
    let owner: RecordedProcess | null;
    try {
      owner = readClaim(file);
    } catch {
      continue;
    }
    if (owner === null || owner.origin === null || judgeProcess(owner) !== "unknown") continue;
    if (isStale?.(originTag(owner.origin)) !== true) {
      result.keptElsewhere.push(file);
      continue;
    }
    if (!dryRun) fs.rmSync(file, { force: true });
    result.removed.push(file);
    result.removedElsewhere.push(file);
  }
  return result;
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
 * Why a downloaded chunk could not be written to `file`: on a full disk, which
 * disk, what is free, what the whole file needs, and the fix, as a snapshot
 * that does not fit says it.
 */
function writeFailure(file: string, error: unknown, neededBytes: number | undefined): string {
  if (!isNoSpace(error)) return `cannot write ${file}: ${describeError(error)}`;
  const full = noSpaceError(file, `cannot write ${file}`, {
    ...(neededBytes !== undefined ? { neededBytes } : {}),
    detail: describeError(error),
  });
  return `${full.message}; ${full.hint}`;
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
        fail(new FatalError(writeFailure(part.file, error, limit?.bytes)));
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
export interface TransferJob {
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

export interface FetchOutcome {
  hash: string;
  size: number;
  validators: Validators;
  /** True when a conditional request said the pinned content still holds. */
  notModified: boolean;
}

export interface TransferSettings {
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
export interface TransferProgress {
  setTotal(job: number, total: number | undefined): void;
  /** Current length of a job's content on disk. */
  setDone(job: number, bytes: number): void;
  addReceived(bytes: number): void;
}

export interface Context extends TransferSettings {
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

export async function fetchFile(job: TransferJob, ctx: Context): Promise<FetchOutcome> {
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
export function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true;
}

export function abortReason(signal: AbortSignal | undefined): Error {
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
        let next: URL;
        try {
          next = new URL(response.headers.location, url);
        } catch {
          throw new FatalError(
            `redirected (HTTP ${status}) to ${JSON.stringify(response.headers.location)}, which is not a URL — the server's Location header is wrong: ask its owner, or use the URL it should name`,
          );
        }
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

export async function fetchHttp(job: TransferJob, ctx: Context): Promise<FetchOutcome> {
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

export function pickValidators(entry: ManifestLockEntry): Validators {
  const validators: Validators = {};
  if (entry.etag !== undefined) validators.etag = entry.etag;
  if (entry.lastModified !== undefined) validators.lastModified = entry.lastModified;
  return validators;
}
