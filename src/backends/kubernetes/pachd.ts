/**
 * A small client for pachd's HTTP API: the grpc-gateway that pachd serves
 * under `/api/` on its HTTP port (`POST /api/<package>.API/<Method>` with the
 * request as protobuf JSON, camelCase). Unary calls answer one JSON message;
 * server-streaming calls answer newline-delimited `{"result": ...}` objects
 * (or `{"error": ...}`); the one client-streaming call kaos needs, ModifyFile,
 * takes newline-delimited request messages in the request body, as
 * Pachyderm's console sends them.
 *
 * The auth token travels in the `authn-token` header, which the gateway
 * forwards to pachd as gRPC metadata. It is kept in a private field and is
 * scrubbed from every message this client produces.
 */
import { request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders } from "node:http";
import { request as httpsRequest } from "node:https";
import { Readable } from "node:stream";
import { KaosError, describeError, errnoCode } from "../../core/errors.js";

export interface PachdClientOptions {
  /** pachd's HTTP address (its port 1659, which serves /api/), such as `http://localhost:1659`. */
  address: string;
  /** Pachyderm auth token; none on a cluster without auth. */
  token?: string | undefined;
  /** Environment variable the token came from, named in hints. */
  tokenEnv?: string;
  /** Default `pachdFetch`: Node's own fetch sends a `Connection` header, which pachd's gateway cannot forward. */
  fetch?: typeof fetch;
  /** Largest raw chunk per AddFile message (bytes). Default 4 MiB, well under pachd's 20 MB message limit once base64-encoded. */
  chunkBytes?: number;
}

// Protobuf JSON shapes of the messages kaos sends and reads (a subset of Pachyderm's pfs.proto and pps.proto).
export interface ProjectRef {
  name: string;
}
export interface RepoRef {
  name: string;
  type: "user";
  project: ProjectRef;
}
export interface BranchRef {
  repo: RepoRef;
  name: string;
}
export interface CommitRef {
  repo?: RepoRef;
  id?: string;
  branch?: BranchRef;
}
/**
 * pachd's gateway writes every field, unset timestamps as `null`. A commit is
 * closed once `finishing` is set (FinishCommit); `finished` follows when
 * pachd has compacted it, which may be a while later.
 */
export interface CommitInfo {
  commit?: CommitRef;
  description?: string;
  started?: string | null;
  finishing?: string | null;
  finished?: string | null;
  /** Set when the commit was finished as failed. */
  error?: string;
}

/** Whether FinishCommit has closed the commit (pachd may still be compacting it). */
export function commitClosed(info: CommitInfo): boolean {
  return Boolean(info.finishing) || Boolean(info.finished);
}
export interface PipelineRef {
  name: string;
  project: ProjectRef;
}
export interface PipelineInfo {
  pipeline?: PipelineRef;
  version?: string;
  state?: string;
  stopped?: boolean;
  userSpecJson?: string;
  effectiveSpecJson?: string;
}
export interface JobRef {
  pipeline: PipelineRef;
  id: string;
}
export type PachydermJobState =
  | "JOB_STATE_UNKNOWN"
  | "JOB_CREATED"
  | "JOB_STARTING"
  | "JOB_RUNNING"
  | "JOB_FAILURE"
  | "JOB_SUCCESS"
  | "JOB_KILLED"
  | "JOB_EGRESSING"
  | "JOB_FINISHING"
  | "JOB_UNRUNNABLE";
export interface JobInfo {
  job?: { pipeline?: PipelineRef; id?: string };
  state?: PachydermJobState;
  reason?: string;
  created?: string | null;
  started?: string | null;
  finished?: string | null;
  dataTotal?: string;
  dataFailed?: string;
}
export type PachydermDatumState = "UNKNOWN" | "FAILED" | "SUCCESS" | "SKIPPED" | "STARTING" | "RECOVERED";
export interface FileInfo {
  file?: { commit?: CommitRef; path?: string; datum?: string };
  fileType?: string;
  sizeBytes?: string;
}
export interface DatumInfo {
  datum?: { job?: { pipeline?: PipelineRef; id?: string }; id?: string };
  state?: PachydermDatumState;
  data?: FileInfo[];
}
export interface LogMessage {
  projectName?: string;
  pipelineName?: string;
  jobId?: string;
  workerId?: string;
  datumId?: string;
  master?: boolean;
  user?: boolean;
  ts?: string | null;
  message?: string;
}

