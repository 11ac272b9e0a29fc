/**
 * The source bundle contract: a directory holding `Dockerfile` and `model/`
 * with `requirements.txt` and an executable `train`, and optionally
 * `requirements.lock` (every package pinned, as `pip freeze` writes them)
 * from which the environment is then built.
 */
import { accessSync, constants, readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { KaosError } from "./errors.js";

export interface SourceBundle {
  dir: string;
  dockerfile: string;
  requirements: string;
  /** `model/requirements.lock`, when the bundle pins its packages. */
  lock: string | undefined;
  /** The files requirements.txt brings in with `-r` or `-c`, nested ones included: pip reads them too. */
  includes: string[];
  train: string;
  /** `X.Y` from a `FROM python:X.Y...` line, when the Dockerfile names one. */
  pythonVersion: string | undefined;
}

function kind(path: string): "file" | "dir" | "missing" | "other" {
  try {
    const stat = statSync(path);
    if (stat.isFile()) return "file";
    if (stat.isDirectory()) return "dir";
    return "other";
  } catch {
    return "missing";
  }
}

/** The Python version a Dockerfile's first `FROM python:X.Y` names. */
export function pythonVersionOf(dockerfile: string): string | undefined {
  for (const line of dockerfile.split(/\r?\n/)) {
    const match = /^\s*FROM\s+(?:--platform=\S+\s+)?(?:\S+\/)?python:(\d+)\.(\d+)/i.exec(line);
    if (match) return `${match[1]}.${match[2]}`;
  }
  return undefined;
}

/**
 * Checks every piece of the contract and reports all missing pieces at once;
 * `where` names the config key that points at the bundle.
 */
export function validateSourceBundle(dir: string, where: string): SourceBundle {
  const dockerfile = join(dir, "Dockerfile");
  const model = join(dir, "model");
  const requirements = join(model, "requirements.txt");
  const train = join(model, "train");
  const missing: string[] = [];
  if (kind(dir) !== "dir") {
    throw new KaosError("BUNDLE_INVALID", `${where}: ${dir} is not a directory; expected a source bundle (Dockerfile and model/)`);
  }
  if (kind(dockerfile) !== "file") missing.push(`${dockerfile}: missing; expected the Dockerfile that builds the training image`);
  if (kind(model) !== "dir") {
    missing.push(`${model}/: missing; expected a model/ directory with requirements.txt and an executable train`);
  } else {
    if (kind(requirements) !== "file") missing.push(`${requirements}: missing; expected the Python requirements (may be empty)`);
    if (kind(train) !== "file") {
      missing.push(`${train}: missing; expected the executable training script`);
    } else {
      try {
        accessSync(train, constants.X_OK);
        if ((statSync(train).mode & 0o111) === 0) throw new Error("not executable");
      } catch {
        missing.push(`${train}: not executable; run \`chmod +x ${train}\``);
      }
    }
  }
  if (missing.length > 0) {
    throw new KaosError("BUNDLE_INVALID", `${where}: invalid source bundle ${dir}\n${missing.join("\n")}`);
  }
  const lockPath = join(model, "requirements.lock");
  const lockKind = kind(lockPath);
  if (lockKind !== "missing" && lockKind !== "file") {
    throw new KaosError("BUNDLE_INVALID", `${where}: ${lockPath}: not a file; expected the pinned packages (name==version per line)`);
  }
  const files = requirementFiles(requirements);
  if (lockKind === "file") checkLockCovers(files, lockPath, readRequirementsLock(lockPath));
  const dockerText = readFileSync(dockerfile, "utf8");
  const lock = lockKind === "file" ? lockPath : undefined;
  const includes = files.slice(1).map((file) => file.path);
  return { dir, dockerfile, requirements, lock, includes, train, pythonVersion: pythonVersionOf(dockerText) };
}

/** `-r FILE`, `--requirement FILE`, `-c FILE`, `--constraint FILE` (or `=FILE`, or `-rFILE`). */
const INCLUDE_OPTION = /^(-r|--requirement|-c|--constraint)(?:\s*=\s*|\s*)(\S+)$/;
/** A URL, which pip fetches: its address is in the including file's text, its content is not kaos's to read. */
const URL_REFERENCE = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//;

/** The logical lines of a pip requirements file as pip reads them: continuations joined, comments dropped. */
function requirementLines(text: string): { line: string; number: number }[] {
  const lines: { line: string; number: number }[] = [];
  let pending: { line: string; number: number } | undefined;
  for (const [index, raw] of text.split(/\r?\n/).entries()) {
    const part = pending === undefined ? { line: raw, number: index + 1 } : { line: `${pending.line}${raw}`, number: pending.number };
    if (part.line.endsWith("\\")) {
      pending = { line: part.line.slice(0, -1), number: part.number };
      continue;
    }
    pending = undefined;
    lines.push({ line: part.line.replace(/(^|\s)#.*$/, "").trim(), number: part.number });
  }
  if (pending !== undefined) lines.push({ line: pending.line.replace(/(^|\s)#.*$/, "").trim(), number: pending.number });
  return lines;
}

/** A requirements file and whether pip reads it as constraints (reached through `-c`), which install nothing themselves. */
interface RequirementFile {
  path: string;
  constraints: boolean;
  /** Its logical lines, read once for both the includes and the lock check. */
  lines: { line: string; number: number }[];
}

/**
 * The files a requirements file brings in with `-r` and `-c`, and those they
 * bring in, each relative to the file that names it as pip resolves them.
 * They decide what is installed as much as requirements.txt does, so they
 * belong in the env key. A named file that is missing stops the run with the
 * file and line that name it. `requirements` comes first, then the included
 * files in the order pip meets them.
 */
function requirementFiles(requirements: string): RequirementFile[] {
  const read = (path: string, constraints: boolean): RequirementFile => ({
    path,
    constraints,
    lines: requirementLines(readFileSync(path, "utf8")),
  });
  const files: RequirementFile[] = [read(resolve(requirements), false)];
  const seen = new Set([files[0]!.path]);
  const visit = (file: RequirementFile): void => {
    for (const { line, number } of file.lines) {
      const match = INCLUDE_OPTION.exec(line);
      const target = match?.[2];
      if (target === undefined || URL_REFERENCE.test(target)) continue;
      const path = resolve(dirname(file.path), target);
      if (seen.has(path)) continue;
      if (kind(path) !== "file") {
        throw new KaosError(
          "BUNDLE_INVALID",
          `${file.path}:${number}: ${JSON.stringify(line)} names ${path}, which is not a file; expected the requirements file it includes`,
        );
      }
      seen.add(path);
      const included = read(path, file.constraints || match?.[1] === "-c" || match?.[1] === "--constraint");
      files.push(included);
      visit(included);
    }
  };
  visit(files[0]!);
  return files;
}

/** A requirement line that names a package: the name, extras, then a version specifier, `@ URL`, markers or nothing. */
const REQUIREMENT = /^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*(?:(@|===?|~=|!=|<=?|>=?)\s*(.*?))?\s*(;.*)?$/;
/** A plain release number, which compares as numbers with missing parts as zeros (PEP 440: 1.1 == 1.1.0). */
const RELEASE = /^\d+(?:\.\d+)*$/;

/** Package names compare case-insensitively, with runs of -_. as one (PEP 503). */
function normalName(name: string): string {
  return name.toLowerCase().replace(/[-_.]+/g, "-");
}

function sameRelease(a: string, b: string): boolean {
  const x = a.split(".").map(Number);
  const y = b.split(".").map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i += 1) if ((x[i] ?? 0) !== (y[i] ?? 0)) return false;
  return true;
}

/**
 * A lock is the whole environment, so one that has fallen behind
 * requirements.txt (a package added there, or pinned to another version) would
 * build an environment that is not what requirements.txt says: refused with
 * the line. Requirements with markers, and paths or URLs without a name, are
 * left to the lock, as kaos cannot judge them here.
 */
function checkLockCovers(files: readonly RequirementFile[], lockPath: string, lock: RequirementsLock): void {
  const hint = { hint: `update the lock from an environment made from requirements.txt: python -m pip freeze > ${lockPath}` };
  for (const file of files) {
    if (file.constraints) continue;
    for (const { line, number } of file.lines) {
      if (line === "" || line.startsWith("-")) continue;
      const match = REQUIREMENT.exec(line);
      if (match === null || match[4] !== undefined) continue;
      const [, name = "", operator, version] = match;
      if (/\.(?:whl|zip|tar\.gz|tgz)$/i.test(name)) continue;
      const pinned = lock.packages.get(normalName(name));
      if (pinned === undefined) {
        throw new KaosError(
          "BUNDLE_INVALID",
          `${file.path}:${number}: ${name} is not pinned in ${lockPath}; the environment is built from the lock alone, so it would lack it`,
          hint,
        );
      }
      if (operator !== "==" || version === undefined || pinned.version === undefined) continue;
      if (RELEASE.test(version) && RELEASE.test(pinned.version) && !sameRelease(version, pinned.version)) {
        throw new KaosError(
          "BUNDLE_INVALID",
          `${file.path}:${number}: ${JSON.stringify(line)} asks for another version than ${lockPath}:${pinned.line} pins (${pinned.pin})`,
          hint,
        );
      }
    }
  }
}

/** The index options a lock may carry, so that pins can come from a private index or a wheel directory. */
const LOCK_OPTIONS = /^(?:--index-url|-i|--extra-index-url|--find-links|-f|--trusted-host)(?:=|\s+)\S+$|^--no-index$/;
/** A PEP 508 name, then `==` and a version (PEP 440 characters), as `pip freeze` writes. */
const LOCK_PIN = /^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*===?\s*([A-Za-z0-9][A-Za-z0-9.!+_-]*)$/;
/** `name @ URL`: what `pip freeze` writes for a package installed from a URL or a file. */
const LOCK_DIRECT = /^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s+@\s+\S+$/;

export interface RequirementsLock {
  /** The pinned packages, one requirement line each. */
  pins: string[];
  /** Each package by its normal name: the line that pins it, and its version (none for `name @ URL`). */
  packages: Map<string, { line: number; pin: string; version: string | undefined }>;
}

/**
 * Reads and checks a `requirements.lock`: every line a pin (`name==version`
 * or `name @ URL`), an index option, a comment or blank. Anything else (a
 * range, an unpinned name, an editable install, an include) would let pip
 * choose, so it is refused with the file and line.
 */
export function readRequirementsLock(path: string): RequirementsLock {
  const text = readFileSync(path, "utf8");
  const pins: string[] = [];
  const packages: RequirementsLock["packages"] = new Map();
  const lines = text.split(/\r?\n/);
  for (const [index, raw] of lines.entries()) {
    const line = raw.replace(/(^|\s)#.*$/, "").trim();
    if (line === "" || LOCK_OPTIONS.test(line)) continue;
    const pin = LOCK_PIN.exec(line);
    const name = (pin ?? LOCK_DIRECT.exec(line))?.[1];
    if (name === undefined) {
      throw new KaosError(
        "BUNDLE_INVALID",
        `${path}:${index + 1}: ${JSON.stringify(raw.trim())} is not a pinned package; expected name==version (as \`pip freeze\` writes), name @ URL, or an index option (--index-url, --extra-index-url, --find-links, --no-index, --trusted-host)`,
        { hint: `write the lock from a working environment: python -m pip freeze > ${path}` },
      );
    }
    const normal = normalName(name);
    const earlier = packages.get(normal);
    if (earlier !== undefined) {
      throw new KaosError(
        "BUNDLE_INVALID",
        `${path}:${index + 1}: ${name} is pinned twice (first at line ${earlier.line}); expected one pin per package`,
      );
    }
    packages.set(normal, { line: index + 1, pin: line, version: pin?.[2] });
    pins.push(line);
  }
  return { pins, packages };
}
