/**
 * A real HTTP/1.1 server on 127.0.0.1 for tests, with per-path fault injection.
 *
 *   const server = await startServer({
 *     "/a.csv": { body: "x,y\n1,2\n" },
 *     "/flaky": { body: "ok", statuses: [500, 500] },           // two 500s, then served
 *     "/busy": { body: "ok", statuses: [429], retryAfter: "1" }, // 429 with Retry-After: 1
 *     "/big": { generated: { size: 200 << 20, seed: 1 } },        // 200 MiB, never held in memory
 *     "/cut": { body: bytes, dropAfterBytes: 1000 },              // first response dies after 1000 body bytes
 *     "/plain": { body: bytes, range: false },                    // ignores Range
 *     "/v": { body: "v1", etag: '"v1"', lastModified: new Date(0).toUTCString() },
 *     "/slow": { body: "zz", headerDelayMs: 2000 },               // nothing for 2 s
 *     "/drip": { body: bytes, chunkSize: 1024, chunkDelayMs: 10 },
 *     "/moved": { redirect: "/a.csv" },                           // 302 on every request
 *     "/gone": { status: 404 },
 *     "/held": { body: bytes, stall },                            // first response stops mid-body until stall.release()
 *   });
 *   server.url            // "http://127.0.0.1:PORT"
 *   server.requests       // every request seen: { method, path, headers, status, finished }
 *   server.inFlight.peak  // most requests answered at once
 *   server.count("/a.csv")  // GETs of a path
 *   server.route("/a.csv", { body: "changed" })  // replace a route (fault counters restart)
 *   await server.close()
 *
 * Served routes answer GET and HEAD with Content-Length (unless `chunked`),
 * `Accept-Ranges: bytes` and single-range `Range` requests (honouring
 * `If-Range`), and conditional requests (`If-None-Match`, `If-Modified-Since`)
 * when the route has an `etag` / `lastModified`. Paths not routed get 404.
 */
import { createHash } from "node:crypto";
import { once } from "node:events";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

export interface RouteOptions {
  /** The content served. */
  body?: string | Buffer;
  /** Instead of `body`: `size` deterministic bytes from `seed`, produced on the fly (see generatedBytes). */
  generated?: { size: number; seed?: number };
  /** Every request answered with this status and a short text body (404, 403, 500...). */
  status?: number;
  /** Statuses for successive requests; once used up, requests are served. 200 in the list also serves. */
  statuses?: number[];
  /** Retry-After header sent with 429 and 503 answers (seconds or an HTTP date). */
  retryAfter?: string;
  /** Destroy the connection after this many body bytes, for the first `dropTimes` served responses. */
  dropAfterBytes?: number;
  /** Default 1. */
  dropTimes?: number;
  /** false: ignore Range and If-Range (always 200 with the whole body). Default true. */
  range?: boolean;
  etag?: string;
  lastModified?: string;
  /** Wait this long before sending the response head. */
  headerDelayMs?: number;
  /** Body write size. Default 64 KiB. */
  chunkSize?: number;
  /** Wait this long between body chunks. */
  chunkDelayMs?: number;
  /** Answer every request with a redirect to this location (absolute or relative). */
  redirect?: string;
  /** Default 302. */
  redirectStatus?: number;
  /** Send the body with chunked transfer encoding instead of Content-Length. */
  chunked?: boolean;
  /** Extra response headers. */
  headers?: Record<string, string>;
  /** The first response served stops after `stall.afterBytes` body bytes until the test releases it (see {@link Stall}). */
  stall?: Stall;
}

/**
 * A response that stops mid-body and waits for the test: `reached` once it
 * has sent `afterBytes` bytes and stopped, then either `release()` lets it
 * send the rest, or the client closes the connection (`closedByClient`).
 * Only the first response of its route stalls; later ones are served whole.
 */
export class Stall {
  readonly reached: Promise<void>;
  readonly closedByClient: Promise<void>;
  private taken = false;
  private onReached!: () => void;
  private onClosed!: () => void;
  private onRelease!: () => void;
  private readonly released: Promise<void>;