/** One change inside a ModifyFile call. */
export type ModifyFileOp = { deleteFile: { path: string } } | { addFile: { path: string; raw: string } };

/** A file to upload: its path in the repo and its bytes, possibly streamed. */
export interface UploadFile {
  path: string;
  data: Uint8Array | AsyncIterable<Uint8Array>;
}

/** gRPC status codes by number, for messages people can read. */
const GRPC_CODES: Record<number, string> = {
  1: "CANCELLED",
  2: "UNKNOWN",
  3: "INVALID_ARGUMENT",
  4: "DEADLINE_EXCEEDED",
  5: "NOT_FOUND",
  6: "ALREADY_EXISTS",
  7: "PERMISSION_DENIED",
  8: "RESOURCE_EXHAUSTED",
  9: "FAILED_PRECONDITION",
  10: "ABORTED",
  12: "UNIMPLEMENTED",
  13: "INTERNAL",
  14: "UNAVAILABLE",
  16: "UNAUTHENTICATED",
};

/** A failed pachd call, with the gRPC code pachd gave (when it gave one). */
export class PachdError extends KaosError {
  readonly grpcCode: number | undefined;
  readonly httpStatus: number | undefined;

  constructor(
    message: string,
    details: { grpcCode?: number; httpStatus?: number; hint?: string; cause?: unknown; code?: "PACHD_FAILED" | "PACHD_UNREACHABLE" },
  ) {
    super(details.code ?? "PACHD_FAILED", message, { hint: details.hint, cause: details.cause });
    this.grpcCode = details.grpcCode;
    this.httpStatus = details.httpStatus;
  }

  get notFound(): boolean {
    return this.grpcCode === 5 || this.httpStatus === 404 || /\bnot found\b/i.test(this.message);
  }
}

export function repoRef(project: string, name: string): RepoRef {
  return { name, type: "user", project: { name: project } };
}

export function pipelineRef(project: string, name: string): PipelineRef {
  return { name, project: { name: project } };
}

export class PachdClient {
  readonly address: string;
  readonly #token: string | undefined;
  readonly #tokenEnv: string;
  readonly #fetch: typeof fetch;
  readonly #chunkBytes: number;

  constructor(options: PachdClientOptions) {
    this.address = options.address.replace(/\/+$/, "");
    this.#token = options.token === "" ? undefined : options.token;
    this.#tokenEnv = options.tokenEnv ?? "PACHYDERM_TOKEN";
    this.#fetch = options.fetch ?? pachdFetch;
    this.#chunkBytes = options.chunkBytes ?? 4 * 1024 * 1024;
  }

  // ---- PFS ----

  /** Creates the repo, or leaves it as it is when it exists (CreateRepo with `update`). */
  async createRepo(project: string, name: string, description: string): Promise<void> {
    await this.call("pfs_v2.API", "CreateRepo", { repo: repoRef(project, name), description, update: true });
  }

  /** Whether pachd has the repo (InspectRepo). */
  async repoExists(project: string, name: string): Promise<boolean> {
    try {
      await this.call("pfs_v2.API", "InspectRepo", { repo: repoRef(project, name) });
      return true;
    } catch (error) {
      if (error instanceof PachdError && error.notFound) return false;
      throw error;
    }
  }

  async deleteRepo(project: string, name: string): Promise<void> {
    try {
      await this.call("pfs_v2.API", "DeleteRepo", { repo: repoRef(project, name), force: false });
    } catch (error) {
      if (error instanceof PachdError && error.notFound) return;
      throw error;
    }
  }

