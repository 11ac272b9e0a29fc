/**
 * A small disk for `.kaos/`: a real tmpfs of a few MiB mounted on it when this
 * process may mount (root, CAP_SYS_ADMIN), else a simulated one: a module
 * preloaded into kaos (NODE_OPTIONS=--import) that makes Node's writes to
 * files under `.kaos/` fail with ENOSPC once a byte budget is spent. The
 * simulation reaches what kaos writes through Node (downloads, logs, the
 * copies a snapshot makes) but not SQLite's own writes nor a train script's,
 * which the tmpfs reaches.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

export type DiskKind = "tmpfs" | "simulated";

export interface SmallDisk {
  kind: DiskKind;
  /** Environment for kaos so that the limit applies (the preload, for the simulated disk). */
  env: Record<string, string>;
  /** Makes room: the next runs have plenty of space. */
  grow(): void;
  release(): void;
}

function mount(args: string[]): boolean {
  return spawnSync("mount", args, { stdio: "ignore" }).status === 0;
}

/** Whether a tmpfs can be mounted here; `KAOS_FAULTS_DISK=simulated` (read by the tests only) forces the simulation. */
export function diskKind(): DiskKind {
  if (process.env.KAOS_FAULTS_DISK === "simulated") return "simulated";
  const probe = mkdtempSync(join(tmpdir(), "kaos-mount-probe-"));
  try {
    if (!mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs", probe])) return "simulated";
    spawnSync("umount", [probe], { stdio: "ignore" });
    return "tmpfs";
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
}

const PRELOAD = `
import fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";
const dir = process.env.KAOS_FAULTS_FULL_DIR;
let budget = Number(process.env.KAOS_FAULTS_FULL_BYTES);
const fds = new Set();
const match = process.env.KAOS_FAULTS_FULL_MATCH ? new RegExp(process.env.KAOS_FAULTS_FULL_MATCH) : undefined;
const watched = (path) => typeof path === "string" && path.startsWith(dir) && (match === undefined || match.test(path));
const full = () => Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC", errno: -28, syscall: "write" });
const spend = (bytes) => { if (budget < bytes) return false; budget -= bytes; return true; };
const size = (buffer, offset, length) => typeof buffer === "string" ? Buffer.byteLength(buffer) : typeof length === "number" ? length : buffer.byteLength - (typeof offset === "number" ? offset : 0);
const { openSync, open, closeSync, close, writeSync, write, writev, copyFileSync } = fs;
fs.copyFileSync = function (src, dest, ...rest) { if (watched(String(dest)) && !spend(fs.statSync(src).size)) throw Object.assign(full(), { syscall: "copyfile" }); return copyFileSync.call(fs, src, dest, ...rest); };
fs.openSync = function (path, ...rest) { const fd = openSync.call(fs, path, ...rest); if (watched(String(path))) fds.add(fd); return fd; };
fs.open = function (path, ...rest) { const done = rest.pop(); return open.call(fs, path, ...rest, (error, fd) => { if (!error && watched(String(path))) fds.add(fd); done(error, fd); }); };
fs.closeSync = function (fd) { fds.delete(fd); return closeSync.call(fs, fd); };
fs.close = function (fd, ...rest) { fds.delete(fd); return close.call(fs, fd, ...rest); };
fs.writeSync = function (fd, buffer, offset, length, ...rest) { if (fds.has(fd) && !spend(size(buffer, offset, length))) throw full(); return writeSync.call(fs, fd, buffer, offset, length, ...rest); };
fs.write = function (fd, buffer, ...rest) { if (fds.has(fd)) { const done = rest[rest.length - 1]; const bytes = size(buffer, rest[0], rest[1]); if (!spend(bytes)) { process.nextTick(done, full()); return; } } return write.call(fs, fd, buffer, ...rest); };
fs.writev = function (fd, buffers, ...rest) { if (fds.has(fd)) { const done = rest[rest.length - 1]; const bytes = buffers.reduce((sum, b) => sum + b.byteLength, 0); if (!spend(bytes)) { process.nextTick(done, full()); return; } } return writev.call(fs, fd, buffers, ...rest); };
syncBuiltinESMExports();
`;

/**
 * Puts `.kaos/` of a project on a disk of `bytes` (mounted before kaos first
 * runs there). For the simulated disk, `match` (a regular expression) narrows
 * the budget to the files it matches, so that it runs out where the test means.
 */
export function smallDisk(kind: DiskKind, stateDir: string, bytes: number, match?: string): SmallDisk {
  mkdirSync(stateDir, { recursive: true });
  if (kind === "tmpfs") {
    if (!mount(["-t", "tmpfs", "-o", `size=${bytes}`, "tmpfs", stateDir])) throw new Error(`cannot mount a tmpfs on ${stateDir}`);
    return {
      kind,
      env: {},
      grow: () => {
        if (!mount(["-o", "remount,size=256m", stateDir])) throw new Error(`cannot grow the tmpfs on ${stateDir}`);
      },
      release: () => {
        spawnSync("umount", ["-l", stateDir], { stdio: "ignore" });
      },
    };
  }
  const preload = join(mkdtempSync(join(tmpdir(), "kaos-enospc-")), "enospc.mjs");
  writeFileSync(preload, PRELOAD);
  const disk: SmallDisk = {
    kind,
    env: {
      NODE_OPTIONS: `--import=${pathToFileURL(preload).href}`,
      KAOS_FAULTS_FULL_DIR: stateDir,
      KAOS_FAULTS_FULL_BYTES: String(bytes),
      ...(match === undefined ? {} : { KAOS_FAULTS_FULL_MATCH: match }),
    },
    grow: () => {
      disk.env = {};
    },
    release: () => rmSync(join(preload, ".."), { recursive: true, force: true }),
  };
  return disk;
}

/** Makes `dir` read-only by mounting it onto itself read-only (where this process may mount: see diskKind). */
export function readOnlyMount(dir: string): { release(): void } {
  if (!mount(["--bind", dir, dir])) throw new Error(`cannot bind-mount ${dir}`);
  if (!mount(["-o", "remount,ro,bind", dir])) {
    spawnSync("umount", [dir], { stdio: "ignore" });
    throw new Error(`cannot remount ${dir} read-only`);
  }
  return { release: () => void spawnSync("umount", ["-l", dir], { stdio: "ignore" }) };
}
