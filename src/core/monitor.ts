/**
 * The file system monitor: what lets a warm plan skip walking a bundle, as
 * git's fsmonitor lets `git status` skip its lstat pass.
 *
 * A long-lived kaos process (`kaos watch`, or `kaos monitor` alone) serves a
 * Unix socket at `.kaos/monitor.sock`. A planner asks it "what changed under
 * bundle R since token T" and gets back a new token and either the exact
 * paths that changed, or "I don't know" (then it walks, as without a
 * monitor). A token is the monitor's start id and a generation counter that
 * every recorded change bumps; a planner saves the token it asked with
 * beside the stat cache its walk wrote, so that the next plan asks about
 * exactly the changes that walk may have missed.
 *
 * The answer is "I don't know" whenever there is doubt: a token of another
 * monitor (a restart), a root it was not watching at that token (roots are
 * watched on demand: the first question about one starts watching it), too
 * many changes, a burst of events that may have overflowed the kernel's
 * queue (Node does not report inotify's overflow), a watch that failed, or a
 * root that was replaced or moved.
 *
 * Every directory of a root is watched with its own `fs.watch` (inotify on
 * Linux, one queue for the whole process, delivered in order). Before it
 * answers, the monitor writes a cookie file into `.kaos/monitor.cookies/`
 * and waits for its event: events are delivered in order, so every change
 * made before the question was asked has been recorded by then (git's
 * fsmonitor cookies). A directory that appears is watched, with everything
 * below it, before its change is recorded, so that a planner whose token is
 * older walks all of it and one whose token is newer hears of every change
 * inside it.
 *
 * The protocol is one JSON line each way: `{"root", "token"}` then
 * `{"token", "changed"}` with `changed` a list of paths relative to the root
 * ('/' separated), or null for "I don't know".
 */
import { randomBytes } from "node:crypto";
import {
  type FSWatcher,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  unlinkSync,
  watch,
  writeFileSync,
} from "node:fs";
import { type Server, type Socket, connect, createServer } from "node:net";
import { basename, join } from "node:path";
import { errnoCode } from "./errors.js";
import { monitorCookiesOf, monitorSocketOf } from "./layout.js";
import { ALWAYS_IGNORED } from "./tree-walk.js";

/** What a planner asks the monitor through. */
export interface TreeMonitor {
  /**
   * The changes under `root` since `token` (undefined: none known yet), with
   * the token to keep; `changed` is null when the monitor cannot tell.
   * Undefined when no monitor answers.
   */
  changesSince(root: string, token: string | undefined): Promise<MonitorAnswer | undefined>;
}

export interface MonitorAnswer {
  token: string;
  changed: string[] | null;
}

/** More changed paths than this since a token: walking in parallel is as fast, so the answer is "I don't know". */
export const MAX_ANSWER_PATHS = 1024;
/** Distinct changed paths a root remembers; past it, older tokens get "I don't know". */
const MAX_REMEMBERED_PATHS = 65_536;
/** How long a planner waits for an answer before it walks anyway. */
const ANSWER_TIMEOUT_MS = 5_000;
/** Longest socket path the kernel takes (sun_path is 108 bytes with its NUL). */
const MAX_SOCKET_PATH_BYTES = 107;

// ---------------------------------------------------------------------------
// Client.

/** The monitor of the project whose state directory is `stateDir`, asked through its socket. */
export function projectMonitor(stateDir: string): TreeMonitor {
  const socketPath = monitorSocketOf(stateDir);
  return { changesSince: (root, token) => ask(socketPath, root, token) };
}

function ask(socketPath: string, root: string, token: string | undefined): Promise<MonitorAnswer | undefined> {
  let socketIno: number;
  try {
    const stats = lstatSync(socketPath);
    if (!stats.isSocket()) return Promise.resolve(undefined);
    socketIno = stats.ino;
  } catch {
    return Promise.resolve(undefined);
  }
  return new Promise((resolve) => {
    let text = "";
    let settled = false;
    const socket = connect(socketPath);
    const finish = (answer: MonitorAnswer | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => finish(undefined), ANSWER_TIMEOUT_MS);
    socket.setEncoding("utf8");
    socket.on("connect", () => socket.write(`${JSON.stringify({ root, token: token ?? null })}\n`));
    socket.on("data", (chunk: string) => {
      text += chunk;
      const end = text.indexOf("\n");
      if (end >= 0) finish(parseAnswer(text.slice(0, end)));
    });
    socket.on("error", (error) => {
      // A monitor that died without cleaning up leaves its socket behind: take
      // it away, unless a new monitor has put its own there meanwhile.
      if (errnoCode(error) === "ECONNREFUSED") removeStaleSocket(socketPath, socketIno);
      finish(undefined);
    });
    socket.on("close", () => finish(undefined));
  });
}

