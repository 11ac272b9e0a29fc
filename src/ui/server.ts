/**
 * `kaos ui`'s HTTP server: node:http, the assets, the JSON API and the event
 * stream behind one access check. On a loopback address the dashboard is as
 * private as the files it reads, so no token is needed (unless one is given);
 * bound anywhere else, every request must carry the access token, as
 * `?token=`, an `Authorization: Bearer` header, or the cookie the first page
 * load sets. On loopback without a token, requests must also name a loopback
 * host, so a web page elsewhere cannot reach the dashboard by rebinding a DNS
 * name to 127.0.0.1.
 */
import { randomBytes, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { isIP } from "node:net";
import { KaosError, describeError } from "../core/errors.js";
import { Api, ApiError } from "./api.js";
import { loadAssets, type Asset } from "./assets.js";
import { EventHub } from "./events.js";
import { StoreReader } from "./reader.js";
import { SweepReader } from "./sweep.js";

export const TOKEN_COOKIE = "kaos_ui_token";

/**
 * The cookie of the dashboard on `port`: a browser sends a host's cookies to
 * every port of it, so dashboards side by side would overwrite each other's.
 */
function cookieName(port: number): string {
  return `${TOKEN_COOKIE}_${port}`;
}

export interface UiOptions {
  /** The project root: where kaos.config.ts and .kaos/ are. */
  root: string;
  /** The config file, for the sweeps' current grids; absent for a project of `kaos train deploy` alone. */
  configFile?: string | undefined;
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Required of every request when set; made up when the host is not loopback and none is given. */
  token?: string;
  /** Where the built assets are (tests); dist/ui/ by default. */
  assetsDir?: string;
  pollMs?: number;
}

export interface UiServer {
  /** The address to open, with the token when one is required. */
  url: string;
  token: string | undefined;
  server: Server;
  close(): Promise<void>;
}

export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, "");
  if (bare === "localhost") return true;
  if (isIP(bare) === 4) return bare.startsWith("127.");
  if (isIP(bare) === 6) return bare === "::1" || /^::ffff:127\./i.test(bare);
  return false;
}

export function newToken(): string {
  return randomBytes(18).toString("base64url");
}

function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

function cookieToken(req: IncomingMessage, cookie: string): string | undefined {
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === cookie) return value.join("=");
  }
  return undefined;
}

function requestToken(req: IncomingMessage, url: URL, cookie: string): { token: string | undefined; fromQuery: boolean } {
  const query = url.searchParams.get("token");
  if (query !== null) return { token: query, fromQuery: true };
  const auth = req.headers.authorization;
  if (auth?.startsWith("Bearer ")) return { token: auth.slice("Bearer ".length).trim(), fromQuery: false };
  return { token: cookieToken(req, cookie), fromQuery: false };
}

/** The host part of a Host header (`127.0.0.1:8080`, `[::1]:80`, `localhost`). */
function hostOfHeader(header: string | undefined): string {
  if (header === undefined) return "";
  if (header.startsWith("[")) return header.slice(0, header.indexOf("]") + 1);
  const colon = header.lastIndexOf(":");
  return colon < 0 ? header : header.slice(0, colon);
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" });
  res.end(text);
}

function sendAsset(res: ServerResponse, asset: Asset, head: boolean): void {
  res.writeHead(200, { "content-type": asset.type, "content-length": asset.body.length, "cache-control": "no-cache" });
  res.end(head ? undefined : asset.body);
}

export async function startUiServer(options: UiOptions): Promise<UiServer> {
  const loopback = isLoopbackHost(options.host);
  const token = options.token ?? (loopback ? undefined : newToken());
  const assets = loadAssets(options.assetsDir);
  const reader = new StoreReader(options.root);
  const api = new Api(reader, new SweepReader(reader, options.configFile));
  const events = new EventHub(reader, options.pollMs);

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? "/", "http://kaos.invalid");
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (token !== undefined) {
      const cookie = cookieName(listeningPort());
      const given = requestToken(req, url, cookie);
      if (given.token === undefined || !sameSecret(given.token, token)) {
        sendJson(res, 401, { error: "this dashboard needs its access token: open the address `kaos ui` printed, with ?token=..." });
        return;
      }
      // The page's own requests (scripts, API calls, the event stream) then carry it as a cookie.
      if (given.fromQuery) res.setHeader("set-cookie", `${cookie}=${token}; HttpOnly; SameSite=Strict; Path=/`);
    } else if (!isLoopbackHost(hostOfHeader(req.headers.host))) {
      sendJson(res, 403, { error: `this dashboard answers only to a loopback host name, not ${req.headers.host ?? "(none)"}` });
      return;
    }
    const asset = assets.get(url.pathname);
    if (asset !== undefined) {
      sendAsset(res, asset, req.method === "HEAD");
      return;
    }
    try {
      if (url.pathname === "/api/events") {
        const jobId = url.searchParams.get("job");
        events.open(req, res, url.searchParams, jobId === null ? undefined : api.requireJob(jobId));
        return;
      }
      if (url.pathname.startsWith("/api/")) {
        const reply = await api.handle(url.pathname, url.searchParams);
        sendJson(res, reply.status, reply.body);
        return;
      }
      sendJson(res, 404, { error: `not found: ${url.pathname}` });
    } catch (error) {
      if (error instanceof ApiError) sendJson(res, error.status, { error: error.message });
      else if (error instanceof KaosError && error.code === "USAGE") sendJson(res, 400, { error: error.message });
      else if (error instanceof KaosError) sendJson(res, 409, { error: error.message, hint: error.hint ?? null });
      else sendJson(res, 500, { error: describeError(error) });
    }
  };

  const server = createServer((req, res) => void handle(req, res));
  const listeningPort = (): number => {
    const address = server.address();
    return typeof address === "object" && address !== null ? address.port : options.port;
  };
  await new Promise<void>((resolve, reject) => {
    const failed = (error: NodeJS.ErrnoException) => {
      reject(
        new KaosError("IO", `cannot serve on ${options.host}:${options.port}: ${describeError(error)}`, {
          hint: error.code === "EADDRINUSE" ? "pick another port with --port N (0 picks a free one)" : "check --host and --port",
          cause: error,
        }),
      );
    };
    server.once("error", failed);
    server.listen(options.port, options.host, () => {
      server.off("error", failed);
      resolve();
    });
  });
  const port = listeningPort();
  const shownHost = isIP(options.host) === 6 ? `[${options.host}]` : options.host;
  const url = `http://${shownHost}:${port}/${token === undefined ? "" : `?token=${token}`}`;
  return {
    url,
    token,
    server,
    close: async () => {
      events.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      reader.close();
    },
  };
}