  async startCommit(project: string, repo: string, branch: string, description: string): Promise<CommitRef> {
    return this.call<CommitRef>("pfs_v2.API", "StartCommit", {
      branch: { repo: repoRef(project, repo), name: branch },
      description,
    });
  }

  /** Closes the commit; with `error`, closed as failed, so pipelines reading it do not run on it. */
  async finishCommit(commit: CommitRef, options: { error?: string; description?: string } = {}): Promise<void> {
    await this.call("pfs_v2.API", "FinishCommit", { commit, ...options });
  }

  /** Throws away an open commit (and the commit set it started), leaving the branch as it was. */
  async dropCommitSet(id: string): Promise<void> {
    await this.call("pfs_v2.API", "DropCommitSet", { commitSet: { id } });
  }

  /** The head commit of a branch, or undefined when the repo or branch has none. */
  async headCommit(project: string, repo: string, branch: string): Promise<CommitInfo | undefined> {
    try {
      return await this.call<CommitInfo>("pfs_v2.API", "InspectCommit", {
        commit: { branch: { repo: repoRef(project, repo), name: branch } },
      });
    } catch (error) {
      if (error instanceof PachdError && error.notFound) return undefined;
      throw error;
    }
  }

  /** Runs one ModifyFile call: `setCommit` first, then every operation, streamed. */
  async modifyFile(commit: CommitRef, operations: AsyncIterable<ModifyFileOp> | Iterable<ModifyFileOp>): Promise<void> {
    async function* lines(): AsyncGenerator<Uint8Array> {
      const encoder = new TextEncoder();
      yield encoder.encode(`${JSON.stringify({ setCommit: commit })}\n`);
      for await (const operation of operations) yield encoder.encode(`${JSON.stringify(operation)}\n`);
    }
    const iterator = lines();
    // A failure while producing the body (a file that cannot be read) is
    // the error to report, not the aborted request it causes.
    let bodyError: unknown;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const next = await iterator.next();
          if (next.done) controller.close();
          else controller.enqueue(next.value);
        } catch (error) {
          bodyError = error;
          controller.error(error);
        }
      },
      async cancel() {
        await iterator.return(undefined);
      },
    });
    let response: Response;
    try {
      response = await this.send("pfs_v2.API", "ModifyFile", body, { "content-type": "application/json" });
    } catch (error) {
      throw bodyError ?? error;
    }
    await this.readUnary(response, "pfs_v2.API", "ModifyFile");
  }

  /**
   * Replaces the whole content of `commit` with `files`: one DeleteFile of the
   * root, then each file as AddFile messages of at most `chunkBytes` raw bytes
   * each (consecutive AddFiles of one path append, as in Pachyderm's own client).
   */
  async replaceFiles(commit: CommitRef, files: AsyncIterable<UploadFile> | Iterable<UploadFile>): Promise<void> {
    const chunkBytes = this.#chunkBytes;
    async function* operations(): AsyncGenerator<ModifyFileOp> {
      yield { deleteFile: { path: "/" } };
      for await (const file of files) {
        let sent = false;
        for await (const chunk of rechunk(file.data, chunkBytes)) {
          sent = true;
          yield { addFile: { path: file.path, raw: Buffer.from(chunk).toString("base64") } };
        }
        // An empty file still has to exist in the commit.
        if (!sent) yield { addFile: { path: file.path, raw: "" } };
      }
    }
    await this.modifyFile(commit, operations());
  }

  /** Reads a whole file through GetFile (a stream of BytesValue, base64 in JSON). */
  async getFile(commit: CommitRef, path: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const chunk of this.stream<string>("pfs_v2.API", "GetFile", { file: { commit, path } })) {
      parts.push(Buffer.from(chunk, "base64"));
    }
    return Buffer.concat(parts);
  }

  /** The files and directories of a commit whose paths match `pattern` (`/dir/**`: everything under /dir). */
  async globFile(commit: CommitRef, pattern: string): Promise<FileInfo[]> {
    return collect(this.stream<FileInfo>("pfs_v2.API", "GlobFile", { commit, pattern }));
  }

  // ---- PPS ----

  /** The pipeline as pachd knows it, or undefined when there is none of that name. */
  async inspectPipeline(project: string, name: string): Promise<PipelineInfo | undefined> {
    try {
      return await this.call<PipelineInfo>("pps_v2.API", "InspectPipeline", {
        pipeline: pipelineRef(project, name),
        details: true,
      });
    } catch (error) {
      if (error instanceof PachdError && error.notFound) return undefined;
      throw error;
    }
  }

  /** Creates (or with `update`, updates) a pipeline from its CreatePipelineRequest JSON; answers the effective spec. */
  async createPipelineV2(specJson: string, options: { update: boolean; reprocess?: boolean }): Promise<string | undefined> {
    const response = await this.call<{ effectiveCreatePipelineRequestJson?: string }>("pps_v2.API", "CreatePipelineV2", {
      createPipelineRequestJson: specJson,
      update: options.update,
      reprocess: options.reprocess ?? false,
    });
    return response.effectiveCreatePipelineRequestJson;
  }

  async deletePipeline(project: string, name: string): Promise<void> {
    try {
      await this.call("pps_v2.API", "DeletePipeline", {
        pipeline: pipelineRef(project, name),
        force: false,
        keepRepo: false,
      });
    } catch (error) {
      if (error instanceof PachdError && error.notFound) return;
      throw error;
    }
  }

  /** Jobs of a project, or of one pipeline, newest first (pachd's order). */
  async listJobs(project: string, pipeline?: string): Promise<JobInfo[]> {
    const request: Record<string, unknown> = { projects: [{ name: project }], details: false };
    if (pipeline !== undefined) request["pipeline"] = pipelineRef(project, pipeline);
    return collect(this.stream<JobInfo>("pps_v2.API", "ListJob", request));
  }

  async listDatums(job: JobRef): Promise<DatumInfo[]> {
    return collect(this.stream<DatumInfo>("pps_v2.API", "ListDatum", { job }));
  }

  /** A job's (or one datum's) log lines; with `follow`, keeps reading until the job ends or the signal aborts. */
  getLogs(options: { job: JobRef; datum?: string; follow?: boolean; signal?: AbortSignal }): AsyncGenerator<LogMessage> {
    const request: Record<string, unknown> = { job: options.job, follow: options.follow ?? false };
    if (options.datum !== undefined) request["datum"] = { job: options.job, id: options.datum };
    return this.stream<LogMessage>("pps_v2.API", "GetLogs", request, options.signal);
  }

  // ---- transport ----

  /** One unary call. */
  async call<T>(service: string, method: string, request: unknown): Promise<T> {
    const response = await this.send(service, method, JSON.stringify(request), { "content-type": "application/json" });
    return (await this.readUnary(response, service, method)) as T;
  }

  /** One server-streaming call, message by message. */
  async *stream<T>(service: string, method: string, request: unknown, signal?: AbortSignal): AsyncGenerator<T> {
    const response = await this.send(service, method, JSON.stringify(request), { "content-type": "application/json" }, signal);
    if (!response.ok) {
      await this.readUnary(response, service, method);
      return;
    }
    if (!response.body) return;
    const decoder = new TextDecoder();
    let buffered = "";
    const parseLine = (line: string): T | undefined => {
      if (line.trim() === "") return undefined;
      let message: { result?: T; error?: { code?: number; message?: string } };
      try {
        message = JSON.parse(line) as typeof message;
      } catch (error) {
        throw new PachdError(`pachd ${service}/${method} sent a line that is not JSON: ${this.scrub(line.slice(0, 200))}`, {
          cause: error,
        });
      }
      if (message.error) throw this.statusError(service, method, message.error, undefined);
      return message.result;
    };
    try {
      for await (const chunk of response.body) {
        buffered += decoder.decode(chunk, { stream: true });
        let newline = buffered.indexOf("\n");
        while (newline >= 0) {
          const parsed = parseLine(buffered.slice(0, newline));
          buffered = buffered.slice(newline + 1);
          if (parsed !== undefined) yield parsed;
          newline = buffered.indexOf("\n");
        }
      }
    } catch (error) {
      if (error instanceof KaosError) throw error;
      if (signal?.aborted) return;
      throw new PachdError(`pachd ${service}/${method} broke off: ${this.scrub(describeError(error))}`, { cause: error });
    }
    const last = parseLine(buffered + decoder.decode());
    if (last !== undefined) yield last;
  }

  private async send(
    service: string,
    method: string,
    body: string | ReadableStream<Uint8Array>,
    headers: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<Response> {
    const url = `${this.address}/api/${service}/${method}`;
    const allHeaders: Record<string, string> = { accept: "application/json", ...headers };
    if (this.#token !== undefined) allHeaders["authn-token"] = this.#token;
    const init: RequestInit = { method: "POST", headers: allHeaders, body };
    if (typeof body !== "string") init.duplex = "half";
    if (signal) init.signal = signal;
    try {
      return await this.#fetch(url, init);
    } catch (error) {
      const forward = "`kubectl -n <namespace> port-forward deploy/pachd 1659`";
      // pachd's gRPC port (1650, or 30650 as a NodePort) speaks HTTP/2 only: Node's HTTP/1.1 parser cannot read its answer.
      if (errnoCode(error)?.startsWith("HPE_")) {
        throw new PachdError(
          `${this.address} does not answer in HTTP/1.1 (${service}/${method}): ${this.scrub(describeError(error))}; is it pachd's gRPC port?`,
          {
            code: "PACHD_UNREACHABLE",
            hint: `kaos talks to pachd's HTTP port (1659, the one that serves /api/), not its gRPC port (1650 or 30650): set \`pachyderm.address\` to it, or forward it: ${forward}`,
            cause: error,
          },
        );
      }
      throw new PachdError(`cannot reach pachd at ${this.address} (${service}/${method}): ${this.scrub(describeError(error))}`, {
        code: "PACHD_UNREACHABLE",
        hint: `check \`pachyderm.address\` in the stack file (pachd's HTTP port, 1659), or forward it: ${forward}`,
        cause: error,
      });
    }
  }

  private async readUnary(response: Response, service: string, method: string): Promise<unknown> {
    const text = await response.text();
    let parsed: unknown;
    if (text.trim() !== "") {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
    }
    if (!response.ok) {
      const status = (parsed ?? {}) as { code?: number; message?: string; error?: { code?: number; message?: string } };
      const inner = status.error ?? status;
      throw this.statusError(service, method, { code: inner.code, message: inner.message ?? text.trim().slice(0, 500) }, response.status);
    }
    if (parsed === undefined && text.trim() !== "") {
      throw new PachdError(`pachd ${service}/${method} answered something that is not JSON: ${this.scrub(text.slice(0, 200))}`, {
        httpStatus: response.status,
      });
    }
    return parsed ?? {};
  }

  private statusError(
    service: string,
    method: string,
    status: { code?: number | undefined; message?: string | undefined },
    httpStatus: number | undefined,
  ): PachdError {
    const codeName = status.code === undefined ? undefined : (GRPC_CODES[status.code] ?? `code ${status.code}`);
    const detail = this.scrub(status.message && status.message !== "" ? status.message : `HTTP ${httpStatus ?? "error"}`);
    let hint: string | undefined;
    if (status.code === 16 || httpStatus === 401) {
      hint = `set ${this.#tokenEnv} to a valid Pachyderm token (for example \`pachctl auth get-robot-token kaos\`)`;
    } else if (status.code === 7 || httpStatus === 403) {
      hint = "the token lacks the permission for this call; grant the robot user a role on the project (`pachctl auth set project ...`)";
    } else if (status.code === 14 || httpStatus === 502 || httpStatus === 503) {
      hint = "pachd is not ready; check `kubectl get pods` in Pachyderm's namespace";
    }
    return new PachdError(`pachd ${service}/${method} failed: ${detail}${codeName ? ` (${codeName})` : ""}`, {
      grpcCode: status.code,
      httpStatus,
      hint,
    });
  }

  /** Removes the token from text that came back from the network or from an error. */
  scrub(text: string): string {
    return this.#token === undefined ? text : text.split(this.#token).join("***");
  }
}

/**
 * Hop-by-hop headers: they describe one HTTP/1.1 connection and are illegal
 * in HTTP/2. pachd's gateway forwards every request header as gRPC metadata,
 * so one of these in a request makes the call fail with RST_STREAM
 * PROTOCOL_ERROR.
 */
export const HOP_BY_HOP_HEADERS: readonly string[] = ["connection", "keep-alive", "proxy-connection", "upgrade", "te"];

/**
 * A `fetch` for pachd on Node's http module, which (unlike Node's fetch, whose
 * HTTP/1.1 client always writes `Connection`) can send a request without any
 * hop-by-hop header: HTTP/1.1 connections are persistent without it.
 */
export const pachdFetch = ((input: string | URL | Request, init: RequestInit = {}): Promise<Response> => {
  const url = new URL(input instanceof Request ? input.url : input);
  const headers: OutgoingHttpHeaders = {};
  new Headers(init.headers).forEach((value, name) => {
    if (!HOP_BY_HOP_HEADERS.includes(name)) headers[name] = value;
  });
  const body = init.body;
  if (typeof body === "string") headers["content-length"] = Buffer.byteLength(body);
  const send = url.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise<Response>((resolve, reject) => {
    const request = send(url, { method: init.method ?? "GET", headers, ...(init.signal ? { signal: init.signal } : {}) });
    request.removeHeader("connection");
    request.on("error", reject);
    request.on("response", (response: IncomingMessage) => {
      const responseHeaders = new Headers();
      for (const [name, value] of Object.entries(response.headers)) {
        if (value === undefined) continue;
        for (const one of Array.isArray(value) ? value : [value]) responseHeaders.append(name, one);
      }
      const status = response.statusCode ?? 500;
      const empty = status === 204 || status === 304 || init.method === "HEAD";
      resolve(
        new Response(empty ? null : (Readable.toWeb(response) as ReadableStream<Uint8Array>), {
          status,
          statusText: response.statusMessage ?? "",
          headers: responseHeaders,
        }),
      );
    });
    if (body === undefined || body === null) request.end();
    else if (typeof body === "string") request.end(body);
    else if (body instanceof ReadableStream) {
      const stream = Readable.fromWeb(body as import("node:stream/web").ReadableStream<Uint8Array>);
      stream.on("error", (error) => request.destroy(error));
      stream.pipe(request);
    } else reject(new TypeError("pachdFetch sends only string or stream bodies"));
  });
}) as typeof fetch;

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = [];
  for await (const item of items) all.push(item);
  return all;
}

/** Splits a byte source into chunks of at most `size` bytes. */
async function* rechunk(data: Uint8Array | AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Uint8Array> {
  if (data instanceof Uint8Array) {
    for (let offset = 0; offset < data.length; offset += size) yield data.subarray(offset, offset + size);
    return;
  }
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  for await (const piece of data) {
    let rest = piece;
    while (pendingBytes + rest.length >= size) {
      const take = size - pendingBytes;
      pending.push(rest.subarray(0, take));
      yield Buffer.concat(pending);
      pending = [];
      pendingBytes = 0;
      rest = rest.subarray(take);
    }
    if (rest.length > 0) {
      pending.push(rest);
      pendingBytes += rest.length;
    }
  }
  if (pendingBytes > 0) yield Buffer.concat(pending);
}
