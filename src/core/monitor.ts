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
 * Watching a root of many directories takes a while (10k directories of a
 * million files: seconds on a loaded machine), and the monitor sets it up a
 * slice of directories at a time, answering questions in between. A question
 * about a root still being set up is answered at once, "I don't know" with
 * how far the set-up has gone: the planner walks rather than wait. Its walk
 * began before the set-up ended, so no token handed out then can vouch for
 * it; the planner asks again with `wait`, and the monitor answers that one
 * only once every directory is watched, sending a progress line after each
 * slice meanwhile (so a planner waits while the set-up advances, not for a
 * fixed time). The token of that answer comes after the set-up: a planner
 * that then looks at every file's stat afresh, which its own walk has just
 * cached, can keep that token, and the next plan walks nothing.
 *
 * The protocol is one JSON line each way: `{"root", "token", "wait"?}` then
 * `{"token", "changed", "settingUp"?}` with `changed` a list of paths
 * relative to the root ('/' separated), or null for "I don't know", and
 * `settingUp` (`{"watched", "found"}` directories) while the root is being
 * set up. A question with `wait` may get `{"settingUp"}` lines before its
 * answer.
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
import { basename, join, relative } from "node:path";
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
  changesSince(root: string, token: string | undefined, options?: { untilReady?: boolean }): Promise<MonitorAnswer | undefined>;
}

export interface MonitorAnswer {
  token: string;
  changed: string[] | null;
  /** Present while the monitor is still setting up the watches of the root: `changed` is null then. */
  settingUp?: SetupProgress;
}

/** How far the monitor has got watching a root's directories. */
export interface SetupProgress {
  watched: number;
  /** Directories found so far (the watched ones included): more may turn up below those not yet watched. */
  found: number;
}

/** What `startMonitor` tells its caller about the roots it sets up. */
export interface MonitorEvents {
  /** A question about `root` started watching it, and the set-up will take more than one slice. */
  settingUp?(root: string, progress: SetupProgress): void;
  /** Every directory of `root` is watched. */
  ready?(root: string, directories: number): void;
}

/** Events that tell of each root whose set-up takes a while, as lines relative to `dir` given to `print`. */
export function setupReporter(dir: string, print: (line: string) => void): MonitorEvents {
  const shown = (root: string): string => relative(dir, root) || ".";
  return {
    settingUp: (root, progress) =>
      print(
        `file system monitor: setting up watches under ${shown(root)} (${progress.watched} of ${progress.found} directories found so far)`,
      ),
    ready: (root, directories) => print(`file system monitor: watching all ${directories} directories under ${shown(root)}`),
  };
}

/** More changed paths than this since a token: walking in parallel is as fast, so the answer is "I don't know". */
export const MAX_ANSWER_PATHS = 1024;
/** Distinct changed paths a root remembers; past it, older tokens get "I don't know". */
const MAX_REMEMBERED_PATHS = 65_536;
/**
 * How long a planner waits for an answer, or for the next progress line of a
 * set-up, before it walks anyway: a monitor that says nothing for this long
 * is stuck.
 */
const ANSWER_TIMEOUT_MS = 5_000;
/** Directories watched between two turns of the event loop while a root is set up. */
const SETUP_SLICE_DIRS = 100;
/** Longest socket path the kernel takes (sun_path is 108 bytes with its NUL). */
const MAX_SOCKET_PATH_BYTES = 107;

// ---------------------------------------------------------------------------
// Client.

/** The monitor of the project whose state directory is `stateDir`, asked through its socket. */
export function projectMonitor(stateDir: string): TreeMonitor {
  const socketPath = monitorSocketOf(stateDir);
  // A monitor that let a question go unanswered (stopped with Ctrl-Z, stuck) is not asked again:
  // each question would wait as long, one per tree of the plan.
  let silent = false;
  return {
    changesSince: async (root, token, options) => {
      if (silent) return undefined;
      return ask(socketPath, root, token, options?.untilReady === true, () => {
        silent = true;
      });
    },
  };
}

