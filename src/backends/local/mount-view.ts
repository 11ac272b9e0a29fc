/**
 * A data bundle shown to its jobs as itself: the bundle's own folder, mounted
 * read-only over the view's empty folder in a mount namespace of the job's
 * own (`unshare`). Nothing is copied or linked, so a new bundle costs its jobs
 * nothing to lay out, and the mount refuses every write (EROFS) where a
 * hardlinked view would pass it on to the user's files. An edit of the bundle
 * by anyone else still shows through: the bundle itself is sealed, and checked
 * after each job as a linked view is (see data-view.ts).
 *
 * Root mounts in a mount namespace alone. Anyone else first takes a user
 * namespace in which they are root (util-linux's `mount` refuses a bind mount
 * to anyone it does not see as root), mounts, then steps into a nested one
 * that gives them back their own uid and gid, so the job runs as who started
 * kaos. Where neither works (no util-linux, user namespaces turned off, a
 * container without the capability), data views are hardlinks as before.
 */
import { spawn } from "node:child_process";
import { mkdirSync, rmSync, statSync } from "node:fs";
import { delimiter, join } from "node:path";
import { which } from "./python.js";

/** How a job is started inside a mount namespace holding its data view. */
export interface MountNamespace {
  /** `command args` run with `source` mounted read-only at `target`. */
  wrap(source: string, target: string, command: string, args: readonly string[]): { command: string; args: string[] };
}

/** The exit status a job's wrapper gives when the mount fails, before the job's own command ran. */
export const MOUNT_FAILED_EXIT = 125;

/**
 * Mounts `$2` read-only at `$3` with the mount program `$1`, then runs the
 * rest. `-o ro` with `--bind` is a bind then a read-only remount (util-linux
 * 2.27 and later); the probe checks that the mount is read-only.
 */
const MOUNT_SCRIPT = `m=$1 s=$2 t=$3; shift 3; "$m" --bind -o ro -- "$s" "$t" || { echo "kaos: cannot mount the data bundle $s read-only at $t (exit status ${MOUNT_FAILED_EXIT}); set dataViews: \\"link\\" in the stack to use hardlinks instead" >&2; exit ${MOUNT_FAILED_EXIT}; }; exec "$@"`;

/** The probe's answer by the device of the folder mounted. */
const probed = new Map<string, Promise<MountNamespace | undefined>>();

/**
 * How this machine runs a job with the folder `source` mounted read-only in
 * a mount namespace of its own; undefined where it cannot. Probed once per
 * process and file system by mounting `source` itself at an empty folder
 * made in `probeDir` (a fresh name in a folder kaos owns, removed after):
 * whether it can be mounted depends on its file system too (as a user, one
 * mounted `nosuid` or `nodev`, or holding other mounts, cannot be). Asked as
 * a run starts (`LocalBackend.execute`), the probe runs while the run does
 * other work.
 */
export function mountNamespace(probeDir: string, source: string): Promise<MountNamespace | undefined> {
  let device: string;
  try {
    device = String(statSync(source).dev);
  } catch {
    return Promise.resolve(undefined);
  }
  let answer = probed.get(device);
  if (answer === undefined) {
    answer = probe(probeDir, source);
    probed.set(device, answer);
  }
  return answer;
}

async function probe(probeDir: string, source: string): Promise<MountNamespace | undefined> {
  if (process.platform !== "linux") return undefined;
  const unshare = findProgram("unshare");
  const mount = findProgram("mount");
  const shell = findProgram("sh");
  if (unshare === undefined || mount === undefined || shell === undefined) return undefined;
  const uid = process.getuid?.() ?? -1;
  const gid = process.getgid?.() ?? -1;
  const candidates: MountNamespace[] = [];
  if (uid === 0) candidates.push(namespaceOf(unshare, ["--mount"], mount, shell, []));
  if (uid >= 0 && gid >= 0) {
    // Back to the caller's own uid and gid once mounted, in a nested user namespace.
    const ownIds = [unshare, "--user", `--map-user=${uid}`, `--map-group=${gid}`, "--"];
    candidates.push(namespaceOf(unshare, ["--user", "--map-root-user", "--mount"], mount, shell, ownIds));
  }
  for (const candidate of candidates) if (await works(candidate, probeDir, source, shell, uid)) return candidate;
  return undefined;
}

function namespaceOf(unshare: string, options: string[], mount: string, shell: string, then: string[]): MountNamespace {
  return {
    wrap: (source, target, command, args) => ({
      command: unshare,
      args: [...options, "--", shell, "-c", MOUNT_SCRIPT, "kaos-data-view", mount, source, target, ...then, command, ...args],
    }),
  };
}

/**
 * Whether `namespace` shows `source` at a folder in `root`, as the caller's
 * own uid, on a read-only mount. Nothing is written to `source`: access(2)
 * tells a read-only file system without trying.
 */
async function works(namespace: MountNamespace, root: string, source: string, shell: string, uid: number): Promise<boolean> {
  const target = join(root, "target");
  try {
    mkdirSync(target, { recursive: true });
    const check = `test -d "$1" && ls "$1" > /dev/null && test "$(id -u)" = "$2" && ! test -w "$1"`;
    const { command, args } = namespace.wrap(source, target, shell, ["-c", check, "kaos-mount-probe", target, String(uid)]);
    return await new Promise<boolean>((resolve) => {
      const child = spawn(command, args, { stdio: "ignore", timeout: 10_000 });
      child.on("error", () => resolve(false));
      child.on("exit", (code) => resolve(code === 0));
    });
  } catch {
    return false;
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

/** The first executable `name` on PATH or in the system folders, by absolute path: a job's PATH starts with its environment's. */
function findProgram(name: string): string | undefined {
  const folders = [...(process.env.PATH ?? "").split(delimiter), "/usr/bin", "/bin", "/usr/sbin", "/sbin"];
  return which(name, folders.filter((folder) => folder.startsWith("/")).join(delimiter));
}