  constructor(readonly afterBytes: number) {
    this.reached = new Promise((resolve) => (this.onReached = resolve));
    this.closedByClient = new Promise((resolve) => (this.onClosed = resolve));
    this.released = new Promise((resolve) => (this.onRelease = resolve));
  }

  release(): void {
    this.onRelease();
  }

  /** Whether this response is the one that stalls. */
  take(): boolean {
    if (this.taken) return false;
    this.taken = true;
    return true;
  }

  /** Waits for the release or the client's close; true when the client closed the connection. */
  async hold(response: http.ServerResponse): Promise<boolean> {
    const closed = new Promise<true>((resolve) => {
      if (response.destroyed) resolve(true);
      else response.once("close", () => resolve(true));
    });
    this.onReached();
    const byClient = await Promise.race([closed, this.released.then(() => false)]);
    if (byClient) this.onClosed();
    return byClient;
  }
}

export interface RequestRecord {
  method: string;
  /** Path and query as requested. */
  path: string;
  headers: http.IncomingHttpHeaders;
  /** Status answered (0 if the connection was dropped before the head). */
  status: number;
  /** The whole response was handed to the kernel (false while it is sent, and for one the client cut short). */
  finished: boolean;
}

export interface TestServer {
  url: string;
  port: number;
  requests: RequestRecord[];
  /** Requests being answered right now, and the most there ever were at once. */
  inFlight: { now: number; peak: number };
  /** GET requests for `path` so far. */
  count(path: string): number;
  /** Adds or replaces a route; its fault counters start over. */
  route(path: string, options: RouteOptions): void;
  close(): Promise<void>;
}

export interface ServerOptions {
  routes?: Record<string, RouteOptions>;
}

const BLOCK = 1 << 20;
const patterns = new Map<number, Buffer>();

function patternFor(seed: number): Buffer {
  let pattern = patterns.get(seed);
  if (pattern === undefined) {
    pattern = Buffer.alloc(BLOCK);
    for (let offset = 0, counter = 0; offset < BLOCK; offset += 32, counter++) {
      createHash("sha256").update(`${seed}:${counter}`).digest().copy(pattern, offset);
    }
    patterns.set(seed, pattern);
  }
  return pattern;
}

/**
 * Bytes [start, end) of the generated content for `seed`: 1 MiB blocks of a
 * seeded pattern, each block stamped with its index so that no two blocks are
 * alike (a transfer that resumes at the wrong block boundary changes the hash).
 */
export function generatedBytes(seed: number, start: number, end: number): Buffer {
  const pattern = patternFor(seed);
  const out = Buffer.allocUnsafe(Math.max(0, end - start));
  let at = start;
  while (at < end) {
    const block = Math.floor(at / BLOCK);
    const within = at - block * BLOCK;
    const take = Math.min(BLOCK - within, end - at);
    pattern.copy(out, at - start, within, within + take);
    // The stamp: the block index as 8 bytes at the start of each block.
    for (let i = within; i < 8 && i < within + take; i++) {
      out[at - start + (i - within)] = Number((BigInt(block) >> BigInt(8 * (7 - i))) & 0xffn);
    }
    at += take;
  }
  return out;
}

/** SHA-256 of the whole generated content of `size` bytes for `seed`, in constant memory. */
export function sha256OfGenerated(size: number, seed = 0): string {
  const hash = createHash("sha256");
  for (let at = 0; at < size; at += BLOCK) hash.update(generatedBytes(seed, at, Math.min(size, at + BLOCK)));
  return hash.digest("hex");
}

interface RouteState {
  options: RouteOptions;
  statusIndex: number;
  drops: number;
}

function contentSize(options: RouteOptions): number {
  if (options.generated !== undefined) return options.generated.size;
  if (options.body === undefined) return 0;
  return typeof options.body === "string" ? Buffer.byteLength(options.body) : options.body.length;
}