function parseAnswer(line: string): MonitorAnswer | undefined {
  try {
    const value = JSON.parse(line) as { token?: unknown; changed?: unknown };
    if (typeof value.token !== "string") return undefined;
    if (value.changed === null) return { token: value.token, changed: null };
    if (Array.isArray(value.changed) && value.changed.every((path) => typeof path === "string")) {
      return { token: value.token, changed: value.changed as string[] };
    }
  } catch {
    // Not an answer: walk.
  }
  return undefined;
}

function removeStaleSocket(socketPath: string, ino: number): void {
  try {
    if (lstatSync(socketPath).ino === ino) unlinkSync(socketPath);
  } catch {
    // Gone already.
  }
}

// ---------------------------------------------------------------------------
// Server.

interface WatchedRoot {
  root: string;
  dev: number;
  ino: number;
  /** Watched directories by path relative to the root ("" for the root). */
  dirs: Map<string, FSWatcher>;
  /** The generation of the last change of each path. */
  changes: Map<string, number>;
  /** Tokens older than this get "I don't know". */
  validFrom: number;
  /** Set when the watch of this root failed: it is dropped and watched afresh on the next question. */
  failed: boolean;
}

export interface MonitorServer {
  /** Where it listens. */
  readonly socketPath: string;
  close(): Promise<void>;
}

export type StartMonitorResult = { server: MonitorServer } | { server: undefined; reason: string };

/**
 * Starts serving the monitor of the project whose state directory is
 * `stateDir`. When another live monitor already serves it, or the socket
 * cannot be made, says why instead.
 */
export async function startMonitor(stateDir: string): Promise<StartMonitorResult> {
  const socketPath = monitorSocketOf(stateDir);
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
    return {
      server: undefined,
      reason: `its socket path ${socketPath} is longer than the ${MAX_SOCKET_PATH_BYTES} bytes a socket path may be`,
    };
  }
  if (await isServed(socketPath)) return { server: undefined, reason: `another kaos process already serves ${socketPath}` };
  const monitor = new Monitor(stateDir);
  try {
    monitor.startCookies();
    rmSync(socketPath, { force: true });
    const server = createServer((socket) => monitor.serve(socket));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(socketPath, () => resolve());
    });
    return { server: monitor.attach(server, socketPath) };
  } catch (error) {
    monitor.stop();
    return { server: undefined, reason: `cannot serve ${socketPath}: ${error instanceof Error ? error.message : String(error)}` };
  }
}

function isServed(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(socketPath);
    socket.on("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.on("error", () => resolve(false));
  });
}

/**
 * The most inotify events the kernel queues for one reader
 * (`/proc/sys/fs/inotify/max_queued_events`); beyond it, events are dropped.
 */
function kernelQueueLimit(): number {
  try {
    const value = Number.parseInt(readFileSync("/proc/sys/fs/inotify/max_queued_events", "utf8"), 10);
    if (Number.isFinite(value) && value > 0) return value;
  } catch {
    // Not Linux, or no /proc: keep the default.
  }
  return 16_384;
}

class Monitor {
  private readonly startId = randomBytes(8).toString("hex");
  private generation = 0;
  private readonly roots = new Map<string, WatchedRoot>();
  private readonly cookies: string;
  private cookieWatcher: FSWatcher | undefined;
  private readonly waitingCookies = new Map<string, () => void>();
  private nextCookie = 0;
  /** Events since the event loop last went round: one drain of the kernel queue. */
  private burst = 0;
  private burstResetScheduled = false;
  private readonly burstLimit = Math.floor(kernelQueueLimit() / 4);
  private readonly sockets = new Set<Socket>();

