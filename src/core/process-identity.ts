/**
 * Which process wrote a record, and whether it still runs. A kaos that holds a
 * lock or owns a run is recorded by its pid, its start token (boot id and start
 * time, so a reused pid is not mistaken for it) and its origin: the machine,
 * the boot and the pid namespace it ran in. Liveness is judged from those, not
 * from the host name, which a container or `unshare --uts` changes at will.
 */
import { readFileSync, readlinkSync } from "node:fs";
import { errnoCode } from "./errors.js";

/** The fields of `/proc/PID/stat` kaos reads. */
export interface ProcStat {
  /** One letter: R, S, D, Z... */
  state: string;
  pgid: number;
  /** Clock ticks since boot. */
  startTicks: number;
  /** Resident pages. */
  rssPages: number;
}

/** `/proc/PID/stat` of a live process (Linux only), or undefined once it is gone or elsewhere. */
export function readProcStat(pid: number | string): ProcStat | undefined {
  if (process.platform !== "linux") return undefined;
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // The fields after the command name, which may hold spaces and parentheses;
  // fields[0] is field 3 of proc(5), `state`.
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const startTicks = Number(fields[19]);
  if (fields[0] === undefined || !Number.isFinite(startTicks)) return undefined;
  return { state: fields[0], pgid: Number(fields[2]), startTicks, rssPages: Number(fields[21]) };
}

function readTrimmed(path: string): string {
  try {
    return readFileSync(path, "utf8").trim();
  } catch {
    return "";
  }
}

interface Origin {
  machineId: string;
  bootId: string;
  pidNamespace: string;
}

let ownOrigin: Origin | undefined;

function currentOrigin(): Origin {
  if (ownOrigin !== undefined) return ownOrigin;
  let pidNamespace = "";
  try {
    pidNamespace = readlinkSync("/proc/self/ns/pid");
  } catch {
    // not Linux, or /proc not mounted
  }
  ownOrigin = {
    machineId: readTrimmed("/etc/machine-id") || readTrimmed("/var/lib/dbus/machine-id"),
    bootId: readTrimmed("/proc/sys/kernel/random/boot_id"),
    pidNamespace,
  };
  return ownOrigin;
}

/** This process's origin as stored beside its pid: `machine-id boot-id pid-namespace`. */
export function originToken(): string {
  const origin = currentOrigin();
  return `${origin.machineId} ${origin.bootId} ${origin.pidNamespace}`;
}

function parseOrigin(token: string): Origin {
  const [machineId = "", bootId = "", pidNamespace = ""] = token.split(" ");
  return { machineId, bootId, pidNamespace };
}

/**
 * Something that tells one process from a later one reusing its pid: on Linux the
 * boot id and the process start time; elsewhere null (pid only).
 */
export function processStartToken(pid: number): string | null {
  const stat = readProcStat(pid);
  return stat === undefined ? null : `${currentOrigin().bootId}:${stat.startTicks}`;
}

/** What a record tells of the process that wrote it. */
export interface RecordedProcess {
  pid: number;
  /** From {@link processStartToken}, or null where it could not be read. */
  startToken: string | null;
  /** From {@link originToken}; null in records written before kaos kept it. */
  origin: string | null;
}

/**
 * - `alive`: it runs, here.
 * - `dead`: it is gone (exited, killed, or its machine rebooted since).
 * - `unknown`: it ran where this process cannot look, another machine or another
 *   container's pid namespace; only a person can say (see `kaos unlock`).
 */
export type Liveness = "alive" | "dead" | "unknown";

export function judgeProcess(recorded: RecordedProcess): Liveness {
  const here = currentOrigin();
  // Old records carry the boot id in their start token only.
  const origin =
    recorded.origin === null
      ? { machineId: "", bootId: recorded.startToken?.split(":")[0] ?? "", pidNamespace: "" }
      : parseOrigin(recorded.origin);
  const sameBoot = origin.bootId !== "" && origin.bootId === here.bootId;
  if (sameBoot) {
    const sameNamespace = origin.pidNamespace === "" || origin.pidNamespace === here.pidNamespace;
    return sameNamespace ? localLiveness(recorded.pid, recorded.startToken) : "unknown";
  }
  // Same machine, another boot: everything it ran ended with that boot.
  if (origin.machineId !== "" && origin.machineId === here.machineId && origin.bootId !== "") return "dead";
  // Without a boot id on either side (not Linux), the pid is all there is.
  if (origin.bootId === "" && here.bootId === "") return localLiveness(recorded.pid, recorded.startToken);
  return "unknown";
}

/** Whether the process with this pid (and start token, when known) runs on this machine. */
export function isProcessAlive(pid: number, startToken: string | null): boolean {
  return localLiveness(pid, startToken) === "alive";
}

function localLiveness(pid: number, startToken: string | null): "alive" | "dead" {
  if (!Number.isInteger(pid) || pid <= 0) return "dead";
  try {
    process.kill(pid, 0);
  } catch (error) {
    // EPERM: it exists but belongs to another user.
    if (errnoCode(error) !== "EPERM") return "dead";
  }
  const stat = readProcStat(pid);
  // It answered the signal: without /proc (not Linux, or it exited just now) that is all there is to go on.
  if (stat === undefined) return "alive";
  // A zombie has exited; only its parent has not collected it yet.
  if (stat.state === "Z") return "dead";
  if (startToken === null) return "alive";
  return `${currentOrigin().bootId}:${stat.startTicks}` === startToken ? "alive" : "dead";
}
