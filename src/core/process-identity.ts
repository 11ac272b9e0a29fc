/**
 * Which process wrote a record, and whether it still runs. A kaos that holds a
 * lock or owns a run is recorded by its pid, its start token (boot id and start
 * time, so a reused pid is not mistaken for it) and its origin: the machine,
 * the boot and the pid namespace it ran in. Liveness is judged from those, not
 * from the host name, which a container or `unshare --uts` changes at will.
 */
import { createHash, randomUUID } from "node:crypto";
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
  // Old records carry the boot id in their start token only.
  const origin =
    recorded.origin === null
      ? { machineId: "", bootId: recorded.startToken?.split(":")[0] ?? "", pidNamespace: "" }
      : parseOrigin(recorded.origin);
  return judgeOrigin(origin, currentOrigin(), recorded.pid, recorded.startToken);
}

/**
 * Where `origin` ran as seen from `here`, both given the same way (the raw
 * tokens, or both as {@link originTag}'s digests): an empty field is one that
 * could not be read.
 */
function judgeOrigin(origin: Origin, here: Origin, pid: number, startToken: string | null): Liveness {
  const sameBoot = origin.bootId !== "" && origin.bootId === here.bootId;
  if (sameBoot) {
    const sameNamespace = origin.pidNamespace === "" || origin.pidNamespace === here.pidNamespace;
    return sameNamespace ? localLiveness(pid, startToken) : "unknown";
  }
  // Same machine, another boot: everything it ran ended with that boot.
  if (origin.machineId !== "" && origin.machineId === here.machineId && origin.bootId !== "") return "dead";
  // Without a boot id on either side (not Linux), the pid is all there is.
  if (origin.bootId === "" && here.bootId === "") return localLiveness(pid, startToken);
  return "unknown";
}

// ---------------------------------------------------------------- temporary names

/** Hex digits kept of each field of an origin in a name. */
const TAG_FIELD = 8;
/** A field that could not be read, in a tag. */
const UNREAD = "0".repeat(TAG_FIELD);

function digestField(field: string): string {
  return field === "" ? UNREAD : createHash("sha256").update(field).digest("hex").slice(0, TAG_FIELD);
}

function tagOf(origin: Origin): string {
  return digestField(origin.machineId) + digestField(origin.bootId) + digestField(origin.pidNamespace);
}

/**
 * An origin as it goes into a file name: a digest of its machine, boot and pid
 * namespace (8 hex digits each), so a name tells the same things a record does.
 * Without `origin`, this process's.
 */
export function originTag(origin?: string): string {
  if (origin !== undefined) return tagOf(parseOrigin(origin));
  // Every object stored names one temporary: worked out once.
  ownTag ??= tagOf(currentOrigin());
  return ownTag;
}

let ownTag: string | undefined;

/**
 * What names this process's work in progress (a tree being laid out, a file
 * being written) on a volume other machines may share: `PID@TAG`, the pid and
 * {@link originTag}. A pid alone would be judged against the pids of whichever
 * machine looks.
 */
export function ownerStamp(): string {
  return `${process.pid}@${originTag()}`;
}

/**
 * Where this process writes `target` before renaming it into place:
 * `TARGET.STAMP.XXXXXXXX.tmp`, the name crash recovery knows as a write its
 * writer never finished (snapshot.ts, `TEMPORARY_NAMES`).
 */
export function temporaryPathFor(target: string): string {
  return `${target}.${ownerStamp()}.${randomUUID().slice(0, 8)}.tmp`;
}

/** What matches an owner stamp in a pattern: a pid, and the tag (absent from names made before kaos wrote one). */
export const OWNER_STAMP = `\\d+(?:@[0-9a-f]{${3 * TAG_FIELD}})?`;

/** An owner stamp read back from a name: its pid and tag (null in a name made before kaos wrote one). */
export function parseOwnerStamp(stamp: string): { pid: number; tag: string | null } {
  const at = stamp.indexOf("@");
  return at < 0 ? { pid: Number(stamp), tag: null } : { pid: Number(stamp.slice(0, at)), tag: stamp.slice(at + 1) };
}

function originOfTag(tag: string): Origin {
  const field = (index: number): string => {
    const value = tag.slice(index * TAG_FIELD, (index + 1) * TAG_FIELD);
    return value === UNREAD ? "" : value;
  };
  return { machineId: field(0), bootId: field(1), pidNamespace: field(2) };
}

/**
 * Whether the writer that stamped a name still runs, judged as a record's
 * process is: checked directly only on this machine, boot and pid namespace.
 * A name without a tag was made on one machine by a kaos of before tags, and
 * is judged by its pid, as it always was.
 */
export function judgeOwnerStamp(stamp: string): Liveness {
  const { pid, tag } = parseOwnerStamp(stamp);
  if (tag === null) return localLiveness(pid, null);
  return judgeOrigin(originOfTag(tag), originOfTag(originTag()), pid, null);
}

/** Whether a stamp names this very process. */
export function isOwnStamp(stamp: string): boolean {
  const { pid, tag } = parseOwnerStamp(stamp);
  return pid === process.pid && (tag === null || tag === originTag());
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