function ask(
  socketPath: string,
  root: string,
  token: string | undefined,
  untilReady: boolean,
  timedOut: () => void,
): Promise<MonitorAnswer | undefined> {
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
    const giveUp = (): void => {
      timedOut();
      finish(undefined);
    };
    let timer = setTimeout(giveUp, ANSWER_TIMEOUT_MS);
    socket.setEncoding("utf8");
    socket.on("connect", () =>
      socket.write(`${JSON.stringify(untilReady ? { root, token: token ?? null, wait: true } : { root, token: token ?? null })}\n`),
    );
    socket.on("data", (chunk: string) => {
      text += chunk;
      let end = text.indexOf("\n");
      while (end >= 0 && !settled) {
        const line = text.slice(0, end);
        text = text.slice(end + 1);
        if (untilReady && isProgress(line)) {
          // The set-up is moving: wait on.
          clearTimeout(timer);
          timer = setTimeout(giveUp, ANSWER_TIMEOUT_MS);
        } else {
          finish(parseAnswer(line));
        }
        end = text.indexOf("\n");
      }
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

/** A `{"settingUp"}` line the monitor sends while a waited-for set-up advances. */
function isProgress(line: string): boolean {
  try {
    const value = JSON.parse(line) as { token?: unknown; settingUp?: unknown };
    return value.token === undefined && progressOf(value.settingUp) !== undefined;
  } catch {
    return false;
  }
}

function progressOf(value: unknown): SetupProgress | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const { watched, found } = value as { watched?: unknown; found?: unknown };
  return Number.isSafeInteger(watched) && Number.isSafeInteger(found) ? { watched: watched as number, found: found as number } : undefined;
}

function parseAnswer(line: string): MonitorAnswer | undefined {
  try {
    const value = JSON.parse(line) as { token?: unknown; changed?: unknown; settingUp?: unknown };
    if (typeof value.token !== "string") return undefined;
    const settingUp = progressOf(value.settingUp);
    if (settingUp !== undefined) return { token: value.token, changed: null, settingUp };
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
  /** Present until every directory of the root is watched. */
  setup?: RootSetup;
}

interface RootSetup {
  /** Directories found but not watched yet. */
  pending: string[];
  /** Told after each slice with the progress, then with `true` once every directory is watched (`false`: dropped). */
  listeners: Set<(progress: SetupProgress | boolean) => void>;
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
export async function startMonitor(stateDir: string, events: MonitorEvents = {}): Promise<StartMonitorResult> {
  const socketPath = monitorSocketOf(stateDir);
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
    return {
      server: undefined,
      reason: `its socket path ${socketPath} is longer than the ${MAX_SOCKET_PATH_BYTES} bytes a socket path may be`,
    };
  }
  if (await isServed(socketPath)) return { server: undefined, reason: `another kaos process already serves ${socketPath}` };
  const monitor = new Monitor(stateDir, events);
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

  constructor(
    stateDir: string,
    private readonly events: MonitorEvents,
  ) {
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
        const send = (message: object): void => {
          if (!socket.destroyed) socket.write(`${JSON.stringify(message)}\n`);
        };
        void this.answer(line, send).then(send);
        end = text.indexOf("\n");
      }
    });
  }

  private async answer(line: string, send: (progress: { settingUp: SetupProgress }) => void): Promise<MonitorAnswer> {
    let request: { root?: unknown; token?: unknown; wait?: unknown };
    try {
      request = JSON.parse(line) as typeof request;
    } catch {
      return { token: this.token(), changed: null };
    }
    if (typeof request.root !== "string" || !request.root.startsWith("/")) return { token: this.token(), changed: null };
    // Everything changed before the question is recorded once the cookie comes back.
    const synced = await this.sync();
    let root = this.rootFor(request.root);
    if (root?.setup !== undefined) {
      if (request.wait !== true) return { token: this.token(), changed: null, settingUp: this.progress(root) };
      root = (await this.untilReady(root, (settingUp) => send({ settingUp }))) ? root : undefined;
    }
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
    // The first slice is set up before answering: a small root is ready at once.
    root.setup = { pending: [""], listeners: new Set() };
    this.setUpSlice(root);
    if (root.failed) return undefined;
    if (root.setup !== undefined) {
      this.events.settingUp?.(root.root, this.progress(root));
      setImmediate(() => this.setUpRest(root));
    }
    return root;
  }

  private progress(root: WatchedRoot): SetupProgress {
    return { watched: root.dirs.size, found: root.dirs.size + (root.setup?.pending.length ?? 0) };
  }

  /** Watches the next slice of the root's directories; marks the root ready when none is left. */
  private setUpSlice(root: WatchedRoot): void {
    const setup = root.setup;
    if (setup === undefined) return;
    for (let count = 0; count < SETUP_SLICE_DIRS && setup.pending.length > 0 && !root.failed; count++) {
      const dir = setup.pending.pop()!;
      for (const child of this.watchDir(root, dir)) setup.pending.push(child);
    }
    if (root.failed || setup.pending.length > 0) return;
    root.setup = undefined;
    // A token handed out before every directory was watched says nothing.
    root.validFrom = ++this.generation;
    for (const listener of setup.listeners) listener(true);
  }

  /** The rest of a root's set-up, a slice each turn of the event loop, so that questions are answered meanwhile. */
  private setUpRest(root: WatchedRoot): void {
    const setup = root.setup;
    if (setup === undefined || root.failed) return;
    this.setUpSlice(root);
    if (root.failed) return;
    if (root.setup === undefined) {
      this.events.ready?.(root.root, root.dirs.size);
      return;
    }
    const progress = this.progress(root);
    for (const listener of setup.listeners) listener(progress);
    setImmediate(() => this.setUpRest(root));
  }

  /** Resolves once every directory of the root is watched (true) or the root is dropped (false); `progress` hears of each slice. */
  private untilReady(root: WatchedRoot, progress: (settingUp: SetupProgress) => void): Promise<boolean> {
    const setup = root.setup;
    if (setup === undefined) return Promise.resolve(!root.failed);
    return new Promise((resolve) => {
      const listener = (state: SetupProgress | boolean): void => {
        if (typeof state !== "boolean") {
          progress(state);
          return;
        }
        setup.listeners.delete(listener);
        resolve(state);
      };
      setup.listeners.add(listener);
    });
  }

  private drop(root: WatchedRoot): void {
    for (const watcher of root.dirs.values()) watcher.close();
    root.dirs.clear();
    root.failed = true;
    if (this.roots.get(root.root) === root) this.roots.delete(root.root);
    const setup = root.setup;
    if (setup !== undefined) {
      root.setup = undefined;
      for (const listener of setup.listeners) listener(false);
    }
  }

  /** Watches `dir` (relative to the root) and every directory below it that a bundle can hold. */
  private watchTree(root: WatchedRoot, dir: string): void {
    const pending = [dir];
    while (pending.length > 0 && !root.failed) {
      for (const child of this.watchDir(root, pending.pop()!)) pending.push(child);
    }
  }

  /** Watches `dir` (relative to the root) alone; returns the directories in it to watch next. */
  private watchDir(root: WatchedRoot, dir: string): string[] {
    if (root.failed || root.dirs.has(dir)) return [];
    const absolute = dir === "" ? root.root : join(root.root, dir);
    let watcher: FSWatcher;
    try {
      watcher = watch(absolute, { persistent: false }, (event, name) => this.onEvent(root, dir, event, name));
    } catch (error) {
      const code = errnoCode(error);
      if (code === "ENOENT" || code === "ENOTDIR") return [];
      // Out of inotify watches (ENOSPC), permission denied...: this root cannot be followed.
      this.drop(root);
      return [];
    }
    watcher.on("error", () => this.drop(root));
    root.dirs.set(dir, watcher);
    let names: import("node:fs").Dirent[];
    try {
      names = readdirSync(absolute, { withFileTypes: true });
    } catch {
      return [];
    }
    const children: string[] = [];
    for (const entry of names) {
      if (entry.isDirectory() && !ALWAYS_IGNORED.has(entry.name)) children.push(dir === "" ? entry.name : `${dir}/${entry.name}`);
    }
    return children;
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