  constructor(stateDir: string) {
    this.cookies = monitorCookiesOf(stateDir);
  }

  startCookies(): void {
    rmSync(this.cookies, { recursive: true, force: true });
    mkdirSync(this.cookies, { recursive: true });
    this.cookieWatcher = watch(this.cookies, { persistent: false }, (_event, name) => {
      if (name === null) return;
      const waiting = this.waitingCookies.get(name);
      if (waiting === undefined) return;
      this.waitingCookies.delete(name);
      waiting();
    });
  }

  attach(server: Server, socketPath: string): MonitorServer {
    return {
      socketPath,
      close: async () => {
        for (const socket of this.sockets) socket.destroy();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        this.stop();
      },
    };
  }

  stop(): void {
    this.cookieWatcher?.close();
    for (const root of this.roots.values()) this.drop(root);
    for (const waiting of this.waitingCookies.values()) waiting();
    this.waitingCookies.clear();
    rmSync(this.cookies, { recursive: true, force: true });
  }

  serve(socket: Socket): void {
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    socket.setEncoding("utf8");
    let text = "";
    socket.on("data", (chunk: string) => {
      text += chunk;
      let end = text.indexOf("\n");
      while (end >= 0) {
        const line = text.slice(0, end);
        text = text.slice(end + 1);
        void this.answer(line).then((answer) => {
          if (!socket.destroyed) socket.write(`${JSON.stringify(answer)}\n`);
        });
        end = text.indexOf("\n");
      }
    });
  }

  private async answer(line: string): Promise<MonitorAnswer> {
    let request: { root?: unknown; token?: unknown };
    try {
      request = JSON.parse(line) as typeof request;
    } catch {
      return { token: this.token(), changed: null };
    }
    if (typeof request.root !== "string" || !request.root.startsWith("/")) return { token: this.token(), changed: null };
    // Everything changed before the question is recorded once the cookie comes back.
    const synced = await this.sync();
    const root = this.rootFor(request.root);
    const token = this.token();
    if (!synced || root === undefined) return { token, changed: null };
    return { token, changed: this.changesSince(root, typeof request.token === "string" ? request.token : undefined) };
  }

  private token(): string {
    return `${this.startId}:${this.generation}`;
  }

  private changesSince(root: WatchedRoot, token: string | undefined): string[] | null {
    if (token === undefined) return null;
    const [id, counter] = token.split(":");
    const since = Number(counter);
    if (id !== this.startId || !Number.isSafeInteger(since) || since < root.validFrom || since > this.generation) return null;
    const changed: string[] = [];
    for (const [path, generation] of root.changes) {
      if (generation <= since) continue;
      if (changed.length === MAX_ANSWER_PATHS) return null;
      changed.push(path);
    }
    return changed;
  }