function contentSlice(options: RouteOptions, start: number, end: number): Buffer {
  if (options.generated !== undefined) return generatedBytes(options.generated.seed ?? 0, start, end);
  const body = options.body ?? "";
  return (typeof body === "string" ? Buffer.from(body) : body).subarray(start, end);
}

function ifRangeHolds(header: string | undefined, options: RouteOptions): boolean {
  if (header === undefined) return true;
  if (header.startsWith('"') || header.startsWith("W/"))
    return options.etag !== undefined && header === options.etag && !header.startsWith("W/");
  return options.lastModified !== undefined && header === options.lastModified;
}

function notModified(request: http.IncomingMessage, options: RouteOptions): boolean {
  const ifNoneMatch = request.headers["if-none-match"];
  if (ifNoneMatch !== undefined) {
    if (options.etag === undefined) return false;
    const tags = ifNoneMatch.split(",").map((tag) => tag.trim().replace(/^W\//, ""));
    return tags.includes("*") || tags.includes(options.etag.replace(/^W\//, ""));
  }
  const since = request.headers["if-modified-since"];
  if (since !== undefined && options.lastModified !== undefined) {
    const sinceMs = Date.parse(since);
    const modifiedMs = Date.parse(options.lastModified);
    return !Number.isNaN(sinceMs) && !Number.isNaN(modifiedMs) && modifiedMs <= sinceMs;
  }
  return false;
}

function drainOrClose(response: http.ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      response.off("drain", done);
      response.off("close", done);
      resolve();
    };
    response.on("drain", done);
    response.on("close", done);
  });
}

async function serve(
  state: RouteState,
  request: http.IncomingMessage,
  response: http.ServerResponse,
  record: RequestRecord,
): Promise<void> {
  const options = state.options;
  if (options.headerDelayMs !== undefined) await sleep(options.headerDelayMs);
  if (response.destroyed) return;
  const extra = options.headers ?? {};

  const fixedStatus = options.status ?? options.statuses?.[state.statusIndex++];
  if (fixedStatus !== undefined && fixedStatus !== 200) {
    const headers: Record<string, string> = { "content-type": "text/plain", ...extra };
    if ((fixedStatus === 429 || fixedStatus === 503) && options.retryAfter !== undefined) headers["retry-after"] = options.retryAfter;
    record.status = fixedStatus;
    response.writeHead(fixedStatus, headers);
    response.end(`status ${fixedStatus}\n`);
    return;
  }
  if (options.redirect !== undefined) {
    record.status = options.redirectStatus ?? 302;
    response.writeHead(record.status, { location: options.redirect, ...extra });
    response.end();
    return;
  }

  const size = contentSize(options);
  const headers: Record<string, string> = { "content-type": "application/octet-stream", ...extra };
  if (options.etag !== undefined) headers["etag"] = options.etag;
  if (options.lastModified !== undefined) headers["last-modified"] = options.lastModified;
  if (notModified(request, options)) {
    record.status = 304;
    response.writeHead(304, headers);
    response.end();
    return;
  }

  let start = 0;
  let end = size;
  let status = 200;
  const rangeHeader = request.headers.range;
  if (options.range !== false) {
    headers["accept-ranges"] = "bytes";
    const match = rangeHeader === undefined ? null : /^bytes=(\d*)-(\d*)$/.exec(rangeHeader);
    const ifRangeHeader = request.headers["if-range"];
    const ifRange = Array.isArray(ifRangeHeader) ? ifRangeHeader[0] : ifRangeHeader;
    if (match !== null && ifRangeHolds(ifRange, options)) {
      const first = match[1] ?? "";
      const last = match[2] ?? "";
      if (first === "") {
        start = Math.max(0, size - Number(last));
      } else {
        start = Number(first);
        if (last !== "") end = Math.min(size, Number(last) + 1);
      }
      if (start >= size || start >= end) {
        record.status = 416;
        response.writeHead(416, { "content-range": `bytes */${size}`, ...extra });
        response.end();
        return;
      }
      status = 206;
      headers["content-range"] = `bytes ${start}-${end - 1}/${size}`;
    }
  }
  if (options.chunked !== true) headers["content-length"] = String(end - start);
  record.status = status;
  response.writeHead(status, headers);
  if (request.method === "HEAD") {
    response.end();
    return;
  }

  const dropAt = options.dropAfterBytes !== undefined && state.drops < (options.dropTimes ?? 1) ? options.dropAfterBytes : undefined;
  if (dropAt !== undefined) state.drops++;
  const chunkSize = options.chunkSize ?? 64 * 1024;
  let stall = options.stall?.take() === true ? options.stall : undefined;
  let sent = 0;
  for (let at = start; at < end; at += chunkSize) {
    if (response.destroyed) return;
    let chunk = contentSlice(options, at, Math.min(end, at + chunkSize));
    if (stall !== undefined && sent + chunk.length >= stall.afterBytes) {
      const before = chunk.subarray(0, stall.afterBytes - sent);
      await new Promise<void>((resolve) => response.write(before, () => resolve()));
      sent += before.length;
      if (await stall.hold(response)) return;
      chunk = chunk.subarray(before.length);
      stall = undefined;
    }
    if (dropAt !== undefined && sent + chunk.length >= dropAt) {
      chunk = chunk.subarray(0, dropAt - sent);
      // Send what is allowed, then end the connection mid-body. A half-close
      // (FIN after the data) rather than a reset, so a slow reader still gets
      // every byte sent before the cut; the socket is destroyed once the client
      // has seen the end, or after a second.
      const socket = response.socket;
      await new Promise<void>((resolve) => response.write(chunk, () => resolve()));
      if (socket !== null) {
        const timer = setTimeout(() => socket.destroy(), 1000);
        socket.once("close", () => clearTimeout(timer));
        socket.end();
      }
      return;
    }
    sent += chunk.length;
    if (!response.write(chunk)) await drainOrClose(response);
    // No pause after the last chunk: the client has the whole body by then.
    if (options.chunkDelayMs !== undefined && at + chunkSize < end) await sleep(options.chunkDelayMs);
  }
  response.end();
}

export async function startServer(routesOrOptions: Record<string, RouteOptions> | ServerOptions = {}): Promise<TestServer> {
  // Route paths start with "/", option names do not.
  const isOptions = Object.keys(routesOrOptions).some((key) => !key.startsWith("/"));
  const routesGiven = isOptions ? ((routesOrOptions as ServerOptions).routes ?? {}) : (routesOrOptions as Record<string, RouteOptions>);
  const routes = new Map<string, RouteState>();
  for (const [routePath, options] of Object.entries(routesGiven)) routes.set(routePath, { options, statusIndex: 0, drops: 0 });
  const requests: RequestRecord[] = [];
  const inFlight = { now: 0, peak: 0 };

  const server = http.createServer((request, response) => {
    const requestPath = request.url ?? "/";
    const record: RequestRecord = {
      method: request.method ?? "GET",
      path: requestPath,
      headers: request.headers,
      status: 0,
      finished: false,
    };
    requests.push(record);
    inFlight.now++;
    inFlight.peak = Math.max(inFlight.peak, inFlight.now);
    // "finish" (the last byte handed to the kernel) comes before the client can
    // send its next request on this connection; "close" may come after it.
    let counted = true;
    const settle = (): void => {
      if (counted) inFlight.now--;
      counted = false;
    };
    response.once("finish", () => {
      record.finished = true;
      settle();
    });
    response.once("close", settle);
    const state = routes.get(requestPath.split("?")[0] ?? requestPath);
    if (state === undefined) {
      record.status = 404;
      response.writeHead(404, { "content-type": "text/plain" });
      response.end("not found\n");
      return;
    }
    serve(state, request, response, record).catch(() => response.destroy());
  });
  server.keepAliveTimeout = 5_000;
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as AddressInfo).port;

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    inFlight,
    count: (target) => requests.filter((r) => r.method === "GET" && r.path === target).length,
    route: (routePath, options) => {
      routes.set(routePath, { options, statusIndex: 0, drops: 0 });
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