  /** Writes a cookie and waits for its event; false when it does not come back. */
  private sync(): Promise<boolean> {
    if (this.cookieWatcher === undefined) return Promise.resolve(false);
    const name = `${process.pid}-${this.nextCookie++}`;
    const path = join(this.cookies, name);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waitingCookies.delete(name);
        resolve(false);
      }, ANSWER_TIMEOUT_MS);
      this.waitingCookies.set(name, () => {
        clearTimeout(timer);
        rmSync(path, { force: true });
        resolve(true);
      });
      try {
        writeFileSync(path, "");
      } catch {
        clearTimeout(timer);
        this.waitingCookies.delete(name);
        resolve(false);
      }
    });
  }

  /** The watched root at `path`, started on the first question; undefined when it cannot be watched (yet). */
  private rootFor(path: string): WatchedRoot | undefined {
    let known = this.roots.get(path);
    let stats: { dev: number; ino: number; isDirectory(): boolean };
    try {
      stats = statSync(path);
    } catch {
      if (known !== undefined) this.drop(known);
      return undefined;
    }
    // Replaced, moved away or failed: start over.
    if (known !== undefined && (known.failed || known.dev !== stats.dev || known.ino !== stats.ino)) {
      this.drop(known);
      known = undefined;
    }
    if (known !== undefined) return known;
    if (!stats.isDirectory()) return undefined;
    const root: WatchedRoot = {
      root: path,
      dev: stats.dev,
      ino: stats.ino,
      dirs: new Map(),
      changes: new Map(),
      validFrom: 0,
      failed: false,
    };
    this.roots.set(path, root);
    this.watchTree(root, "");
    // A token handed out before every directory was watched says nothing.
    root.validFrom = ++this.generation;
    return root.failed ? undefined : root;
  }

  private drop(root: WatchedRoot): void {
    for (const watcher of root.dirs.values()) watcher.close();
    root.dirs.clear();
    root.failed = true;
    if (this.roots.get(root.root) === root) this.roots.delete(root.root);
  }

  /** Watches `dir` (relative to the root) and every directory below it that a bundle can hold. */
  private watchTree(root: WatchedRoot, dir: string): void {
    if (root.failed || root.dirs.has(dir)) return;
    const absolute = dir === "" ? root.root : join(root.root, dir);
    let watcher: FSWatcher;
    try {
      watcher = watch(absolute, { persistent: false }, (event, name) => this.onEvent(root, dir, event, name));
    } catch (error) {
      const code = errnoCode(error);
      if (code === "ENOENT" || code === "ENOTDIR") return;
      // Out of inotify watches (ENOSPC), permission denied...: this root cannot be followed.
      this.drop(root);
      return;
    }
    watcher.on("error", () => this.drop(root));
    root.dirs.set(dir, watcher);
    let names: import("node:fs").Dirent[];
    try {
      names = readdirSync(absolute, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of names) {
      if (entry.isDirectory() && !ALWAYS_IGNORED.has(entry.name)) this.watchTree(root, dir === "" ? entry.name : `${dir}/${entry.name}`);
    }
  }

  private unwatchTree(root: WatchedRoot, dir: string): void {
    const prefix = `${dir}/`;
    for (const [path, watcher] of root.dirs) {
      if (path === dir || path.startsWith(prefix)) {
        watcher.close();
        root.dirs.delete(path);
      }
    }
  }

  private onEvent(root: WatchedRoot, dir: string, event: string, name: string | Buffer | null): void {
    if (root.failed) return;
    this.countEvent();
    if (name === null || typeof name !== "string") {
      // No name to go by: everything below this directory may have changed.
      this.record(root, dir === "" ? "" : dir);
      return;
    }
    if (dir === "" && name === basename(root.root) && !this.sameRoot(root)) {
      this.drop(root);
      return;
    }
    if (ALWAYS_IGNORED.has(name)) return;
    const path = dir === "" ? name : `${dir}/${name}`;
    if (event === "rename") {
      let isDirectory = false;
      try {
        isDirectory = lstatSync(join(root.root, path)).isDirectory();
      } catch {
        // Gone: so is anything watched below it.
      }
      if (isDirectory) this.watchTree(root, path);
      else this.unwatchTree(root, path);
    }
    this.record(root, path);
  }

  private sameRoot(root: WatchedRoot): boolean {
    try {
      const stats = statSync(root.root);
      return stats.dev === root.dev && stats.ino === root.ino;
    } catch {
      return false;
    }
  }

  /** "" stands for the whole root. */
  private record(root: WatchedRoot, path: string): void {
    const generation = ++this.generation;
    if (path === "") {
      root.changes.clear();
      root.validFrom = generation;
      return;
    }
    root.changes.delete(path);
    root.changes.set(path, generation);
    if (root.changes.size > MAX_REMEMBERED_PATHS) {
      root.changes.clear();
      root.validFrom = generation;
    }
  }

  /**
   * inotify drops events once its queue is full and Node does not say so. The
   * queue is drained in one go each time round the event loop: a drain that
   * comes near the limit may have lost some, and every root starts over.
   */
  private countEvent(): void {
    this.burst++;
    if (!this.burstResetScheduled) {
      this.burstResetScheduled = true;
      setImmediate(() => {
        this.burstResetScheduled = false;
        this.burst = 0;
      });
    }
    if (this.burst === this.burstLimit) {
      const generation = ++this.generation;
      for (const root of this.roots.values()) {
        root.changes.clear();
        root.validFrom = generation;
      }
    }
  }
}
